"""The bad-input corpus: broken, hostile and unusual inputs for every entry point, written into a folder.

    python tests/corpus/make_corpus.py OUT    # writes the corpus into OUT and lists what it wrote

Only this script is committed. Everything is made from what ships: the example slices (examples/*.png), pydicom's
test CT slice and the tiny weights (weights/). The images are a few kB each; the tampered model copies are the size
of the shipped weights. tests/corpus/expected.py says what each entry point must do with each input, and
tests/reliability/test_corpus.py runs them.

`write_corpus(root)` returns a `Corpus`: each input by its name, e.g. corpus["truncated.nii.gz"].
"""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
WEIGHTS = REPO / "weights"
SLICE_MM = (1.0, 1.0, 2.0)
# A pickle that creates this file when it is loaded: the loaders must refuse it without unpickling it.
UNPICKLED = "UNPICKLED"


class Corpus(dict):
    """Input name -> path; `root` is the folder they were written into."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def add(self, name: str, path: Path) -> Path:
        self[name] = path
        return path


class Trap:
    """Unpickling this creates the file `sentinel`: the proof that a loader ran a pickle."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return open, (self.sentinel, "w")


# ---------------------------------------------------------------------------------------------- the scans
def example_slice(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / f"{name}.png"), np.float32)


def as_volume(slice_: np.ndarray, count: int = 4) -> np.ndarray:
    """A volume of `count` axial slices (each the slice shifted down one row more) whose display slices are the PNG's
    orientation: voxel (i, j, k) = (column, row from the bottom, slice)."""
    return np.stack([np.roll(slice_, index, axis=0) for index in range(count)], axis=-1).transpose(1, 0, 2)[:, ::-1]


def affine_of(spacing=SLICE_MM, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def oblique_affine() -> np.ndarray:
    """Rotated 20 degrees about z and 12 about x (the nearest axes stay RAS), anisotropic, shifted."""
    a, b = np.deg2rad(20), np.deg2rad(12)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ \
        np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(SLICE_MM)
    affine[:3, 3] = [-40.0, 17.0, 3.0]
    return affine


def left_handed(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels in world space, stored with the first axis reversed: the affine turns left-handed (LAS)."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = array.shape[0] - 1
    return np.ascontiguousarray(array[::-1]), affine @ flip


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine_of() if affine is None else affine), path)
    return path


def query_volume() -> np.ndarray:
    return as_volume(example_slice("colin27_thalamus_slice"))


def thalamus_labels() -> np.ndarray:
    """The query volume's thalamus (1) and, for a second structure, a block beside it (2)."""
    labels = as_volume((example_slice("colin27_thalamus_mask") > 0).astype(np.float32)).astype(np.uint8)
    labels[8:16, 40:48, :] = 2
    return labels


def nifti_with_rows(path: Path, array: np.ndarray, rows: list[list[float]]) -> Path:
    """A .nii whose sform rows are `rows` as given: nibabel will not write a degenerate affine itself."""
    header = nib.Nifti1Header()
    header.set_data_shape(array.shape)
    header.set_data_dtype(array.dtype)
    header["sform_code"], header["vox_offset"] = 1, 352
    header["srow_x"], header["srow_y"], header["srow_z"] = rows
    path.write_bytes(header.binaryblock + b"\0" * 4 + array.tobytes(order="F"))
    return path


