"""The dataset flags every command that reads a slice dataset shares, and the dataset they open: the built-in atlas
dataset (built on first use) or, with --dataset, a built or imported one (`segicl data import`)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", type=Path, default=None,
                       help="a built or imported dataset folder (`segicl data import`); default: the built-in atlas "
                            "dataset, built from the flags below")
    group.add_argument("--resolution", type=int, default=64, help="slice side in pixels (default: 64, the tiny preset)")
    group.add_argument("--axis", default="axial", choices=("axial", "coronal", "sagittal"), help="slicing direction")
    group.add_argument("--data-seed", type=int, default=0, help="seed of the held-out-structure draw")
    group.add_argument("--held-out-fraction", type=float, default=0.25, help="fraction of structures never trained on")
    group.add_argument("--cache-dir", type=Path, default=None,
                       help="where built datasets live (default: $SEGICL_CACHE or .cache/segicl)")


def dataset_config(args: argparse.Namespace):
    from segicl_data.build import DatasetConfig

    return DatasetConfig(resolution=args.resolution, axis=args.axis, seed=args.data_seed,
                         held_out_fraction=args.held_out_fraction)


def open_dataset(args: argparse.Namespace):
    from segicl_data.build import DEFAULT_CACHE
    from segicl_data.dataset import SliceDataset

    if getattr(args, "dataset", None) is not None:
        return SliceDataset(args.dataset)
    return SliceDataset.build(dataset_config(args), args.cache_dir or DEFAULT_CACHE)


def add_import_command(data_commands) -> None:
    """`segicl data import PATH`: an nnU-Net v2 or MSD dataset folder -> a slice dataset (segicl_data.importer)."""
    parser = data_commands.add_parser(
        "import", help="import your own nnU-Net v2 or MSD dataset folder as a slice dataset",
        description="Read an nnU-Net v2 raw dataset (dataset.json, imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz) or "
                    "a Medical Segmentation Decathlon folder and write the slice dataset that training "
                    "(--dataset), `segicl segment --examples-from` and `segicl bench quality --dataset` read. Cases "
                    "are split into training and test cases as wholes.")
    parser.add_argument("source", type=Path, help="the dataset folder (holding dataset.json)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the slice dataset goes (default: under the cache folder, named after the dataset)")
    parser.add_argument("--axis", default="axial", choices=("axial", "coronal", "sagittal"), help="slicing direction")
    parser.add_argument("--resolution", type=int, default=64,
                        help="slice side in pixels: the model's (default: 64, the tiny preset)")
    parser.add_argument("--test-fraction", type=float, default=0.25,
                        help="share of the labelled cases kept for testing (default: 0.25; splits_final.json's fold 0 "
                             "wins where the dataset has one)")
    parser.add_argument("--channel", default=None, help="input channel by name or index (default: the first)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case split")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder for the default --out (default: $SEGICL_CACHE or .cache/segicl)")
    parser.add_argument("--force", action="store_true", help="replace an earlier import in --out")
    parser.set_defaults(handler=command_import)


def command_import(args: argparse.Namespace) -> int:
    from segicl_data.build import DEFAULT_CACHE
    from segicl_data.dataset import SliceDataset
    from segicl_data.importer import ImportConfig, import_dataset

    config = ImportConfig(resolution=args.resolution, axis=args.axis, test_fraction=args.test_fraction,
                          seed=args.seed, channel=args.channel)
    folder = import_dataset(args.source, args.out, config, args.cache_dir or DEFAULT_CACHE, force=args.force)
    dataset = SliceDataset(folder)
    labels = dataset.imported["labels"]
    cases = {split: sorted(v for v, info in dataset.volumes.items() if info["split"] == split) for split in ("train", "test")}
    print(f"imported {dataset.imported['name']} ({dataset.imported['layout']}, channel {dataset.imported['channel']}: "
          f"{dataset.imported['modality']}) into {folder}")
    print(f"  {len(cases['train'])} training case(s), {len(cases['test'])} test case(s): {', '.join(cases['test'])}")
    print(f"  labels: " + ", ".join(f"{name} {values}" for name, values in labels.items()))
    print(f"  {dataset.config.axis} slices at {dataset.resolution} px; use it with --dataset {folder}")
    return 0
