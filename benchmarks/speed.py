"""`segicl bench speed`: where SegICL's inference time goes, and what the sampler settings cost in Dice.

All settings run in ONE process on the same inputs, so their ratios are meaningful on a noisy machine:
- a 3-D volume (the held-out subject, `--slices` middle axial slices) at k = 0, 1, 3, with and without the
  example cache (cache: example vision tokens + the LLM prefix KV computed once per volume; without it,
  every slice encodes its examples and runs the LLM over its whole sequence): per-slice vision / LLM /
  decoder milliseconds (vision: query and example tokens, and the example prior, computed once per volume),
  the whole-volume seconds and the peak resident memory, each the median of
  `--repeats` runs interleaved across the settings;
- the same k = 3 volume with the fastest decoder setting (1 step x 1 sample: one decoder evaluation, no uncertainty
  map), with and without the cache, and its Dice on the sweep episodes below;
- every (decoder steps in {50, 20, 10, 5, 2, 1}) x (samples in {1, 3, 5}) against Dice and against how well the
  per-pixel spread over samples flags the wrong pixels (AUROC; one sample has no spread: 0.5), on the same held-out
  test episodes at k = 3, and the recommended setting: the fewest decoder evaluations (steps x samples) within
  0.01 Dice of the best, with at least 3 samples and an AUROC of at least 0.6 (the uncertainty still meaningful).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torchmetrics.functional.classification import binary_auroc

from segicl_data.episodes import EpisodeConfig, EpisodeSampler
from segicl_data.model_folders import shown_path
from segicl.config import FAST_SAMPLES, FAST_STEPS
from segicl.evaluation import mean_score, score_episodes

SPEED_K = (0, 1, 3)
# A recommended setting keeps an uncertainty map that means something: its spread ranks wrong pixels at least this
# far above right ones (AUROC; 0.5 is chance, one sample has no spread).
MEANINGFUL_AUROC = 0.6
FAST_SETTING = (FAST_STEPS, FAST_SAMPLES)  # (steps, samples): the cheapest decoder setting, also timed at k = 3


class PeakMemory:
    """Peak resident set size (MiB) of this process while the block runs, sampled every 10 ms."""

    def __enter__(self) -> "PeakMemory":
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = round(max(self.peak, self.process.memory_info().rss) / 2**20, 1)


def volume_and_examples(dataset, structure: str, slices: int, k: int) -> tuple[np.ndarray, list, str]:
    """`slices` middle slices of the test subject, and k (image, mask) examples of `structure` from the middles
    of the training volumes."""
    volume = np.asarray(dataset.images("colin27"))
    middle = len(volume) // 2
    query = volume[max(middle - slices // 2, 0): middle + slices - slices // 2]
    rows = [r for r in dataset.rows_by_task[structure] if dataset.rows[r]["split"] in ("train", "support")]
    if not rows:
        raise ValueError(f"structure {structure!r} has no training rows")
    examples = []
    for index in range(k):
        row = rows[index % len(rows)]
        row_slices = dataset.rows[row]["slices"]
        slice_index = row_slices[(len(row_slices) // 2 + index // len(rows)) % len(row_slices)]
        examples.append((dataset.image(dataset.rows[row]["volume"], slice_index), dataset.mask(row, slice_index)))
    return query, examples, dataset.rows[rows[0]]["name"]


def time_volume(pipeline, query, text: str, examples, use_cache: bool, args, steps: int, samples: int) -> dict:
    with PeakMemory() as memory:
        output = pipeline(query, text, examples, num_samples=samples, num_steps=steps,
                          batch_size=args.batch_size, use_cache=use_cache, normalization="none")
    timings = output.timings
    per_slice = {key.replace("_s", "_ms_per_slice"): round(1000 * timings[key] / timings["slices"], 3)
                 for key in ("vision_s", "llm_s", "decoder_s")}
    return {**per_slice, "volume_s": round(sum(timings[k] for k in ("vision_s", "llm_s", "decoder_s")), 3),
            "peak_rss_mib": memory.peak_mib}


def median_run(runs: list[dict]) -> dict:
    """The per-key median of repeated timings (peak memory: the maximum), with the repeat count."""
    merged = {key: round(float(np.median([run[key] for run in runs])), 3) for key in runs[0] if key != "peak_rss_mib"}
    return {**merged, "peak_rss_mib": max(run["peak_rss_mib"] for run in runs), "repeats": len(runs)}


def time_volumes(pipeline, dataset, args, log) -> tuple[dict, dict]:
    """Every (cache, k) volume setting at the `args` decoder setting, and the k = 3 volume at FAST_SETTING, timed
    `args.repeats` times, interleaved so that a slow spell of the machine hits all settings alike; the median of
    each: ({cache: {k: run}}, {cache: run at the fast setting})."""
    settings = []
    for k in SPEED_K:
        query, examples, name = volume_and_examples(dataset, args.structure, args.slices, k)
        text = f"Segment the {name} in this T1-weighted MRI slice."
        decoders = list(dict.fromkeys([(args.steps, args.samples)] + ([FAST_SETTING] if k == 3 else [])))
        settings += [(label, k, decoder, query, text, examples, use_cache) for decoder in decoders
                     for label, use_cache in (("cached", True), ("uncached", False))]
    runs: dict = {}
    for _ in range(args.repeats):
        for label, k, decoder, query, text, examples, use_cache in settings:
            runs.setdefault((label, k, decoder), []).append(
                time_volume(pipeline, query, text, examples, use_cache, args, *decoder))
    volumes: dict = {"cached": {}, "uncached": {}}
    fast: dict = {}
    for (label, k, decoder), rows in runs.items():
        run = median_run(rows)
        if decoder == (args.steps, args.samples):
            volumes[label][str(k)] = run
        if decoder == FAST_SETTING:
            fast[label] = run
        log(f"  k={k} {label:8s} {decoder[0]}x{decoder[1]}: " + ", ".join(f"{key} {value}" for key, value in run.items()))
    return volumes, fast


def uncertainty_auroc(probabilities: np.ndarray, spread: np.ndarray, truths: np.ndarray) -> float:
    """How well the spread ranks wrong pixels above right ones (0.5 = no better than chance)."""
    wrong = torch.from_numpy((probabilities > 0.5) != (truths > 0.5)).flatten().long()
    if wrong.min() == wrong.max():
        return float("nan")
    return float(binary_auroc(torch.from_numpy(spread).flatten().float(), wrong))


def sampler_quality(model, dataset, args, num_steps: int, num_samples: int) -> dict:
    """Dice (and the uncertainty AUROC) on the same held-out k = 3 test episodes for one sampler setting."""
    sampler = EpisodeSampler(dataset, EpisodeConfig(split="test", structures="held_out", num_examples=3,
                                                    min_area=args.min_area, seed=args.seed))
    records, kept = score_episodes(model, sampler, args.episodes, num_steps, num_samples, seed=args.seed,
                                   keep=args.episodes)
    probabilities, spreads = (np.stack([row[index] for row in kept]) for index in (1, 2))
    truths = np.stack([episode.query_mask[0] for episode, _, _ in kept])
    return {"dice": round(mean_score(records, "segicl"), 4), "uncertainty_auroc": round(uncertainty_auroc(
        probabilities, spreads, truths), 4) if num_samples > 1 else 0.5}


def recommended_setting(grid: dict) -> dict | None:
    """The fewest decoder evaluations (steps x samples) within 0.01 Dice of the grid's best, among the settings with
    at least 3 samples whose uncertainty AUROC is at least MEANINGFUL_AUROC; None when no setting qualifies."""
    best = max(value["dice"] for value in grid.values())
    candidates = []
    for key, value in grid.items():
        steps, samples = map(int, key.split("x"))
        if value["dice"] >= best - 0.01 and samples >= 3 and value["uncertainty_auroc"] >= MEANINGFUL_AUROC:
            candidates.append((steps * samples, -value["dice"], steps, samples, value))
    if not candidates:
        return None
    _, _, steps, samples, value = min(candidates)
    return {"steps": steps, "samples": samples, "dice": value["dice"], "uncertainty_auroc": value["uncertainty_auroc"],
            "best_dice": best}


def run_speed(args, dataset, log=print) -> dict:
    """The whole benchmark; writes speed.json and speed.png into args.out_dir."""
    from segicl.pipeline import SegICLPipeline

    start = time.perf_counter()
    pipeline = SegICLPipeline.from_pretrained(args.model)
    query, examples, _ = volume_and_examples(dataset, args.structure, 2, max(SPEED_K))
    for use_cache in (True, False):  # warm-up: first calls pay one-off allocation and kernel selection
        pipeline(query, "warm up", examples, num_samples=1, num_steps=1, use_cache=use_cache, normalization="none")
    volumes, fast = time_volumes(pipeline, dataset, args, log)
    grid = {f"{s}x{n}": sampler_quality(pipeline.model, dataset, args, s, n)
            for s in sorted({*args.sweep_steps, args.steps}, reverse=True)
            for n in sorted({*args.sweep_samples, args.samples})}
    fast_key = "{}x{}".format(*FAST_SETTING)
    fast_quality = grid[fast_key] if fast_key in grid else sampler_quality(pipeline.model, dataset, args, *FAST_SETTING)
    log("  sampler grid (steps x samples: Dice / AUROC): " + ", ".join(
        f"{key}: {v['dice']:.3f} / {v['uncertainty_auroc']:.3f}" for key, v in grid.items()))
    steps = {key.split("x")[0]: value["dice"] for key, value in grid.items() if key.endswith(f"x{args.samples}")}
    samples = {key.split("x")[1]: value for key, value in grid.items() if key.startswith(f"{args.steps}x")}
    result = {
        "llm_ms_per_slice": {label: {k: row["llm_ms_per_slice"] for k, row in rows.items()}
                             for label, rows in volumes.items()},
        "volume_s": {"cached_k3": volumes["cached"]["3"]["volume_s"],
                     "uncached_k3": volumes["uncached"]["3"]["volume_s"]},
        "steps_dice": steps,
        "samples": samples,
        "sampler_grid": grid,
        "recommended_setting": recommended_setting(grid),
        "per_run": volumes,
        "ratios": {
            "llm_cached_k3_over_k0": round(volumes["cached"]["3"]["llm_ms_per_slice"]
                                           / volumes["cached"]["0"]["llm_ms_per_slice"], 3),
            "volume_uncached_over_cached_k3": round(volumes["uncached"]["3"]["volume_s"]
                                                    / volumes["cached"]["3"]["volume_s"], 3),
            "encoder_uncached_over_cached_k3": round(
                sum(volumes["uncached"]["3"][key] for key in ("vision_ms_per_slice", "llm_ms_per_slice"))
                / sum(volumes["cached"]["3"][key] for key in ("vision_ms_per_slice", "llm_ms_per_slice")), 3),
        },
        "fast_setting": {
            "steps": FAST_SETTING[0], "samples": FAST_SETTING[1], "dice": fast_quality["dice"],
            "volume_s": {"cached_k3": fast["cached"]["volume_s"], "uncached_k3": fast["uncached"]["volume_s"]},
            "volume_uncached_over_cached_k3": round(fast["uncached"]["volume_s"] / fast["cached"]["volume_s"], 3),
            "per_run": fast,
        },
        "peak_rss_mib": max(row["peak_rss_mib"] for rows in volumes.values() for row in rows.values()),
        "setting": (f"Model `{shown_path(args.model)}`; volume: {args.slices} axial slices of the held-out subject at "
                    f"{pipeline.size} px, examples of {args.structure}, batches of {args.batch_size} slices, decoder "
                    f"{args.steps} steps x {args.samples} samples, median of {args.repeats} interleaved runs per "
                    f"setting; sampler sweeps on {args.episodes} held-out k=3 "
                    f"test episodes; {torch.get_num_threads()} CPU threads. Total "
                    f"{time.perf_counter() - start:.0f} s."),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "speed.json").write_text(json.dumps(result, indent=1))
    plot_speed(args.out_dir / "speed.png", result)
    return result


def plot_speed(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    runs = result["per_run"]
    labels = [f"k={k}\n{label}" for k in map(str, SPEED_K) for label in ("cached", "uncached")]
    bottom = np.zeros(len(labels))
    for part in ("vision", "llm", "decoder"):
        values = np.array([runs[label][k][f"{part}_ms_per_slice"] for k in map(str, SPEED_K)
                           for label in ("cached", "uncached")])
        axes[0].bar(labels, values, bottom=bottom, label=part)
        bottom += values
    axes[0].set_ylabel("ms per slice")
    axes[0].legend(fontsize=8)
    axes[0].set_title("per-slice time by part")
    steps = sorted(result["steps_dice"], key=int)
    axes[1].plot([int(s) for s in steps], [result["steps_dice"][s] for s in steps], "o-")
    axes[1].set_xlabel("decoder steps")
    axes[1].set_ylabel("Dice (held-out, k=3)")
    axes[1].set_title("sampler steps vs Dice")
    axes[1].grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
