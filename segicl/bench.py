"""`segicl bench {quality,speed,full-shapes,training,report}`: the benchmark commands, and the README "Results" section
generated from their JSON files (never typed by hand)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
from pathlib import Path

import psutil
import torch

from segicl.arguments import check_at_least, check_model_folder, check_out_dir, shown_path

BENCH_DIR = Path("runs/bench")
RESULT_FILES = ("quality.json", "speed.json", "full_shapes.json", "training.json")
REPO = Path(__file__).resolve().parents[1]
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"


def add_bench_commands(commands, add_dataset_arguments, open_dataset, default_weights: Path) -> None:
    """Register the bench family; `add_dataset_arguments`/`open_dataset` are the CLI's dataset flags and loader."""
    bench = commands.add_parser("bench", help="benchmarks: quality, speed, training throughput, README results",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")

    quality = kinds.add_parser("quality", help="Dice/IoU/HD95 for k = 0, 1, 3, 5 beside copy, MVG, specialist UNet")
    add_dataset_arguments(quality)
    quality.add_argument("--episodes", type=int, default=48, help="test episodes per (structures, k) cell")
    quality.add_argument("--min-area", type=int, default=64, help="minimum query structure area in pixels")
    quality.add_argument("--steps", type=int, default=10, help="decoder sampler steps")
    quality.add_argument("--samples", type=int, default=5, help="decoder samples averaged")
    quality.add_argument("--mvg", type=Path, default=REPO / "weights" / "mvg-tiny",
                         help="MVG weights folder ('' to leave MVG out)")
    quality.add_argument("--specialists", type=int, default=4,
                         help="structures per group that get a specialist UNet (0: none)")
    quality.add_argument("--specialist-seconds", type=float, default=90.0,
                         help="training budget of each specialist UNet, in seconds")
    quality.set_defaults(handler=command_quality)

    speed = kinds.add_parser("speed", help="per-slice vision/LLM/decoder time with and without the example cache; "
                                           "sampler steps and samples against Dice")
    add_dataset_arguments(speed)
    speed.add_argument("--slices", type=int, default=64, help="slices of the test volume (at least 64)")
    speed.add_argument("--structure", default="brain/brain", help="task key whose examples are used")
    speed.add_argument("--steps", type=int, default=10, help="decoder steps of the timed volume runs")
    speed.add_argument("--samples", type=int, default=5, help="decoder samples of the timed volume runs")
    speed.add_argument("--batch-size", type=int, default=16, help="slices per batch")
    speed.add_argument("--repeats", type=int, default=3,
                       help="timed runs of every volume setting, interleaved; the median of each is reported")
    speed.add_argument("--episodes", type=int, default=48, help="held-out k=3 episodes of the sampler sweeps")
    speed.add_argument("--min-area", type=int, default=64)
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

    training = kinds.add_parser("training", help="stage 1/2 steps per second: 1 process vs DeepSpeed ZeRO-2 x 2")
    training.add_argument("--steps", type=int, default=20, help="steps per run")
    training.add_argument("--batch-size", type=int, default=16, help="global batch (even)")
    training.set_defaults(handler=command_training)

    report = kinds.add_parser("report", help="regenerate the README 'Results' section from runs/bench/*.json")
    report.add_argument("--readme", type=Path, default=Path("README.md"))
    report.set_defaults(handler=command_report)

    for parser in (quality, speed, training):
        parser.add_argument("--model", type=Path, default=default_weights, help="SegICL model folder")
        parser.add_argument("--seed", type=int, default=0)
        parser.set_defaults(open_dataset=open_dataset)
    for parser in (quality, speed, full, training, report):
        parser.add_argument("--out-dir", type=Path, default=BENCH_DIR, help="where the JSON files go")


def check_common(args, **minimums: float) -> None:
    """The checks every model benchmark makes before it starts: the flags' minimums, the output folder, the model."""
    check_at_least(args, **minimums)
    check_out_dir(args.out_dir)
    check_model_folder(args.model, "SegICL")


def command_quality(args) -> int:
    from segicl.bench_quality import run_quality

    check_common(args, episodes=1, steps=1, samples=1, specialists=0, specialist_seconds=1)
    args.mvg = args.mvg if str(args.mvg) else None
    if args.mvg is not None:
        check_model_folder(args.mvg, "MVG", flag="--mvg")
    result = run_quality(args, args.open_dataset(args))
    print((args.out_dir / "quality.md").read_text())
    return 0 if result else 1


def command_speed(args) -> int:
    from segicl.bench_speed import run_speed

    check_common(args, slices=1, steps=1, samples=1, batch_size=1, repeats=1, episodes=1)
    if args.slices < 64:
        print(f"note: --slices {args.slices}: the volume figures the README reports use at least 64 slices")
    result = run_speed(args, args.open_dataset(args))
    print(json.dumps({k: result[k] for k in ("llm_ms_per_slice", "volume_s", "steps_dice", "ratios")}, indent=1))
    return 0


def command_full_shapes(args) -> int:
    from segicl.bench_full import FullShapeOptions, run_full_shapes

    check_out_dir(args.out_dir)
    options = FullShapeOptions(vision_layers=args.vision_layers, llm_layers=args.llm_layers, device=args.device,
                               dtype=args.dtype, repeats=args.repeats, slices=args.slices).validate()
    result = run_full_shapes(options, args.out_dir)
    print("\n".join(full_shape_lines(result)))
    return 0


def command_training(args) -> int:
    from segicl.bench_training import run_training

    check_common(args, steps=4, batch_size=2)  # the loss is compared over the first and last thirds of the steps
    if args.batch_size % 2:
        raise ValueError(f"--batch-size must be even (it is split over 2 DeepSpeed processes), got {args.batch_size}")
    run_training(args)
    return 0


def command_report(args) -> int:
    # The README's plots and the JSON behind every figure live in the repository; runs/ does not.
    results = args.readme.parent / "docs" / "results"
    results.mkdir(parents=True, exist_ok=True)
    for name in ("quality.png", "speed.png", *RESULT_FILES):
        if (args.out_dir / name).exists():
            shutil.copyfile(args.out_dir / name, results / name)
    section = results_section(args.out_dir)
    write_results(args.readme, section)
    print(section)
    return 0


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores available, {psutil.virtual_memory().total / 2**30:.0f} GiB "
            f"RAM, {gpu}; torch {torch.__version__}")


