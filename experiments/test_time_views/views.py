"""Test-time readings of one episode that the shipped `--views` (flips and quarter turns) does not cover: other
orders of the examples, more decoder samples, a left-right flip alone, and small affines. Inference only.

Per episode, the pipeline's probability (`SegICLPipeline.segment`, decoder 1 step x 3 samples) for:
  order_0         the examples as given (what users get today);
  samples_12      the examples as given, 12 decoder samples (the cost of four readings, without changing them);
  orders_4        the mean of four orders of the examples (as given, two rotations, reversed): the LLM reads them
                  as a sequence;
  flip_lr         the mean of the query and its examples as given and flipped left-right together (a brain slice's
                  mirror image is still in the training distribution, where an upside-down one is not);
  affine_query_4  the mean of the query as given and under three small affines (+-7 degrees, 7% smaller), each
                  answer mapped back; examples untouched (training draws their affines independently of the query's);
  affine_joint_4  the same affines applied to the query and its examples together (Tyche's joint augmentation).
Same episodes as `segicl demo` (k = 3) and `segicl bench ood` (k = 3 and 5).

    python experiments/test_time_views/views.py --rows demo_held_out demo_train --out runs/views/a.json
    python experiments/test_time_views/views.py --rows coronal sagittal ct_hounsfield --ks 3 --out runs/views/b.json
    python experiments/test_time_views/views.py --summarise runs/views/a.json runs/views/b.json \
        --summary-out docs/research/results/test_time_views.json
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from segicl.evaluation import overlap_scores
from segicl_benchmarks.ood import OODOptions, paired, row_dataset_configs, row_episodes
from segicl_commands.demo import demo_episode_config
from segicl_data.build import DatasetConfig
from segicl_data.dataset import SliceDataset
from segicl_data.episodes import EpisodeSampler

DEMO_ROWS = {"demo_train": "train", "demo_held_out": "held_out"}
VARIANTS = ("order_0", "samples_12", "orders_4", "flip_lr", "affine_query_4", "affine_joint_4")
AFFINES = ((7.0, 1.0), (-7.0, 1.0), (0.0, 1.07))  # (degrees, MONAI scale: > 1 shows the content smaller)


def orders(k: int) -> list[tuple[int, ...]]:
    """The order as given, its rotations by one and two, and its reverse (distinct ones only)."""
    found: list[tuple[int, ...]] = []
    for order in (tuple(range(k)), tuple((i + 1) % k for i in range(k)), tuple((i + 2) % k for i in range(k)),
                  tuple(reversed(range(k)))):
        if order not in found:
            found.append(order)
    return found


def affine(array: np.ndarray, degrees: float, scale: float, nearest: bool = False) -> np.ndarray:
    """A 2-D array rotated by `degrees` and scaled about its centre (MONAI's Affine, zeros outside)."""
    from monai.transforms import Affine

    warp = Affine(rotate_params=(np.deg2rad(degrees),), scale_params=(scale, scale), padding_mode="zeros",
                  mode="nearest" if nearest else "bilinear", image_only=True)
    return np.asarray(warp(np.asarray(array, np.float32)[None]))[0]


def moved_pair(image: np.ndarray, mask: np.ndarray, degrees: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """An example under the affine; as it was when the affine would move its structure out of the image."""
    moved = affine(mask, degrees, scale, nearest=True)
    return (affine(image, degrees, scale), moved) if moved.any() else (image, mask)


def episodes_of(row: str, k: int, options: OODOptions) -> list:
    if row in DEMO_ROWS:
        config = demo_episode_config(DEMO_ROWS[row], k, options.min_area, options.seed)
        sampler = EpisodeSampler(SliceDataset.build(DatasetConfig()), config)
        return [sampler[i] for i in range(options.episodes)]
    return row_episodes(row, k, {row: SliceDataset.build(row_dataset_configs()[row])}, options)


def score_row(pipeline, row: str, options: OODOptions, ks: tuple[int, ...]) -> dict:
    from segicl.volume import Settings

    settings = Settings(steps=options.steps, samples=options.samples, normalization="none", seed=options.seed)
    many = replace(settings, samples=4 * options.samples)
    by_k = {}
    for k in ((3,) if row in DEMO_ROWS else ks):
        records = []
        for episode in tqdm(episodes_of(row, k, options), desc=f"{row} k={k}"):
            truth = episode.query_mask[0]
            examples = [(image[0], mask[0]) for image, mask in zip(episode.example_images, episode.example_masks)]

            def answer(pairs, chosen=settings):
                return pipeline.segment(episode.query_image[0], episode.instruction, pairs,
                                        settings=chosen).probabilities.astype(np.float32)

            probabilities = {"order_0": answer(examples), "samples_12": answer(examples, many)}
            probabilities["orders_4"] = np.mean([probabilities["order_0"]] + [
                answer([examples[i] for i in order]) for order in orders(len(examples))[1:]], axis=0)
            query = episode.query_image[0]
            flipped = pipeline.segment(query[:, ::-1].copy(), episode.instruction,
                                       [(i[:, ::-1].copy(), m[:, ::-1].copy()) for i, m in examples],
                                       settings=settings).probabilities[:, ::-1]
            probabilities["flip_lr"] = (probabilities["order_0"] + flipped) / 2
            for name, joint in (("affine_query_4", False), ("affine_joint_4", True)):
                answers = [probabilities["order_0"]]
                for degrees, scale in AFFINES:
                    pairs = [moved_pair(i, m, degrees, scale) for i, m in examples] if joint else examples
                    moved = pipeline.segment(affine(query, degrees, scale), episode.instruction, pairs,
                                             settings=settings).probabilities
                    answers.append(affine(moved, -degrees, 1 / scale))
                probabilities[name] = np.mean(answers, axis=0)
            records.append({"structure": episode.structure, **{
                name: overlap_scores((p > 0.5).astype(np.float32), truth) for name, p in probabilities.items()}})
        by_k[str(k)] = records
        print(f"{row} k={k}: " + ", ".join(f"{name} {np.mean([r[name]['dice'] for r in records]):.3f}"
                                           for name in VARIANTS), flush=True)
    return by_k


def summarise(paths: list[Path]) -> dict:
    rows, summary = {}, {}
    for path in paths:
        rows.update(json.loads(path.read_text()))
    for row, by_k in rows.items():
        for k, records in by_k.items():
            cell = summary[f"{row} k={k}"] = {}
            print(f"{row} k={k} ({len(records)} episodes)")
            for name in VARIANTS:
                cell[name] = {"dice": round(float(np.mean([r[name]["dice"] for r in records])), 4),
                              "vs_order_0": paired(records, name, "order_0", seed=0)}
                versus = cell[name]["vs_order_0"]
                print(f"  {name:12s} {cell[name]['dice']:.3f}  vs order_0 {versus['difference']:+.3f} {versus['ci95']}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("weights/segicl-tiny"))
    parser.add_argument("--rows", nargs="+", default=[*DEMO_ROWS, "coronal", "ct_hounsfield"])
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--ks", nargs="+", type=int, default=[3, 5], help="k of the bench ood rows")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="JSON")
    parser.add_argument("--summary-out", type=Path)
    args = parser.parse_args()
    if args.summarise:
        summary = summarise(args.summarise)
        if args.summary_out:
            args.summary_out.write_text(json.dumps(summary, indent=1))
        return
    from segicl.pipeline import SegICLPipeline

    pipeline = SegICLPipeline.from_pretrained(args.model)
    options = OODOptions(episodes=args.episodes)
    result = {}
    for row in args.rows:
        result[row] = score_row(pipeline, row, options, tuple(args.ks))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
