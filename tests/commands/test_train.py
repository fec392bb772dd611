"""`segicl train --recipe` (segicl_commands.train): the shipped recipes are valid chains whose every flag their stage
accepts, the segicl chain reads the CrossConv networks the shipped weights were made with (and exports with the last as its
prior), --dry-run prints the
commands, bad recipes are refused in one line before anything runs, and a tiny recipe trains end to end."""
import filecmp
import shlex
import sys
from pathlib import Path

import pytest

from segicl_commands.cli import main
from segicl_commands.train import RunOptions, plan, recipes_in_order, shipped_recipes
from segicl_recipes import FOLDER as RECIPES
from segicl_weights import FOLDER as SHIPPED_WEIGHTS

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("crossconv-tiny", "mvg-tiny", "segicl-tiny")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file"]
# Experiment-only switches that left the stages (issue 31): no recipe may give them.
REMOVED_FLAGS = {"prior-registration-weight", "prior-registration-min-examples", "gate-reads-prior", "gate-lr-scale",
                 "merged-structure-prob", "absent-examples-prob"}


def arguments(item) -> dict[str, str]:
    """A planned training step's flags after the stage module (flag -> its value, '' for a switch)."""
    words = list(item.command[item.command.index(f"segicl_stages.{item.step.stage}") + 1:])
    return {word[2:]: ("" if index + 1 == len(words) or words[index + 1].startswith("--") else words[index + 1])
            for index, word in enumerate(words) if word.startswith("--")}


def planned(recipe: str, tmp_path: Path, **options):
    return plan(recipes_in_order(recipe), RunOptions(tmp_path / "run", **options))


def test_the_shipped_recipes_are_the_three_shipped_models():
    assert tuple(shipped_recipes()) == SHIPPED
    for name in SHIPPED:
        assert (SHIPPED_WEIGHTS / name).is_dir()


@pytest.mark.parametrize("recipe", SHIPPED)
def test_every_step_of_a_shipped_recipe_is_accepted_by_its_stage_in_a_valid_order(recipe, tmp_path):
    """plan() parses every step's flags with its stage's own parser and resolves every input to an earlier step."""
    steps = planned(recipe, tmp_path, weights_dir=tmp_path / "weights")
    assert [item.step.name for item in steps][-1] == f"{recipe} -> {tmp_path / 'weights'}"
    made: set[Path] = set()
    for item in steps:
        assert set(item.reads) <= made, f"{item.step.name} reads a folder no earlier step made"
        made.add(item.model)
        if item.command:
            assert not REMOVED_FLAGS & set(arguments(item)), item.step.name
            assert item.step.stage != "stage3_decoder"
    assert steps[-1].source == tmp_path / "run" / recipe  # the recipe's output is exported to --weights-dir
    if recipes_in_order(recipe)[-1].finetune is not None:
        finetune = planned(recipe, tmp_path, dataset=tmp_path, finetune=True)
        assert finetune[0].reads == (SHIPPED_WEIGHTS / recipe,)  # it starts from the shipped weights


def test_the_segicl_chain_trains_each_stage_on_the_crossconv_network_the_shipped_weights_were_made_with(tmp_path):
    steps = {item.step.name: item for item in planned("segicl-tiny", tmp_path)}
    crossconv = [item for item in steps.values() if item.step.stage == "crossconv_train"]
    assert len(crossconv) == 4
    assert list(steps)[:8] == ["crossconv", "crossconv-80min", "crossconv2", "crossconv3", "crossconv-205min",
                               "crossconv4", "crossconv-tiny", "stage1"]
    eighty_minutes = steps["crossconv-80min"]
    assert eighty_minutes.source == steps["crossconv"].model
    assert arguments(steps["crossconv2"])["init"] == arguments(steps["stage2d"])["crossconv"] == str(eighty_minutes.model)
    assert arguments(crossconv[2])["init"] == str(crossconv[1].model)
    assert steps["crossconv-205min"].source == crossconv[2].model
    assert arguments(steps["stage2i"])["crossconv"] == arguments(crossconv[3])["init"] == \
           str(steps["crossconv-205min"].model)
    assert arguments(crossconv[3])["learning-rate"] == "0.0003" and crossconv[3].step.env["OMP_NUM_THREADS"] == "2"
    assert steps["crossconv-tiny"].source == crossconv[3].model
    assert arguments(steps["stage2i"])["init"] == str(steps["stage2d-export"].model)
    assert [arguments(steps[name])["steps"] for name in ("stage2", "stage2b", "stage2c", "stage2d", "stage2i")] == \
           ["2400", "1400", "1500", "700", "700"]
    shipped = steps["segicl-tiny"]  # stage 2i with the shipped peer (the cooled network) as its prior
    assert (shipped.source, shipped.prior) == (steps["stage2i"].model, steps["crossconv-tiny"].model)
    assert shipped.reads == (shipped.source, shipped.prior)
    assert shipped.shell_line() == f"segicl export {shipped.source} {shipped.folder} --prior {shipped.prior}"


