"""The `segicl train` subcommand: run a model's whole training chain from its recipe (`recipes/*.toml`).

A recipe is an ordered list of steps, as data: training steps (a `segicl_stages` module run under `accelerate launch`
with its flags, inputs, launch config and thread environment) and exports (`segicl export`). Every shipped model has
one, describing how its weights were made; `--dataset` trains the same chain on a user's dataset, and `--finetune`
runs the recipe's `[finetune]` steps instead (the last stage started from the shipped weights).

Every step's flags are checked against its stage's own parser before anything runs. Each training step writes
`<output-dir>/<step>` and runs with `--resume`, so running the same command again continues an interrupted step; a
step whose model is already there is skipped (`--from-step NAME` runs NAME and every later step again, with
`--resume`); exports always run.

Registered into the `segicl` command line by `segicl_commands.cli.build_parser` through `add_train_command`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import pkgutil
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from segicl_data.model_folders import MODEL_CONFIGS
from segicl_recipes import FOLDER as RECIPES
from segicl_weights import FOLDER as SHIPPED_WEIGHTS

RECIPE_KEYS = {"requires", "output", "accelerate", "step", "finetune"}
CHAIN_KEYS = {"output", "step"}
STEP_KEYS = {"name", "stage", "export", "prior", "inputs", "flags", "env", "accelerate"}
RUNNER_FLAGS = ("output-dir", "dataset", "resume")  # the runner gives these to every training step
SHIPPED_PREFIX = "weights:"
RUN_RECORD = "train_run.json"


@dataclass(frozen=True)
class Step:
    """One step of a recipe: a training stage (`stage` set) or an export of an earlier step's model (`export` set).

    Attributes:
        name: the step's folder under --output-dir, and how other steps refer to it.
        stage: the `segicl_stages` module it runs (training step), or None.
        export: the earlier step whose model it copies as float16 (export step), or None.
        prior: an export step's CrossConv network (a reference, as in inputs) that becomes the exported SegICL
            model's example prior (`segicl export --prior`), or None.
        inputs: stage flag (without "--") -> reference of the model folder it reads: "STEP" of this recipe,
            "RECIPE:STEP" of a required recipe, "weights:NAME" a shipped model.
        flags: stage flag (without "--") -> value (see `flag_words`).
        env: environment variables of the stage's processes (e.g. OMP_NUM_THREADS).
        accelerate: the accelerate launch config file.
    """

    name: str
    stage: str | None = None
    export: str | None = None
    prior: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    flags: dict[str, object] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    accelerate: Path | None = None


@dataclass(frozen=True)
class Chain:
    """Steps in order, and the one whose folder is the model they make."""

    output: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe file: its name (the file's stem), the recipes whose steps it reads, its chain and its optional
    fine-tune chain."""

    name: str
    path: Path
    requires: tuple[str, ...]
    chain: Chain
    finetune: Chain | None = None


@dataclass(frozen=True)
class PlannedStep:
    """A step ready to run: where it writes, the model folder it leaves, the model folders it reads, and its command
    (training) or source and prior (export)."""

    recipe: str
    step: Step
    folder: Path
    model: Path
    reads: tuple[Path, ...]
    command: tuple[str, ...] = ()
    source: Path | None = None
    prior: Path | None = None

    def shell_line(self) -> str:
        """The step as one shell line (what --dry-run prints)."""
        if self.source is not None:
            prior = ["--prior", str(self.prior)] if self.prior is not None else []
            return shlex.join(["segicl", "export", str(self.source), str(self.folder), *prior])
        return shlex.join([f"{key}={value}" for key, value in self.step.env.items()] + list(self.command))


# ------------------------------------------------------------------------------------------------- reading a recipe
def shipped_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES.glob("*.toml"))


def recipe_path(name_or_path: str, beside: Path = RECIPES) -> Path:
    """A recipe file: a path to a .toml file, or the name of one beside `beside` or among the shipped recipes."""
    given = Path(name_or_path)
    if given.suffix == ".toml" or given.is_file():
        if not given.is_file():
            raise FileNotFoundError(f"no recipe file {given}")
        return given
    for folder in (beside, RECIPES):
        if (folder / f"{name_or_path}.toml").is_file():
            return folder / f"{name_or_path}.toml"
    raise ValueError(f"unknown recipe {name_or_path!r}: the shipped recipes are {', '.join(shipped_recipes())} "
                     "(or give the path of a .toml file)")


