"""The `segicl evaluate` subcommand: score a folder of predicted label maps against a folder of truth label maps
(what nnU-Net's `evaluate_folder` gives its users), through `segicl_data.folder_evaluation`.

Registered into the `segicl` command line by `segicl_commands.cli.build_parser` through `add_evaluate_command`.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from segicl_commands.arguments import check_out_dir


def command_evaluate(args: argparse.Namespace) -> int:
    """Score, write summary.json and summary.md into --out (default: the --pred folder), print the table."""
    from segicl_data.folder_evaluation import evaluate_folders, write_summary

    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise ValueError(f"--tolerance must be a finite number of mm >= 0, got {args.tolerance}")
    out = args.pred if args.out is None else args.out
    check_out_dir(out, "--out")
    summary = evaluate_folders(args.pred, args.truth, args.labels, args.tolerance, progress=True)
    json_path, md_path = write_summary(summary, out)
    print(md_path.read_text(encoding="utf-8"), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0


def add_evaluate_command(commands) -> None:
    """Add `evaluate` to the `segicl` subcommands (`commands`: the parser's add_subparsers object)."""
    evaluate = commands.add_parser(
        "evaluate", help="score predicted label maps against truth label maps: Dice, IoU, HD95, NSD per class",
        description="Score every prediction in --pred against the truth file of the same case name in --truth "
                    "(the file name without its ending: .nii.gz, .nii, .npy, .png, .dcm; other files such as .json "
                    "are skipped), per case and per class: Dice, IoU, HD95 in mm (from the files' voxel spacing) "
                    "and NSD (normalised surface Dice) at --tolerance mm. Writes summary.json (per case, per class, "
                    "the mean per class over cases and the foreground mean) and summary.md (the table of means, "
                    "also printed). A class absent from both prediction and truth of a case is not scored (null) "
                    "and is left out of the means, as in nnU-Net; so are HD95/NSD when MONAI leaves them undefined "
                    "(a side is empty). Refused, before anything is written: a file without its counterpart, a "
                    "shape or geometry mismatch, an unreadable file, a label value --labels does not declare.")
    evaluate.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps")
    evaluate.add_argument("--truth", type=Path, required=True, help="folder of truth label maps, same case names")
    evaluate.add_argument("--labels", type=Path, default=None, metavar="DATASET_JSON",
                          help='the classes, from a dataset.json: nnU-Net v2 "labels": {"background": 0, "liver": 1} '
                               '(a value may be a list of labels, a region: "whole tumour": [1, 2]) or MSD / nnU-Net '
                               'v1 "labels": {"0": "background", "1": "liver"}; an nnU-Net v2 "ignore" label is not '
                               'scored and its truth voxels are left out (default: every non-zero value found in '
                               'the files, named by its value)')
    evaluate.add_argument("--out", type=Path, default=None,
                          help="folder for summary.json and summary.md (default: the --pred folder)")
    evaluate.add_argument("--tolerance", type=float, default=1.0, metavar="MM",
                          help="NSD tolerance in mm (default: 1.0)")
    evaluate.set_defaults(handler=command_evaluate)
