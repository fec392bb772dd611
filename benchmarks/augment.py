"""`segicl bench augment`: what in-context test-time augmentation and example-subset ensembles buy, and what they cost.

On the quality benchmark's test episodes (the held-out subject, independent random affines on the examples and the
query, nested in k), SegICL runs through the call users make (`SegICLPipeline.segment` with `Settings`):
- k = 1 and 3 with 1, 2 and 4 views (`segicl.augment.VIEWS`: the query and its examples flipped or turned
  together, the answers turned back and averaged; 2 views: the slices and their mirror image);
- k = 5, more examples than the model reads (3): the first 3 only, or the average over 4 subsets of them.
Each cell: mean Dice with a bootstrap 95% interval, the paired difference to the cell's plain run (1 view, first
3 examples) with its interval, and seconds per episode. The episodes' images are already in [0, 1], so they go in
without intensity mapping, as the quality benchmark feeds them.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segicl_data.episodes import EpisodeConfig, EpisodeSampler
from segicl_data.metrics import bootstrap_interval, dice
from segicl_data.model_folders import shown_path


@dataclass(frozen=True)
class AugmentSetting:
    """One row: k examples, `views` views, at most `example_sets` subsets of the examples."""

    k: int
    views: int = 1
    example_sets: int = 1

    @property
    def name(self) -> str:
        return f"k={self.k}, views={self.views}, example_sets={self.example_sets}"


SETTINGS = (*(AugmentSetting(k, views) for k in (1, 3) for views in (1, 2, 4)),
            *(AugmentSetting(5, 1, sets) for sets in (1, 4)))


def episode_dice(pipeline, episode, setting: AugmentSetting, steps: int, samples: int, seed: int) -> float:
    """One episode's Dice through `SegICLPipeline.segment` with the setting's views and example subsets."""
    from segicl.volume import Settings

    settings = Settings(steps=steps, samples=samples, normalization="none", seed=seed, views=setting.views,
                        example_sets=setting.example_sets)
    examples = [(image[0], mask[0]) for image, mask in zip(episode.example_images, episode.example_masks)]
    result = pipeline.segment(episode.query_image[0], episode.instruction, examples, settings=settings)
    return dice(result.mask, episode.query_mask[0] > 0.5)


def summarize_cell(scores: list[float], plain: list[float], seconds: float, seed: int) -> dict:
    """Mean Dice, its interval, the paired difference to the plain run and its interval, seconds per episode."""
    difference = np.asarray(scores) - np.asarray(plain)
    interval, gain_interval = bootstrap_interval(scores, seed=seed), bootstrap_interval(list(difference), seed=seed)
    return {"episodes": len(scores), "dice": round(float(np.mean(scores)), 4),
            "interval": None if interval is None else [round(v, 4) for v in interval],
            "gain_over_plain": round(float(difference.mean()), 4),
            "gain_interval": None if gain_interval is None else [round(v, 4) for v in gain_interval],
            "seconds_per_episode": round(seconds / len(scores), 3)}


def run_group(pipeline, dataset, structures: str, args, log) -> dict:
    """Every setting on the same nested episodes of one group of structures."""
    base = EpisodeConfig(split="test", structures=structures, max_examples=5, min_area=args.min_area, seed=args.seed)
    scores: dict[AugmentSetting, list[float]] = {}
    seconds: dict[AugmentSetting, float] = {}
    for setting in SETTINGS:
        sampler = EpisodeSampler(dataset, EpisodeConfig(**{**base.__dict__, "num_examples": setting.k}))
        start = time.perf_counter()
        scores[setting] = [episode_dice(pipeline, sampler[index], setting, args.steps, args.samples, args.seed)
                           for index in tqdm(range(args.episodes), desc=f"{structures} {setting.name}", leave=False)]
        seconds[setting] = time.perf_counter() - start
        log(f"  {structures:9s} {setting.name}: Dice {np.mean(scores[setting]):.3f}")
    plain = {k: scores[AugmentSetting(k)] for k in {s.k for s in SETTINGS}}
    return {setting.name: summarize_cell(scores[setting], plain[setting.k], seconds[setting], args.seed)
            for setting in SETTINGS}


def augment_lines(result: dict) -> list[str]:
    """The results page's table: one row per setting and group."""
    lines = ["### Test-time augmentation and example subsets (`segicl bench augment`)", "", result["setting"], "",
             "| structures | setting | Dice [95% CI] | gain over 1 view, first 3 examples [95% CI] | s / episode |",
             "|---|---|---|---|---|"]
    for group in ("train_structures", "held_out_structures"):
        for name, cell in result.get(group, {}).items():
            low, high = cell["interval"] or (cell["dice"], cell["dice"])
            gain_low, gain_high = cell["gain_interval"] or (cell["gain_over_plain"], cell["gain_over_plain"])
            lines.append(f"| {group.split('_')[0]} | {name} | {cell['dice']:.3f} [{low:.3f}, {high:.3f}] | "
                         f"{cell['gain_over_plain']:+.3f} [{gain_low:+.3f}, {gain_high:+.3f}] | "
                         f"{cell['seconds_per_episode']:.2f} |")
    return lines + [""]


def run_augment(args, dataset, log=print) -> dict:
    """The benchmark; writes augment.json and augment.md into args.out_dir."""
    from segicl.pipeline import SegICLPipeline
    from segicl_benchmarks.quality import dataset_groups

    start = time.perf_counter()
    pipeline = SegICLPipeline.from_pretrained(args.model)
    result: dict = {group: run_group(pipeline, dataset, structures, args, log)
                    for group, structures in dataset_groups(dataset).items()}
    result["setting"] = (f"Model `{shown_path(args.model)}`; {args.episodes} test episodes per cell on the held-out "
                         f"subject's {dataset.config.axis} slices (the quality benchmark's episodes, nested in k), "
                         f"structures >= {args.min_area} px, decoder {args.steps} steps x {args.samples} samples, "
                         f"each run its own decoder seed; total {time.perf_counter() - start:.0f} s.")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "augment.json").write_text(json.dumps(result, indent=1))
    (args.out_dir / "augment.md").write_text("\n".join(augment_lines(result)) + "\n")
    return result
