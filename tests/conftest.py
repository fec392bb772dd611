"""Shared fixtures: the real slice dataset, built once into the project's cache (reused by `make demo`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dataset():
    from segicl_data.build import DatasetConfig
    from segicl_data.dataset import SliceDataset

    cache = Path(os.environ.get("SEGICL_CACHE", REPO / ".cache" / "segicl"))
    return SliceDataset.build(DatasetConfig(), cache, progress=False)


@pytest.fixture(scope="session")
def tokenizer():
    from segicl.tokenizer import build_tokenizer

    return build_tokenizer(["Segment the left hippocampus in this T1-weighted MRI slice.",
                            "Outline the white matter in the T1-weighted MRI scan."], vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    from segicl.config import tiny_config
    from segicl.model import SegICLModel

    torch.manual_seed(0)
    return SegICLModel.from_config(tiny_config(), tokenizer).eval()


# ------------------------------------------------------------------ a user's dataset, written the way users have them
USER_LABELS = {"thalamus": (77, 78), "caudate": (71, 72), "putamen": (73, 74)}  # AAL ids on Colin27


def colin27_deep_grey() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colin27 (skull-stripped) at 2 mm around the deep grey nuclei, its label map (1 thalamus, 2 caudate,
    3 putamen, from AAL) and the affine of that crop."""
    import nibabel as nib
    from segicl_data.sources import mricron_file

    image = nib.load(mricron_file("ch2bet.nii.gz"))
    aal = np.asanyarray(nib.load(mricron_file("aal.nii.gz")).dataobj)
    box = (slice(50, 130, 2), slice(80, 160, 2), slice(50, 110, 2))
    labels = np.zeros(aal.shape, np.uint8)
    for value, ids in enumerate(USER_LABELS.values(), start=1):
        labels[np.isin(aal, ids)] = value
    affine = image.affine.copy()
    affine[:3, :3] *= 2
    affine[:3, 3] = image.affine[:3, :3] @ np.array([b.start for b in box]) + image.affine[:3, 3]
    return np.asarray(image.dataobj, dtype=np.float32)[box], labels[box], affine


def user_cases(count: int = 5) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, labels, affine) per case: the same head cropped, flipped in voxel order (geometry unchanged),
    rotated a few degrees and rescaled in intensity, so that no two cases are the same array."""
    from scipy.ndimage import affine_transform

    image, labels, affine = colin27_deep_grey()
    cases = [(image, labels, affine)]
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = image.shape[0] - 1
    cases.append((image[::-1].copy(), labels[::-1].copy(), affine @ flip))
    cases.append((image[:, 3:-1] * 0.5, labels[:, 3:-1], affine @ _translation(0, 3, 0)))
    angle = np.deg2rad(6)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    centre = (np.array(image.shape) - 1) / 2
    offset = centre - rotation @ centre
    cases.append((affine_transform(image, rotation, offset, order=1) * 3.0 + 10.0,
                  affine_transform(labels, rotation, offset, order=0), affine))
    cases.append((image[2:, :, 1:] + 5.0, labels[2:, :, 1:], affine @ _translation(2, 0, 1)))
    return cases[:count]


def _translation(*voxels: float) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = voxels
    return shift


def write_nnunet_dataset(root: Path, count: int = 5, test_cases: int = 1) -> Path:
    """An nnU-Net v2 raw dataset folder (imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz, dataset.json, and
    `test_cases` unlabelled cases in imagesTs) made from Colin27 + AAL."""
    import nibabel as nib

    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    cases = user_cases(count)
    for index, (image, labels, affine) in enumerate(cases):
        name = f"colin_{index:03d}"
        target = "imagesTs" if index >= count - test_cases else "imagesTr"
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / target / f"{name}_0000.nii.gz")
        if target == "imagesTr":
            nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), root / "labelsTr" / f"{name}.nii.gz")
    description = {"channel_names": {"0": "T1"}, "labels": {"background": 0, **{n: i for i, n in enumerate(USER_LABELS, 1)}},
                   "numTraining": count - test_cases, "file_ending": ".nii.gz", "name": "DeepGrey"}
    (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return root


def write_msd_dataset(root: Path, count: int = 4) -> Path:
    """A Medical Segmentation Decathlon folder: 4-D two-modality images (T1 and an inverted copy), labels index ->
    name, `training: [{image, label}]`."""
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for index, (image, labels, affine) in enumerate(user_cases(count)):
        name = f"deepgrey_{index:03d}.nii.gz"
        both = np.stack([image, image.max() - image], axis=-1).astype(np.float32)
        nib.save(nib.Nifti1Image(both, affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {"name": "DeepGrey", "modality": {"0": "T1", "1": "inverted"},
                   "labels": {"0": "background", **{str(i): n for i, n in enumerate(USER_LABELS, 1)}},
                   "numTraining": count, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return root


@pytest.fixture(scope="session")
def nnunet_folder(tmp_path_factory) -> Path:
    return write_nnunet_dataset(tmp_path_factory.mktemp("Dataset001_DeepGrey"))


@pytest.fixture(scope="session")
def dataset_writers():
    """The writers above, for tests that break or vary a dataset of their own (`dataset_writers.nnunet(root)`)."""
    from types import SimpleNamespace

    return SimpleNamespace(nnunet=write_nnunet_dataset, msd=write_msd_dataset, cases=user_cases)


@pytest.fixture(scope="session")
def imported_dataset(nnunet_folder, tmp_path_factory):
    """`nnunet_folder` imported as a slice dataset (4 labelled cases, one of them the test case)."""
    from segicl_data.dataset import SliceDataset
    from segicl_data.importer import import_dataset

    return SliceDataset(import_dataset(nnunet_folder, tmp_path_factory.mktemp("imported") / "deepgrey", progress=False))
