"""The web app of `segicl serve` (NiceGUI): a Segment tab (SegICL), a Label-a-folder tab (the labelling loop) and an
Image-task tab (MVG).

The page is thin. Every action calls one plain function of this module that takes file paths and values and returns
what the page shows: `store_upload` (an upload into the client's temporary folder, size-limited), `preview_query`
(the slices to show), `run_segment` (through `segicl.volume.segment_image`, the volume-level API that `segicl
segment` runs), `render_segment` (overlay and uncertainty of one slice), `run_image_task` and `render_image_task`
(MVG), and the labelling loop on a server folder (`run_folder`, `folder_listing`, `open_case`, `add_to_bank`: the
functions of `segicl predict` and `segicl bank add`). They are tested without a browser
(tests/commands/test_webapp.py). A refusal (the ValueError / FileNotFoundError of the readers, the pipelines and the
checks here) becomes one readable line in the page (`readable`), never a traceback, and the server serves the next
request.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from segicl.volume import (Query, SegmentResult, Settings, Target, bank_targets, file_examples, prepare_query,
                           segment_image)
from segicl.config import DEFAULT_SAMPLES, DEFAULT_STEPS, FAST_SAMPLES, FAST_STEPS

# Decoder settings offered by name: `segicl bench speed`'s sampler grid (docs: results) found that with this
# x0-predicting decoder fewer steps do not lose Dice; the default is the fewest evaluations within 0.01 Dice of the
# best with a meaningful uncertainty, the fast one a single evaluation (no spread, so no uncertainty map).
DECODER_SETTINGS = {
    "fast": (FAST_STEPS, FAST_SAMPLES,
             f"{FAST_STEPS} step x {FAST_SAMPLES} sample: one decoder evaluation, no uncertainty"),
    "default": (DEFAULT_STEPS, DEFAULT_SAMPLES,
                f"{DEFAULT_STEPS} step x {DEFAULT_SAMPLES} samples: the measured default"),
}
EXAMPLE_SLOTS = 5
IMAGE_TASKS = ("segmentation", "synthesis", "denoising", "inpainting")
INTENSITIES = {"percentile": "MRI (percentiles)", "ct": "CT window", "none": "none"}
READABLE_ENDINGS = (".nii", ".nii.gz", ".dcm", ".dicom", ".zip", ".png", ".jpg", ".jpeg", ".npy")
UNCERTAINTY_TOP = 0.5  # the largest spread of probabilities in [0, 1]: the top of the uncertainty colour scale
PICTURE = "fit=contain no-transition no-spinner"  # a result shows at once (no fade-in), pixels stay square


class Cancelled(Exception):
    """The user pressed cancel: the run stopped between two batches of slices."""


@dataclass(frozen=True)
class Limits:
    """What one request may bring: bytes per upload, voxels per image, slices per segmentation."""

    upload_bytes: int = 200 * 2**20
    max_voxels: int = 64 * 2**20
    max_slices: int = 512


@dataclass
class AppState:
    """What every client of one server shares: the loaded pipelines (one model run at a time), the limits, the
    example banks, the folders of cases offered to the labelling loop, the SegICL model's folder (recorded with the
    loop's predictions), the temporary folder that holds every upload and output (removed when the server stops)."""

    segicl: object
    mvg: object
    limits: Limits
    workspace: Path
    banks: dict[str, Path] = field(default_factory=dict)
    structures: list[str] = field(default_factory=list)
    structures_source: str = ""
    folders: dict[str, Path] = field(default_factory=dict)
    model_folder: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client_folder(self, client_id: str) -> Path:
        folder = self.workspace / safe_name(client_id)
        folder.mkdir(parents=True, exist_ok=True)
        return folder


class Job:
    """Progress of one run, read by the page's timer; `cancel()` makes the next batch stop it."""

    def __init__(self) -> None:
        self.fraction = 0.0
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def callback(self, fraction: float) -> None:
        if self._cancel.is_set():
            raise Cancelled(f"cancelled at {self.fraction:.0%} of the slices")
        self.fraction = fraction


def safe_name(text: str) -> str:
    """`text` with every character but letters, digits, _ and - as _ (a folder name, a test id)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def readable(error: BaseException, workspace: Path | None = None) -> str:
    """One line for the page: the message without the server's temporary folders (an upload or output is named by
    its file name)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if workspace is not None:
        message = re.sub(re.escape(str(workspace)) + r"/(?:[^/\s'\"]+/)+", "", message)
    return message


# ------------------------------------------------------------------------------------------------------ files
def store_upload(folder: Path, name: str, data: bytes, limits: Limits) -> Path:
    """An uploaded file, written into `folder` (emptied first: one file per upload slot) under its own base name."""
    name = Path(name.replace("\\", "/")).name
    if not data:
        raise ValueError(f"{name or 'the upload'} is empty (0 bytes)")
    if len(data) > limits.upload_bytes:
        raise ValueError(f"{name} is {len(data) / 2**20:.1f} MiB, more than this server's upload limit of "
                         f"{limits.upload_bytes / 2**20:.0f} MiB (segicl serve --max-upload-mb)")
    if not any(name.lower().endswith(ending) for ending in READABLE_ENDINGS):
        raise ValueError(f"{name}: not a file type this page reads; it takes NIfTI (.nii, .nii.gz), DICOM (.dcm, or "
                         "a zipped series .zip), PNG/JPG or NPY")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = folder / (re.sub(r"[^A-Za-z0-9._-]", "_", name) or "upload")
    path.write_bytes(data)
    return path


def _unzip_series(path: Path, limits: Limits) -> Path:
    """A zipped DICOM series, unpacked beside the zip: the folder holding most of its files."""
    target = path.parent / "series"
    try:
        with zipfile.ZipFile(path) as archive:
            members = [member for member in archive.infolist() if not member.is_dir()]
            for member in members:
                parts = Path(member.filename).parts
                if Path(member.filename).is_absolute() or ".." in parts:
                    raise ValueError(f"{path.name}: the zip holds a path outside its folder ({member.filename})")
            unpacked = sum(member.file_size for member in members)
            if unpacked > 4 * limits.max_voxels + 2**20:
                raise ValueError(f"{path.name} unpacks to {unpacked / 2**20:.0f} MiB, more than a volume of this "
                                 f"server's limit ({limits.max_voxels} voxels) takes")
            archive.extractall(target, members)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path.name} is not a readable zip archive ({error})") from None
    counts: dict[Path, int] = {}
    for file in target.rglob("*"):
        if file.is_file():
            counts[file.parent] = counts.get(file.parent, 0) + 1
    if not counts:
        raise ValueError(f"{path.name} holds no files")
    return max(counts, key=counts.get)


