"""Write the example slices that ship in examples/ (the web app's browser test and the docs' web-app page use
them): one axial 64 px slice of the held-out subject (Colin27, skull-stripped) with its thalamus mask, and the slice
at the same relative position of a training template (MNI152 2009a) with its mask, the in-context example.

    python examples/make_example_slices.py            # rewrites examples/*_thalamus*.png from the built dataset

The slices come from the built slice dataset (`segicl data`, built on first use), so they are exactly what the model
saw in training and test: display-oriented, cut to the foreground, resized to 64 px, intensities in [0, 1] (stored
as 8-bit grey), masks 0/255. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


from segicl_data.build import DatasetConfig
from segicl_data.dataset import SliceDataset
from segicl_data.episodes import prompt_slice
from segicl_data.imageio import write_image

STRUCTURE = "thalamus"
QUERY, EXAMPLE = "colin27", "mni152_2009a"


def structure_row(dataset: SliceDataset, volume: str) -> int:
    return next(index for index, row in enumerate(dataset.rows)
                if row["volume"] == volume and row["name"] == STRUCTURE and row["kind"] != "multiclass")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder (default: examples/)")
    args = parser.parse_args(argv)
    dataset = SliceDataset.build(DatasetConfig(), progress=False)
    query_row, example_row = structure_row(dataset, QUERY), structure_row(dataset, EXAMPLE)
    query_slice = max(dataset.rows[query_row]["slices"], key=lambda s: float(dataset.mask(query_row, s).sum()))
    example_slice = prompt_slice(query_slice, dataset.volumes[QUERY]["n_slices"], dataset.volumes[EXAMPLE]["n_slices"])
    for volume, row, index, name in ((QUERY, query_row, query_slice, "colin27"),
                                     (EXAMPLE, example_row, example_slice, "mni152")):
        image = np.clip(dataset.image(volume, index), 0.0, 1.0)
        mask = dataset.mask(row, index) > 0.5
        write_image(args.out / f"{name}_{STRUCTURE}_slice.png", image)
        write_image(args.out / f"{name}_{STRUCTURE}_mask.png", mask)
        print(f"{name}: slice {index} of {volume}, {int(mask.sum())} px of {STRUCTURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