def half_of(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def huge_header(path: Path) -> Path:
    """A NIfTI header that claims 10^4 x 10^4 x 10^4 = 10^12 float32 voxels (4 TB) over 100 bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape((10_000, 10_000, 10_000))
    header.set_data_dtype(np.float32)
    data = header.binaryblock + b"\0" * 104
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


# ------------------------------------------------------------------------------------------------- images
def write_images(corpus: Corpus) -> None:
    """Queries and examples: good ones in unusual geometry or paths, and broken ones."""
    folder = corpus.root / "images"
    volume, labels = query_volume(), thalamus_labels()
    good = corpus.add("volume.nii.gz", save_nifti(folder / "volume.nii.gz", volume))
    corpus.add("volume.nii", save_nifti(folder / "volume.nii", volume))
    corpus.add("labels.nii.gz", save_nifti(folder / "labels.nii.gz", labels))
    corpus.add("oblique.nii.gz", save_nifti(folder / "oblique.nii.gz", volume, oblique_affine()))
    corpus.add("left_handed.nii.gz", save_nifti(folder / "left_handed.nii.gz", *left_handed(volume, affine_of())))
    corpus.add("labels_left_handed.nii.gz",
               save_nifti(folder / "labels_left_handed.nii.gz", *left_handed(labels, affine_of())))
    corpus.add("labels_other_spacing.nii.gz",
               save_nifti(folder / "labels_other_spacing.nii.gz", labels, affine_of((2.0, 2.0, 2.0))))
    corpus.add("unicode.nii.gz", save_nifti(folder / "scans ü 扫描" / "T1 scän 1.nii.gz", volume))
    corpus.add("truncated.nii.gz", half_of(good, folder / "truncated.nii.gz"))
    corpus.add("truncated.nii", half_of(corpus["volume.nii"], folder / "truncated.nii"))
    corpus.add("corrupt.nii.gz", folder / "corrupt.nii.gz").write_bytes(np.random.default_rng(0).bytes(2048))
    corpus.add("empty.nii.gz", folder / "empty.nii.gz").write_bytes(b"")
    corpus.add("huge_header.nii.gz", huge_header(folder / "huge_header.nii.gz"))
    corpus.add("huge_header.nii", huge_header(folder / "huge_header.nii"))
    with_nan, with_inf = volume.copy(), volume.copy()
    with_nan[20:30, 20:30, 1] = np.nan
    with_inf[20:30, 20:30, 2] = np.inf
    corpus.add("nan.nii.gz", save_nifti(folder / "nan.nii.gz", with_nan))
    corpus.add("inf.nii.gz", save_nifti(folder / "inf.nii.gz", with_inf))
    corpus.add("constant.nii.gz", save_nifti(folder / "constant.nii.gz", np.full(volume.shape, 7.0, np.float32)))
    corpus.add("four_d.nii.gz", save_nifti(folder / "four_d.nii.gz", np.stack([volume, volume], axis=-1)))
    corpus.add("zero_column_affine.nii", nifti_with_rows(folder / "zero_column_affine.nii", volume,
                                                         [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0]]))
    corpus.add("nan_affine.nii", nifti_with_rows(folder / "nan_affine.nii", volume,
                                                 [[np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0]]))
    corpus.add("one_voxel.nii.gz", save_nifti(folder / "one_voxel.nii.gz", np.ones((1, 1, 1), np.float32)))
    Image.fromarray(np.full((1, 1), 100, np.uint8)).save(corpus.add("one_pixel.png", folder / "one_pixel.png"))
    corpus.add("truncated.png", half_of(EXAMPLES / "colin27_thalamus_slice.png", folder / "truncated.png"))
    corpus.add("volume.nrrd", folder / "volume.nrrd").write_bytes(b"NRRD0004\n")
    np.save(corpus.add("pickle.npy", folder / "pickle.npy"),
            np.array([Trap(corpus.root / UNPICKLED)], dtype=object), allow_pickle=True)
    os.symlink(folder / "no such scan.nii.gz", corpus.add("dangling.nii.gz", folder / "dangling.nii.gz"))
    write_dicom(corpus, folder)
    write_example_masks(corpus, folder)


def write_dicom(corpus: Corpus, folder: Path) -> None:
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm"))
    corpus.add("truncated.dcm", half_of(ct, folder / "truncated.dcm"))
    corpus.add("corrupt.dcm", folder / "corrupt.dcm").write_bytes(b"DICM" * 64)
    corpus.add("series_gap", dicom_series_with_a_gap(folder / "series_gap"))


def dicom_series_with_a_gap(folder: Path) -> Path:
    """A CT series of 5 slices whose middle file is cut short: GDCM leaves it out and would stack the rest unevenly."""
    from tests.data.test_imageio import _write_series

    volume = np.full((5, 12, 10), -1000, np.int16)
    volume[:, 2:10, 2:8] = 40
    _write_series(folder, volume, (1.0, 1.0, 2.5), (0.0, 0.0, 0.0))
    half_of(folder / "slice002.dcm", folder / "slice002.dcm")
    return folder


def write_example_masks(corpus: Corpus, folder: Path) -> None:
    """Example masks that cannot be the example slice's: in colour, with three values, of another size."""
    mask = np.asarray(Image.open(EXAMPLES / "mni152_thalamus_mask.png"))
    colour = np.stack([mask, mask // 2, np.zeros_like(mask)], axis=-1)
    Image.fromarray(colour).save(corpus.add("rgb_mask.png", folder / "rgb_mask.png"))
    three = (mask > 0).astype(np.uint8)
    three[:8, :8] = 2
    Image.fromarray(three).save(corpus.add("three_values_mask.png", folder / "three_values_mask.png"))
    Image.fromarray(mask[:32, :32]).save(corpus.add("small_mask.png", folder / "small_mask.png"))


# ----------------------------------------------------------------------------------------------- datasets
DATASET_JSON = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "thalamus": 1}, "numTraining": 3,
                "file_ending": ".nii.gz", "name": "Thalamus"}


def write_dataset(root: Path, json_changes: dict | None = None, affine: np.ndarray | None = None,
                  store: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None) -> Path:
    """An nnU-Net v2 folder of 3 labelled cases (the query volume, shifted per case, and its thalamus), its
    dataset.json changed by `json_changes`; `store` (array, affine) -> (array, affine) how each file is stored."""
    store = store or (lambda array, affine: (array, affine))
    affine = affine_of() if affine is None else affine
    for index in range(3):
        image = np.roll(query_volume(), index, axis=1)
        labels = np.roll(thalamus_labels() == 1, index, axis=1).astype(np.uint8)
        save_nifti(root / "imagesTr" / f"case{index}_0000.nii.gz", *store(image, affine))
        save_nifti(root / "labelsTr" / f"case{index}.nii.gz", *store(labels, affine))
    (root / "dataset.json").write_text(json.dumps({**DATASET_JSON, **(json_changes or {})}))
    return root


def replace_case_file(root: Path, name: str, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    folder = "labelsTr" if "_0000" not in name else "imagesTr"
    save_nifti(root / folder / name, array, affine)


def link(root: Path, name: str, target: Path) -> None:
    """Put a symbolic link to `target` in place of a case file of `root`."""
    path = root / ("labelsTr" if "_0000" not in name else "imagesTr") / name
    path.unlink()
    os.symlink(target, path)


def write_datasets(corpus: Corpus) -> None:
    """The dataset folder (3 cases), in unusual geometry or paths, and broken in one way each."""
    folder = corpus.root / "datasets"

    def dataset(name: str, **changes) -> Path:
        return corpus.add(name, write_dataset(folder / name, **changes))

    dataset("dataset")
    dataset("dataset_oblique", affine=oblique_affine())
    dataset("dataset_left_handed", store=left_handed)
    dataset("dataset ünicode spaces")
    dataset("dataset_numtraining_string", json_changes={"numTraining": "3"})
    dataset("dataset_channels_list", json_changes={"channel_names": ["T1"]})
    dataset("dataset_channel_null", json_changes={"channel_names": {"0": None}})
    dataset("dataset_manifest_list", json_changes={"dataset": ["case0"]})
    dataset("dataset_name_object", json_changes={"name": {"en": "Thalamus"}})
    dataset("dataset_label_as_text", json_changes={"labels": {"background": 0, "thalamus": "1"}})
    (dataset("dataset_not_json") / "dataset.json").write_text("{'labels': 1,")
    msd = dataset("msd_training_not_list")
    (msd / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "thalamus"}, "training": 3}))
    thalamus = (thalamus_labels() == 1).astype(np.uint8)
    replace_case_file(dataset("dataset_label_other_size"), "case1.nii.gz", thalamus[:, :-4])
    replace_case_file(dataset("dataset_label_other_spacing"), "case1.nii.gz", thalamus, affine_of((2.0, 2.0, 2.0)))
    replace_case_file(dataset("dataset_label_out_of_range"), "case1.nii.gz", thalamus * 7)
    replace_case_file(dataset("dataset_label_negative"), "case1.nii.gz", -thalamus.astype(np.int16))
    above_16_bits = dataset("dataset_label_above_16_bits",
                            json_changes={"labels": {"background": 0, "thalamus": 70000}})
    for index in range(3):
        replace_case_file(above_16_bits, f"case{index}.nii.gz", thalamus.astype(np.int32) * 70000)
    volume = query_volume()
    with_nan = volume.copy()
    with_nan[20:30, 20:30, 1] = np.nan
    replace_case_file(dataset("dataset_nan_image"), "case1_0000.nii.gz", with_nan)
    replace_case_file(dataset("dataset_constant_image"), "case1_0000.nii.gz", np.full(volume.shape, 5.0, np.float32))
    truncated = dataset("dataset_truncated_image") / "imagesTr" / "case1_0000.nii.gz"
    half_of(truncated, truncated)
    huge_header(dataset("dataset_huge_header") / "imagesTr" / "case1_0000.nii.gz")
    link(dataset("dataset_dangling_symlink"), "case1_0000.nii.gz", folder / "moved away.nii.gz")
    loop = dataset("dataset_symlink_loop")
    link(loop, "case1_0000.nii.gz", loop / "imagesTr" / "case1_0000.nii.gz")
    outside = shutil.copy(corpus["dataset"] / "imagesTr" / "case1_0000.nii.gz", folder / "outside_case1_0000.nii.gz")
    link(dataset("dataset_symlink_outside"), "case1_0000.nii.gz", Path(outside))
    text = folder / "outside_notes.nii.gz"
    text.write_text("not an image: a symbolic link led here from the dataset\n")
    link(dataset("dataset_symlink_to_text"), "case1.nii.gz", text)