def load_recipe(path: Path) -> Recipe:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: {error}") from None
    refuse_unknown_keys(data, RECIPE_KEYS, f"{path}")
    requires = data.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(name, str) for name in requires):
        raise ValueError(f"{path}: requires must be a list of recipe names, got {requires!r}")
    accelerate = str(data.get("accelerate", "accelerate_config.yaml"))
    chain = parse_chain(data, path, accelerate, f"{path}")
    finetune = data.get("finetune")
    if finetune is not None:
        refuse_unknown_keys(finetune, CHAIN_KEYS, f"{path}: [finetune]")
        finetune = parse_chain(finetune, path, accelerate, f"{path}: [finetune]")
    return Recipe(path.stem, path, tuple(requires), chain, finetune)


def refuse_unknown_keys(table: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def parse_chain(table: dict, path: Path, accelerate: str, where: str) -> Chain:
    steps = table.get("step", [])
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"{where}: no [[step]] tables")
    parsed = tuple(parse_step(step, path, accelerate, f"{where}: step {index}") for index, step in enumerate(steps, 1))
    names = [step.name for step in parsed]
    output = table.get("output")
    if output not in names:
        raise ValueError(f"{where}: output = {output!r} names no step (steps: {', '.join(names)})")
    return Chain(output, parsed)


def parse_step(table: dict, path: Path, accelerate: str, where: str) -> Step:
    refuse_unknown_keys(table, STEP_KEYS, where)
    name = table.get("name")
    if not isinstance(name, str) or not name or "/" in name or ":" in name:
        raise ValueError(f"{where}: name must be a folder name without '/' or ':', got {name!r}")
    where = f"{where} ({name})"
    if "prior" in table and "export" not in table:
        raise ValueError(f"{where}: prior = STEP belongs to an export step (export = STEP)")
    if ("stage" in table) == ("export" in table):
        raise ValueError(f"{where}: give either stage = MODULE (a training step) or export = STEP, not "
                         f"{'both' if 'stage' in table else 'neither'}")
    if "export" in table:
        extra = sorted(set(table) - {"name", "export", "prior"})
        if extra:
            raise ValueError(f"{where}: an export step takes only name, export and prior, not {extra[0]!r}")
        prior = table.get("prior")
        return Step(name, export=str(table["export"]), prior=None if prior is None else str(prior))
    tables = {key: table.get(key, {}) for key in ("inputs", "flags", "env")}
    for key, value in tables.items():
        if not isinstance(value, dict):
            raise ValueError(f"{where}: {key} must be a table, got {value!r}")
    given = sorted(set(RUNNER_FLAGS) & (set(tables["flags"]) | set(tables["inputs"])))
    if given:
        raise ValueError(f"{where}: --{given[0]} is given by `segicl train` itself; leave it out of the recipe")
    return Step(name, stage=str(table["stage"]), inputs={k: str(v) for k, v in tables["inputs"].items()},
                flags=tables["flags"], env={k: str(v) for k, v in tables["env"].items()},
                accelerate=launch_config(str(table.get("accelerate", accelerate)), path, where))


def launch_config(name: str, recipe: Path, where: str) -> Path:
    """The accelerate config a step names: a file beside its recipe, else the shipped copy (recipes/)."""
    for folder in (recipe.parent, RECIPES):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{where}: accelerate config {name} is neither beside {recipe} nor among the shipped ones")


def recipes_in_order(name_or_path: str) -> list[Recipe]:
    """The recipe and every recipe it requires, each once, a required one before the recipes that read it."""
    ordered: dict[str, Recipe] = {}

    def visit(path: Path, chain: tuple[str, ...]) -> None:
        recipe = load_recipe(path)
        if recipe.name in chain:
            raise ValueError(f"recipe {recipe.name} requires itself ({' -> '.join(chain + (recipe.name,))})")
        for required in recipe.requires:
            if required not in ordered:
                visit(recipe_path(required, beside=path.parent), chain + (recipe.name,))
        ordered.setdefault(recipe.name, recipe)

    visit(recipe_path(name_or_path), ())
    return list(ordered.values())