def _header_voxels(path: Path) -> int | None:
    """The voxel count a NIfTI header announces (read without the data), or None when the header is unreadable (the
    reader then says why)."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        return int(np.prod(nib.load(path).shape))
    except (ImageFileError, OSError, EOFError, ValueError):
        return None


def _check_voxels(count: int, name: str, limits: Limits) -> None:
    if count > limits.max_voxels:
        raise ValueError(f"{name} has {count:,} voxels, more than this server's limit of {limits.max_voxels:,} "
                         "(segicl serve --max-voxels)")


def open_image(path: Path, limits: Limits):
    """Read an upload (`segicl_data.imageio.read_image`; a .zip is a DICOM series), refusing an image above the voxel limit
    before its data are read where the header tells."""
    from segicl_data.imageio import ending_of, read_image

    path = Path(path)
    if ending_of(path) == ".zip":
        path = _unzip_series(path, limits)
    elif ending_of(path) in (".nii", ".nii.gz"):
        count = _header_voxels(path)
        if count is not None:
            _check_voxels(count, path.name, limits)
    image = read_image(path)
    _check_voxels(int(image.array.size), Path(image.path).name, limits)
    return image


def output_ending(image) -> str:
    """How an output is written beside its input: NIfTI in the input's geometry, else the input's own format."""
    if image.orientation is not None:
        return ".nii.gz"
    return ".png" if image.format == "png" else ".npy"


def _stem(path: Path) -> str:
    name = Path(path).name
    for ending in READABLE_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)] or "image"
    return name


# ------------------------------------------------------------------------------------------------- pictures
def display_slices(slices: np.ndarray, normalization: str) -> np.ndarray:
    """Display slices [S, H, W] in [0, 1], mapped as the model maps them (`segicl_data.preprocess.normalize_intensity`)."""
    from segicl_data.preprocess import normalize_intensity

    return normalize_intensity(np.asarray(slices, dtype=np.float32), normalization)


def _enlarge(rgb: np.ndarray, side: int = 256) -> np.ndarray:
    factor = max(1, side // max(rgb.shape[:2]))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def grey(image: np.ndarray) -> np.ndarray:
    """A [0, 1] slice as RGB uint8."""
    return np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def overlay(image: np.ndarray, mask: np.ndarray, truth: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """The slice in grey, the mask over it in red, the truth's outline in green."""
    from scipy.ndimage import binary_erosion

    rgb = grey(image).astype(np.float32)
    inside = mask > 0
    rgb[inside] = (1 - alpha) * rgb[inside] + alpha * np.array([255.0, 30.0, 30.0])
    if truth is not None:
        truth = truth > 0
        rgb[truth & ~binary_erosion(truth)] = (40.0, 230.0, 40.0)
    return rgb.astype(np.uint8)


def heat(values: np.ndarray, top: float = UNCERTAINTY_TOP) -> np.ndarray:
    """A map in [0, top] in matplotlib's magma (black 0 .. light yellow `top`), RGB uint8."""
    from matplotlib import colormaps

    return (colormaps["magma"](np.clip(values / top, 0, 1))[..., :3] * 255).astype(np.uint8)


def labels_overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A label map over the slice, one colour per value (tab10)."""
    from matplotlib import colormaps

    rgb = grey(image).astype(np.float32)
    palette = colormaps["tab10"]
    for value in np.unique(labels):
        if value != 0:
            inside = labels == value
            rgb[inside] = 0.5 * rgb[inside] + 0.5 * np.array(palette(int(value) % 10)[:3]) * 255
    return rgb.astype(np.uint8)


def data_url(rgb: np.ndarray) -> str:
    """An RGB picture, enlarged to at least 256 px (nearest), as a PNG data URL for an <img>."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_enlarge(rgb)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------------------- segment
@dataclass
class QueryPreview:
    """An uploaded query as the page shows it before a run: its display slices in [0, 1] and one line about it."""

    display: np.ndarray
    summary: str


def preview_query(path: Path, axis: str, normalization: str, limits: Limits) -> QueryPreview:
    from segicl_data.volumes import to_model_slices

    image = open_image(path, limits)
    slices = to_model_slices(image, axis)
    kind = "one slice" if len(slices) == 1 else f"{len(slices)} {axis} slices"
    return QueryPreview(display_slices(slices, normalization),
                        f"{Path(path).name}: {kind} of {slices.shape[1]} x {slices.shape[2]} px ({image.format})")


def instruction_for(structure: str, normalization: str = "percentile") -> str:
    """The training templates' wording: "Segment the <structure> in this <modality> slice."."""
    modality = "CT" if normalization == "ct" else "T1-weighted MRI"
    return f"Segment the {structure} in this {modality} slice."


@dataclass
class SegmentRequest:
    """One press of "run" on the Segment tab. Examples come as uploaded (image, mask) pairs or from a bank (a built
    or imported dataset, `bank_structure`, k per slice; `position`: where a single query slice lies in its
    volume)."""

    query: Path
    instruction: str
    examples: list[tuple[Path | None, Path | None]] = field(default_factory=list)
    example_label: str | None = None
    bank: Path | None = None
    bank_structure: str | None = None
    k: int = 3
    position: float = 0.5
    truth: Path | None = None
    axis: str = "axial"
    crop: bool = True
    settings: Settings = field(default_factory=Settings)


@dataclass
class SegmentView:
    """A finished run as the page shows it: display slices, the result on them, the truth (0/1) if one was given,
    Dice of the whole image, the files to download, the seconds of the run and the slice to show first."""

    query: Query
    display: np.ndarray
    result: SegmentResult
    truth: np.ndarray | None
    dice: float | None
    files: dict[str, Path]
    seconds: float
    first_slice: int
    samples: int


def _targets(request: SegmentRequest, query: Query) -> list[Target]:
    slices = len(query.model_slices)
    if request.bank is not None:
        from segicl_data.dataset import SliceDataset

        if request.examples:
            raise ValueError("give examples either as uploads or from a dataset, not both")
        if not request.bank_structure:
            raise ValueError("pick the structure of the dataset whose cases lend the examples")
        position = request.position if slices == 1 else None
        return bank_targets(SliceDataset(request.bank), [request.bank_structure], request.instruction or None,
                            request.k, query.model_slices, position)
    pairs = []
    for number, (image, mask) in enumerate(request.examples, start=1):
        if (image is None) != (mask is None):
            raise ValueError(f"example {number}: give both an image and its mask")
        if image is not None:
            pairs.append((image, mask))
    if len(pairs) > EXAMPLE_SLOTS:
        raise ValueError(f"at most {EXAMPLE_SLOTS} example pairs, got {len(pairs)}")
    shared, per_slice = file_examples(pairs, slices, request.axis, request.settings.normalization,
                                      request.example_label or None)
    return [Target(request.instruction, shared, per_slice)]


def read_truth(path: Path, query: Query, limits: Limits) -> np.ndarray:
    """A truth mask on the query's display slices, 0/1; refused unless it is binary and on the query's grid."""
    from segicl_data.preprocess import as_binary_mask
    from segicl_data.volumes import to_model_slices

    truth = to_model_slices(open_image(path, limits), query.axis)
    if truth.shape != query.slices.shape:
        raise ValueError(f"the truth mask {Path(path).name} is {' x '.join(map(str, truth.shape))} (slices x rows x "
                         f"columns) once oriented, the query {' x '.join(map(str, query.slices.shape))}: they must "
                         "be the same grid")
    return as_binary_mask(truth, f"the truth mask {Path(path).name}").astype(np.uint8)