# --------------------------------------------------------------------------------------------- evaluation
def write_evaluation(corpus: Corpus) -> None:
    """A truth folder of one case and prediction folders, each holding that case in one wrong way."""
    folder = corpus.root / "evaluation"
    labels = thalamus_labels()
    missed = labels.copy()
    missed[:, :, 3] = 0
    corpus.add("truth", save_nifti(folder / "truth" / "case.nii.gz", labels).parent)
    corpus.add("pred", save_nifti(folder / "pred" / "case.nii.gz", missed).parent)
    corpus.add("truth_left_handed", save_nifti(folder / "truth_left_handed" / "case.nii.gz",
                                               *left_handed(labels, affine_of())).parent)
    corpus.add("pred_left_handed", save_nifti(folder / "pred_left_handed" / "case.nii.gz",
                                              *left_handed(missed, affine_of())).parent)
    corpus.add("truth ünicode", save_nifti(folder / "truth ünicode" / "case ü.nii.gz", labels).parent)
    corpus.add("pred ünicode", save_nifti(folder / "pred ünicode" / "case ü.nii.gz", missed).parent)
    bad = {"pred_other_spacing": (missed, affine_of((2.0, 2.0, 2.0))), "pred_other_size": (missed[:-4], None),
           "pred_probabilities": (missed * 0.7, None), "pred_negative": (-missed.astype(np.int16), None),
           "pred_four_d": (np.stack([missed, missed], axis=-1), None)}
    for name, (array, affine) in bad.items():
        corpus.add(name, save_nifti(folder / name / "case.nii.gz", array, affine).parent)
    corpus.add("pred_truncated", folder / "pred_truncated")
    (folder / "pred_truncated").mkdir()
    half_of(corpus["pred"] / "case.nii.gz", folder / "pred_truncated" / "case.nii.gz")
    corpus.add("pred_huge_header", folder / "pred_huge_header")
    (folder / "pred_huge_header").mkdir()
    huge_header(folder / "pred_huge_header" / "case.nii.gz")
    corpus.add("labels_thalamus_only.json", folder / "labels_thalamus_only.json").write_text(
        json.dumps({"labels": {"background": 0, "thalamus": 1}}))
    corpus.add("labels_wrong_types.json", folder / "labels_wrong_types.json").write_text(
        json.dumps({"labels": ["background", "thalamus"]}))


