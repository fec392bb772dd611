"""The docs site's results page (docs/results/index.md), generated from the benchmarks' JSON files (never typed by
hand): `segicl bench report` copies the JSON files and plots of `runs/bench/` beside the page and writes it."""
from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

import psutil
import torch

from segicl_data.model_folders import shown_path

RESULT_FILES = ("quality.json", "quality_coronal.json", "volume.json", "augment.json", "ood.json", "folder.json",
                "labelling.json", "labelling_nnunet.json", "speed.json", "full_shapes.json", "training.json")
BENCH_COMMANDS = {"quality.json": "segicl bench quality", "quality_coronal.json": "segicl bench quality --axis coronal",
                  "volume.json": "segicl bench volume", "augment.json": "segicl bench augment",
                  "ood.json": "segicl bench ood",
                  "folder.json": "segicl bench folder", "labelling.json": "segicl bench labelling",
                  "labelling_nnunet.json": "segicl bench labelling --nnunet DIR (e.g. written by "
                                           "examples/make_nnunet_dataset.py)",
                  "speed.json": "segicl bench speed", "full_shapes.json": "segicl bench full-shapes",
                  "training.json": "segicl bench training"}
PLOTS = ("quality.png", "quality_coronal.png", "labelling.png", "labelling_nnunet.png", "speed.png")
# The page's sections (each benchmark's own report titles its part at the level below).
PAGE_GROUPS = {"SegICL: quality": ("quality.json", "quality_coronal.json", "volume.json", "augment.json", "ood.json"),
               "SegICL: whole folders, and labelling them": ("folder.json", "labelling.json", "labelling_nnunet.json"),
               "Cost: inference and training": ("speed.json", "full_shapes.json", "training.json")}
RESULTS_PAGE = "index.md"  # the page, beside the JSON files and plots it is made from (docs/results/)


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
              *([recommended_line(speed["recommended_setting"], speed.get("sampler_grid", {}))]
                if "recommended_setting" in speed else []),
              "", "![speed](speed.png)", ""]
    return lines


def recommended_line(recommended: dict | None, grid: dict) -> str:
    table = ", ".join(f"{key} {value['dice']:.3f}/{value['uncertainty_auroc']:.2f}" for key, value in grid.items())
    if recommended is None:
        return f"- Sampler grid (steps x samples, Dice/AUROC): {table}; no setting of >= 3 samples is within 0.01 Dice of the best."
    return (f"- Sampler grid (steps x samples, Dice/AUROC): {table}. Fewest decoder evaluations within 0.01 Dice of "
            f"the best ({recommended['best_dice']:.3f}) with a meaningful uncertainty (>= 3 samples, AUROC >= 0.6): "
            f"**{recommended['steps']} steps x {recommended['samples']} samples** (Dice {recommended['dice']:.3f}, "
            f"AUROC {recommended['uncertainty_auroc']:.2f}).")


def fast_setting_line(fast: dict) -> str:
    steps, samples = fast["steps"], fast["samples"]
    return (f"- With the fastest decoder setting ({steps} step{'s' * (steps != 1)} x {samples} "
            f"sample{'s' * (samples != 1)}, Dice "
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
    """Which settings of at most 10 decoder steps stay within 0.01 Dice below the most steps measured (50 by default:
    the sampler target)."""
    most = max(steps_dice, key=int)
    reference = steps_dice[most]
    good = [f"{s} ({steps_dice[s] - reference:+.3f})" for s in sorted(steps_dice, key=int, reverse=True)
            if int(s) <= 10 and s != most and steps_dice[s] >= reference - 0.01]
    return (f"At most 10 steps within 0.01 Dice of {most} steps (target): "
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


def results_page(folder: Path) -> str:
    """The results page, from whichever of the RESULT_FILES exist in `folder`. Plots
    are linked by name: the page lives beside them, in `folder` (`write_results_page`)."""
    from segicl_benchmarks.augment import augment_lines
    from segicl_benchmarks.folder import folder_lines
    from segicl_benchmarks.labelling import labelling_lines  # heavy imports (MONAI, MVG): only when reporting
    from segicl_benchmarks.ood import ood_lines
    from segicl_benchmarks.quality import quality_lines
    from segicl_benchmarks.volume import volume_lines

    def quality_here(data: dict) -> list[str]:
        return quality_lines(data, plot=f"{data.get('name', 'quality')}.png")

    parts = ["# Results", "",
             f"Generated by `segicl bench report` from the JSON files beside this page (`{shown_path(folder)}/`), "
             "which it copies from the benchmarks' output folder: do not edit by hand (how to re-run them: "
             f"[Run the benchmarks](../how-to/benchmarks.md)). Hardware: {hardware()}.", "",
             gpu_line(_read(folder, "full_shapes.json")), ""]
    renders = {"quality.json": quality_here, "quality_coronal.json": quality_here, "volume.json": volume_lines,
               "augment.json": augment_lines, "ood.json": ood_lines, "folder.json": folder_lines,
               "labelling.json": labelling_lines, "labelling_nnunet.json": labelling_lines,
               "speed.json": speed_lines, "full_shapes.json": full_shape_lines, "training.json": training_lines}
    for group, names in PAGE_GROUPS.items():
        parts += [f"## {group}", ""]
        for name in names:
            data = _read(folder, name)
            parts += renders[name](data) if data else [f"_{name} not generated yet: run `{BENCH_COMMANDS[name]}`._",
                                                       ""]
    return "\n".join(parts).rstrip() + "\n"


def gpu_line(full: dict | None) -> str:
    if full and full.get("device", "CPU") != "CPU":
        return f"GPU: the full-preset shapes were timed on {full['device']} (below)."
    return ("GPU: not measured, no GPU machine was available to this project (on one, `segicl bench full-shapes "
            "--device cuda --dtype bfloat16 --vision-layers 0 --llm-layers 0` builds every block of the full-preset "
            "model and times each part; the volumes are still projected from the parts).")


def write_results_page(bench_dir: Path, results_dir: Path) -> str:
    """Copy the benchmarks' JSON files and plots from `bench_dir` into `results_dir` (the repository keeps them; runs/
    is not kept) and write the page there from the copies. Returns the page."""
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in (*PLOTS, *RESULT_FILES):
        source, target = bench_dir / name, results_dir / name
        if source.exists() and source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    page = results_page(results_dir)  # from the copies: a benchmark not re-run keeps its last figures
    (results_dir / RESULTS_PAGE).write_text(page)
    return page