# ------------------------------------------------------------------------------------------------- planning a run
@dataclass(frozen=True)
class RunOptions:
    """What the command line adds to a recipe."""

    output_dir: Path
    dataset: Path | None = None
    finetune: bool = False
    weights_dir: Path | None = None
    accelerate: Path | None = None


def plan(recipes: list[Recipe], options: RunOptions) -> list[PlannedStep]:
    """Every step in run order, inputs resolved to folders, flags checked by each stage's parser. With --finetune:
    only the last recipe's [finetune] steps; with --weights-dir: each chain's output exported there at the end."""
    main = recipes[-1]
    if options.finetune and main.finetune is None:
        raise ValueError(f"recipe {main.name} has no [finetune] steps; train its whole chain with --dataset instead")
    chains = [(main.name, main.finetune)] if options.finetune else [(recipe.name, recipe.chain) for recipe in recipes]
    models: dict[str, Path] = {}  # "RECIPE:STEP" -> the model folder it leaves
    planned: list[PlannedStep] = []
    for recipe, chain in chains:
        for step in chain.steps:
            if any(other.step.name == step.name for other in planned):
                raise ValueError(f"recipe {recipe}: step name {step.name!r} is used twice in this run (every step "
                                 "writes <output-dir>/<name>)")
            planned.append(plan_step(recipe, step, models, options))
            models[f"{recipe}:{step.name}"] = planned[-1].model
    if options.weights_dir is not None:
        planned += [publish(recipe, chain.output, models, options.weights_dir) for recipe, chain in chains]
    return planned


def plan_step(recipe: str, step: Step, models: dict[str, Path], options: RunOptions) -> PlannedStep:
    folder = options.output_dir / step.name
    where = f"recipe {recipe}, step {step.name}"
    if step.export is not None:
        source = resolve(step.export, recipe, models, f"{where}: export")
        prior = None if step.prior is None else resolve(step.prior, recipe, models, f"{where}: prior")
        reads = (source,) if prior is None else (source, prior)
        return PlannedStep(recipe, step, folder, folder, reads, source=source, prior=prior)
    inputs = {flag: resolve(reference, recipe, models, f"{where}: input {flag}")
              for flag, reference in step.inputs.items()}
    arguments = flag_words(step.flags) + flag_words(inputs) + ["--output-dir", str(folder)]
    arguments += ["--dataset", str(options.dataset)] if options.dataset is not None else []
    arguments.append("--resume")
    check_stage_arguments(step.stage, arguments, where)
    accelerate = options.accelerate or step.accelerate
    command = (sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file", str(accelerate),
               "-m", f"segicl_stages.{step.stage}", *arguments)
    return PlannedStep(recipe, step, folder, folder / "model", tuple(inputs.values()), command=command)


def publish(recipe: str, output: str, models: dict[str, Path], weights_dir: Path) -> PlannedStep:
    """An export of a chain's output model to --weights-dir/<output>."""
    step = Step(f"{output} -> {weights_dir}", export=output)
    target, source = weights_dir / output, models[f"{recipe}:{output}"]
    return PlannedStep(recipe, step, target, target, (source,), source=source)


def resolve(reference: str, recipe: str, models: dict[str, Path], where: str) -> Path:
    """The model folder a reference names: an earlier step of this run ("STEP" or "RECIPE:STEP") or a shipped model
    ("weights:NAME")."""
    if reference.startswith(SHIPPED_PREFIX):
        folder = SHIPPED_WEIGHTS / reference[len(SHIPPED_PREFIX):]
        if not is_model(folder):
            raise FileNotFoundError(f"{where}: {reference!r} names no shipped model (no model at {folder})")
        return folder
    qualified = reference if ":" in reference else f"{recipe}:{reference}"
    if qualified not in models:
        earlier = ", ".join(models) or "none"
        raise ValueError(f"{where}: {reference!r} is no earlier step of this run (earlier steps: {earlier})")
    return models[qualified]


def is_model(folder: Path) -> bool:
    return any((folder / config).is_file() for config in MODEL_CONFIGS.values())


