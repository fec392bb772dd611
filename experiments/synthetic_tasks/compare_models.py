"""Compare CrossConv networks and SegICL models on the same episodes: the out-of-distribution rows of `segicl bench
ood` and the quality benchmark's axial test episodes (training and held-out structures), k = 1, 3, 5; and `segicl
demo`'s episodes (demo_train, demo_held_out), k = 3.

    python experiments/synthetic_tasks/compare_models.py --crossconv shipped=weights/crossconv-tiny \
        synthetic=runs/s21/crossconv-synth/model --out runs/synthetic_tasks/crossconv.json

Prints, per row and k, each model's mean Dice and its paired difference to the first model of its kind (bootstrap
95% interval). Uses only installed, tested code (the benchmark's episodes and methods).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segicl.evaluation import score_episodes
from segicl_benchmarks.ood import OOD_K, ROWS, OODOptions, at_model_size, paired, row_dataset_configs, row_episodes
from segicl_benchmarks.quality import crossconv_method
from segicl_commands.demo import demo_episode_config
from segicl_data.build import DatasetConfig
from segicl_data.dataset import SliceDataset
from segicl_data.episodes import EpisodeConfig, EpisodeSampler

AXIAL_ROWS = {"axial_train_structures": "train", "axial_held_out_structures": "held_out"}
DEMO_ROWS = {"demo_train": "train", "demo_held_out": "held_out"}  # `segicl demo`'s episodes: k = 3 of 3


def named_folders(values: list[str]) -> dict[str, Path]:
    return {name: Path(folder) for name, folder in (value.split("=", 1) for value in values)}


def episodes_of(row: str, k: int, options: OODOptions) -> list:
    if row in AXIAL_ROWS or row in DEMO_ROWS:
        config = (EpisodeConfig(split="test", structures=AXIAL_ROWS[row], max_examples=max(OOD_K), num_examples=k,
                                min_area=options.min_area, seed=options.seed) if row in AXIAL_ROWS
                  else demo_episode_config(DEMO_ROWS[row], k, options.min_area, options.seed))
        sampler = EpisodeSampler(SliceDataset.build(DatasetConfig()), config)
        return [sampler[i] for i in range(options.episodes)]
    return row_episodes(row, k, {row: SliceDataset.build(row_dataset_configs()[row])}, options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crossconv", nargs="*", default=[], metavar="NAME=FOLDER")
    parser.add_argument("--segicl", nargs="*", default=[], metavar="NAME=FOLDER")
    parser.add_argument("--rows", nargs="+", default=[*AXIAL_ROWS, *ROWS])
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    options = OODOptions(episodes=args.episodes)
    methods = {f"crossconv:{name}": at_model_size(crossconv_method(folder))
               for name, folder in named_folders(args.crossconv).items()}
    if args.segicl:
        from segicl.pipeline import SegICLPipeline
        from segicl_benchmarks.ood import segicl_method

        methods.update({f"segicl:{name}": segicl_method(SegICLPipeline.from_pretrained(folder), options)
                        for name, folder in named_folders(args.segicl).items()})
    baselines = {kind: next(name for name in methods if name.startswith(kind)) for kind in ("crossconv", "segicl")
                 if any(name.startswith(kind) for name in methods)}
    result: dict = {}
    for row in args.rows:
        for k in ((3,) if row in DEMO_ROWS else OOD_K):
            records, _ = score_episodes(None, episodes_of(row, k, options), options.episodes, other_methods=methods)
            cell = {name: {"dice": round(float(np.mean([r[name]["dice"] for r in records])), 4),
                           "vs_" + baselines[name.split(":")[0]]: paired(records, name, baselines[name.split(":")[0]],
                                                                        seed=0)}
                    for name in methods}
            result[f"{row} k={k}"] = cell
            print(f"{row} k={k}: " + "; ".join(
                f"{name} {value['dice']:.3f}" + (
                    f" ({value[next(key for key in value if key.startswith('vs_'))]['difference']:+.3f} "
                    f"{value[next(key for key in value if key.startswith('vs_'))]['ci95']})"
                    if name not in baselines.values() else "")
                for name, value in cell.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
