"""`segicl bank`: the example bank of an imported dataset, grown from a user's corrections.

The labelling loop, file-based so that any viewer works (ITK-SNAP, 3D Slicer, napari): `segicl predict` writes each
case's mask and ranks the cases by uncertainty; the user corrects the first ones and adds them here; the next
`segicl predict --examples-from DATASET` takes its examples from the grown bank.

    segicl bank add DATASET --image imagesTs/case_7_0000.nii.gz --label corrected/case_7.nii.gz
    segicl bank add DATASET --images imagesTs --labels corrected      # every corrected case of a folder
    segicl bank list DATASET
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_bank_commands(commands) -> None:
    bank = commands.add_parser("bank", help="list or grow the example bank of an imported dataset (your corrections)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = bank.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add corrected cases (image + label map) to the dataset's example bank")
    add.add_argument("dataset", type=Path, help="an imported slice dataset (`segicl data import`)")
    add.add_argument("--image", type=Path, default=None, help="the case's image (NIfTI)")
    add.add_argument("--label", type=Path, default=None, help="its corrected label map, on the image's grid")
    add.add_argument("--images", type=Path, default=None, help="a folder of images (nnU-Net CASE_0000 naming read)")
    add.add_argument("--labels", type=Path, default=None,
                     help="with --images: the folder of corrected label maps, CASE.nii.gz; each is added with its image")
    add.add_argument("--name", default=None, help="with --image: the case's name (default: from the image file)")
    add.add_argument("--replace", action="store_true", help="replace a case of the same name")
    add.set_defaults(handler=command_add)
    listing = actions.add_parser("list", help="the bank's structures and the cases that lend examples")
    listing.add_argument("dataset", type=Path, help="a built or imported slice dataset")
    listing.set_defaults(handler=command_list)


def pairs_to_add(args: argparse.Namespace) -> list[tuple[Path, Path, str | None]]:
    """(image, label, name) of every case the flags name: one pair, or the labelled cases of two folders."""
    from segicl_data.cases import list_input_cases

    if (args.image is None) != (args.label is None) or (args.images is None) != (args.labels is None):
        raise ValueError("give --image with --label, or --images with --labels")
    if (args.image is None) == (args.images is None):
        raise ValueError("give one case (--image, --label) or two folders (--images, --labels)")
    if args.image is not None:
        return [(args.image, args.label, args.name)]
    if args.name:
        raise ValueError("--name is for one case (--image); folder cases keep their names")
    images = {case.name: case.path for case in list_input_cases(args.images)}
    labels = {case.name: case.path for case in list_input_cases(args.labels)}
    unmatched = sorted(labels.keys() - images.keys())
    if unmatched:
        raise ValueError(f"labels without an image in {args.images}: {', '.join(unmatched[:5])}")
    return [(images[name], labels[name], name) for name in sorted(labels)]


def command_add(args: argparse.Namespace) -> int:
    from segicl_data.importer import add_case

    pairs = pairs_to_add(args)
    for image, label, name in pairs:
        rows = add_case(args.dataset, image, label, name, replace=args.replace)
        structures = ", ".join(row["name"] for row in rows if row["kind"] != "multiclass")
        print(f"added {name or Path(image).name} to {args.dataset}: {structures or 'no structure'}")
    return 0


def command_list(args: argparse.Namespace) -> int:
    from segicl_data.bank import bank_structures
    from segicl_data.dataset import SliceDataset

    dataset = SliceDataset(args.dataset)
    for name, structure in sorted(bank_structures(dataset).items()):
        cases = sorted({dataset.rows[row]["volume"] for row in structure.rows})
        print(f"{name} (label {', '.join(map(str, structure.label_ids))}): {len(cases)} case(s): {', '.join(cases)}")
    return 0
