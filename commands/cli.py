"""The `segicl` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from segicl_commands.arguments import exit_code
from segicl_commands.bank import add_bank_commands
from segicl_commands.bench import add_bench_commands
from segicl_commands.datasets import add_dataset_arguments, add_import_command, open_dataset
from segicl_commands.evaluate import add_evaluate_command
from segicl_commands.mvg import add_mvg_commands
from segicl_commands.predict import add_predict_command
from segicl_commands.segment import add_segment_command
from segicl_commands.serve import add_serve_command
from segicl_commands.train import add_train_command
from segicl.config import DEFAULT_SAMPLES, DEFAULT_STEPS
from segicl_data.model_folders import MODEL_CONFIGS
from segicl_weights import SEGICL_TINY


def format_summary(summary: dict) -> str:
    lines = [f"dataset: {summary['root']}  ({summary['resolution']} px, {summary['axis']})", "volumes:"]
    for name, info in summary["volumes"].items():
        lines.append(f"  {name:14s} {info['split']:5s} {info['slices']:4d} slices  {info['modality']}")
    lines += [
        f"structures: {summary['structures']} binary, {summary['held_out_structures']} held out "
        f"({summary['held_out_fraction']:.1%}); held-out structures in training: {summary['held_out_in_training']}",
        f"multi-class tasks: {', '.join(summary['multiclass_tasks'])}",
        "volume slices per split: " + ", ".join(f"{k} {v}" for k, v in summary["volume_slices_per_split"].items()),
        "structure slices per split: " + ", ".join(f"{k} {v}" for k, v in summary["structure_slices_per_split"].items()),
        f"real CT slices (denoising): {summary['ct_slices']}",
    ]
    return "\n".join(lines)


def command_data(args: argparse.Namespace) -> int:
    dataset = open_dataset(args)
    summary = dataset.summary()
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def copy_baseline_table(dataset, episodes: int, min_area: int, seed: int, progress: bool = True) -> dict:
    """Copy-example baseline (k = 1) on the test split: {transforms: {structures: result}}."""
    from segicl_data.episodes import EpisodeConfig
    from segicl_data.transforms import SpatialTransformConfig
    from segicl.evaluation import evaluate_copy_baseline

    table: dict = {}
    for label, transform in (("with_transforms", SpatialTransformConfig()), ("without_transforms", None)):
        table[label] = {}
        for structures in ("train", "held_out"):
            config = EpisodeConfig(split="test", structures=structures, num_examples=1, min_area=min_area,
                                   transform=transform, seed=seed)
            table[label][f"{structures}_structures"] = evaluate_copy_baseline(dataset, config, episodes, progress)
    return table


def format_baseline(table: dict, episodes: int, min_area: int) -> str:
    lines = [f"copy-example baseline, k = 1, test split, {episodes} episodes each, structure area >= {min_area} px",
             f"  {'':20s} {'train structures':>18s} {'held-out structures':>20s}"]
    for label, results in table.items():
        train, held = results["train_structures"], results["held_out_structures"]
        lines.append(f"  {label:20s} {train['mean_dice']:18.3f} {held['mean_dice']:20.3f}")
    return "\n".join(lines)


def command_baseline(args: argparse.Namespace) -> int:
    dataset = open_dataset(args)
    table = copy_baseline_table(dataset, args.episodes, args.min_area, args.seed)
    print(format_baseline(table, args.episodes, args.min_area))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=1))
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from segicl_commands.demo import run_demo

    start = time.perf_counter()
    dataset = open_dataset(args)
    summary = dataset.summary()
    print(format_summary(summary))
    table = copy_baseline_table(dataset, args.episodes, args.min_area, args.seed, progress=False)
    print(format_baseline(table, args.episodes, args.min_area))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "foundation.json").write_text(json.dumps({"summary": summary, "copy_baseline": table}, indent=1))
    if not args.from_scratch and not (args.model / MODEL_CONFIGS["SegICL"]).exists():
        print(f"no SegICL weights at {args.model}: skipping the model evaluation. Train them with "
              "`make train-demo`, or see the whole pipeline run with `segicl demo --from-scratch`.")
        return 0
    report = run_demo(dataset, args.model, args.out_dir, args.model_episodes, args.min_area, args.steps,
                      args.samples, args.seed, args.from_scratch, args.stage1_steps, args.stage2_steps, start)
    print(f"wrote {args.out_dir / 'report.md'}, {args.out_dir / 'report.json'} and overlays in "
          f"{report['wall_time_s']:.0f} s")
    return 0


DEFAULT_WEIGHTS = SEGICL_TINY


def command_export(args: argparse.Namespace) -> int:
    from segicl_commands.export import export

    export(args.source, args.target, args.prior)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segicl",
        description="Medical vision generalist: text + in-context example segmentation and image-to-image tasks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="build the slice dataset from the shipped scans and print its summary; "
                                            "`segicl data import` brings in your own dataset",
                               description="Without a subcommand: build (or reuse) the built-in atlas dataset, or open "
                                           "--dataset, and print its summary.")
    add_dataset_arguments(data)
    data.add_argument("--json", action="store_true", help="print the summary as JSON")
    data.set_defaults(handler=command_data)
    add_import_command(data.add_subparsers(dest="data_command", metavar="SUBCOMMAND"))

    add_segment_command(commands, DEFAULT_WEIGHTS)
    add_predict_command(commands, DEFAULT_WEIGHTS)
    add_bank_commands(commands)
    add_serve_command(commands, DEFAULT_WEIGHTS)
    add_evaluate_command(commands)
    export = commands.add_parser("export", help="copy a trained model folder as float16 weights (what ships in weights/)")
    export.add_argument("source", type=Path, help="a trained model folder (e.g. runs/train-demo/stage2c/model)")
    export.add_argument("target", type=Path, help="where the exported model goes (new, empty, or an earlier export)")
    export.add_argument("--prior", type=Path, default=None, metavar="CROSSCONV",
                        help="a trained CrossConv model folder (`segicl train --recipe crossconv-tiny`) to become the "
                             "SegICL model's example prior, in place of the one it has")
    export.set_defaults(handler=command_export)
    add_train_command(commands)
    add_mvg_commands(commands)
    add_bench_commands(commands, DEFAULT_WEIGHTS)

    for name, handler, help_text in (
        ("baseline", command_baseline, "copy-the-example baseline (k = 1) on the test split"),
        ("demo", command_demo, "the main job on the embedded default: build data, summary, baselines"),
    ):
        sub = commands.add_parser(name, help=help_text)
        add_dataset_arguments(sub)
        sub.add_argument("--episodes", type=int, default=300, help="test episodes per cell (default: 300)")
        sub.add_argument("--min-area", type=int, default=64,
                         help="minimum structure area on the query slice, in pixels (default: 64 = 1.6%% of 64x64, "
                              "large enough to be learnable at the tiny preset's resolution)")
        sub.add_argument("--seed", type=int, default=0, help="episode seed")
        if name == "baseline":
            sub.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
        else:
            sub.add_argument("--out-dir", type=Path, default=Path("runs/demo"), help="where the demo writes its outputs")
            sub.add_argument("--model", type=Path, default=DEFAULT_WEIGHTS,
                             help="trained model folder (default: the shipped tiny weights)")
            sub.add_argument("--model-episodes", type=int, default=48, help="test episodes per (structures, k) cell")
            sub.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                             help=f"decoder sampler steps (default: {DEFAULT_STEPS}, as `segicl segment`)")
            sub.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                             help=f"decoder samples averaged (default: {DEFAULT_SAMPLES}, as `segicl segment`)")
            sub.add_argument("--from-scratch", action="store_true",
                             help="train both stages briefly instead of loading the shipped weights (< 10 min)")
            sub.add_argument("--stage1-steps", type=int, default=150, help="--from-scratch stage-1 steps")
            sub.add_argument("--stage2-steps", type=int, default=100, help="--from-scratch stage-2 steps")
        sub.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code(lambda: args.handler(args), f"segicl {args.command}")


if __name__ == "__main__":
    sys.exit(main())
