"""Score a folder of predicted label maps against a folder of truth label maps, as nnU-Net's
``evaluate_folder`` does: per case and per class Dice, IoU, HD95 (mm) and NSD (at a tolerance in mm).

* Cases are matched by file name without its ending (``case_001.nii.gz`` <-> ``case_001.nii``). Files whose
  ending is not an image ending (``.json``, ``.md``, ``.pkl``, ``.npz``, ...) are skipped, so an nnU-Net output
  folder (``plans.json``, probabilities) and an earlier ``summary.json`` can stay where they are. Image endings
  ``segicl_data.imageio`` cannot read (``.nrrd``, ``.mha``, ...) are refused, not skipped.
* Each pair must have the same shape and the same geometry (spacing, orientation and origin within
  ``AFFINE_TOLERANCE``); distances are in mm from the files' voxel spacing.
* Labels come from a ``dataset.json`` (:func:`read_label_table`: nnU-Net v2, where a value may be a list of ints,
  a region, or MSD / nnU-Net v1) or, without one, are every non-zero value found in the files, named by its value.
  Background (0) is not scored; nnU-Net v2's ``"ignore"`` label is not scored either, and its truth voxels are left
  out of every class (nnU-Net's convention). A value in a file that the table does not declare is refused.
* Empty masks follow nnU-Net and MONAI (``segicl_data.metrics`` with ``empty="nan"``): a class absent from both
  prediction and truth of a case has no Dice/IoU; HD95 and NSD are what MONAI returns when a side is empty (NaN,
  or inf in older MONAI). Every such value is ``None`` (JSON null) in the summary and is left out of the means;
  ``cases_scored`` counts the cases each mean is over.

Every refusal is a ``ValueError`` (or ``FileNotFoundError``) naming the file and the problem, raised before
anything is written: :func:`write_summary` writes ``summary.json`` and ``summary.md`` at the end, each through a
temporary file and a rename.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from segicl_data.imageio import SUPPORTED_READ_ENDINGS, MedicalImage, ending_of, read_image, writing
from segicl_data.importer import IGNORE_LABEL, read_label_names
from segicl_data.metrics import segmentation_metrics

__all__ = [
    "AFFINE_TOLERANCE",
    "METRICS",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "CasePair",
    "LabelTable",
    "check_geometry",
    "evaluate_case",
    "evaluate_folders",
    "label_map",
    "list_cases",
    "match_cases",
    "read_label_table",
    "summary_markdown",
    "write_summary",
]

LabelTable = dict[str, tuple[int, ...]]
"""Class name -> the label values that make up the class (one value, or several for a region)."""

METRICS: tuple[str, ...] = ("dice", "iou", "hd95", "nsd")
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
AFFINE_TOLERANCE = 1e-3
PROGRESS_MIN_CASES = 10
# Image endings a case file may have: the readable ones, and ones we know are images but cannot read (refused).
UNREADABLE_IMAGE_ENDINGS: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff", ".nii.zst")
IMAGE_ENDINGS: tuple[str, ...] = SUPPORTED_READ_ENDINGS + UNREADABLE_IMAGE_ENDINGS


@dataclass(frozen=True)
class CasePair:
    """One case: its name and its prediction and truth files."""

    name: str
    pred: Path
    truth: Path


# ----------------------------------------------------------------------------- labels


def read_label_table(path: str | Path) -> LabelTable:
    """The foreground classes of a ``dataset.json``: name -> label values (several for an nnU-Net v2 region), read
    by the dataset importer (nnU-Net v2 or MSD / v1); an ``"ignore"`` label is kept (it declares its value) and is
    not scored."""
    return read_label_names(path)


def _table_of_values(values: Iterable[int]) -> LabelTable:
    """Every non-zero value as a class named by its value."""
    return {str(v): (int(v),) for v in sorted(set(values)) if v != 0}


# ----------------------------------------------------------------------------- files


def list_cases(folder: str | Path) -> dict[str, Path]:
    """Case name -> image file, for the image files directly in ``folder`` (sorted by name).

    Refuses a missing folder, a folder without image files and two files of the same case (``a.nii``, ``a.nii.gz``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        ending = ending_of(path)
        if path.name.startswith(".") or not path.is_file() or ending not in IMAGE_ENDINGS:
            continue
        name = path.name[: -len(ending)]
        if name in cases:
            raise ValueError(f"two files for case {name!r} in {folder}: {cases[name].name} and {path.name}")
        cases[name] = path
    if not cases:
        raise ValueError(f"no image files in {folder} (endings read: {', '.join(SUPPORTED_READ_ENDINGS)})")
    return cases


def match_cases(pred_dir: str | Path, truth_dir: str | Path) -> list[CasePair]:
    """Pair every prediction with the truth file of the same case name; a prediction without one is refused. The
    truth folder may hold more cases (nnU-Net's labelsTr beside the predictions of its test cases): those are not
    scored."""
    preds, truths = list_cases(pred_dir), list_cases(truth_dir)
    problems = [f"prediction {preds[n]} has no truth file in {truth_dir}" for n in sorted(preds.keys() - truths.keys())]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError("; ".join(problems[:3]) + more)
    return [CasePair(name, preds[name], truths[name]) for name in sorted(preds)]


# ----------------------------------------------------------------------------- one case


def label_map(image: MedicalImage) -> np.ndarray:
    """The image's array as an integer label map (integer arrays as they are, bool and integer-valued floats
    converted); refuses channels, more than 3-D, non-integer and negative values."""
    array = image.array
    if array.ndim not in (2, 3) or array.ndim != len(image.spacing):
        raise ValueError(f"{image.path}: a label map must be 2-D or 3-D without channels, got shape {array.shape}")
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{image.path}: a label map must hold integers, got dtype {array.dtype}")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            raise ValueError(f"{image.path}: not a label map: non-integer values, e.g. {array[bad][0]:g}")
    if array.size and array.min() < 0:
        raise ValueError(f"{image.path}: not a label map: negative label value {array.min():g}")
    return array if array.dtype.kind in "iu" else array.astype(np.int64)


def _geometry(affine: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spacing, direction cosines and origin of the first ``ndim`` voxel axes of a 4x4 affine."""
    columns = affine[:3, :ndim]
    spacing = np.linalg.norm(columns, axis=0)
    return spacing, columns / np.where(spacing > 0, spacing, 1.0), affine[:3, 3]


def check_geometry(pred: MedicalImage, truth: MedicalImage) -> None:
    """Refuse a pair whose shapes differ, or whose spacing, orientation or origin differ beyond AFFINE_TOLERANCE."""
    if pred.array.shape != truth.array.shape:
        raise ValueError(f"shape mismatch: prediction {pred.path} has shape {pred.array.shape}, "
                         f"truth {truth.path} has shape {truth.array.shape}")
    ndim = len(truth.spacing)
    for what, p, t in zip(("spacing (mm)", "orientation (direction cosines)", "origin (mm)"),
                          _geometry(pred.affine, ndim), _geometry(truth.affine, ndim)):
        if not np.allclose(p, t, rtol=0.0, atol=AFFINE_TOLERANCE):
            raise ValueError(f"affine mismatch: the {what} of prediction {pred.path} is {np.round(p, 4).tolist()}, "
                             f"of truth {truth.path} {np.round(t, 4).tolist()} (tolerance {AFFINE_TOLERANCE})")


def _check_declared(labels: np.ndarray, path: str, table: LabelTable) -> None:
    declared = {0}.union(*table.values())
    undeclared = sorted(set(np.unique(labels).tolist()) - declared)
    if undeclared:
        raise ValueError(f"{path}: label value {undeclared[0]} is not declared in the label table "
                         f"(declared: {', '.join(map(str, sorted(declared)))}; undeclared here: {undeclared})")


def _mask(labels: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    """The voxels holding any of ``values`` (``==`` for one value: many times faster than ``np.isin``)."""
    return labels == values[0] if len(values) == 1 else np.isin(labels, values)


def _json_number(value: float) -> float | None:
    """A finite float, or None (JSON null) for NaN / inf."""
    return float(value) if math.isfinite(value) else None


def _class_scores(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], tolerance: float) -> dict:
    """The metrics (None where undefined) and the voxel counts of one class."""
    scores = segmentation_metrics(pred, truth, spacing=spacing, tolerance_mm=tolerance, empty="nan")
    return {**{name: _json_number(scores[name]) for name in METRICS},
            "n_pred": int(np.count_nonzero(pred)), "n_truth": int(np.count_nonzero(truth))}


def evaluate_case(pred: MedicalImage, truth: MedicalImage, labels: LabelTable, tolerance: float = 1.0) -> dict:
    """Class name -> {dice, iou, hd95 (mm), nsd, n_pred, n_truth} of one case (None where a score is undefined).

    Refuses a shape or geometry mismatch and a label value that ``labels`` does not declare.
    """
    check_geometry(pred, truth)
    pred_labels, truth_labels = label_map(pred), label_map(truth)
    for array, image in ((pred_labels, pred), (truth_labels, truth)):
        _check_declared(array, image.path, labels)
    ignored = _mask(truth_labels, labels[IGNORE_LABEL]) if IGNORE_LABEL in labels else None
    scores = {}
    for name, values in labels.items():
        if name != IGNORE_LABEL:
            pred_mask = _mask(pred_labels, values)
            if ignored is not None:
                pred_mask &= ~ignored
            scores[name] = _class_scores(pred_mask, _mask(truth_labels, values), truth.spacing, tolerance)
    return scores


# ----------------------------------------------------------------------------- folders


def _check_tolerance(tolerance: float) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
            or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number of mm >= 0, got {tolerance!r}")
    return float(tolerance)


def _mean(values: list[float | None]) -> tuple[float | None, int]:
    """The mean of the scored (not None) values, and how many there were."""
    scored = [v for v in values if v is not None]
    return (float(np.mean(scored)) if scored else None), len(scored)


def _means(cases: list[dict], classes: Iterable[str]) -> tuple[dict, dict, dict]:
    """Per-class means over cases, per-class counts of scored cases, and the foreground mean (of the class means)."""
    mean, scored = {}, {}
    for name in classes:
        pairs = {m: _mean([case["metrics"][name][m] for case in cases]) for m in METRICS}
        mean[name] = {m: value for m, (value, _) in pairs.items()}
        scored[name] = {m: count for m, (_, count) in pairs.items()}
    foreground = {m: _mean([mean[name][m] for name in mean])[0] for m in METRICS}
    return mean, scored, foreground


def evaluate_folders(pred_dir: str | Path, truth_dir: str | Path, labels: LabelTable | str | Path | None = None,
                     tolerance: float = 1.0, progress: bool = True) -> dict:
    """Score every case of ``pred_dir`` against ``truth_dir``; the JSON-ready summary.

    ``labels``: a label table, the path of a ``dataset.json`` (:func:`read_label_table`), or None for every
    non-zero value found in the files. The summary holds ``metric_per_case`` (list), ``mean`` (class -> metric ->
    mean over the scored cases), ``cases_scored`` (class -> metric -> count), ``foreground_mean`` (metric -> mean
    of the class means) and what was evaluated. Nothing is written.
    """
    tolerance = _check_tolerance(tolerance)
    labels_from = str(labels) if isinstance(labels, (str, Path)) else \
        ("a label table" if labels is not None else "the values in the files")
    table = read_label_table(labels) if isinstance(labels, (str, Path)) else labels
    if table is not None and not [name for name in table if name != IGNORE_LABEL]:
        raise ValueError(f"the label table has no foreground class: {table!r}")
    pairs = match_cases(pred_dir, truth_dir)
    found: set[int] = set()
    cases = []
    for pair in tqdm(pairs, desc="cases", unit="case",
                     disable=None if progress and len(pairs) >= PROGRESS_MIN_CASES else True):
        pred, truth = read_image(pair.pred), read_image(pair.truth)
        case_table = table
        if table is None:  # this case's own values; classes found only in other cases are filled in below
            values = set(np.unique(label_map(pred)).tolist()) | set(np.unique(label_map(truth)).tolist())
            found |= values
            case_table = _table_of_values(values)
        cases.append({"case": pair.name, "prediction_file": str(pair.pred), "truth_file": str(pair.truth),
                      "spacing_mm": list(truth.spacing), "metrics": evaluate_case(pred, truth, case_table, tolerance)})
    if table is None:
        table = _table_of_values(found)
        if not table:
            raise ValueError(f"no foreground label value (non-zero) in any file of {pred_dir} or {truth_dir}")
        absent = _class_scores(np.zeros((2, 2), bool), np.zeros((2, 2), bool), (1.0, 1.0), tolerance)
        for case in cases:
            case["metrics"] = {name: case["metrics"].get(name, absent) for name in table}
    classes = [name for name in table if name != IGNORE_LABEL]
    mean, scored, foreground = _means(cases, classes)
    return {
        "prediction_folder": str(pred_dir), "truth_folder": str(truth_dir), "labels_from": labels_from,
        "labels": {name: list(values) for name, values in table.items()}, "tolerance_mm": tolerance,
        "n_cases": len(cases), "metrics": list(METRICS),
        "conventions": "hd95 in mm; nsd at tolerance_mm; null = not scored (dice/iou: class absent from both "
                       "prediction and truth; hd95/nsd: what MONAI leaves undefined when a side is empty); means "
                       "are over the scored cases (cases_scored); foreground_mean is the mean of the class means",
        "mean": mean, "cases_scored": scored, "foreground_mean": foreground, "metric_per_case": cases,
    }


# ----------------------------------------------------------------------------- output


def _cell(value: float | None, digits: int, count: int | None = None, total: int | None = None) -> str:
    text = "n/a" if value is None else f"{value:.{digits}f}"
    return text if count is None else f"{text} ({count}/{total})"


def summary_markdown(summary: dict) -> str:
    """The mean per class (and the foreground mean) as a markdown table, each cell with its cases scored."""
    n, tolerance = summary["n_cases"], summary["tolerance_mm"]
    digits = {"dice": 3, "iou": 3, "hd95": 2, "nsd": 3}
    lines = [f"{n} case(s): {summary['prediction_folder']} against {summary['truth_folder']}; "
             f"labels from {summary['labels_from']}", "",
             f"| class | Dice | IoU | HD95 (mm) | NSD ({tolerance:g} mm) |", "|---|---|---|---|---|"]
    for name, metrics in summary["mean"].items():
        values = summary["labels"][name]
        label = name if [str(v) for v in values] == [name] else f"{name} ({', '.join(map(str, values))})"
        cells = [_cell(metrics[m], digits[m], summary["cases_scored"][name][m], n) for m in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| foreground mean | " + " | ".join(_cell(summary["foreground_mean"][m], digits[m])
                                                     for m in METRICS) + " |")
    lines += ["", "(k/n): the mean is over the k of n cases scored. Not scored: Dice/IoU when the class is absent "
                  "from both prediction and truth; HD95 when either side is empty; NSD when both are empty. "
                  "Foreground mean: the mean of the class means."]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` into ``out_dir`` (created if missing), each through a temporary
    file renamed into place, so an error leaves neither half-written. Returns both paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder")
    texts = {SUMMARY_JSON: json.dumps(summary, indent=1, allow_nan=False) + "\n", SUMMARY_MD: summary_markdown(summary)}
    temporary: dict[str, Path] = {}
    try:
        with writing(out_dir):
            out_dir.mkdir(parents=True, exist_ok=True)
            for name, text in texts.items():
                with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out_dir, prefix=f".{name}.",
                                                 suffix=".tmp", delete=False) as handle:
                    temporary[name] = Path(handle.name)
                    handle.write(text)
            for name, path in temporary.items():
                os.replace(path, out_dir / name)
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)
    return out_dir / SUMMARY_JSON, out_dir / SUMMARY_MD
