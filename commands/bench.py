"""`segicl bench {quality,volume,speed,full-shapes,training,folder,labelling,augment,ood,report}`: the benchmark commands (the benchmarks themselves live in
`benchmarks/`; `segicl bench report` regenerates the docs site's results page, docs/results/index.md, from their JSON
files)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from segicl.config import DEFAULT_SAMPLES, DEFAULT_STEPS
from segicl_benchmarks.ood import ROWS as OOD_ROWS
from segicl_commands.arguments import check_at_least, check_out_dir, optional_path
from segicl_commands.datasets import add_dataset_arguments, open_dataset
from segicl_data.model_folders import check_model_folder
from segicl_weights import CROSSCONV_TINY, MVG_TINY

BENCH_DIR = Path("runs/bench")
RESULTS_DIR = Path("docs/results")
SWEEP_STEPS, SWEEP_SAMPLES = (50, 20, 10, 5, 2, 1), (1, 3, 5)  # the sampler grid of `bench speed`
REPO = Path(__file__).resolve().parents[1]


def add_bench_commands(commands, default_weights: Path) -> None:
    """Register the bench family under the `segicl` subcommands."""
    bench = commands.add_parser("bench", help="benchmarks: quality, speed, training throughput, the results page",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")

    quality = kinds.add_parser("quality", help="Dice/IoU/HD95 for k = 0, 1, 3, 5 beside the CrossConv peer, registration "
                                               "+ label fusion, union, copy, MVG and specialist UNets, with intervals")
    add_episode_arguments(quality, episodes=96, cell="(structures, k)")
    quality.add_argument("--crossconv", type=optional_path, default=CROSSCONV_TINY,
                         help="CrossConv (UniverSeg-style) peer folder ('' to leave it out)")
    quality.add_argument("--mvg", type=optional_path, default=MVG_TINY,
                         help="MVG weights folder ('' to leave MVG out)")
    quality.add_argument("--specialists", type=int, default=8,
                         help="held-out structures that get a specialist UNet (0: no specialist comparison)")
    quality.add_argument("--specialist-episodes", type=int, default=40,
                         help="k = 3 episodes of those structures in the specialist comparison")
    quality.add_argument("--specialist-seconds", type=float, default=None,
                         help="a time ceiling per specialist in seconds (default: none; each trains until its "
                              "validation loss stops falling, at most 4000 steps)")
    quality.set_defaults(handler=command_quality)

    volume = kinds.add_parser("volume", help="every slice of the held-out subject's volume, k = 3 position-matched and "
                                             "fixed examples: 3-D Dice and false positives on absent slices, beside "
                                             "the CrossConv peer, registration + vote and the union")
    add_dataset_arguments(volume)
    volume.add_argument("--volume", default="colin27", help="the held-out volume (a test volume of the dataset)")
    volume.add_argument("--structures", type=int, default=6, help="held-out structures, spread over their extent")
    volume.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="decoder sampler steps (the pipeline's default)")
    volume.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="decoder samples averaged (the pipeline's default)")
    volume.add_argument("--batch-size", type=int, default=16, help="slices per batch")
    volume.add_argument("--crossconv", type=optional_path, default=CROSSCONV_TINY,
                        help="CrossConv (UniverSeg-style) peer folder ('' to leave it out)")
    volume.set_defaults(handler=command_volume)

    speed = kinds.add_parser("speed", help="per-slice vision/LLM/decoder time with and without the example cache; "
                                           "sampler steps and samples against Dice")
    add_dataset_arguments(speed)
    speed.add_argument("--slices", type=int, default=64, help="slices of the test volume (at least 64)")
    speed.add_argument("--structure", default="brain/brain", help="task key whose examples are used")
    speed.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                       help=f"decoder steps of the timed volume runs (default: {DEFAULT_STEPS}, the pipeline's)")
    speed.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                       help=f"decoder samples of the timed volume runs (default: {DEFAULT_SAMPLES}, the pipeline's)")
    speed.add_argument("--batch-size", type=int, default=16, help="slices per batch")
    speed.add_argument("--repeats", type=int, default=3,
                       help="timed runs of every volume setting, interleaved; the median of each is reported")
    speed.add_argument("--episodes", type=int, default=48, help="held-out k=3 episodes of the sampler sweeps")
    speed.add_argument("--min-area", type=int, default=64)
    speed.add_argument("--sweep-steps", type=int, nargs="+", default=list(SWEEP_STEPS),
                       help="decoder steps of the sampler grid")
    speed.add_argument("--sweep-samples", type=int, nargs="+", default=list(SWEEP_SAMPLES),
                       help="samples of the sampler grid")
    speed.set_defaults(handler=command_speed)

    full = kinds.add_parser("full-shapes", help="the full preset's per-slice cost by part (random weights, paper "
                                                "shapes), and the volume speed-up the cache would give")
    full.add_argument("--vision-layers", type=int, default=2, help="ViT-bigG blocks built and timed (of 48; 0: all)")
    full.add_argument("--llm-layers", type=int, default=1, help="Qwen-7B blocks built and timed (of 32; 0: all)")
    full.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    full.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    full.add_argument("--repeats", type=int, default=3, help="timed runs per part (median)")
    full.add_argument("--slices", type=int, default=64, help="volume length of the projection")
    full.set_defaults(handler=command_full_shapes)

    folder = kinds.add_parser("folder", help="segicl predict over a folder of volumes against segicl segment once per "
                                             "case, and predict on 2 processes: seconds per case")
    add_dataset_arguments(folder)
    folder.add_argument("--cases", type=int, default=20, help="volumes in the folder")
    folder.add_argument("--structure", default="thalamus", help="the structure the prompt asks for")
    folder.add_argument("-k", type=int, default=3, help="2-D examples in the prompt")
    folder.set_defaults(handler=command_folder)

    labelling = kinds.add_parser("labelling", help="a simulated user labelling a folder: Dice of the unlabelled cases "
                                                   "against the labelled count, the most uncertain or a random case "
                                                   "labelled next, beside registration + vote and a UNet")
    add_dataset_arguments(labelling)
    labelling.add_argument("--structure", default="harvard_oxford/caudate_both_sides",
                           help="the built-in (or --dataset) structure the pool is labelled with (default: the caudate, "
                                "held out of the shipped model's training)")
    labelling.add_argument("--nnunet", type=Path, default=None,
                           help="build the pool from this nnU-Net v2 raw folder instead (e.g. one written by "
                                "examples/make_nnunet_dataset.py)")
    labelling.add_argument("--label", default="caudate", help="with --nnunet: the label the pool is labelled with")
    labelling.add_argument("--variants", type=int, default=4, help="random variants of each subject in the pool")
    labelling.add_argument("--orders", type=int, default=2, help="random labelling orders of the random strategy")
    labelling.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3, 5, 8],
                           help="labelled counts at which the rest is predicted (from 1, increasing)")
    labelling.add_argument("--margin-mm", type=float, default=6.0, help="the box kept around each case's structure")
    labelling.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="decoder sampler steps (the pipeline's default)")
    labelling.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="decoder samples (the pipeline's default)")
    labelling.add_argument("--unet-max-steps", type=int, default=4000,
                           help="a ceiling on the UNet's steps, whatever SegICL's CPU time allows")
    labelling.set_defaults(handler=command_labelling)

    training = kinds.add_parser("training", help="stage 1/2 steps per second: 1 process vs DeepSpeed ZeRO-2 x 2")
    training.add_argument("--steps", type=int, default=20, help="steps per run")
    training.add_argument("--batch-size", type=int, default=16, help="global batch (even)")
    training.set_defaults(handler=command_training)

    augment = kinds.add_parser("augment", help="test-time augmentation (views) and example-subset ensembles on the "
                                               "quality benchmark's episodes: Dice gained and seconds paid")
    add_episode_arguments(augment, episodes=48, cell="(structures, setting)")
    augment.set_defaults(handler=command_augment)

    ood = kinds.add_parser("ood", help="out of distribution: coronal and sagittal slices, a simulated T2 contrast, CT "
                                       "structures by Hounsfield units, 128 px; k = 1, 3, 5 beside CrossConv, "
                                       "registration + fusion, union, copy and a UNet on the examples")
    ood.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                     help="rows to run (default: all): " + ", ".join(OOD_ROWS) + "; each run replaces its rows in "
                          "ood.json and keeps the others, so rows can run as separate processes")
    add_scoring_arguments(ood, episodes=48, cell="(row, k)")
    ood.add_argument("--crossconv", type=optional_path, default=CROSSCONV_TINY,
                     help="CrossConv (UniverSeg-style) peer folder ('' to leave it out)")
    ood.add_argument("--unet-episodes", type=int, default=8,
                     help="episodes per cell that also get a UNet trained on their k examples (0: none)")
    ood.add_argument("--unet-steps", type=int, default=400, help="training steps of each of those UNets")
    ood.add_argument("--cache-dir", type=Path, default=None, help="where the built-in datasets are built")
    ood.set_defaults(handler=command_ood)

    report = kinds.add_parser("report", help="copy runs/bench/*.json and the plots into docs/results/ and regenerate "
                                             "the docs site's results page there (docs/results/index.md)")
    report.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where the JSON files, the plots and the generated page index.md go (default: "
                             "docs/results)")
    report.set_defaults(handler=command_report)

    for parser in (quality, volume, speed, training, folder, augment, labelling, ood):
        parser.add_argument("--model", type=Path, default=default_weights, help="SegICL model folder")
        parser.add_argument("--seed", type=int, default=0)
        parser.set_defaults(open_dataset=open_dataset)
    for parser in (quality, volume, speed, full, training, folder, augment, labelling, ood):
        parser.add_argument("--out-dir", type=Path, default=BENCH_DIR, help="where the JSON files go")
    report.add_argument("--out-dir", type=Path, default=BENCH_DIR,
                        help="the benchmarks' output folder, whose JSON files and plots are copied (default: runs/bench)")


def add_episode_arguments(parser: argparse.ArgumentParser, episodes: int, cell: str) -> None:
    """The flags of the benchmarks scored on the quality benchmark's test episodes: the dataset, and the scoring
    flags (`add_scoring_arguments`)."""
    add_dataset_arguments(parser)
    add_scoring_arguments(parser, episodes, cell)


def add_scoring_arguments(parser: argparse.ArgumentParser, episodes: int, cell: str) -> None:
    """How many episodes per cell, the smallest query structure (at 64 px), the decoder's steps and samples."""
    parser.add_argument("--episodes", type=int, default=episodes, help=f"test episodes per {cell} cell")
    parser.add_argument("--min-area", type=int, default=64, help="minimum query structure area in pixels at 64 px")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="decoder sampler steps (the pipeline's default)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help="decoder samples averaged (the pipeline's default)")


def check_common(args, **minimums: float) -> None:
    """The checks every model benchmark makes before it starts: the flags' minimums, the output folder, the model."""
    check_at_least(args, **minimums)
    check_out_dir(args.out_dir)
    check_model_folder(args.model, "SegICL")


def command_quality(args) -> int:
    from segicl_benchmarks.quality import run_quality

    check_common(args, episodes=1, steps=1, samples=1, specialists=0, specialist_episodes=1)
    if args.specialist_seconds is not None:
        check_at_least(args, specialist_seconds=1)
    for flag, engine in (("mvg", "MVG"), ("crossconv", "CrossConv")):
        if getattr(args, flag) is not None:
            check_model_folder(getattr(args, flag), engine, flag=f"--{flag}")
    result = run_quality(args, args.open_dataset(args))
    print((args.out_dir / f"{result['name']}.md").read_text())
    return 0 if result else 1


def command_volume(args) -> int:
    from segicl_benchmarks.quality import peer_methods
    from segicl_benchmarks.volume import run_volume

    check_common(args, structures=1, steps=1, samples=1, batch_size=1)
    if args.crossconv is not None:
        check_model_folder(args.crossconv, "CrossConv", flag="--crossconv")
    dataset = args.open_dataset(args)
    if dataset.volumes.get(args.volume, {}).get("split") != "test":
        tests = sorted(v for v, info in dataset.volumes.items() if info["split"] == "test")
        raise ValueError(f"--volume {args.volume!r} is not a held-out volume of the dataset; choose one of {tests}")
    run_volume(args, dataset, peer_methods(args, print, include=("registration_vote", "crossconv")))
    print((args.out_dir / "volume.md").read_text())
    return 0


def command_speed(args) -> int:
    from segicl_benchmarks.speed import run_speed

    check_common(args, slices=1, steps=1, samples=1, batch_size=1, repeats=1, episodes=1)
    if args.slices < 64:
        print(f"note: --slices {args.slices}: the volume figures of the docs' results page use at least 64 slices")
    result = run_speed(args, args.open_dataset(args))
    print(json.dumps({k: result[k] for k in ("llm_ms_per_slice", "volume_s", "steps_dice", "ratios")}, indent=1))
    return 0


def command_full_shapes(args) -> int:
    from segicl_benchmarks.full_shapes import FullShapeOptions, run_full_shapes
    from segicl_benchmarks.report import full_shape_lines

    check_out_dir(args.out_dir)
    options = FullShapeOptions(vision_layers=args.vision_layers, llm_layers=args.llm_layers, device=args.device,
                               dtype=args.dtype, repeats=args.repeats, slices=args.slices).validate()
    result = run_full_shapes(options, args.out_dir)
    print("\n".join(full_shape_lines(result)))
    return 0


def command_folder(args) -> int:
    from segicl_benchmarks.folder import run_folder

    check_common(args, cases=1, k=1)
    result = run_folder(open_dataset(args), args.out_dir, args.cases, args.structure, args.k, args.model)
    print(json.dumps(result, indent=1))
    return 0


def command_labelling(args) -> int:
    from segicl_benchmarks.labelling import LabellingOptions, builtin_source, nnunet_source, run_labelling

    check_common(args)
    if args.nnunet is not None and args.dataset is not None:
        raise ValueError("give --nnunet (an nnU-Net raw folder) or --dataset (a slice dataset), not both")
    options = LabellingOptions(counts=tuple(args.counts), variants=args.variants, orders=args.orders, seed=args.seed,
                               steps=args.steps, samples=args.samples, margin_mm=args.margin_mm,
                               unet_max_steps=args.unet_max_steps)
    source = (nnunet_source(args.nnunet, args.label) if args.nnunet is not None
              else builtin_source(args.open_dataset(args), args.structure))
    result = run_labelling(source, options, args.model, args.out_dir)
    print((args.out_dir / f"{result['name']}.md").read_text())
    return 0


def command_augment(args) -> int:
    from segicl_benchmarks.augment import run_augment

    check_common(args, episodes=2, steps=1, samples=1)
    run_augment(args, args.open_dataset(args))
    print((args.out_dir / "augment.md").read_text())
    return 0


def command_ood(args) -> int:
    from segicl_benchmarks.ood import OODOptions, run_ood

    check_common(args, episodes=2, steps=1, samples=1, unet_episodes=0, unet_steps=1, min_area=1)
    unknown = [row for row in args.rows or () if row not in OOD_ROWS]
    if unknown:
        raise ValueError(f"--rows: unknown row(s) {', '.join(unknown)}; known: {', '.join(OOD_ROWS)}")
    if args.crossconv is not None:
        check_model_folder(args.crossconv, "CrossConv", flag="--crossconv")
    options = OODOptions(episodes=args.episodes, min_area=args.min_area, steps=args.steps, samples=args.samples,
                         unet_episodes=args.unet_episodes, unet_steps=args.unet_steps, seed=args.seed)
    run_ood(args.model, args.crossconv, args.rows or list(OOD_ROWS), options, args.out_dir, args.cache_dir)
    print((args.out_dir / "ood.md").read_text())
    return 0


def command_training(args) -> int:
    from segicl_benchmarks.training import run_training

    check_common(args, steps=4, batch_size=2)  # the loss is compared over the first and last thirds of the steps
    if args.batch_size % 2:
        raise ValueError(f"--batch-size must be even (it is split over 2 DeepSpeed processes), got {args.batch_size}")
    run_training(args)
    return 0


def command_report(args) -> int:
    from segicl_benchmarks.report import write_results_page

    # The page, its plots and the JSON behind every figure live in the repository; runs/ does not.
    print(write_results_page(args.out_dir, args.results_dir))
    return 0
