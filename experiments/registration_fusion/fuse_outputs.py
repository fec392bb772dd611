"""Does averaging SegICL's probability with the examples registered to the query (label fusion) help, in and out of
distribution? Inference only, no retraining: per episode, SegICL's probability map (`SegICLPipeline.segment`, its
defaults) and the vote / STAPLE probability of the example masks registered to the query (the benchmark peer's
registrations), fused as w * SegICL + (1 - w) * registration and thresholded at 0.5, for several fixed w, and for
the w that the examples choose by answering one another (leave-one-out, "loo_staple"): `--register-examples`,
through its own function (`segicl.registered_examples.choose_weight`).

    python experiments/registration_fusion/fuse_outputs.py --rows demo_train demo_held_out axial_train \
        axial_held_out resolution_128 --out runs/fusion/a.json
    python experiments/registration_fusion/fuse_outputs.py --rows coronal sagittal t2_simulated ct_hounsfield \
        --out runs/fusion/b.json
    python experiments/registration_fusion/fuse_outputs.py --summarise runs/fusion/a.json runs/fusion/b.json \
        --summary-out docs/research/results/registration_fusion.json

Rows: the demo's episodes (`segicl demo`: max 3 examples, k = 1, 3), the augment/OOD benchmark's axial episodes
(max 5 examples) and the rows of `segicl bench ood`. Writes per-episode Dice of every variant (JSON), so paired
differences and intervals are computed afterwards (`--summarise`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from segicl.baselines import RegistrationFusion, fusion_probability
from segicl.evaluation import overlap_scores
from segicl.registered_examples import MIN_EXAMPLES, WEIGHTS, choose_weight
from segicl_benchmarks.ood import OOD_K, ROWS, OODOptions, paired, row_dataset_configs, row_episodes
from segicl_data.build import DatasetConfig
from segicl_data.dataset import SliceDataset
from segicl_data.episodes import EpisodeConfig, EpisodeSampler

AXIAL_ROWS = {"axial_train": ("train", 5), "axial_held_out": ("held_out", 5),
              "demo_train": ("train", 3), "demo_held_out": ("held_out", 3)}
def loo_weight(pipeline, settings, episode) -> float:
    """The model's share that `--register-examples` would use: the examples answer one another."""
    def answer(image, others):
        return pipeline.segment(image, episode.instruction, others, settings=settings).probabilities

    pairs = [(image[0], mask[0]) for image, mask in zip(episode.example_images, episode.example_masks)]
    return choose_weight(answer, pairs, reads=pipeline.model.config.max_examples)


def episodes_of(row: str, k: int, options: OODOptions) -> list:
    if row in AXIAL_ROWS:
        structures, most = AXIAL_ROWS[row]
        config = EpisodeConfig(split="test", structures=structures, max_examples=most, num_examples=k,
                               min_area=options.min_area, seed=options.seed)
        sampler = EpisodeSampler(SliceDataset.build(DatasetConfig()), config)
        return [sampler[i] for i in range(options.episodes)]
    return row_episodes(row, k, {row: SliceDataset.build(row_dataset_configs()[row])}, options)


def score_row(pipeline, row: str, options: OODOptions, registration: RegistrationFusion) -> dict:
    from segicl.volume import Settings

    settings = Settings(steps=options.steps, samples=options.samples, normalization="none", seed=options.seed)
    by_k = {}
    for k in ((1, 3) if row.startswith("demo") else OOD_K):
        records = []
        for episode in tqdm(episodes_of(row, k, options), desc=f"{row} k={k}"):
            truth = episode.query_mask[0]
            examples = [(image[0], mask[0]) for image, mask in zip(episode.example_images, episode.example_masks)]
            segicl = pipeline.segment(episode.query_image[0], episode.instruction, examples,
                                      settings=settings).probabilities.astype(np.float32)
            registered = registration.registered_masks(episode.example_images, episode.example_masks,
                                                       episode.query_image)
            record = {"structure": episode.structure}
            for fusion in ("vote", "staple"):
                peer = fusion_probability(registered, fusion)
                record[f"registration_{fusion}"] = overlap_scores((peer > 0.5).astype(np.float32), truth)
                for weight in WEIGHTS:
                    fused = weight * segicl + (1 - weight) * peer
                    record[f"{fusion}@{weight}"] = overlap_scores((fused > 0.5).astype(np.float32), truth)
            if episode.k >= MIN_EXAMPLES:
                weight = loo_weight(pipeline, settings, episode)
                record["loo_staple"] = dict(record[f"staple@{weight}"], weight=weight)
            records.append(record)
        by_k[str(k)] = records
        means = {name: np.mean([r[name]["dice"] for r in records]) for name in records[-1] if name != "structure"}
        print(f"{row} k={k}: " + ", ".join(f"{name} {value:.3f}" for name, value in means.items()), flush=True)
    return by_k


def summarise(paths: list[Path]) -> dict:
    """Per row and k: each variant's mean Dice and its paired difference to SegICL alone (w = 1) and to
    registration + vote, with 95% intervals; and each variant's k = 5 minus k = 3. Printed and returned."""
    rows, summary = {}, {}
    for path in paths:
        rows.update(json.loads(path.read_text()))
    for row, by_k in rows.items():
        for k, records in by_k.items():
            names = [name for name in records[-1] if name != "structure"]
            print(f"{row} k={k} ({len(records)} episodes)")
            cell = summary[f"{row} k={k}"] = {}
            for name in names:
                cell[name] = {"dice": round(float(np.mean([r[name]["dice"] for r in records if name in r])), 4),
                              "vs_segicl": paired(records, name, "vote@1.0", seed=0),
                              "vs_registration_vote": paired(records, name, "registration_vote", seed=0)}
                alone, peer = cell[name]["vs_segicl"], cell[name]["vs_registration_vote"]
                print(f"  {name:20s} {cell[name]['dice']:.3f}  vs SegICL {alone['difference']:+.3f} "
                      f"{alone['ci95']}  vs reg+vote {peer['difference']:+.3f} {peer['ci95']}")
        if "5" in by_k and "3" in by_k:
            for name in by_k["5"][-1]:
                if name != "structure":
                    pairs = [{"five": five[name], "three": three[name]} for five, three in zip(by_k["5"], by_k["3"])]
                    summary[f"{row} k=5"][name]["k5_over_k3"] = difference = paired(pairs, "five", "three", seed=0)
                    print(f"  k5-k3 {name:20s} {difference['difference']:+.3f} {difference['ci95']}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("weights/segicl-tiny"))
    parser.add_argument("--rows", nargs="+", default=[*AXIAL_ROWS, *ROWS])
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="JSON", help="print the tables of these files")
    parser.add_argument("--summary-out", type=Path, help="with --summarise: also write the tables as JSON here")
    args = parser.parse_args()
    if args.summarise:
        summary = summarise(args.summarise)
        if args.summary_out:
            args.summary_out.write_text(json.dumps(summary, indent=1))
        return
    from segicl.pipeline import SegICLPipeline

    options = OODOptions(episodes=args.episodes)
    pipeline = SegICLPipeline.from_pretrained(args.model)
    registration = RegistrationFusion()
    result = {row: score_row(pipeline, row, options, registration) for row in args.rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