def flag_words(flags: dict[str, object]) -> list[str]:
    """Command-line words of a flags table: true -> --flag, false -> --no-flag, a list -> --flag v1 v2, a list of
    lists -> the flag once per inner list, anything else -> --flag value."""
    words: list[str] = []
    for name, value in flags.items():
        if isinstance(value, bool):
            words.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, list) and value and all(isinstance(item, list) for item in value):
            for item in value:
                words += [f"--{name}", *map(str, item)]
        elif isinstance(value, list):
            words += [f"--{name}", *map(str, value)]
        else:
            words += [f"--{name}", str(value)]
    return words


def check_stage_arguments(stage: str, arguments: list[str], where: str) -> None:
    """Parse `arguments` with the stage's own parser, so that a bad flag is refused before any step runs."""
    known = stage.isidentifier() and importlib.util.find_spec(f"segicl_stages.{stage}") is not None
    module = importlib.import_module(f"segicl_stages.{stage}") if known else None
    if not hasattr(module, "build_parser"):
        raise ValueError(f"{where}: unknown stage {stage!r} (the stages: {', '.join(stage_modules())})")
    parser = module.build_parser()

    def refuse(message: str):
        raise ValueError(f"{where}: {stage} refuses its flags: {message}")

    parser.error = refuse  # the instance's own: one line instead of usage + exit
    parser.parse_args(arguments)


def stage_modules() -> list[str]:
    import segicl_stages

    names = [info.name for info in pkgutil.iter_modules(segicl_stages.__path__)]
    return [name for name in names if hasattr(importlib.import_module(f"segicl_stages.{name}"), "build_parser")]


# ------------------------------------------------------------------------------------------------- running it
def first_step(planned: list[PlannedStep], name: str | None) -> int:
    """The index --from-step names (0 without it); the inputs it needs from earlier steps must be there."""
    if name is None:
        return 0
    names = [item.step.name for item in planned]
    if name not in names:
        raise ValueError(f"--from-step {name}: no such step in this run (steps: {', '.join(names)})")
    start = names.index(name)
    earlier = {item.model: item.step.name for item in planned[:start]}
    for item in planned[start:]:
        for folder in item.reads:
            if folder in earlier and not is_model(folder):
                raise FileNotFoundError(f"--from-step {name}: step {item.step.name} reads {folder}, which step "
                                        f"{earlier[folder]} has not made yet; start from an earlier step")
    return start


def check_run_record(options: RunOptions, recipe: str) -> None:
    """--output-dir remembers the dataset its steps trained on (train_run.json; a folder without one, made before the
    record existed, holds steps trained on the built-in dataset), so that a run on other data skips no step made on
    the first."""
    path = options.output_dir / RUN_RECORD
    dataset = str(options.dataset.resolve()) if options.dataset is not None else None
    if path.is_file():
        before = json.loads(path.read_text()).get("dataset")
    elif options.output_dir.is_dir() and any(options.output_dir.iterdir()):
        before = None
    else:
        before = dataset
    if before != dataset:
        raise ValueError(f"--output-dir {options.output_dir} holds steps trained on {before or 'the built-in dataset'}, "
                         f"not {dataset or 'the built-in dataset'}; give another --output-dir")
    if not path.is_file():
        options.output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"recipe": recipe, "dataset": dataset}, indent=1) + "\n")


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_step(item: PlannedStep) -> int:
    """Run one step: an export in this process, a training step as `accelerate launch` (its exit status)."""
    if item.source is not None:
        from segicl_commands.export import export

        export(item.source, item.folder, item.prior)
        return 0
    return subprocess.run(item.command, env={**os.environ, **item.step.env}).returncode


def run(planned: list[PlannedStep], start: int, rerun: bool, model: Path) -> int:
    """Run the steps from `start` on, one progress line each; a training step whose model is there is skipped unless
    `rerun` (--from-step). Stops at the first failed step with its exit status."""
    began = time.perf_counter()
    for index, item in enumerate(planned[start:], start + 1):
        done = item.source is None and not rerun and is_model(item.model)
        what = (f"done, skipped ({item.model} holds its model)" if done else
                f"export {item.source}{f' with the prior {item.prior}' if item.prior else ''} -> {item.folder}"
                if item.source is not None else
                f"{item.step.stage} -> {item.folder}")
        print(f"step {index}/{len(planned)} {item.step.name}: {what} (elapsed {clock(time.perf_counter() - began)})",
              flush=True)
        if not done and (code := run_step(item)) != 0:
            print(f"segicl train: error: step {index}/{len(planned)} {item.step.name} failed (exit status {code}); "
                  "the same command resumes it", file=sys.stderr)
            return code
    print(f"{len(planned) - start} steps in {clock(time.perf_counter() - began)}; the model: {model}")
    return 0