def write_segment_files(query: Query, result: SegmentResult, folder: Path, stem: str) -> dict[str, Path]:
    """The mask and the uncertainty in the input's geometry (NIfTI, or the input's format), and for a single slice
    also the mask as PNG (as shown: display-oriented)."""
    from segicl_data.imageio import write_image

    folder.mkdir(parents=True, exist_ok=True)
    ending = output_ending(query.image)
    files = {"mask": write_image(folder / f"{stem}_mask{ending}", query.to_file(result.mask), query.image),
             "uncertainty": write_image(folder / f"{stem}_uncertainty{ending}",
                                        query.to_file(result.uncertainty), query.image)}
    if len(query.slices) == 1 and ending != ".png":
        files["mask PNG"] = write_image(folder / f"{stem}_mask.png", result.mask[0])
    return files


def run_segment(state: AppState, request: SegmentRequest, folder: Path,
                callback: Callable[[float], None] | None = None) -> SegmentView:
    """Read the uploads, segment (one model run at a time on this server), score against the truth, write the
    downloads into `folder`."""
    from segicl_data.metrics import dice

    start = time.perf_counter()
    settings = request.settings
    if request.bank is None and not request.instruction.strip():
        raise ValueError("type an instruction, e.g. \"Segment the thalamus in this T1-weighted MRI slice.\"")
    if settings.steps < 1 or settings.samples < 1:
        raise ValueError(f"steps and samples must be >= 1, got {settings.steps} and {settings.samples}")
    query = prepare_query(open_image(request.query, state.limits), request.axis, request.crop,
                          settings.normalization == "ct")
    if len(query.model_slices) > state.limits.max_slices:
        raise ValueError(f"{request.query.name} has {len(query.model_slices)} slices to segment, more than this "
                         f"server's limit of {state.limits.max_slices} (segicl serve --max-slices)")
    truth = read_truth(request.truth, query, state.limits) if request.truth else None
    targets = _targets(request, query)
    with state.lock:
        result = segment_image(query, targets, state.segicl, settings, callback=callback)
    files = write_segment_files(query, result, folder, _stem(request.query))
    return SegmentView(query, display_slices(query.slices, settings.normalization), result, truth,
                       None if truth is None else dice(result.mask, truth), files, time.perf_counter() - start,
                       first_slice(result.mask), settings.samples)


def first_slice(mask: np.ndarray) -> int:
    """The slice to show first: the one with the most mask, or the middle one when the mask is empty."""
    areas = mask.reshape(len(mask), -1).sum(axis=1)
    return int(areas.argmax()) if areas.any() else len(areas) // 2


