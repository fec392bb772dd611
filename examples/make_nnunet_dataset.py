"""Write a small nnU-Net v2 raw dataset from scans that ship in packages, to try `segicl data import` and the
"your own dataset" walk-through of the docs (how-to/your-own-dataset) on a dataset of the kind users have.

    python examples/make_nnunet_dataset.py runs/Dataset010_DeepGrey

Four subjects/templates (MNI152 2009a, FSL MNI152, ICBM 2009c, Colin27), each cut to a box around the deep grey
nuclei (an ROI crop, as MSD's hippocampus task is), with four Harvard-Oxford structures (left and right merged):
thalamus 1, caudate 2, putamen 3, hippocampus 4. Written as imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz with a
dataset.json; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


from segicl_data.build import canonical, label_image
from segicl_data.sources import load_volume_image

CASES = {"mni2009a": "mni152_2009a", "fslmni": "fsl_mni152", "icbm2009c": "icbm2009c", "colin27": "colin27"}
LABELS = {"thalamus": (98, 107), "caudate": (99, 108), "putamen": (100, 109), "hippocampus": (103, 111)}
MARGIN_MM = 12


def case_arrays(volume: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, label map, affine) of one volume, cut to the box around the labels plus a margin."""
    image = canonical(load_volume_image(volume))
    brain = label_image("brain", volume, image) > 0
    atlas = label_image("harvard_oxford", volume, image) * brain
    labels = np.zeros(atlas.shape, np.uint8)
    for value, ids in enumerate(LABELS.values(), start=1):
        labels[np.isin(atlas, ids)] = value
    voxels = np.argwhere(labels > 0)
    margin = int(np.ceil(MARGIN_MM / float(np.abs(image.affine[0, 0]))))
    low = np.maximum(voxels.min(axis=0) - margin, 0)
    high = np.minimum(voxels.max(axis=0) + margin + 1, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ low + image.affine[:3, 3]
    return image.get_fdata(dtype=np.float32)[box], labels[box], affine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the dataset folder to write (e.g. runs/Dataset010_DeepGrey)")
    args = parser.parse_args(argv)
    for folder in ("imagesTr", "labelsTr"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    for case, volume in CASES.items():
        image, labels, affine = case_arrays(volume)
        nib.save(nib.Nifti1Image(image, affine), args.out / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), args.out / "labelsTr" / f"{case}.nii.gz")
        print(f"{case}: {image.shape} voxels, labels {np.unique(labels).tolist()}")
    description = {"name": "DeepGrey", "channel_names": {"0": "T1"},
                   "labels": {"background": 0, **{name: value for value, name in enumerate(LABELS, start=1)}},
                   "numTraining": len(CASES), "file_ending": ".nii.gz",
                   "description": "deep grey nuclei from shipped templates, Harvard-Oxford labels (segicl example)"}
    (args.out / "dataset.json").write_text(json.dumps(description, indent=1))
    print(f"wrote {args.out} ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