def command_train(args: argparse.Namespace) -> int:
    recipes = recipes_in_order(args.recipe)
    name = recipes[-1].name
    if args.finetune and args.dataset is None:
        raise ValueError("--finetune needs --dataset DIR: the data to fine-tune the shipped weights on")
    if args.dataset is not None and not args.dataset.is_dir():
        raise FileNotFoundError(f"--dataset {args.dataset}: no such folder (build one with `segicl data import`)")
    if args.accelerate_config is not None and not args.accelerate_config.is_file():
        raise FileNotFoundError(f"--accelerate-config {args.accelerate_config}: no such file")
    output_dir = args.output_dir or Path("runs") / (f"{name}-finetune" if args.finetune else name)
    options = RunOptions(output_dir, args.dataset, args.finetune, args.weights_dir, args.accelerate_config)
    planned = plan(recipes, options)
    start = first_step(planned, args.from_step)
    if args.dry_run:
        for item in planned[start:]:
            print(item.shell_line())
        return 0
    check_run_record(options, name)
    chain = recipes[-1].finetune if args.finetune else recipes[-1].chain
    model = next(item.model for item in planned if item.recipe == name and item.step.name == chain.output)
    return run(planned, start, args.from_step is not None, model)


DESCRIPTION = """\
Run a model's training chain from its recipe: a TOML file listing the steps in order (training stages under
`accelerate launch`, and float16 exports). The shipped recipes (segicl-tiny, crossconv-tiny, mvg-tiny) are how the
shipped weights were made; segicl-tiny requires crossconv-tiny, whose steps run first into the same --output-dir.

Every step's flags are checked against its stage before anything runs. Training steps run with --resume: the same
command again continues an interrupted step, and a step whose model is already there is skipped.

Your data: --dataset DIR (a dataset built by `segicl data import`) is given to every training step, so
  segicl train --recipe segicl-tiny --dataset DIR
trains the whole chain on it (hours), and
  segicl train --recipe segicl-tiny --finetune --dataset DIR
fine-tunes the shipped weights instead: the recipe's [finetune] steps, the last stage-2 step started from
weights/segicl-tiny (about 30 min on 2 CPU cores), leaving the model, as float16, in
<output-dir>/segicl-tiny-finetuned for `segicl segment --model`.
"""


def add_train_command(commands) -> None:
    """Add `train` to the `segicl` subcommands (`commands`: the parser's add_subparsers object)."""
    train = commands.add_parser("train", help="train a model from its recipe (the shipped ones, or your own .toml), "
                                              "on the built-in data or your --dataset; --finetune the shipped weights",
                                description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--recipe", required=True, metavar="NAME_OR_PATH",
                       help=f"a shipped recipe ({', '.join(shipped_recipes())}) or a recipe .toml file")
    train.add_argument("--dataset", type=Path, default=None, metavar="DIR",
                       help="train every step on this dataset folder (`segicl data import`); default: the built-in one")
    train.add_argument("--finetune", action="store_true",
                       help="run the recipe's [finetune] steps (from the shipped weights) instead of its chain; "
                            "needs --dataset")
    train.add_argument("--output-dir", type=Path, default=None, metavar="DIR",
                       help="where every step writes its folder (default: runs/<recipe>, runs/<recipe>-finetune)")
    train.add_argument("--from-step", default=None, metavar="NAME",
                       help="start at this step: it and every later one run even if their model is there (with "
                            "--resume: a step continues from its checkpoint; delete its folder to train it afresh); "
                            "the steps before it do not run")
    train.add_argument("--weights-dir", type=Path, default=None, metavar="DIR",
                       help="at the end, also export each recipe's model to DIR/<its output> (`make train-demo`: "
                            "weights/, replacing the shipped weights)")
    train.add_argument("--accelerate-config", type=Path, default=None, metavar="FILE",
                       help="launch every training step with this accelerate config instead of the recipe's (e.g. "
                            "accelerate_deepspeed_zero2.yaml, or your cluster's)")
    train.add_argument("--dry-run", action="store_true", help="print the steps' commands without running them")
    train.set_defaults(handler=command_train)