def render_segment(view: SegmentView, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Slice `index`: the overlay (mask red, truth outline green), the uncertainty map, and the caption."""
    from segicl_data.metrics import dice

    mask = view.result.mask[index]
    truth = None if view.truth is None else view.truth[index]
    words = [f"slice {index + 1} of {len(view.display)}: {int(mask.sum())} px segmented (red)"]
    if view.dice is not None:
        scope = "" if len(view.display) == 1 else f" (this slice {dice(mask, truth):.3f})"
        words.append(f"Dice against the truth (green outline) {view.dice:.3f}{scope}")
    words.append(f"uncertainty: spread of {view.samples} samples, black 0 to yellow {UNCERTAINTY_TOP}"
                 if view.samples > 1 else "one sample: no uncertainty (all black)")
    weights = [report["model_weight"] for report in view.result.structures.values() if "model_weight" in report]
    if weights:
        words.append(f"examples registered to the query: the model's share of the answer {weights[0]:.1f}")
    words.append(f"{view.seconds:.1f} s")
    return overlay(view.display[index], mask, truth), heat(view.result.uncertainty[index]), "; ".join(words)


# ------------------------------------------------------------------------------------------- label a folder
@dataclass
class FolderRequest:
    """The labelling loop's choices: a folder of cases (one the server offers), an imported dataset whose example bank
    lends k examples per slice of one structure and takes the checked cases, and how the decoder runs (the cases are
    ranked by the spread of its samples, so at least 2)."""

    folder: Path
    bank: Path
    structure: str | None
    k: int = 3
    axis: str = "axial"
    settings: Settings = field(default_factory=Settings)


@dataclass
class FolderCase:
    """One case of the folder as the list shows it: its uncertainty score (None: not segmented yet) and whether it
    lends examples of the structure already."""

    name: str
    uncertainty: float | None
    in_bank: bool


@dataclass
class FolderView:
    """A finished run over the folder: every case, the most uncertain first; how many were segmented, in seconds."""

    cases: list[FolderCase]
    segmented: int
    seconds: float


def predict_arguments(request: FolderRequest, base: Path, model: Path | None) -> argparse.Namespace:
    """`segicl predict`'s flags for the request (its defaults for the rest), writing below `base` into a folder of the
    input folder and the run's description: another choice never resumes into another's predictions."""
    from segicl_commands.predict import add_predict_command, run_description
    from segicl_weights import SEGICL_TINY

    if not request.structure:
        raise ValueError("pick the structure of the dataset whose cases lend the examples")
    settings = request.settings
    flags = ["predict", "-i", str(request.folder), "-o", str(base), "--examples-from", str(request.bank), "--label",
             request.structure, "-k", str(request.k), "--axis", request.axis, "--normalization",
             settings.normalization, "--steps", str(settings.steps), "--samples", str(settings.samples),
             "--batch-size", str(settings.batch_size), "--seed", str(settings.seed), "--probabilities",
             "--uncertainty"]
    flags += ["--largest-component"] if settings.largest_component else []
    flags += ["--model", str(model)] if model is not None else []
    parser = argparse.ArgumentParser(prog="segicl")
    add_predict_command(parser.add_subparsers(dest="command"), SEGICL_TINY)
    args = parser.parse_args(flags)
    key = json.dumps([str(request.folder), run_description(args)])
    args.output = base / hashlib.sha1(key.encode()).hexdigest()[:12]
    return args


def imported_banks(banks: dict[str, Path]) -> dict[str, Path]:
    """The banks that can grow: the imported datasets (the built-in one takes no added case)."""
    from segicl_data.dataset import SliceDataset

    return {name: root for name, root in banks.items() if SliceDataset(root).imported}


def bank_cases(dataset: Path, structure: str) -> set[str]:
    """The cases of a dataset that lend examples of `structure`."""
    from segicl_data.bank import find_structure
    from segicl_data.dataset import SliceDataset

    opened = SliceDataset(dataset)
    return {opened.rows[row]["volume"] for row in find_structure(opened, structure).rows}


def folder_cases(args: argparse.Namespace) -> list[FolderCase]:
    """The folder's cases in predictions.json's ranking (most uncertain first), then those not segmented yet."""
    from segicl_data.cases import list_input_cases

    summary_file = args.output / "predictions.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"cases": [],
                                                                                 "ranked_by_uncertainty": []}
    scores = {record["case"]: record["uncertainty"] for record in summary["cases"]}
    names = [case.name for case in list_input_cases(args.input)]
    order = [name for name in summary["ranked_by_uncertainty"] if name in names]
    banked = bank_cases(args.examples_from, args.label)
    return [FolderCase(name, scores.get(name), name in banked) for name in order + sorted(set(names) - set(order))]


def folder_listing(state: AppState, request: FolderRequest, base: Path) -> list[FolderCase]:
    """The list the page shows for the request's predictions below `base`."""
    return folder_cases(predict_arguments(request, base, state.model_folder))


def describe_case(case: FolderCase) -> str:
    """A case's line in the list: its uncertainty score, and whether the bank has it."""
    score = "not segmented yet" if case.uncertainty is None else f"uncertainty {case.uncertainty:.4f}"
    return f"{score}; in the bank" if case.in_bank else score


def run_folder(state: AppState, request: FolderRequest, base: Path, callback: Callable[[float], None] | None = None,
               again: bool = False) -> FolderView:
    """Segment the folder's cases that the bank does not have, with `segicl predict`'s functions: those not finished
    yet, or (`again`, after the bank grew) every one. predictions.json is written also after a cancel, with the cases
    finished by then."""
    from segicl_commands.predict import (check_model_flags, is_finished, predict_case, prepare_output,
                                         run_description, write_predictions)
    from segicl_data.cases import list_input_cases

    start = time.perf_counter()
    args = predict_arguments(request, base, state.model_folder)
    check_model_flags(args, uncertainty=True)
    cases = list_input_cases(args.input)
    description = run_description(args)
    prepare_output(args.output, description, overwrite=False)
    banked = bank_cases(args.examples_from, args.label)
    todo = [case for case in cases if case.name not in banked and (again or not is_finished(case, args.output, args))]
    try:
        for number, case in enumerate(todo):
            progress = None if callback is None else lambda done, n=number: callback((n + done) / len(todo))
            with state.lock:
                predict_case(state.segicl, case, args.output, args, progress)
    finally:
        write_predictions(args.output, cases, description)
    return FolderView(folder_cases(args), len(todo), time.perf_counter() - start)


def folder_case(args: argparse.Namespace, name: str):
    """The folder's case of this name (`segicl_data.cases.Case`); no other is ever read."""
    from segicl_data.cases import list_input_cases

    for case in list_input_cases(args.input):
        if case.name == name:
            return case
    raise ValueError(f"no case {name!r} in the folder {args.input.name}")


def finished_record(args: argparse.Namespace, case) -> dict:
    """The case's record of `segicl predict` (.predict/CASE.json), refused while the case is not segmented."""
    from segicl_commands.predict import RECORDS, is_finished

    if not is_finished(case, args.output, args):
        raise ValueError(f"{case.name} is not segmented yet: segment the folder first")
    return json.loads((args.output / RECORDS / f"{case.name}.json").read_text())


def open_case(state: AppState, request: FolderRequest, base: Path, name: str) -> SegmentView:
    """A segmented case as the Segment tab shows a result: its slices, the predicted mask and the uncertainty, read
    from the files `segicl predict` wrote."""
    from segicl_commands.predict import case_files
    from segicl_data.volumes import to_model_slices

    args = predict_arguments(request, base, state.model_folder)
    case = folder_case(args, name)
    record = finished_record(args, case)
    files = case_files(case, args.output, args)
    image = open_image(case.path, state.limits)
    slices = to_model_slices(image, args.axis)
    mask, probabilities, uncertainty = (to_model_slices(open_image(files[what], state.limits), args.axis)
                                        for what in ("mask", "probabilities", "uncertainty"))
    result = SegmentResult(mask, probabilities, uncertainty, structures=record["structures"])
    return SegmentView(Query(image, args.axis, slices, slices), display_slices(slices, args.normalization), result,
                       None, None, files, record["seconds"], first_slice(mask), args.samples)


def structure_label_map(image_path: Path, mask_path: Path, dataset: Path, structure: str, limits: Limits,
                        target: Path) -> Path:
    """A 0/1 mask of one structure as the dataset's label map (the structure's label value inside), written to
    `target` in the mask's own geometry; refused unless the mask is binary and on the image's grid."""
    from segicl_data.bank import find_structure
    from segicl_data.dataset import SliceDataset
    from segicl_data.imageio import write_image
    from segicl_data.preprocess import as_binary_mask

    found = find_structure(SliceDataset(dataset), structure)
    if len(found.label_ids) != 1:
        raise ValueError(f"{found.name} is a region of the label values {list(found.label_ids)}: add its corrected "
                         "label map with `segicl bank add`")
    image, mask = open_image(image_path, limits), open_image(mask_path, limits)
    name = f"the mask {Path(mask_path).name}"
    if mask.array.shape != image.array.shape:
        raise ValueError(f"{name} is {' x '.join(map(str, mask.array.shape))} voxels, the case "
                         f"{' x '.join(map(str, image.array.shape))}: they must be the same grid")
    binary = as_binary_mask(mask.array, name).astype(np.uint16)
    return write_image(target, binary * found.label_ids[0], mask)


def add_to_bank(state: AppState, request: FolderRequest, base: Path, name: str, corrected: Path | None = None) -> str:
    """Add a case of the folder to the dataset's bank (`segicl_data.importer.add_case`, with its checks): its
    prediction as it is, or the `corrected` mask uploaded for it. Returns the line that says what was added."""
    from segicl_commands.predict import case_files
    from segicl_data.importer import add_case

    args = predict_arguments(request, base, state.model_folder)
    case = folder_case(args, name)
    if corrected is None:
        finished_record(args, case)
    mask = corrected or case_files(case, args.output, args)["mask"]
    label = structure_label_map(case.path, mask, args.examples_from, args.label, state.limits,
                                args.output / "bank" / f"{case.name}.nii.gz")
    with state.lock:
        rows = add_case(args.examples_from, case.path, label, case.name)
    structures = ", ".join(row["name"] for row in rows if row["kind"] != "multiclass")
    return f"added {case.name} to {Path(args.examples_from).name}: {structures}"


# ------------------------------------------------------------------------------------------------ image task
@dataclass
class ImageTaskRequest:
    """One press of "run" on the Image-task tab: MVG from one prompt pair (2-D slices or volumes)."""

    task: str
    prompt_image: Path
    prompt_target: Path
    query: Path
    region: Path | None = None
    normalization: str = "percentile"
    axis: str = "axial"


@dataclass
class ImageTaskView:
    """The query's display slices in [0, 1] and the output on them: a label map (segmentation) or an image in
    [0, 1]; the download and the seconds of the run."""

    task: str
    display: np.ndarray
    output: np.ndarray
    file: Path
    seconds: float


def run_image_task(state: AppState, request: ImageTaskRequest, folder: Path) -> ImageTaskView:
    """MVG on the uploads, the output written in the query's geometry and intensity scale (`segicl mvg`'s rule)."""
    from segicl_commands.mvg import output_to_write
    from segicl_data.imageio import write_image
    from segicl_data.preprocess import as_binary_mask
    from segicl_data.volumes import from_model_slices, to_model_slices

    start = time.perf_counter()
    if request.task not in IMAGE_TASKS:
        raise ValueError(f"unknown task {request.task!r}; expected one of {', '.join(IMAGE_TASKS)}")
    if request.task == "inpainting" and request.region is None:
        raise ValueError("inpainting needs a region mask: the pixels to restore")
    limits = state.limits
    query = open_image(request.query, limits)
    slices = to_model_slices(query, request.axis)
    if len(slices) > limits.max_slices:
        raise ValueError(f"{request.query.name} has {len(slices)} slices, more than this server's limit of "
                         f"{limits.max_slices} (segicl serve --max-slices)")
    prompt_images, prompt_targets = (to_model_slices(open_image(path, limits), request.axis)
                                     for path in (request.prompt_image, request.prompt_target))
    region = None
    if request.task == "inpainting":
        region = as_binary_mask(to_model_slices(open_image(request.region, limits), request.axis),
                                f"the region mask {request.region.name}") > 0
    with state.lock:
        result = state.mvg(slices, prompt_images, prompt_targets, request.task, normalization=request.normalization,
                           region=region)
    path = folder / f"{_stem(request.query)}_{request.task}{output_ending(query)}"
    folder.mkdir(parents=True, exist_ok=True)
    written = output_to_write(result, SimpleNamespace(task=request.task, output_scale="input", out=path))
    write_image(path, from_model_slices(written, query, request.axis), query)
    shown = result.output if request.task == "segmentation" else result.output_normalized
    return ImageTaskView(request.task, display_slices(slices, request.normalization), shown, path,
                         time.perf_counter() - start)


def render_image_task(view: ImageTaskView, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Slice `index`: the input and the result beside it (a label map over the input, or the output image)."""
    image = view.display[index]
    if view.task == "segmentation":
        values = [int(v) for v in np.unique(view.output[index]) if v != 0]
        result, what = labels_overlay(image, view.output[index]), f"labels {values or 'none'} on this slice"
    else:
        result, what = grey(view.output[index]), f"{view.task} output"
    return grey(image), result, f"slice {index + 1} of {len(view.display)}: {what}; {view.seconds:.1f} s"


# ------------------------------------------------------------------------------------------------------ page
def release_client(folder: Path) -> None:
    """What a closed page leaves: its files, and FastAPI's memo of its upload routes' endpoints. FastAPI (0.165)
    keeps each endpoint in lru_caches of 4096 entries after NiceGUI removes the route, and each endpoint holds its
    page alive (about 1 MB a page: `tests/reliability/test_load.py`), so the caches are emptied here."""
    import fastapi.dependencies.models as dependency_models

    shutil.rmtree(folder, ignore_errors=True)
    for name in ("_is_gen_callable_cached", "_is_async_gen_callable_cached", "_is_coroutine_callable_cached"):
        cached = getattr(dependency_models, name, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def register_page(state: AppState) -> None:
    """The page at "/" (NiceGUI): one Segment, one Label-a-folder and one Image-task panel per client, their files in
    the client's folder of the workspace (removed when the client goes)."""
    from nicegui import ui

    @ui.page("/")
    def index() -> None:
        client = ui.context.client
        folder = state.client_folder(client.id)
        client.on_delete(lambda: release_client(folder))
        ui.page_title("segicl")
        # compact uploaders (the header with its "+" button, the file's name below it, no file list); square pixels
        ui.add_css(".q-uploader { max-height: 4.2rem; } .q-uploader__list { display: none; } "
                   ".q-img__image { image-rendering: pixelated; }")
        with ui.row().classes("w-full items-baseline bg-primary text-white px-4 py-2"):
            ui.label("segicl").classes("text-h6")
            ui.label("in-context segmentation (SegICL) and image tasks (MVG), offline on this machine")
        with ui.tabs() as tabs:
            segment_tab = ui.tab("Segment").props("data-testid=tab-segment")
            folder_tab = ui.tab("Label a folder").props("data-testid=tab-folder")
            image_tab = ui.tab("Image task").props("data-testid=tab-image")
        with ui.tab_panels(tabs, value=segment_tab).classes("w-full"):
            with ui.tab_panel(segment_tab):
                SegmentPanel(state, folder / "segment")
            with ui.tab_panel(folder_tab):
                FolderPanel(state, folder / "folder")
            with ui.tab_panel(image_tab):
                ImageTaskPanel(state, folder / "image")


class Panel:
    """What the tabs share: uploads into the client's folder, the message line, the slice slider, a dataset's
    structures, the decoder's numbers, and a run in a worker thread with progress and cancel."""

    def __init__(self, state: AppState, folder: Path, prefix: str):
        self.state, self.folder, self.prefix = state, folder, prefix
        self.paths: dict[str, Path | None] = {}
        self.message = None
        self.job: Job | None = None

    def upload(self, slot: str, label: str, on_file: Callable[[Path], None] | None = None):
        from nicegui import ui

        limit = self.state.limits.upload_bytes
        self.paths[slot] = None
        name = ui.label("").classes("text-caption")

        async def handle(event) -> None:
            try:
                path = store_upload(self.folder / "uploads" / slot, event.file.name, await event.file.read(),
                                    self.state.limits)
                self.paths[slot] = path
                name.set_text(path.name)
                if on_file is not None:
                    on_file(path)
                self.say("")
            except (ValueError, FileNotFoundError) as error:
                self.paths[slot] = None
                name.set_text("")
                self.say(readable(error, self.state.workspace), error=True)
            finally:
                event.sender.reset()

        ui.upload(label=label, auto_upload=True, max_file_size=limit, on_upload=handle,
                  on_rejected=lambda: self.say(f"the file is larger than this server's upload limit of "
                                               f"{limit / 2**20:.0f} MiB (segicl serve --max-upload-mb)", error=True)
                  ).props(f"flat bordered dense hide-upload-btn data-testid={self.prefix}-{slot}").classes("w-full")
        return name

    def message_line(self):
        from nicegui import ui

        self.message = ui.label("").classes("text-body2").props(f"data-testid={self.prefix}-message")

    def say(self, text: str, error: bool = False) -> None:
        from nicegui import ui

        self.message.set_text(text)
        self.message.classes(replace="text-body2 text-negative" if error else "text-body2")
        if error and text:
            ui.notify(text, type="negative", multi_line=True)

    def report(self, error: BaseException) -> None:
        """A refusal as its message; anything else as its type and message (the traceback goes to the log)."""
        import logging

        if isinstance(error, (ValueError, FileNotFoundError, Cancelled)):
            self.say(readable(error, self.state.workspace), error=not isinstance(error, Cancelled))
        else:
            logging.getLogger("segicl.serve").exception("unexpected error in a request")
            self.say(f"internal error ({type(error).__name__}): {readable(error, self.state.workspace)}; the server "
                     "keeps serving", error=True)

    def set_slider(self, count: int, value: int) -> None:
        """The slice slider over `count` slices at `value`, shown only for a volume."""
        self.slider.props(f"max={max(count - 1, 1)}")
        self.slider.set_visibility(count > 1)
        self.slider.set_value(value)

    def bank_changed(self) -> None:
        """The structure list of the chosen dataset (`self.bank`, `self.bank_structure`)."""
        from segicl_data.bank import bank_structures
        from segicl_data.dataset import SliceDataset

        try:
            names = sorted(bank_structures(SliceDataset(self.state.banks[self.bank.value])))
        except (ValueError, FileNotFoundError) as error:
            names = []
            self.report(error)
        self.bank_structure.set_options(names, value=names[0] if names else None)

    def job_controls(self, buttons: list[tuple[str, Callable, str]], cancel_id: str, progress_id: str) -> None:
        """The buttons that start a run (label, handler, test id), the cancel button beside them, the progress bar
        below and the timer that moves it (`run_job`)."""
        from nicegui import ui

        with ui.row().classes("items-center"):
            self.run_buttons = [ui.button(label, on_click=handler).props(f"data-testid={testid}")
                                for label, handler, testid in buttons]
            self.cancel_button = ui.button("cancel", on_click=self.cancel).props(f"flat data-testid={cancel_id}")
            self.cancel_button.set_visibility(False)
        self.progress = ui.linear_progress(value=0, show_value=False).props(f"data-testid={progress_id}")
        self.progress.set_visibility(False)
        self.timer = ui.timer(0.2, self.tick, active=False)

    async def run_job(self, function: Callable, *args, **keywords):
        """`function(*args, callback, **keywords)` in a worker thread, the progress bar following `callback` and the
        cancel button stopping it; its answer, or None after a failure (said in the message line) or while the
        server stops."""
        from nicegui import run

        self.job = Job()
        for button in self.run_buttons:
            button.disable()
        self.cancel_button.set_visibility(True)
        self.progress.set_value(0)
        self.progress.set_visibility(True)
        self.timer.activate()
        try:
            return await run.io_bound(function, *args, self.job.callback, **keywords)
        except Exception as error:  # noqa: BLE001  every failure becomes one line in the page, the server goes on
            self.report(error)
            return None
        finally:
            self.timer.deactivate()
            self.progress.set_visibility(False)
            self.cancel_button.set_visibility(False)
            for button in self.run_buttons:
                button.enable()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def tick(self) -> None:
        if self.job is not None:
            self.progress.set_value(self.job.fraction)


class SegmentViewer(Panel):
    """A panel that shows a segmentation (`SegmentView`): the slice slider, the overlay, the uncertainty map, the
    caption and the downloads."""

    view: SegmentView | None = None

    def decoder_numbers(self, samples: int = DEFAULT_SAMPLES, testid_prefix: str = "") -> None:
        from nicegui import ui

        with ui.row():
            self.steps = ui.number("steps", value=DEFAULT_STEPS, min=1, max=100, precision=0).props("dense")
            self.samples = ui.number("samples", value=samples, min=1, max=16, precision=0).props("dense")
            self.register_examples = ui.checkbox(
                "register the examples to the query too (scans unlike the training data: other axes, contrasts; "
                "2+ examples, about 2x slower)").props(f"dense data-testid={testid_prefix}register-examples")

    def settings(self) -> Settings:
        """The decoder numbers, intensities and --register-examples as the page holds them."""
        return Settings(int(self.steps.value or 0), int(self.samples.value or 0),
                        normalization=self.normalization.value, register_examples=bool(self.register_examples.value))

    def outputs(self, testid_prefix: str = "") -> None:
        from nicegui import ui

        self.slider_label = ui.label("").classes("text-subtitle2")
        self.slider = ui.slider(min=0, max=1, step=1, value=0, on_change=self.show).props(
            f"label data-testid={testid_prefix}slice").classes("w-full")
        self.slider.set_visibility(False)
        with ui.row().classes("items-start gap-4"):
            with ui.column().classes("items-center"):
                ui.label("image and mask")
                self.overlay = ui.image("").classes("w-80 h-80").props(
                    f"{PICTURE} data-testid={testid_prefix}overlay")
            with ui.column().classes("items-center"):
                ui.label("uncertainty")
                self.uncertainty = ui.image("").classes("w-80 h-80").props(
                    f"{PICTURE} data-testid={testid_prefix}uncertainty")
        self.caption = ui.label("").props(f"data-testid={self.prefix}-summary")
        self.downloads = ui.row()
        self.testid_prefix = testid_prefix

    def show(self) -> None:
        if self.view is not None:
            self.show_view(int(self.slider.value or 0))

    def show_view(self, index: int) -> None:
        index = min(index, len(self.view.display) - 1)
        picture, spread, caption = render_segment(self.view, index)
        self.overlay.set_source(data_url(picture))
        self.uncertainty.set_source(data_url(spread))
        self.caption.set_text(caption)
        self.slider_label.set_text(f"slice {index + 1} of {len(self.view.display)}")

    def present(self, view: SegmentView) -> None:
        """A new result on show, at its first slice, with its files to download."""
        from nicegui import ui

        self.view = view
        self.set_slider(len(view.display), view.first_slice)
        self.show()
        self.downloads.clear()
        with self.downloads:
            for name, path in view.files.items():
                ui.button(f"download {name} ({path.name})", on_click=lambda p=path: ui.download.file(p)).props(
                    f"outline data-testid={self.testid_prefix}download-{name.replace(' ', '-')}")


class SegmentPanel(SegmentViewer):
    def __init__(self, state: AppState, folder: Path):
        from nicegui import ui

        super().__init__(state, folder, "segment")
        self.preview: QueryPreview | None = None
        with ui.row().classes("w-full no-wrap items-start gap-6"):
            with ui.column().classes("w-1/3 min-w-[22rem]"):
                self.inputs()
            with ui.column().classes("grow"):
                self.outputs()

    def inputs(self) -> None:
        from nicegui import ui

        ui.label("Query: NIfTI, DICOM file or zipped series, PNG/JPG, NPY").classes("text-subtitle2")
        self.query_name = self.upload("query", "query image", lambda path: self.new_query())
        with ui.row().classes("w-full"):
            self.axis = ui.select(["axial", "coronal", "sagittal"], value="axial", label="slicing axis",
                                  on_change=lambda: self.load_query()).classes("w-28")
            self.normalization = ui.select(INTENSITIES, value="percentile", label="intensities",
                                           on_change=lambda: self.load_query()).classes("w-40")
            self.crop = ui.checkbox("cut a volume to its foreground", value=True)
        names = self.state.structures
        self.structure = ui.select(names, label=f"structure ({self.state.structures_source}; or type your own)",
                                   with_input=True, new_value_mode="add-unique", clearable=True,
                                   on_change=self.structure_picked).classes("w-full").props("data-testid=structure")
        self.instruction = ui.input("instruction", placeholder="Segment the thalamus in this T1-weighted MRI slice."
                                    ).classes("w-full").props("data-testid=instruction")
        reads = self.state.segicl.model.config.max_examples
        ui.label(f"Examples (0-5 image/mask pairs; this model reads {reads} at a time: more are averaged over "
                 f"subsets of {reads})").classes("text-subtitle2")
        self.source = ui.toggle({"files": "upload pairs", "bank": "from a dataset"}, value="files",
                                on_change=self.source_changed)
        self.files_box = ui.column().classes("w-full")
        with self.files_box:
            self.pairs = ui.column().classes("w-full")
            self.pair_slots: list[int] = []
            self.add_pair()
            with ui.row().classes("w-full items-center"):
                ui.button("add an example pair", on_click=self.add_pair).props("flat dense data-testid=add-example")
                self.example_label = ui.input("label value in label-map masks (blank: binary masks)").classes("grow")
        self.bank_box = ui.column().classes("w-full")
        with self.bank_box:
            if self.state.banks:
                self.bank = ui.select(list(self.state.banks), label="dataset", value=next(iter(self.state.banks)),
                                      on_change=self.bank_changed).classes("w-full")
                self.bank_structure = ui.select([], label="its structure", with_input=True,
                                                on_change=self.bank_structure_picked).classes("w-full")
                self.k = ui.number("examples per slice (k)", value=3, min=1, max=EXAMPLE_SLOTS,
                                   precision=0).classes("w-48")
                ui.label("a single query slice: where it lies in its volume (bottom 0 .. top 1)").classes(
                    "text-caption")
                self.position = ui.slider(min=0, max=1, step=0.01, value=0.5).props("label")
                self.bank_changed()
            else:
                ui.label("no dataset: build the built-in one with `segicl data`, or import yours with `segicl data "
                         "import` and start with --examples-from FOLDER")
        self.bank_box.set_visibility(False)
        ui.label("Truth mask (optional, for Dice)").classes("text-subtitle2")
        self.truth_name = self.upload("truth", "truth mask")
        ui.label("Decoder").classes("text-subtitle2")
        self.setting = ui.toggle(list(DECODER_SETTINGS), value="default", on_change=self.setting_picked)
        self.setting_note = ui.label(DECODER_SETTINGS["default"][2]).classes("text-caption")
        self.decoder_numbers()
        self.job_controls([("run", self.run, "run")], "cancel", "progress")
        self.message_line()

    def outputs(self) -> None:
        super().outputs()
        self.slider_label.set_text("upload a query to see it here")

    # ------------------------------------------------------------------ handlers
    def structure_picked(self) -> None:
        if self.structure.value:
            self.instruction.set_value(instruction_for(self.structure.value, self.normalization.value))

    def source_changed(self) -> None:
        self.files_box.set_visibility(self.source.value == "files")
        self.bank_box.set_visibility(self.source.value == "bank")
        if self.state.banks and self.source.value == "bank":
            self.bank_structure_picked()

    def bank_structure_picked(self) -> None:
        if self.bank_structure.value and self.source.value == "bank":
            self.instruction.set_value(instruction_for(self.bank_structure.value, self.normalization.value))

    def add_pair(self) -> None:
        from nicegui import ui

        if len(self.pair_slots) >= EXAMPLE_SLOTS:
            self.say(f"at most {EXAMPLE_SLOTS} example pairs", error=True)
            return
        number = len(self.pair_slots)
        self.pair_slots.append(number)
        with self.pairs:
            with ui.row().classes("w-full no-wrap"):
                with ui.column().classes("w-1/2"):
                    self.upload(f"example-image-{number}", f"example {number + 1} image")
                with ui.column().classes("w-1/2"):
                    self.upload(f"example-mask-{number}", f"example {number + 1} mask")

    def setting_picked(self) -> None:
        steps, samples, note = DECODER_SETTINGS[self.setting.value]
        self.steps.set_value(steps)
        self.samples.set_value(samples)
        self.setting_note.set_text(note)

    def new_query(self) -> None:
        """A new query: the truth of the previous one no longer applies."""
        self.paths["truth"] = None
        self.truth_name.set_text("")
        self.load_query()

    def load_query(self) -> None:
        path = self.paths.get("query")
        self.view = None
        if path is None:
            return
        try:
            self.preview = preview_query(path, self.axis.value, self.normalization.value, self.state.limits)
        except (ValueError, FileNotFoundError) as error:
            self.preview = None
            self.paths["query"] = None
            self.query_name.set_text("")
            self.overlay.set_source("")
            self.slider.set_visibility(False)
            self.report(error)
            return
        self.query_name.set_text(self.preview.summary)
        count = len(self.preview.display)
        self.set_slider(count, count // 2)
        self.show()

    def show(self) -> None:
        if self.view is not None or self.preview is None:
            super().show()
            return
        count = len(self.preview.display)
        index = min(int(self.slider.value or 0), count - 1)
        self.overlay.set_source(data_url(grey(self.preview.display[index])))
        self.uncertainty.set_source("")
        self.caption.set_text("")
        self.slider_label.set_text(f"slice {index + 1} of {count}")

    def request(self) -> SegmentRequest:
        if self.paths.get("query") is None:
            raise ValueError("upload a query image first")
        settings = self.settings()
        common = dict(query=self.paths["query"], instruction=self.instruction.value or "", truth=self.paths["truth"],
                      axis=self.axis.value, crop=self.crop.value, settings=settings)
        if self.source.value == "bank":
            if not self.state.banks:
                raise ValueError("this server has no dataset to take examples from (segicl serve --examples-from)")
            return SegmentRequest(**common, bank=self.state.banks[self.bank.value],
                                  bank_structure=self.bank_structure.value, k=int(self.k.value or 0),
                                  position=float(self.position.value))
        pairs = [(self.paths[f"example-image-{n}"], self.paths[f"example-mask-{n}"]) for n in self.pair_slots]
        return SegmentRequest(**common, examples=pairs, example_label=(self.example_label.value or "").strip() or None)

    async def run(self) -> None:
        try:
            request = self.request()
        except ValueError as error:
            self.report(error)
            return
        self.say("running ...")
        view = await self.run_job(run_segment, self.state, request, self.folder / "outputs")
        if view is not None:
            self.say(f"done: {len(view.query.model_slices)} slice(s) segmented in {view.seconds:.1f} s")
            self.present(view)


class ImageTaskPanel(Panel):
    def __init__(self, state: AppState, folder: Path):
        from nicegui import ui

        super().__init__(state, folder, "image")
        self.view: ImageTaskView | None = None
        with ui.row().classes("w-full no-wrap items-start gap-6"):
            with ui.column().classes("w-1/3 min-w-[22rem]"):
                self.task = ui.select(list(IMAGE_TASKS), value="segmentation", label="task",
                                      on_change=self.task_changed).classes("w-full").props("data-testid=task")
                ui.label("Prompt pair: an image and its target (a label map for segmentation)").classes(
                    "text-subtitle2")
                self.upload("prompt-image", "prompt image")
                self.upload("prompt-target", "prompt target")
                ui.label("Query").classes("text-subtitle2")
                self.upload("query", "query image")
                self.region_box = ui.column().classes("w-full")
                with self.region_box:
                    ui.label("Region to restore (inpainting)").classes("text-subtitle2")
                    self.upload("region", "region mask")
                self.region_box.set_visibility(False)
                with ui.row():
                    self.axis = ui.select(["axial", "coronal", "sagittal"], value="axial",
                                          label="slicing axis").classes("w-28")
                    self.normalization = ui.select(INTENSITIES, value="percentile", label="intensities").classes(
                        "w-40")
                self.run_button = ui.button("run", on_click=self.run).props("data-testid=image-run")
                self.spinner = ui.spinner()
                self.spinner.set_visibility(False)
                self.message_line()
            with ui.column().classes("grow"):
                self.slider = ui.slider(min=0, max=1, step=1, value=0, on_change=self.show).props("label")
                self.slider.set_visibility(False)
                with ui.row().classes("items-start gap-4"):
                    with ui.column().classes("items-center"):
                        ui.label("input")
                        self.input_image = ui.image("").classes("w-80 h-80").props(PICTURE)
                    with ui.column().classes("items-center"):
                        ui.label("result")
                        self.result_image = ui.image("").classes("w-80 h-80").props(
                            f"{PICTURE} data-testid=image-result")
                self.caption = ui.label("")
                self.downloads = ui.row()

    def task_changed(self) -> None:
        self.region_box.set_visibility(self.task.value == "inpainting")

    async def run(self) -> None:
        from nicegui import run, ui

        missing = [slot for slot in ("prompt-image", "prompt-target", "query") if self.paths.get(slot) is None]
        if missing:
            self.say(f"upload the {', '.join(s.replace('-', ' ') for s in missing)} first", error=True)
            return
        request = ImageTaskRequest(self.task.value, self.paths["prompt-image"], self.paths["prompt-target"],
                                   self.paths["query"], self.paths.get("region"), self.normalization.value,
                                   self.axis.value)
        self.run_button.disable()
        self.spinner.set_visibility(True)
        self.say("running ...")
        try:
            view = await run.io_bound(run_image_task, self.state, request, self.folder / "outputs")
        except Exception as error:  # noqa: BLE001  every failure becomes one line in the page, the server goes on
            self.report(error)
            return
        finally:
            self.spinner.set_visibility(False)
            self.run_button.enable()
        if view is None:
            return
        self.view = view
        self.say(f"done in {view.seconds:.1f} s")
        self.set_slider(len(view.display), len(view.display) // 2)
        self.show()
        self.downloads.clear()
        with self.downloads:
            ui.button(f"download {view.file.name}", on_click=lambda: ui.download.file(view.file)).props(
                "outline data-testid=download-image-result")

    def show(self) -> None:
        if self.view is None:
            return
        picture, result, caption = render_image_task(self.view, min(int(self.slider.value or 0),
                                                                    len(self.view.display) - 1))
        self.input_image.set_source(data_url(picture))
        self.result_image.set_source(data_url(result))
        self.caption.set_text(caption)


class FolderPanel(SegmentViewer):
    """The labelling loop on a server folder: segment its cases with a dataset's bank, open the most uncertain, add
    each checked one (as predicted, or corrected) to the bank, and segment the rest again with the grown bank."""

    def __init__(self, state: AppState, folder: Path):
        from nicegui import ui

        super().__init__(state, folder, "folder")
        self.request: FolderRequest | None = None  # the choices of the last run, which the list and the cases follow
        self.case: str | None = None
        self.banks = imported_banks(state.banks)
        if not (state.folders and self.banks):
            ui.label("no folder to label: start the server with a folder of cases and the imported dataset that "
                     "lends examples, `segicl serve --folder DIR --examples-from DATASET`")
            return
        with ui.row().classes("w-full no-wrap items-start gap-6"):
            with ui.column().classes("w-1/3 min-w-[22rem]"):
                self.inputs()
            with ui.column().classes("grow"):
                self.outputs("folder-")
                self.bank_controls()

    def inputs(self) -> None:
        from nicegui import ui

        self.case_folder = ui.select(list(self.state.folders), label="folder of cases",
                                     value=next(iter(self.state.folders))).classes("w-full")
        self.bank = ui.select(list(self.banks), label="dataset: its bank lends the examples, takes the checked cases",
                              value=next(iter(self.banks)), on_change=self.bank_changed).classes("w-full")
        self.bank_structure = ui.select([], label="its structure", with_input=True).classes("w-full").props(
            "data-testid=folder-structure")
        self.bank_changed()
        with ui.row():
            self.k = ui.number("examples per slice (k)", value=3, min=1, max=EXAMPLE_SLOTS, precision=0).classes("w-40")
            self.normalization = ui.select(INTENSITIES, value="percentile", label="intensities").classes("w-40")
        self.decoder_numbers(samples=max(DEFAULT_SAMPLES, 2), testid_prefix="folder-")
        self.job_controls([("segment the folder", lambda: self.run(again=False), "folder-run"),
                           ("segment the rest again", lambda: self.run(again=True), "folder-rerun")],
                          "folder-cancel", "folder-progress")
        self.message_line()
        ui.label("Cases, most uncertain first: open one to check it").classes("text-subtitle2")
        self.case_list = ui.column().classes("w-full gap-0").props("data-testid=folder-cases")

    def bank_controls(self) -> None:
        from nicegui import ui

        self.case_box = ui.column().classes("w-full")
        with self.case_box:
            self.case_title = ui.label("").classes("text-subtitle2")
            ui.button("correct: add it to the bank", on_click=lambda: self.add(None)).props(
                "data-testid=folder-accept")
            ui.label("or upload its corrected mask (0/1, on the case's grid) and add that").classes("text-caption")
            self.corrected_name = self.upload("corrected", "corrected mask")
            ui.button("add the corrected mask to the bank", on_click=self.add_corrected).props(
                "outline data-testid=folder-add-corrected")
        self.case_box.set_visibility(False)

    def choices(self) -> FolderRequest:
        settings = self.settings()
        return FolderRequest(self.state.folders[self.case_folder.value], self.banks[self.bank.value],
                             self.bank_structure.value, int(self.k.value or 0), settings=settings)

    @property
    def predictions(self) -> Path:
        return self.folder / "predictions"

    async def run(self, again: bool) -> None:
        self.request = self.choices()
        self.say("segmenting the rest again with the grown bank ..." if again else "segmenting the folder ...")
        view = await self.run_job(run_folder, self.state, self.request, self.predictions, again=again)
        if view is None:  # failed or cancelled: the cases finished by then
            self.list_cases()
            return
        self.say(f"done: {view.segmented} case(s) segmented in {view.seconds:.1f} s")
        self.list_cases(view.cases)

    def list_cases(self, cases: list[FolderCase] | None = None) -> None:
        """The case list: `cases`, or read again from the last run's predictions."""
        from nicegui import ui

        if cases is None:
            try:
                cases = folder_listing(self.state, self.request, self.predictions)
            except (ValueError, FileNotFoundError) as error:
                self.report(error)
                return
        self.case_list.clear()
        with self.case_list:
            for case in cases:
                with ui.row().classes("items-center gap-2"):
                    ui.button(case.name, on_click=lambda name=case.name: self.open(name)).props(
                        f"flat dense no-caps data-testid=folder-open-{safe_name(case.name)}")
                    ui.label(describe_case(case)).classes("text-caption")

    def open(self, name: str) -> None:
        try:
            view = open_case(self.state, self.request, self.predictions, name)
        except (ValueError, FileNotFoundError) as error:
            self.report(error)
            return
        self.case = name
        self.case_title.set_text(f"{name}: is the red mask right?")
        self.paths["corrected"] = None
        self.corrected_name.set_text("")
        self.case_box.set_visibility(True)
        self.say("")
        self.present(view)

    async def add(self, corrected: Path | None) -> None:
        """The open case into the bank: its prediction (`corrected` None) or the corrected mask."""
        from nicegui import run

        try:
            added = await run.io_bound(add_to_bank, self.state, self.request, self.predictions, self.case, corrected)
        except Exception as error:  # noqa: BLE001  every failure becomes one line in the page, the server goes on
            self.report(error)
            return
        if added is not None:
            self.list_cases()
            self.say(added)

    async def add_corrected(self) -> None:
        if self.paths["corrected"] is None:
            self.say("upload the corrected mask first", error=True)
            return
        await self.add(self.paths["corrected"])