def test_an_export_step_with_a_prior_runs_segicl_export_with_it(tmp_path, monkeypatch):
    import segicl_commands.export
    from segicl_commands.train import run

    (tmp_path / "a.toml").write_text('output = "e"\n' + STAGE1 + '[[step]]\nname = "c"\nstage = "crossconv_train"\n'
                                     'flags = { steps = 2 }\n[[step]]\nname = "e"\nexport = "s1"\nprior = "c"\n')
    steps = planned(str(tmp_path / "a.toml"), tmp_path)
    calls = []
    monkeypatch.setattr(segicl_commands.export, "export", lambda *given: calls.append(given))
    assert run(steps, 2, False, steps[-1].model) == 0
    assert calls == [(tmp_path / "run" / "s1" / "model", tmp_path / "run" / "e", tmp_path / "run" / "c" / "model")]


def test_dry_run_prints_every_command_of_the_chain(tmp_path, capsys):
    run, weights = tmp_path / "run", tmp_path / "weights"
    assert main(["train", "--recipe", "mvg-tiny", "--dry-run", "--output-dir", str(run), "--weights-dir",
                 str(weights)]) == 0
    mix = ["--other-autoregressive", "0.8", "--segmentation-probability", "0.4", "--task-weight", "denoising", "2",
           "--task-weight", "inpainting", "2", "--batch-size", "8"]
    env = ["OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1"]
    config = str(RECIPES / "accelerate_config.yaml")
    expected = [
        env + LAUNCH + [config, "-m", "segicl_stages.mvg_train", "--steps", "2400", "--warmup-steps", "30",
                        "--max-minutes", "34", *mix, "--learning-rate", "0.001", "--checkpoint-every", "50",
                        "--output-dir", f"{run}/train", "--resume"],
        env + LAUNCH + [config, "-m", "segicl_stages.mvg_train", "--prompt-label-skip", "--steps", "1200",
                        "--warmup-steps", "30", "--max-minutes", "20", *mix, "--learning-rate", "0.0005",
                        "--checkpoint-every", "50", "--init", f"{run}/train/model", "--output-dir",
                        f"{run}/train-label-skip", "--resume"],
        ["segicl", "export", f"{run}/train-label-skip/model", f"{run}/mvg-tiny"],
        ["segicl", "export", f"{run}/mvg-tiny", f"{weights}/mvg-tiny"]]
    assert [shlex.split(line) for line in capsys.readouterr().out.splitlines()] == expected
    assert not run.exists()


def test_finetune_runs_the_last_stage_from_the_shipped_weights_on_the_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", "--recipe", "segicl-tiny", "--finetune", "--dataset", str(data), "--dry-run",
                 "--output-dir", str(tmp_path / "ft"), "--accelerate-config",
                 str(REPO / "accelerate_deepspeed_zero2.yaml")]) == 0
    stage, export = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert stage[:8] == LAUNCH + [str(REPO / "accelerate_deepspeed_zero2.yaml"), "-m", "segicl_stages.stage2_encoder"]
    assert stage[stage.index("--init") + 1] == str(SHIPPED_WEIGHTS / "segicl-tiny")
    assert stage[-3:] == ["--dataset", str(data), "--resume"] and "--crossconv" not in stage
    assert export == ["segicl", "export", f"{tmp_path}/ft/finetune/model", f"{tmp_path}/ft/segicl-tiny-finetuned"]