def _read(folder: Path, name: str) -> dict | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def speed_lines(speed: dict) -> list[str]:
    runs, ratios = speed["per_run"], speed["ratios"]
    lines = ["### Inference cost (`segicl bench speed`)", "", speed["setting"], "",
             "| k | cache | vision ms/slice | LLM ms/slice | decoder ms/slice | volume s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for k in sorted(runs["cached"], key=int):
        for label in ("cached", "uncached"):
            row = runs[label][k]
            lines.append(f"| {k} | {label} | {row['vision_ms_per_slice']:.2f} | {row['llm_ms_per_slice']:.2f} | "
                         f"{row['decoder_ms_per_slice']:.1f} | {row['volume_s']:.2f} | {row['peak_rss_mib']:.0f} |")
    steps = speed["steps_dice"]
    samples = speed["samples"]
    lines += ["", f"- LLM per slice with the cache, k=3 over k=0: **{ratios['llm_cached_k3_over_k0']:.2f}x** "
              f"(target <= 1.3x).",
              f"- Whole volume at k=3, without over with the cache: **{ratios['volume_uncached_over_cached_k3']:.2f}x** "
              f"(target >= 3x); encoder part (vision + LLM) alone: {ratios['encoder_uncached_over_cached_k3']:.2f}x. "
              f"The decoder, which the cache cannot save, is {decoder_share(runs['cached']['3']):.0%} of the cached "
              f"k=3 time per slice; " + decoder_budget_for(3.0, runs["cached"]["3"], runs["uncached"]["3"]),
              *([fast_setting_line(speed["fast_setting"])] if "fast_setting" in speed else []),
              "- Decoder steps vs Dice (held-out, k=3): " + ", ".join(f"{s}: {steps[s]:.3f}" for s in
                                                                     sorted(steps, key=int, reverse=True)),
              "- " + few_step_settings(steps),
              "- Samples vs Dice / uncertainty AUROC (spread over samples flagging wrong pixels): "
              + ", ".join(f"{n}: {v['dice']:.3f} / {v['uncertainty_auroc']:.3f}" for n, v in samples.items()),
              "", "![speed](docs/results/speed.png)", ""]
    return lines


def fast_setting_line(fast: dict) -> str:
    return (f"- With the fast decoder setting ({fast['steps']} steps x {fast['samples']} sample, Dice "
            f"{fast['dice']:.3f} on the sweep episodes) the k=3 volume takes {fast['volume_s']['uncached_k3']:.2f} s "
            f"without and {fast['volume_s']['cached_k3']:.2f} s with the cache: "
            f"**{fast['volume_uncached_over_cached_k3']:.2f}x**.")


def duration(seconds: float) -> str:
    """Three significant figures in a readable unit (GPU parts take milliseconds, CPU volumes hours)."""
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s" if seconds >= 1 else f"{1000 * seconds:.3g} ms"


def full_shape_lines(full: dict) -> list[str]:
    parts = full["parts"]
    lines = ["### Full-preset shapes (`segicl bench full-shapes`)", "", full["setting"], "",
             f"Per slice: vision {duration(parts['vision_s_per_image'])} per image (an uncached k=3 slice encodes "
             f"7); LLM k=0 / k=3 without the cache {duration(parts['llm_uncached_s_k0'])} / "
             f"{duration(parts['llm_uncached_s_k3'])} ({parts['sequence_tokens_k0']} / {parts['sequence_tokens_k3']} "
             f"tokens), with it {duration(parts['llm_cached_s_k0'])} / {duration(parts['llm_cached_s_k3'])} "
             f"(**{full['llm_cached_k3_over_k0']:.2f}x**; the k=3 prefix, once per volume: "
             f"{duration(parts['llm_prefix_s_k3'])}); one denoiser evaluation (ControlNet + UNet) "
             f"{duration(parts['denoiser_s_per_evaluation'])}, one VAE decode {duration(parts['vae_decode_s'])}.", "",
             "| decoder steps x samples | volume k=3 without cache | with cache | speed-up | decoder share (cached) |",
             "|---|---|---|---|---|"]
    for setting, row in full["projection"].items():
        lines.append(f"| {setting} | {duration(row['volume_s_uncached_k3'])} | {duration(row['volume_s_cached_k3'])} | "
                     f"{row['volume_uncached_over_cached_k3']:.2f}x | {row['decoder_share_cached_k3']:.0%} |")
    return lines + [""]


def few_step_settings(steps_dice: dict) -> str:
    """Which settings of at most 10 decoder steps stay within 0.01 Dice below 50 steps (the sampler target)."""
    reference = steps_dice["50"]
    good = [f"{s} ({steps_dice[s] - reference:+.3f})" for s in sorted(steps_dice, key=int, reverse=True)
            if int(s) <= 10 and steps_dice[s] >= reference - 0.01]
    return ("At most 10 steps within 0.01 Dice of 50 steps (target): "
            + (f"**yes**: {', '.join(good)}" if good else "**no**"))


def decoder_budget_for(speedup: float, cached: dict, uncached: dict) -> str:
    """The decoder time per slice under which the cache would make a whole volume `speedup` times faster, given the
    measured vision + LLM costs: (uncached + d) / (cached + d) >= speedup  <=>  d <= (uncached - speedup cached) /
    (speedup - 1)."""
    encoder = {name: run["vision_ms_per_slice"] + run["llm_ms_per_slice"] for name, run in
               (("cached", cached), ("uncached", uncached))}
    limit = (encoder["uncached"] - speedup * encoder["cached"]) / (speedup - 1)
    if limit <= 0:
        return f"{speedup:g}x is out of reach at any decoder cost with these encoder costs."
    return (f"{speedup:g}x would need a decoder of at most {limit:.1f} ms per slice with these encoder costs "
            f"(it takes {cached['decoder_ms_per_slice']:.1f}).")


def decoder_share(run: dict) -> float:
    """The decoder's fraction of one run's per-slice time."""
    parts = [run[f"{part}_ms_per_slice"] for part in ("vision", "llm", "decoder")]
    return parts[2] / sum(parts)


def training_lines(training: dict) -> list[str]:
    lines = ["### Training throughput (`segicl bench training`)", "", training["setting"], "",
             "| stage | setup | steps/s | loss (first third -> last third) |", "|---|---|---|---|"]
    for stage in ("stage1", "stage2"):
        for setup in ("single", "deepspeed_zero2"):
            row = training[stage][setup]
            lines.append(f"| {stage} | {setup} | {row['steps_per_s']:.3f} | {row['loss_first_third']:.3f} -> "
                         f"{row['loss_last_third']:.3f} |")
    lines += [""] + [f"- {stage}: DeepSpeed ZeRO-2 (2 x 1 thread) runs at "
                     f"{training[stage]['deepspeed_over_single_speed']:.2f}x the single process's speed."
                     for stage in ("stage1", "stage2")] + [""]
    return lines


def results_section(folder: Path) -> str:
    """The README section, from whichever of quality/speed/full_shapes/training.json exist."""
    from segicl.bench_quality import quality_lines  # heavy imports (MONAI, MVG): only when reporting

    parts = [RESULTS_START, "## Results", "",
             f"Generated by `segicl bench report` from `{shown_path(folder)}/*.json`, copied to `docs/results/` (do not "
             f"edit by hand). Hardware: {hardware()}.",
             gpu_line(_read(folder, "full_shapes.json")), ""]
    for name, render in zip(RESULT_FILES, (quality_lines, speed_lines, full_shape_lines, training_lines)):
        data = _read(folder, name)
        parts += render(data) if data else [f"_{name} not generated yet: run `segicl bench {name.split('.')[0].replace('_', '-')}`._", ""]
    parts.append(RESULTS_END)
    return "\n".join(parts)


def gpu_line(full: dict | None) -> str:
    if full and full.get("device", "CPU") != "CPU":
        return f"GPU: the full-preset shapes were timed on {full['device']} (below)."
    return ("GPU: not measured, no GPU machine was available to this project (on one, `segicl bench full-shapes "
            "--device cuda --dtype bfloat16 --vision-layers 0 --llm-layers 0` builds every block of the full-preset "
            "model and times each part; the volumes are still projected from the parts).")


def write_results(readme: Path, section: str) -> None:
    """Replace the section between the markers, or append it."""
    text = readme.read_text() if readme.exists() else ""
    pattern = re.compile(re.escape(RESULTS_START) + ".*?" + re.escape(RESULTS_END), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    readme.write_text(text)
