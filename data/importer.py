"""Import a user's labelled dataset (nnU-Net v2 raw layout, or the Medical Segmentation Decathlon's) as a slice
dataset: the same folder layout `segicl_data.build` writes, so that training, evaluation and example banks work on it.

nnU-Net v2 (https://github.com/MIC-DKFZ/nnUNet, documentation/dataset_format.md):

    dataset.json      channel_names {"0": "CT"}, labels {"background": 0, "liver": 1} (a value may be a list: a
                      region), numTraining, file_ending; optional "dataset" {case: {"images": [...], "label": ...}}
    imagesTr/CASE_0000.nii.gz    one file per channel (suffix _XXXX)
    labelsTr/CASE.nii.gz
    imagesTs/         optional, unlabelled (not imported)
    splits_final.json optional: fold 0's "val" cases become the test split

MSD (and nnU-Net v1): dataset.json with modality {"0": "FLAIR", ...}, labels {"0": "background", "1": "edema"},
training [{"image": "./imagesTr/X.nii.gz", "label": "./labelsTr/X.nii.gz"}]; 4-D images hold the modalities.

Every case becomes one volume of the slice dataset; every declared label a binary task named after the label
("Segment the liver in this CT slice."), and all labels together the multi-class task. The split is by CASE.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from segicl_data.atomic import write_text
from segicl_data.build import DEFAULT_CACHE, slice_areas
from segicl_data.imageio import (ImageReadError, MedicalImage, check_finite, check_not_constant, ending_of, read_image,
                                 writing)
from segicl_data.preprocess import (AXES, CT_WINDOW, MRI_PERCENTILES, apply_crop, normalize_mri, relative_positions,
                             resize_slices, window_ct)
from segicl_data.tasks import slugify
from segicl_data.volumes import crop_to_foreground, to_model_slices

IMPORT_VERSION = 1
LAYOUTS = ("nnunet", "msd")
FILE_ENDINGS = (".nii.gz", ".nii")
LABEL_SET = "labels"
LARGEST_LABEL = np.iinfo(np.uint16).max  # the label slices are stored as uint16 (as `segicl_data.build` stores them)
# nnU-Net v2's "ignore" label marks unlabelled voxels: a declared value, never a structure to segment.
IGNORE_LABEL = "ignore"
# The JSON type each key of dataset.json must have where it is present (nnU-Net v2 and MSD keys).
KEY_TYPES = {"channel_names": dict, "modality": dict, "labels": dict, "numTraining": int, "file_ending": str,
             "name": str, "dataset": dict, "training": list}
JSON_TYPE_NAMES = {dict: "an object", list: "an array", int: "an integer", str: "a string"}
# Channel names as instructions word them; anything else reads "<name> MRI" (nnU-Net treats non-CT channels as MRI).
MODALITY_WORDS = {"ct": "CT", "t1": "T1-weighted MRI", "t1w": "T1-weighted MRI", "t2": "T2-weighted MRI",
                  "t2w": "T2-weighted MRI", "mri": "MRI", "mr": "MRI", "flair": "FLAIR MRI", "adc": "ADC MRI",
                  "dwi": "diffusion-weighted MRI"}


class DatasetFormatError(ValueError):
    """A dataset folder that cannot be imported; the message names the file and the problem."""


@dataclass(frozen=True)
class ImportConfig:
    """How a user's dataset becomes slices.

    Attributes:
        resolution: side of the square slices in pixels (the model's; the tiny preset's is 64).
        axis: slicing direction: "axial", "coronal" or "sagittal".
        test_fraction: share of the labelled cases held out as the test split (at least one case each side).
        seed: seed of the case split.
        channel: the input channel to use, by name or index ("T1", "0"); None: the first.
        crop_margin: pixels kept around the foreground before resizing.
        mri_percentiles: intensity percentiles mapped to 0 and 1 (non-CT channels).
        ct_window: Hounsfield window mapped to [0, 1] (a channel named CT).
    """

    resolution: int = 64
    axis: str = "axial"
    test_fraction: float = 0.25
    seed: int = 0
    channel: str | None = None
    crop_margin: int = 4
    mri_percentiles: tuple[float, float] = MRI_PERCENTILES
    ct_window: tuple[float, float] = CT_WINDOW

    def __post_init__(self) -> None:
        if self.resolution < 16:
            raise ValueError(f"--resolution must be at least 16 pixels, got {self.resolution}")
        if self.axis not in AXES:
            raise ValueError(f"unknown slice axis {self.axis!r}; expected one of {sorted(AXES)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class UserCase:
    """One labelled (or unlabelled) case: its image file, the channel inside a 4-D file, its label map."""

    name: str
    image: Path
    label: Path | None
    volume_channel: int | None = None


@dataclass(frozen=True)
class DatasetDescription:
    """What dataset.json and the folder say.

    Attributes:
        root: the dataset folder.
        name: the dataset's name (dataset.json "name", else the folder name).
        layout: "nnunet" or "msd".
        labels: label name -> label values (background left out; nnU-Net's "ignore" kept: see `structures`).
        channel: the chosen channel's name.
        cases: the labelled cases, in name order.
        test_images: unlabelled cases (imagesTs), not imported but listed.
        test_cases: case names of the test split given by the dataset (splits_final.json), or None.
    """

    root: Path
    name: str
    layout: str
    labels: dict[str, tuple[int, ...]]
    channel: str
    cases: tuple[UserCase, ...]
    test_images: tuple[str, ...] = ()
    test_cases: tuple[str, ...] | None = None

    @property
    def modality(self) -> str:
        return modality_words(self.channel)

    @property
    def normalization(self) -> str:
        return "ct" if self.channel.strip().lower() == "ct" else "percentile"

    @property
    def structures(self) -> dict[str, tuple[int, ...]]:
        """The labels that are structures to segment: all but nnU-Net's "ignore"."""
        return {name: values for name, values in self.labels.items() if name.lower() != IGNORE_LABEL}

    def label_values(self) -> set[int]:
        return {value for values in self.labels.values() for value in values}


def modality_words(channel: str) -> str:
    """A channel name as instructions word it: "CT" -> "CT", "T1" -> "T1-weighted MRI", "PD" -> "PD MRI"."""
    return MODALITY_WORDS.get(channel.strip().lower(), f"{channel.strip()} MRI")


def structure_name(label: str) -> str:
    """A label name as instructions word it: "left_kidney" -> "left kidney"."""
    return re.sub(r"[_\s]+", " ", label).strip()


def slug(text: str) -> str:
    """`segicl_data.tasks.slugify`, never empty (a label named only by punctuation still gets a task key)."""
    return slugify(text) or "label"


# ------------------------------------------------------------------------------------------------ dataset.json


def read_description(root: Path | str, channel: str | None = None) -> DatasetDescription:
    """dataset.json and the case files of a dataset folder, checked; the layout is told by the keys present."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    path = root / "dataset.json"
    if not path.exists():
        raise DatasetFormatError(f"{path} not found: an nnU-Net v2 or MSD dataset folder has a dataset.json")
    try:
        description = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(description, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object, got {type(description).__name__}")
    _check_key_types(description, path)
    if "channel_names" in description:
        read = _nnunet_description(root, description, channel)
    elif "training" in description:
        read = _msd_description(root, description, channel)
    else:
        raise DatasetFormatError(f"{path}: neither nnU-Net v2 (key 'channel_names') nor MSD / nnU-Net v1 (key "
                                 f"'training'); found keys {sorted(description)}")
    _check_label_range(read.labels, path)
    return read


def _check_label_range(labels: dict[str, tuple[int, ...]], path: Path) -> None:
    """Refuse label values the imported label slices (16-bit) cannot hold: they would wrap to other values."""
    too_large = sorted({value for values in labels.values() for value in values if value > LARGEST_LABEL})
    if too_large:
        raise DatasetFormatError(f"{path}: label value(s) {too_large} above {LARGEST_LABEL}: the imported label slices "
                                 "hold 16-bit values")


def _check_key_types(description: dict, path: Path) -> None:
    """Refuse a known key of the wrong JSON type (`KEY_TYPES`): numTraining "3", channel_names as a list, ..."""
    for key, kind in KEY_TYPES.items():
        value = description.get(key)
        if key in description and (not isinstance(value, kind) or isinstance(value, bool)):
            raise DatasetFormatError(f"{path}: {key!r} must be {JSON_TYPE_NAMES[kind]}, got {json.dumps(value)}")


def _require(description: dict, keys: tuple[str, ...], path: Path) -> None:
    missing = [key for key in keys if key not in description]
    if missing:
        raise DatasetFormatError(f"{path}: missing key(s) {missing}")


def _choose_channel(channels: dict, wanted: str | None, path: Path) -> tuple[int, str]:
    """(index, name) of the channel a user asked for, by index or name; the first one by default."""
    try:
        named = {int(index): str(name) for index, name in channels.items()}
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{path}: channel indices must be integers, got {sorted(channels)}") from None
    if not named:
        raise DatasetFormatError(f"{path}: no channels declared")
    if not all(isinstance(name, str) and name.strip() for name in channels.values()):
        raise DatasetFormatError(f"{path}: channel names must be non-empty strings, got {list(channels.values())}")
    if wanted is None:
        first = min(named)
        return first, named[first]
    for index, name in named.items():
        if wanted == str(index) or wanted.lower() == name.lower():
            return index, name
    raise ValueError(f"--channel {wanted!r} is not in {path}: channels {named}")


def _nnunet_labels(labels: dict, path: Path) -> dict[str, tuple[int, ...]]:
    """nnU-Net v2 `labels`: name -> int, or name -> [ints] (a region)."""
    if not isinstance(labels, dict):
        raise DatasetFormatError(f"{path}: 'labels' must map names to values")
    if all(str(key).isdigit() for key in labels) and not all(isinstance(v, (int, list)) for v in labels.values()):
        raise DatasetFormatError(f"{path}: 'labels' maps numbers to names, as MSD / nnU-Net v1 do; nnU-Net v2 maps "
                                 "names to values ({\"background\": 0, \"liver\": 1})")
    table = {}
    for name, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise DatasetFormatError(f"{path}: label {name!r} has value {value!r}; expected a non-negative integer or a "
                                     "list of them")
        if 0 in values and len(values) > 1:
            raise DatasetFormatError(f"{path}: region {name!r} contains the background value 0: {value!r}")
        if values != [0]:
            table[str(name)] = tuple(sorted(set(values)))
    return _checked_labels(table, path)


def _msd_labels(labels: dict, path: Path) -> dict[str, tuple[int, ...]]:
    """MSD `labels`: "index" -> name."""
    if not isinstance(labels, dict) or not all(str(key).isdigit() and isinstance(name, str)
                                               for key, name in labels.items()):
        raise DatasetFormatError(f"{path}: MSD 'labels' must map label values to names ({{\"0\": \"background\"}})")
    table = {str(name): (int(index),) for index, name in labels.items() if int(index) != 0}
    return _checked_labels(table, path)


def read_label_names(path: Path | str) -> dict[str, tuple[int, ...]]:
    """Label name -> label values of a dataset.json, nnU-Net v2 (name -> value or [values], a region) or MSD / v1
    (value -> name); background left out, an "ignore" label kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        description = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{path}: cannot read it as JSON ({error})") from None
    if not isinstance(description, dict) or "labels" not in description:
        raise DatasetFormatError(f"{path}: missing key(s) ['labels']")
    labels = description["labels"]
    msd = isinstance(labels, dict) and all(str(key).isdigit() for key in labels) and "channel_names" not in description
    return _msd_labels(labels, path) if msd else _nnunet_labels(labels, path)


def _checked_labels(table: dict[str, tuple[int, ...]], path: Path) -> dict[str, tuple[int, ...]]:
    if not [name for name in table if name.lower() != IGNORE_LABEL]:
        raise DatasetFormatError(f"{path}: 'labels' declares no structure besides the background")
    slugs = [slug(name) for name in table]
    if len(set(slugs)) != len(slugs):
        raise DatasetFormatError(f"{path}: two labels have the same name once lower-cased: {sorted(table)}")
    return table


def _nnunet_description(root: Path, description: dict, channel: str | None) -> DatasetDescription:
    path = root / "dataset.json"
    _require(description, ("channel_names", "labels", "numTraining", "file_ending"), path)
    ending = description["file_ending"]
    if ending not in FILE_ENDINGS:
        raise DatasetFormatError(f"{path}: file_ending {ending!r} is not supported; supported: {list(FILE_ENDINGS)} "
                                 "(convert other formats to NIfTI, e.g. with SimpleITK)")
    labels = _nnunet_labels(description["labels"], path)
    index, name = _choose_channel(description["channel_names"], channel, path)
    if "dataset" in description:
        cases = _manifest_cases(root, description["dataset"], index, path)
    else:
        cases = _nnunet_folder_cases(root, ending, index)
    if description["numTraining"] != len(cases):
        raise DatasetFormatError(f"{path}: numTraining is {description['numTraining']} but {len(cases)} labelled "
                                 "cases were found")
    test_images = sorted({_strip_channel(p.name, ending)[0] for p in (root / "imagesTs").glob(f"*{ending}")})
    return DatasetDescription(root, str(description.get("name") or root.name), "nnunet", labels, name, tuple(cases),
                              tuple(test_images), _splits_test_cases(root, [c.name for c in cases]))


def _strip_channel(file_name: str, ending: str) -> tuple[str, str | None]:
    """"liver_3_0000.nii.gz" -> ("liver_3", "0000"); a file without the _XXXX suffix -> (stem, None)."""
    stem = file_name[: -len(ending)]
    match = re.fullmatch(r"(.+)_(\d{4})", stem)
    return (match.group(1), match.group(2)) if match else (stem, None)


def _nnunet_folder_cases(root: Path, ending: str, channel: int) -> list[UserCase]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DatasetFormatError(f"{folder} not found: nnU-Net v2 keeps training cases in imagesTr/ and labelsTr/")
    image_cases: dict[str, set[str]] = {}
    for image in sorted(images_dir.glob(f"*{ending}")):
        case, suffix = _strip_channel(image.name, ending)
        if suffix is None:
            raise DatasetFormatError(f"{image}: nnU-Net v2 names images CASE_XXXX{ending} (a 4-digit channel suffix, "
                                     f"e.g. {case}_0000{ending})")
        image_cases.setdefault(case, set()).add(suffix)
    label_cases = {p.name[: -len(ending)] for p in labels_dir.glob(f"*{ending}")}
    unlabelled = sorted(set(image_cases) - label_cases)
    if unlabelled:
        raise DatasetFormatError(f"{images_dir / (unlabelled[0] + f'_0000{ending}')}: image without a label "
                                 f"({labels_dir / (unlabelled[0] + ending)} missing); {len(unlabelled)} such case(s)")
    imageless = sorted(label_cases - set(image_cases))
    if imageless:
        raise DatasetFormatError(f"{labels_dir / (imageless[0] + ending)}: label without an image "
                                 f"({images_dir / (imageless[0] + f'_{channel:04d}{ending}')} missing)")
    cases = []
    for case in sorted(label_cases):
        if f"{channel:04d}" not in image_cases[case]:
            raise DatasetFormatError(f"{images_dir / f'{case}_{channel:04d}{ending}'} missing (channel {channel})")
        cases.append(UserCase(case, images_dir / f"{case}_{channel:04d}{ending}", labels_dir / f"{case}{ending}"))
    return cases


def _manifest_cases(root: Path, manifest: dict, channel: int, path: Path) -> list[UserCase]:
    """nnU-Net v2's optional `dataset` key: {case: {"images": [paths per channel], "label": path}}."""
    cases = []
    for case, entry in sorted(manifest.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or "label" not in entry:
            raise DatasetFormatError(f"{path}: dataset entry {case!r} needs 'images' (a list) and 'label'")
        if channel >= len(entry["images"]):
            raise DatasetFormatError(f"{path}: case {case!r} lists {len(entry['images'])} image(s), no channel {channel}")
        cases.append(UserCase(case, _existing(root, entry["images"][channel]), _existing(root, entry["label"])))
    return cases


def _existing(root: Path, relative: str) -> Path:
    if not isinstance(relative, str):
        raise DatasetFormatError(f"{root / 'dataset.json'} names {json.dumps(relative)} as a file; expected a path")
    path = (root / relative).resolve() if not Path(relative).is_absolute() else Path(relative)
    if not path.exists():
        raise DatasetFormatError(f"{root / 'dataset.json'} names {relative}, which does not exist")
    return path


def _splits_test_cases(root: Path, names: list[str]) -> tuple[str, ...] | None:
    """Fold 0's validation cases of splits_final.json, checked against the cases."""
    path = root / "splits_final.json"
    if not path.exists():
        return None
    try:
        folds = json.loads(path.read_text())
        validation = tuple(folds[0]["val"])
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise DatasetFormatError(f"{path}: expected a list of folds [{{\"train\": [...], \"val\": [...]}}]") from None
    unknown = sorted(set(validation) - set(names))
    if unknown:
        raise DatasetFormatError(f"{path}: fold 0 names case(s) without files: {unknown[:5]}")
    return validation


def _msd_description(root: Path, description: dict, channel: str | None) -> DatasetDescription:
    path = root / "dataset.json"
    _require(description, ("labels", "training"), path)
    labels = _msd_labels(description["labels"], path)
    modalities = description.get("modality") or description.get("channel_names") or {"0": "MRI"}
    index, name = _choose_channel(modalities, channel, path)
    cases = []
    for entry in description["training"]:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetFormatError(f"{path}: every 'training' entry needs 'image' and 'label', got {entry!r}")
        image = _existing(root, entry["image"])
        ending = ending_of(image)
        if ending not in FILE_ENDINGS:
            raise DatasetFormatError(f"{image}: file ending {ending!r} is not supported; supported: {list(FILE_ENDINGS)}")
        cases.append(UserCase(image.name[: -len(ending)], image, _existing(root, entry["label"]),
                              index if len(modalities) > 1 else None))
    numbered = description.get("numTraining")
    if numbered is not None and numbered != len(cases):
        raise DatasetFormatError(f"{path}: numTraining is {numbered} but 'training' lists {len(cases)} cases")
    return DatasetDescription(root, str(description.get("name") or root.name), "msd", labels, name,
                              tuple(sorted(cases, key=lambda c: c.name)))


# ------------------------------------------------------------------------------------------------ split, cases


def split_cases(description: DatasetDescription, config: ImportConfig) -> dict[str, str]:
    """case -> "train" | "test": the dataset's own split where it has one, else a seeded draw of whole cases."""
    names = [case.name for case in description.cases]
    if len(names) < 2:
        raise DatasetFormatError(f"{description.root}: a dataset of {len(names)} labelled case(s) cannot be split into "
                                 "training and test cases; at least 2 are needed")
    if description.test_cases is not None:
        test = set(description.test_cases)
    else:
        count = min(max(1, int(round(config.test_fraction * len(names)))), len(names) - 1)
        order = np.random.default_rng(config.seed).permutation(len(names))
        test = {names[i] for i in order[:count]}
    if not test or test == set(names):
        raise DatasetFormatError(f"{description.root}: the split leaves no training or no test case")
    return {name: "test" if name in test else "train" for name in names}


def _read(path: Path, what: str) -> MedicalImage:
    try:
        return read_image(path)
    except ImageReadError as error:
        raise DatasetFormatError(f"{path}: unreadable {what} ({error})") from None


def read_case(case: UserCase, description: DatasetDescription) -> tuple[MedicalImage, MedicalImage]:
    """The case's image (its chosen channel, as a 3-D volume) and label map, checked against each other and against
    the declared labels."""
    image, label = _read(case.image, "image"), _read(case.label, "label map")
    check_finite(image)
    if image.orientation is None or label.orientation is None:
        raise DatasetFormatError(f"{case.image}: a dataset case must carry geometry (NIfTI)")
    if case.volume_channel is not None or image.array.ndim == 4:
        channel = case.volume_channel or 0
        if image.array.ndim != 4 or channel >= image.array.shape[3]:
            raise DatasetFormatError(f"{case.image}: expected a 4-D image with a channel {channel}, got shape "
                                     f"{image.array.shape}")
        image = dataclasses.replace(image, array=image.array[..., channel])
    check_not_constant(image.array, f"{case.image}: the image")
    if image.array.shape != label.array.shape:
        raise DatasetFormatError(f"{case.label}: label shape {label.array.shape} differs from the image's "
                                 f"{image.array.shape} ({case.image})")
    if not np.allclose(image.affine, label.affine, atol=1e-3):
        raise DatasetFormatError(f"{case.label}: label affine differs from the image's ({case.image}): "
                                 f"{np.round(label.affine, 3).tolist()} vs {np.round(image.affine, 3).tolist()}")
    values = np.unique(label.array)
    if values.size and (not np.allclose(values, np.rint(values)) or values.min() < 0):
        raise DatasetFormatError(f"{case.label}: label values must be non-negative integers, found {values[:6].tolist()}")
    undeclared = sorted(set(np.rint(values).astype(int).tolist()) - description.label_values() - {0})
    if undeclared:
        raise DatasetFormatError(f"{case.label}: label value(s) {undeclared} are not declared in "
                                 f"{description.root / 'dataset.json'} 'labels'")
    if values.max(initial=0) == 0:
        raise DatasetFormatError(f"{case.label}: the label map is empty (no structure labelled)")
    return image, label


def case_slices(image: MedicalImage, label: MedicalImage, description: DatasetDescription,
                config: ImportConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Display slices of a case cropped to its foreground, resized and normalised: images [S, R, R] in [0, 1],
    labels [S, R, R] uint16, and the crop."""
    labels = np.rint(to_model_slices(label, config.axis)).astype(np.uint16)
    ct = description.normalization == "ct"
    cropped, crop = crop_to_foreground(to_model_slices(image, config.axis), ct, config.crop_margin, labels)
    resized = resize_slices(cropped, config.resolution, labels=False)
    images = window_ct(resized, config.ct_window) if ct else normalize_mri(resized, config.mri_percentiles)
    label_slices = resize_slices(apply_crop(labels, crop), config.resolution, labels=True)
    return images, label_slices, crop.as_dict()


def task_rows(case: str, split: str, description: DatasetDescription, label_slices: np.ndarray) -> list[dict]:
    """Manifest rows of one case: a binary task per declared label present in it, and the multi-class task."""
    areas = slice_areas(label_slices)
    prefix = slug(description.name)
    rows = []
    for label, values in description.structures.items():
        ids = [v for v in values if v < areas.shape[1]]
        per_slice = areas[:, ids].sum(axis=1) if ids else np.zeros(len(areas), dtype=np.int64)
        present = np.flatnonzero(per_slice)
        if present.size:
            rows.append({"volume": case, "task": f"{prefix}/{slug(label)}", "name": structure_name(label),
                         "label_set": LABEL_SET, "label_ids": list(values), "family": slug(label), "kind": "region",
                         "modality": description.modality, "label_source": "native", "split": split,
                         "held_out": False, "slices": present.tolist(), "areas": per_slice[present].tolist()})
    present = np.flatnonzero(areas[:, 1:].sum(axis=1))
    if len(description.structures) > 1 and present.size:
        rows.append({"volume": case, "task": f"{prefix}/all_classes", "name": f"{description.name} (all classes)",
                     "label_set": LABEL_SET, "label_ids": sorted({v for values in description.structures.values()
                                                                  for v in values}), "family": prefix,
                     "class_families": sorted(slug(label) for label in description.structures), "kind": "multiclass",
                     "modality": description.modality, "label_source": "native", "split": split, "held_out": False,
                     "slices": present.tolist(), "areas": areas[present, 1:].sum(axis=1).tolist()})
    return rows


# ------------------------------------------------------------------------------------------------ the import


def default_import_dir(description: DatasetDescription, config: ImportConfig, cache_dir: Path | str = DEFAULT_CACHE) -> Path:
    """<cache>/imported/<name>_<axis>_<R>px_<digest of the source and the config>."""
    key = json.dumps([IMPORT_VERSION, str(description.root.resolve()), config.to_dict()], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return Path(cache_dir) / "imported" / f"{slug(description.name)}_{config.axis}_{config.resolution}px_{digest}"


def import_dataset(source: Path | str, out: Path | str | None = None, config: ImportConfig = ImportConfig(),
                   cache_dir: Path | str = DEFAULT_CACHE, force: bool = False, progress: bool = True) -> Path:
    """Import a dataset folder into `out` (default: under the cache) and return the slice dataset's folder.

    Everything is written into a staging folder that replaces `out` only once complete: a refused case leaves
    nothing behind. An existing complete import of the same folder and config is reused unless `force`.
    """
    description = read_description(source, config.channel)
    target = Path(out) if out is not None else default_import_dir(description, config, cache_dir)
    if (target / "manifest.jsonl").exists() and not force:
        existing = json.loads((target / "config.json").read_text())
        if existing.get("import") == json.loads(json.dumps(config.to_dict())) and existing.get("source") == str(description.root.resolve()):
            return target
        raise ValueError(f"{target} already holds another dataset or import settings; pass --force to replace it, "
                         "or choose another --out")
    if target.exists() and not (target / "manifest.jsonl").exists() and any(target.iterdir()):
        raise ValueError(f"--out {target} exists and is not an imported dataset; choose an empty or new folder")
    splits = split_cases(description, config)
    staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with writing(target):
            _write_import(description, config, splits, staging, progress)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _shown(path: Path, root: Path) -> str:
    """A case file's path relative to its dataset folder where it lies inside it."""
    path, root = path.resolve(), root.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _write_import(description: DatasetDescription, config: ImportConfig, splits: dict[str, str], out: Path,
                  progress: bool) -> None:
    (out / "images").mkdir(parents=True)
    volume_rows, rows = [], []
    for case in tqdm(description.cases, desc="importing cases", disable=None if progress else True):
        image, label = read_case(case, description)
        images, labels, crop = case_slices(image, label, description, config)
        np.save(out / "images" / f"{case.name}.npy", images)
        (out / "labels" / case.name).mkdir(parents=True)
        np.save(out / "labels" / case.name / f"{LABEL_SET}.npy", labels)
        rows += task_rows(case.name, splits[case.name], description, labels)
        count = crop["last_slice"] - crop["first_slice"] + 1
        volume_rows.append({
            "volume": case.name, "description": f"{description.name} case {case.name}", "modality": description.modality,
            "licence": "the user's", "package": f"imported ({description.layout})", "split": splits[case.name],
            "n_slices": count, "slice_index": list(range(crop["first_slice"], crop["last_slice"] + 1)),
            "relative_position": relative_positions(count).round(5).tolist(), "crop": crop,
            "source_shape": list(image.array.shape), "affine": np.asarray(image.affine).round(6).tolist(),
            "axis": config.axis, "paired": [],
            "image": _shown(case.image, description.root)})
    (out / "config.json").write_text(json.dumps({
        "kind": "imported", "import": config.to_dict(), "resolution": config.resolution, "axis": config.axis,
        "name": description.name, "layout": description.layout, "source": str(description.root.resolve()),
        "channel": description.channel, "modality": description.modality, "normalization": description.normalization,
        "labels": {name: list(values) for name, values in description.structures.items()},
        "unlabelled_test_images": list(description.test_images)}, indent=1))
    (out / "volumes.json").write_text(json.dumps(volume_rows, indent=1))
    with (out / "manifest.jsonl").open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------ cases added later


def imported_description(dataset: Path | str) -> tuple[DatasetDescription, ImportConfig]:
    """The description and import settings an imported slice dataset was made with (its config.json)."""
    config_path = Path(dataset) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if config.get("kind") != "imported":
        raise ValueError(f"{dataset} is not an imported dataset (`segicl data import` makes one): cases are added to "
                         "a user's dataset, not to the built-in one")
    settings = {key: tuple(value) if isinstance(value, list) else value for key, value in config["import"].items()}
    labels = {name: tuple(values) for name, values in config["labels"].items()}
    description = DatasetDescription(Path(config["source"]), config["name"], config["layout"], labels,
                                     config["channel"], ())
    return description, ImportConfig(**settings)


def case_name_of(image: Path | str) -> str:
    """A case's name from its image file: liver_3_0000.nii.gz -> liver_3, scan.nii -> scan."""
    image = Path(image)
    return _strip_channel(image.name, ending_of(image))[0]


def add_case(dataset: Path | str, image: Path | str, label: Path | str, name: str | None = None,
             split: str = "train", replace: bool = False) -> list[dict]:
    """Add a labelled case (a corrected prediction, say) to an imported slice dataset, with the importer's checks
    (geometry, declared label values, a non-empty label map) and its slicing; `split` "train" puts it in the example
    bank. A case of the same name is refused unless `replace`. Returns the case's task rows. The case's arrays are
    written first, then the volume list and last the manifest, each whole: an interrupted add of a new case leaves
    the dataset as it was (arrays no manifest row names are never read)."""
    dataset = Path(dataset)
    description, config = imported_description(dataset)
    name = name or case_name_of(image)
    volumes = json.loads((dataset / "volumes.json").read_text())
    if any(row["volume"] == name for row in volumes) and not replace:
        raise ValueError(f"{dataset} already has a case {name!r}; --replace puts the new labels in its place")
    image_read, label_read = read_case(UserCase(name, Path(image), Path(label)), description)
    images, labels, crop = case_slices(image_read, label_read, description, config)
    rows = task_rows(name, split, description, labels)
    np.save(dataset / "images" / f"{name}.npy", images)
    (dataset / "labels" / name).mkdir(parents=True, exist_ok=True)
    np.save(dataset / "labels" / name / f"{LABEL_SET}.npy", labels)
    count = crop["last_slice"] - crop["first_slice"] + 1
    volumes = [row for row in volumes if row["volume"] != name] + [{
        "volume": name, "description": f"{description.name} case {name} (added)", "modality": description.modality,
        "licence": "the user's", "package": "added (segicl bank add)", "split": split, "n_slices": count,
        "slice_index": list(range(crop["first_slice"], crop["last_slice"] + 1)),
        "relative_position": relative_positions(count).round(5).tolist(), "crop": crop,
        "source_shape": list(image_read.array.shape), "affine": np.asarray(image_read.affine).round(6).tolist(),
        "axis": config.axis, "paired": [], "image": str(Path(image).resolve())}]
    kept = [row for row in map(json.loads, (dataset / "manifest.jsonl").read_text().splitlines())
            if row["volume"] != name]
    write_text(dataset / "volumes.json", json.dumps(volumes, indent=1))
    write_text(dataset / "manifest.jsonl", "".join(json.dumps(row) + "\n" for row in kept + rows))
    return rows