@pytest.mark.parametrize("given, message", [
    (["--recipe", "segicl-tiny", "--finetune"], "--finetune needs --dataset DIR"),
    (["--recipe", "crossconv-tiny", "--finetune", "--dataset", "."], "recipe crossconv-tiny has no [finetune] steps"),
    (["--recipe", "nope"], "unknown recipe 'nope': the shipped recipes are crossconv-tiny, mvg-tiny, segicl-tiny"),
    (["--recipe", "missing.toml"], "no recipe file missing.toml"),
    (["--recipe", "mvg-tiny", "--from-step", "nope"], "--from-step nope: no such step in this run (steps: train, "),
    (["--recipe", "mvg-tiny", "--dataset", "no-such-folder"], "--dataset no-such-folder: no such folder"),
    (["--recipe", "mvg-tiny", "--accelerate-config", "cluster.yaml"], "--accelerate-config cluster.yaml: no such file"),
])
def test_bad_command_lines_are_refused_in_one_line(given, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *given, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segicl train: error: ") and message in err and len(err.splitlines()) == 1, err


STAGE1 = '[[step]]\nname = "s1"\nstage = "stage1_decoder"\nflags = { steps = 2 }\n'


@pytest.mark.parametrize("text, message", [
    ('output = "s1"\n[[step]]\nname = "s1"\nstage = "stage1_decoder"\nflags = { steps = 2 \n',
     "bad.toml: Unclosed inline table (at line 5, column 21)"),
    ('output = "s1"\n' + STAGE1.replace("steps = 2", "steps = 2, bogus = 1"),
     "recipe bad, step s1: stage1_decoder refuses its flags: unrecognized arguments: --bogus 1"),
    ('output = "s1"\n' + STAGE1.replace("steps = 2", "steps = 'many'"),
     "stage1_decoder refuses its flags: argument --steps: invalid int value: 'many'"),
    ('output = "s1"\n' + STAGE1.replace("stage1_decoder", "stage9"), "recipe bad, step s1: unknown stage 'stage9' "
                                                                     "(the stages: crossconv_train, mvg_train, "),
    ('output = "s2"\n' + STAGE1 + '[[step]]\nname = "s2"\nstage = "stage2_encoder"\n',
     "stage2_encoder refuses its flags: the following arguments are required: --init"),
    ('output = "s1"\n[[step]]\nname = "s1"\nstage = "stage2_encoder"\ninputs = { init = "s2" }\n' +
     STAGE1.replace('"s1"', '"s2"'), "recipe bad, step s1: input init: 's2' is no earlier step of this run"),
    ('output = "e"\n[[step]]\nname = "e"\nexport = "gone"\n', "recipe bad, step e: export: 'gone' is no earlier step"),
    ('output = "s1"\n' + STAGE1 + '[[step]]\nname = "s2"\nstage = "stage2_encoder"\n'
     'inputs = { init = "other:s1" }\n', "'other:s1' is no earlier step of this run (earlier steps: bad:s1)"),
    ('output = "s1"\n' + STAGE1.replace("steps = 2", "steps = 2, output-dir = 'x'"),
     "--output-dir is given by `segicl train` itself; leave it out of the recipe"),
    ('output = "s1"\n' + STAGE1.replace('stage = "stage1_decoder"', 'stage = "stage1_decoder"\nexport = "s0"'),
     "bad.toml: step 1 (s1): give either stage = MODULE (a training step) or export = STEP, not both"),
    ('output = "s9"\n' + STAGE1, "bad.toml: output = 's9' names no step (steps: s1)"),
    ('output = "s1"\nsteps = 3\n' + STAGE1, "bad.toml: unknown key 'steps' (known: accelerate, finetune, output, "),
    ('output = "s1"\n' + STAGE1 + STAGE1, "recipe bad: step name 's1' is used twice in this run"),
    ('output = "s1"\naccelerate = "nowhere.yaml"\n' + STAGE1, "step 1 (s1): accelerate config nowhere.yaml is neither"),
    ('output = "s1"\nrequires = ["ring"]\n' + STAGE1, "recipe bad requires itself (bad -> ring -> bad)"),
    ('output = "s1"\n' + STAGE1.replace('stage = "stage1_decoder"', 'stage = "stage1_decoder"\nprior = "s0"'),
     "bad.toml: step 1 (s1): prior = STEP belongs to an export step (export = STEP)"),
    ('output = "e"\n' + STAGE1 + '[[step]]\nname = "e"\nexport = "s1"\nprior = "nope"\n',
     "recipe bad, step e: prior: 'nope' is no earlier step of this run"),
    ('output = "e"\n[[step]]\nname = "e"\nexport = "weights:segicl-large"\n',
     "'weights:segicl-large' names no shipped model"),
])
def test_bad_recipes_are_refused_in_one_line_naming_the_problem(text, message, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(text)
    (tmp_path / "ring.toml").write_text('output = "r"\nrequires = ["bad"]\n[[step]]\nname = "r"\nexport = "bad:s1"\n')
    assert main(["train", "--recipe", str(tmp_path / "bad.toml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segicl train: error: ") and message in err and len(err.splitlines()) == 1, err


def test_the_shipped_launch_configs_are_the_repositorys():
    """recipes/ ships copies of the repository's accelerate configs, so that a recipe launches outside a checkout."""
    for name in ("accelerate_config.yaml", "accelerate_deepspeed_zero2.yaml"):
        assert filecmp.cmp(RECIPES / name, REPO / name, shallow=False), name


def tiny_recipe(folder: Path) -> Path:
    """Stage 1 and stage 2 for 2 steps each, then an export: the shape of segicl-tiny at a test's size."""
    recipe = folder / "tiny.toml"
    fast = "batch-size = 2, warmup-steps = 1, log-every = 1"
    recipe.write_text(f'''output = "tiny"
[[step]]
name = "s1"
stage = "stage1_decoder"
env = {{ OMP_NUM_THREADS = "1" }}
flags = {{ steps = 2, {fast}, eval-masks = 2, eval-steps = 2 }}
[[step]]
name = "s2"
stage = "stage2_encoder"
inputs = {{ init = "s1" }}
flags = {{ steps = 2, {fast} }}
[[step]]
name = "tiny"
export = "s2"
''')
    return recipe


def test_a_tiny_recipe_trains_end_to_end_resumes_by_skipping_and_leaves_a_loadable_model(dataset, tmp_path, capfd):
    from segicl.model import SegICLModel

    recipe, run = tiny_recipe(tmp_path), tmp_path / "run"
    command = ["train", "--recipe", str(recipe), "--output-dir", str(run), "--dataset", str(dataset.root)]
    assert main(command) == 0
    out = capfd.readouterr().out
    assert f"step 1/3 s1: stage1_decoder -> {run}/s1 (elapsed 0:00:00)" in out
    assert f"step 3/3 tiny: export {run}/s2/model -> {run}/tiny" in out
    assert "3 steps in " in out and out.rstrip().endswith(f"the model: {run}/tiny")
    assert "training on dataset" in out and str(dataset.root) in out  # --dataset reached the stages
    model = SegICLModel.from_pretrained(run / "tiny")
    assert model.config.preset == "tiny"
    assert main(command) == 0  # again: both training steps are done, only the export runs
    out = capfd.readouterr().out
    assert f"step 1/3 s1: done, skipped ({run}/s1/model holds its model)" in out
    assert f"step 2/3 s2: done, skipped ({run}/s2/model holds its model)" in out
    assert main(["train", "--recipe", str(recipe), "--output-dir", str(run)]) == 2  # other data: refused
    assert "holds steps trained on" in capfd.readouterr().err


def test_from_step_refuses_to_start_where_an_earlier_model_is_missing(tmp_path, capsys):
    assert main(["train", "--recipe", str(tiny_recipe(tmp_path)), "--output-dir", str(tmp_path / "run"),
                 "--from-step", "s2", "--dry-run"]) == 2
    assert f"--from-step s2: step s2 reads {tmp_path}/run/s1/model, which step s1 has not made yet" in \
           capsys.readouterr().err


def test_a_failed_step_stops_the_run_with_its_exit_status(tmp_path, capsys, monkeypatch):
    import subprocess

    import segicl_commands.train as train

    calls = []
    monkeypatch.setattr(train.subprocess, "run", lambda command, env: calls.append(env) or
                        subprocess.CompletedProcess(command, 3))
    assert main(["train", "--recipe", str(tiny_recipe(tmp_path)), "--output-dir", str(tmp_path / "run")]) == 3
    captured = capsys.readouterr()
    assert captured.err.strip() == ("segicl train: error: step 1/3 s1 failed (exit status 3); the same command "
                                    "resumes it")
    assert len(calls) == 1 and calls[0]["OMP_NUM_THREADS"] == "1"  # the step's thread environment


def test_an_output_dir_made_before_the_run_record_counts_as_built_in_data(tmp_path, capsys):
    """A Makefile-era runs/train-demo has no train_run.json: its steps trained on the built-in dataset."""
    (tmp_path / "run" / "s1" / "model").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", "--recipe", str(tiny_recipe(tmp_path)), "--output-dir", str(tmp_path / "run"),
                 "--dataset", str(data)]) == 2
    assert capsys.readouterr().err.strip() == (f"segicl train: error: --output-dir {tmp_path}/run holds steps trained "
                                               f"on the built-in dataset, not {data}; give another --output-dir")
    assert not (tmp_path / "run" / "train_run.json").exists()