# ------------------------------------------------------------------------------------------------- models
def write_models(corpus: Corpus) -> None:
    """Copies of the shipped SegICL and MVG model folders, each broken in one way (those whose weights are not
    broken link to the shipped weights file, which nothing writes)."""
    from safetensors.torch import load_file, save_file
    import torch

    folder = corpus.root / "models"
    for engine, source in (("segicl", WEIGHTS / "segicl-tiny"), ("mvg", WEIGHTS / "mvg-tiny")):
        weights = source / "model.safetensors"
        state = load_file(weights)
        name = sorted(state)[len(state) // 2]
        tampered = {
            "missing_tensor": {k: v for k, v in state.items() if k != name},
            "wrong_shape": {**state, name: torch.zeros(3, 3, dtype=state[name].dtype)},
            "nan_tensor": {**state, name: torch.full_like(state[name], float("nan"))},
            "extra_tensor": {**state, "injected.weight": torch.zeros(2)},
        }
        for problem, broken in tampered.items():
            save_file(broken, model_without_weights(corpus, source, folder / f"{engine}_{problem}") / weights.name)
        (model_without_weights(corpus, source, folder / f"{engine}_pickle") / weights.name).write_bytes(
            pickle.dumps({name: Trap(corpus.root / UNPICKLED)}))
        half_of(weights, model_without_weights(corpus, source, folder / f"{engine}_truncated") / weights.name)
        model_without_weights(corpus, source, folder / f"{engine}_no_weights")
        config = next(path.name for path in source.glob("*_config.json"))
        (model_with_weights(corpus, source, folder / f"{engine}_config_not_json") / config).write_text('{"preset": 1,')
        changed = json.loads((source / config).read_text())
        section = changed["vision"] if engine == "segicl" else changed
        section["patch_size"] = "eight"
        (model_with_weights(corpus, source, folder / f"{engine}_config_wrong_types") / config).write_text(
            json.dumps(changed))
    shutil.rmtree(model_with_weights(corpus, WEIGHTS / "segicl-tiny", folder / "segicl_no_tokenizer") / "tokenizer")


def model_without_weights(corpus: Corpus, source: Path, target: Path) -> Path:
    """A copy of the model folder `source` without its weights file."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    return corpus.add(target.name, target)


def model_with_weights(corpus: Corpus, source: Path, target: Path) -> Path:
    """A copy of the model folder `source` whose weights file links to the shipped one (never written)."""
    folder = model_without_weights(corpus, source, target)
    os.symlink(source / "model.safetensors", folder / "model.safetensors")
    return folder


# ------------------------------------------------------------------------------------------- case folders
def write_case_folders(corpus: Corpus) -> None:
    """Input folders of `segicl predict`, each with one problem."""
    images = corpus.root / "images"
    folders = {
        "cases_one_truncated": {"a_0000.nii.gz": images / "volume.nii.gz",
                                "b_0000.nii.gz": images / "truncated.nii.gz"},
        "cases_nan": {"a_0000.nii.gz": images / "nan.nii.gz"},
        "cases_constant": {"a_0000.nii.gz": images / "constant.nii.gz"},
        "cases ü unicode": {"scän 1_0000.nii.gz": images / "volume.nii.gz"},
        "cases_two_inputs": {"a.nii": images / "volume.nii", "a.nii.gz": images / "volume.nii.gz"},
        "cases_without_0000": {"a_0001.nii.gz": images / "volume.nii.gz"},
        "cases_without_images": {},
    }
    for name, files in folders.items():
        folder = corpus.add(name, corpus.root / "cases" / name)
        folder.mkdir(parents=True)
        for file_name, source in files.items():
            shutil.copy(source, folder / file_name)
    (corpus["cases_without_images"] / "notes.txt").write_text("no images here\n")


# ------------------------------------------------------------------------------------------------ uploads
def write_uploads(corpus: Corpus) -> None:
    """Zips as the web app takes a DICOM series: broken, escaping their folder, a bomb, one without DICOM."""
    folder = corpus.root / "uploads"
    folder.mkdir()
    corpus.add("corrupt.zip", folder / "corrupt.zip").write_bytes(b"PK\x03\x04" + b"\0" * 60)
    write_zip(corpus.add("escaping.zip", folder / "escaping.zip"), {"../../outside.dcm": b"DICM"})
    write_zip(corpus.add("bomb.zip", folder / "bomb.zip"), {"series/slice.dcm": b"\0" * 2**24})
    write_zip(corpus.add("no_dicom.zip", folder / "no_dicom.zip"), {"series/readme.txt": b"no images here"})
    series = corpus.root / "images" / "series_gap"
    write_zip(corpus.add("series_gap.zip", folder / "series_gap.zip"),
              {f"study/{path.name}": path.read_bytes() for path in sorted(series.iterdir())})


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())


def write_corpus(root: Path) -> Corpus:
    """Every input of the corpus, written into `root` (a new or empty folder)."""
    corpus = Corpus(Path(root))
    for write in (write_images, write_case_folders, write_datasets, write_evaluation, write_models,
                  write_uploads):
        write(corpus)
    return corpus


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/corpus/make_corpus.py OUT")
    sys.path.insert(0, str(REPO))  # for the DICOM series writer of tests/data/test_imageio.py
    written = write_corpus(Path(sys.argv[1]))
    for name, path in sorted(written.items()):
        print(f"{name:32s} {path.relative_to(written.root)}")
