"""The dataset flags every command that reads the built-in slice dataset shares, and the dataset they open."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dataset")
    group.add_argument("--resolution", type=int, default=64, help="slice side in pixels (default: 64, the tiny preset)")
    group.add_argument("--axis", default="axial", choices=("axial", "coronal", "sagittal"), help="slicing direction")
    group.add_argument("--data-seed", type=int, default=0, help="seed of the held-out-structure draw")
    group.add_argument("--held-out-fraction", type=float, default=0.25, help="fraction of structures never trained on")
    group.add_argument("--cache-dir", type=Path, default=None,
                       help="where built datasets live (default: $SEGICL_CACHE or .cache/segicl)")


def dataset_config(args: argparse.Namespace):
    from data.build import DatasetConfig

    return DatasetConfig(resolution=args.resolution, axis=args.axis, seed=args.data_seed,
                         held_out_fraction=args.held_out_fraction)


def open_dataset(args: argparse.Namespace):
    from data.build import DEFAULT_CACHE
    from data.dataset import SliceDataset

    return SliceDataset.build(dataset_config(args), args.cache_dir or DEFAULT_CACHE)
