"""Property-based fuzzing (Hypothesis) of the parts every input goes through, each property with a bounded number of
examples so that the file runs in about a minute on 2 cores:

* the image readers: any bytes under any reader's ending, and valid files with bytes changed or cut off, give a read
  image or a ValueError with a one-line message, never another exception; what is read goes through the
  orientation rule the same way;
* the orientation rule (segicl_data.volumes): a volume stored under any permutation and flip of its axes, and a small
  rotation, with the affine that keeps it in place, gives the same display slices, and writes back to its own voxels;
* the importer: random small label maps and dataset.json values import (the label slices holding only declared
  values) or are refused with a one-line ValueError, leaving nothing behind;
* the evaluator's metrics: Dice of a mask with itself is 1, Dice and IoU are symmetric and within [0, 1], and the
  HD95 of a mask shifted by d voxels is d voxel spacings.

The examples each property ran are counted in the session's tally (`make reliability` prints them).
SEGICL_FUZZ_DEPTH=N multiplies every bound by N, for a longer search.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from segicl_data.imageio import SUPPORTED_READ_ENDINGS, MedicalImage, read_image
from segicl_data.volumes import from_model_slices, to_model_slices

AXES = ("axial", "coronal", "sagittal")
DEPTH = int(os.environ.get("SEGICL_FUZZ_DEPTH", "1"))


def bounded(examples: int):
    """Hypothesis settings for one property: `examples` at most (times SEGICL_FUZZ_DEPTH), no deadline (the machine
    is shared), no database written into the repository."""
    return settings(max_examples=examples * DEPTH, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def one_line_refusal(error: BaseException) -> None:
    message = str(error)
    assert isinstance(error, ValueError), f"{type(error).__name__} escaped: {message}"
    assert message.strip() and "\n" not in message, f"not one line: {message!r}"


# ---------------------------------------------------------------------------------------------- readers
def valid_files(folder: Path) -> dict[str, bytes]:
    """One small valid file per reader: NIfTI (plain and gzipped), PNG, DICOM (pydicom's CT slice), NPY."""
    from pydicom.data import get_testdata_file

    volume = np.random.default_rng(0).random((8, 6, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.5, 2.0, 1.0])), folder / "volume.nii")
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.5, 2.0, 1.0])), folder / "volume.nii.gz")
    Image.fromarray((volume[..., 0] * 255).astype(np.uint8)).save(folder / "slice.png")
    np.save(folder / "slice.npy", volume[..., 0])
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "slice.dcm")
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    return valid_files(tmp_path_factory.mktemp("valid"))


def read_and_orient(data: bytes, name: str) -> str:
    """`data` as a file called `name`: read and cut into display slices ("read"), or refused in one line
    ("refused")."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            image = read_image(path)
            assert isinstance(image, MedicalImage)
            to_model_slices(image)
        except Exception as error:  # what escapes is what is checked
            one_line_refusal(error)
            return "refused"
    return "read"


@bounded(150)
@given(data=st.binary(max_size=1024), ending=st.sampled_from(SUPPORTED_READ_ENDINGS))
def test_any_bytes_under_any_ending_are_read_or_refused_in_one_line(data, ending, tally):
    outcome = read_and_orient(data, f"upload{ending}")
    tally["fuzz"][f"readers: any bytes under a reader's ending ({outcome})"] += 1


@bounded(250)
@given(name=st.sampled_from(["volume.nii", "volume.nii.gz", "slice.png", "slice.dcm", "slice.npy"]),
       changes=st.lists(st.tuples(st.one_of(st.integers(0, 351), st.integers(0, 2**20)), st.integers(0, 255)),
                        max_size=8),
       keep=st.one_of(st.none(), st.integers(0, 2**20)))
def test_valid_files_with_bytes_changed_or_cut_are_read_or_refused_in_one_line(name, changes, keep, originals, tally):
    """Changes fall in the header (the first 352 bytes: a NIfTI header's whole) or anywhere; `keep` cuts the file."""
    data = bytearray(originals[name])
    for position, value in changes:
        data[position % len(data)] = value
    outcome = read_and_orient(bytes(data[:keep]), name)
    tally["fuzz"][f"readers: valid files, header bytes changed or cut ({outcome})"] += 1


# The NIfTI-1 header fields that say where the data are, what they are and where they lie.
NIFTI_FIELDS = ("dim", "datatype", "bitpix", "vox_offset", "scl_slope", "scl_inter", "pixdim", "qform_code",
                "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x", "srow_y", "srow_z")
ANY_NUMBER = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.integers(-2**31, 2**31 - 1)


@bounded(200)
@given(fields=st.dictionaries(st.sampled_from(NIFTI_FIELDS), st.lists(ANY_NUMBER, min_size=1, max_size=8),
                              min_size=1, max_size=3),
       gzipped=st.booleans())
def test_nifti_headers_with_any_field_values_are_read_or_refused_in_one_line(fields, gzipped, tally):
    """A valid 8 x 6 x 4 volume whose header fields take any numbers (NaN, inf, 0, negative, huge)."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape((8, 6, 4))
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([1.0, 1.5, 2.0, 1.0]), code=1)
    with np.errstate(all="ignore"):
        for name, values in fields.items():
            field = header[name]
            field[...] = np.resize(np.asarray(values).astype(field.dtype), field.shape)
    data = header.binaryblock + b"\0" * 4 + np.ones((8, 6, 4), np.float32).tobytes()
    outcome = read_and_orient(gzip.compress(data) if gzipped else data, "header.nii.gz" if gzipped else "header.nii")
    tally["fuzz"][f"readers: NIfTI header fields of any value ({outcome})"] += 1


# ------------------------------------------------------------------------------------- orientation rule
def voxel_map(shape: tuple[int, ...], order: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    """The 4x4 matrix taking voxel indices of the volume stored as `stored(volume, order, flips)` to those of the
    volume: stored axis k is volume axis order[k], reversed where flips[k]."""
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1.0
    for k, axis in enumerate(order):
        matrix[axis, k] = -1.0 if flips[k] else 1.0
        matrix[axis, 3] = shape[axis] - 1 if flips[k] else 0.0
    return matrix


def stored(volume: np.ndarray, order: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    permuted = np.transpose(volume, order)
    return np.ascontiguousarray(np.flip(permuted, [k for k, flip in enumerate(flips) if flip]))


def rotation(axis: int, degrees: float) -> np.ndarray:
    """A rotation about one world axis; under 45 degrees the nearest axes, hence the display, stay the same."""
    a, b = [k for k in range(3) if k != axis]
    angle = np.deg2rad(degrees)
    matrix = np.eye(3)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
    return matrix


def nifti_like(array: np.ndarray, affine: np.ndarray) -> MedicalImage:
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(affine))
    return MedicalImage(array, affine, spacing, "".join(nib.aff2axcodes(affine)), "fuzz.nii.gz", "nifti")


@bounded(200)
@given(volume=hnp.arrays(np.int16, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6)),
       order=st.permutations([0, 1, 2]), flips=st.tuples(st.booleans(), st.booleans(), st.booleans()),
       spacing=st.tuples(*[st.floats(0.5, 3.0)] * 3), tilt=st.tuples(st.integers(0, 2), st.floats(-30.0, 30.0)),
       origin=st.tuples(*[st.floats(-100.0, 100.0)] * 3))
def test_any_permutation_and_flip_of_a_volume_gives_the_same_slices_and_writes_back_to_its_voxels(
        volume, order, flips, spacing, tilt, origin, tally):
    tally["fuzz"]["orientation: permuted, flipped, tilted storage of a volume"] += 1
    affine = np.eye(4)
    affine[:3, :3] = rotation(*tilt) @ np.diag(spacing)
    affine[:3, 3] = origin
    original = nifti_like(volume, affine)
    other = nifti_like(stored(volume, tuple(order), flips), affine @ voxel_map(volume.shape, tuple(order), flips))
    for axis in AXES:
        slices = to_model_slices(original, axis)
        np.testing.assert_array_equal(to_model_slices(other, axis), slices)
        np.testing.assert_array_equal(from_model_slices(slices, other, axis), other.array)
        np.testing.assert_array_equal(from_model_slices(slices, original, axis), volume)


# ---------------------------------------------------------------------------------------------- importer
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2, 3) | st.floats(-2, 3) | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                      max_size=3), max_leaves=5)
# Label values: small ones, and those at the edges of the integer types label maps are stored in.
LABEL_VALUES = st.integers(0, 5) | st.sampled_from([255, 256, 65535, 65536, 70000])
LABEL_TABLES = st.dictionaries(st.text(min_size=1, max_size=6),
                               LABEL_VALUES | st.lists(LABEL_VALUES, min_size=1, max_size=3), min_size=1, max_size=4)
# Mostly label tables (a quarter of them the plain one), a quarter any JSON value.
LABELS = st.one_of(st.just({"background": 0, "a": 1, "b": 2}), LABEL_TABLES, LABEL_TABLES, JSON_VALUES)
# Other keys of dataset.json: as written (two thirds), or one or two of them any JSON value.
FIELDS = st.one_of(st.just({}), st.just({}), st.dictionaries(
    st.sampled_from(["channel_names", "numTraining", "file_ending", "name", "dataset"]), JSON_VALUES,
    min_size=1, max_size=2))


def declared_values(labels) -> list[int]:
    """The non-zero label values a dataset.json "labels" declares, where it is an nnU-Net name -> value(s) table."""
    if not isinstance(labels, dict):
        return []
    values = [v for value in labels.values() for v in (value if isinstance(value, list) else [value])]
    return sorted({v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0})


# Values a label map of each type may hold that no label table declares well.
ODD_LABELS = {np.uint8: [255], np.int32: [-1, 70000], np.float32: [-1.0, 0.5, 70000.0]}


def label_maps_of(values: list[int]):
    """Label maps of the background and `values`, each with a block of the first value (a case shows a structure);
    a quarter of them also hold odd values (`ODD_LABELS`)."""
    dtypes = [np.int32, np.float32] + ([np.uint8] if max(values) <= 255 else [])
    clean = [0, 0, 0, *values]

    def with_a_structure(label_map: np.ndarray) -> np.ndarray:
        label_map[2:4, 2:4, 1] = values[0]
        return label_map

    def of(dtype, dirty: bool):
        elements = st.sampled_from(clean + ODD_LABELS[dtype] * dirty)
        return hnp.arrays(dtype, (6, 6, 3), elements=elements).map(with_a_structure)

    return st.tuples(st.sampled_from(dtypes), st.sampled_from([False] * 3 + [True])).flatmap(lambda c: of(*c))


def description(labels, count: int, fields: dict) -> dict:
    return {"channel_names": {"0": "T1"}, "labels": labels, "numTraining": count, "file_ending": ".nii.gz", **fields}


@bounded(100)
@given(labels=LABELS, fields=FIELDS, data=st.data())
def test_random_label_maps_and_dataset_json_import_or_are_refused_in_one_line(labels, fields, data, tally):
    from segicl_data.importer import ImportConfig, import_dataset

    declared = declared_values(labels)
    label_maps = data.draw(st.lists(label_maps_of(declared or [1, 2]), min_size=2, max_size=3))
    with tempfile.TemporaryDirectory() as folder:
        root, out = Path(folder) / "dataset", Path(folder) / "import"
        image = np.random.default_rng(len(label_maps)).random((6, 6, 3)).astype(np.float32)
        for index, label_map in enumerate(label_maps):
            nib_save(root / "imagesTr" / f"case{index}_0000.nii.gz", image)
            nib_save(root / "labelsTr" / f"case{index}.nii.gz", label_map)
        (root / "dataset.json").write_text(json.dumps(description(labels, len(label_maps), fields)))
        try:
            import_dataset(root, out, ImportConfig(resolution=16), progress=False)
        except Exception as error:  # what escapes is what is checked
            one_line_refusal(error)
            assert not out.exists() and not list(Path(folder).glob("import.partial-*")), "a refusal left files"
            tally["fuzz"]["importer: random label maps and dataset.json values (refused)"] += 1
            return
        for path in (out / "labels").rglob("*.npy"):
            assert set(np.unique(np.load(path)).tolist()) <= {0, *declared}, path
        tally["fuzz"]["importer: random label maps and dataset.json values (imported)"] += 1


def nib_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])), path)


# ----------------------------------------------------------------------------------------------- metrics
MASKS = hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=8))


@bounded(100)
@given(mask=MASKS)
def test_the_dice_of_a_mask_with_itself_is_1(mask, tally):
    from segicl_data.metrics import dice, iou

    tally["fuzz"]["metrics: Dice and IoU of a mask with itself"] += 1
    assert dice(mask, mask) == pytest.approx(1.0) and iou(mask, mask) == pytest.approx(1.0)


@bounded(100)
@given(pair=MASKS.flatmap(lambda mask: st.tuples(st.just(mask), hnp.arrays(np.bool_, mask.shape))))
def test_dice_and_iou_are_symmetric_and_within_0_and_1(pair, tally):
    from segicl_data.metrics import dice, iou

    tally["fuzz"]["metrics: Dice and IoU symmetric, in [0, 1]"] += 1
    a, b = pair
    assert dice(a, b) == pytest.approx(dice(b, a)) and iou(a, b) == pytest.approx(iou(b, a))
    assert 0.0 <= iou(a, b) <= dice(a, b) <= 1.0


@bounded(80)
@given(section=hnp.arrays(np.bool_, (5, 5), elements=st.booleans()).filter(np.any), axis=st.integers(0, 2),
       shift=st.integers(1, 4), spacing=st.tuples(*[st.floats(0.5, 3.0)] * 3))
def test_the_hd95_of_a_mask_shifted_by_d_voxels_is_d_voxel_spacings(section, axis, shift, spacing, tally):
    """A mask one voxel thick along the shift: every surface voxel's nearest voxel of the shifted mask is its own
    shifted copy, so every distance, and HD95, is shift x spacing along that axis."""
    from segicl_data.metrics import hd95

    tally["fuzz"]["metrics: HD95 of a mask shifted by d voxels"] += 1
    mask = np.zeros((12, 12, 12), bool)
    plane = np.moveaxis(mask, axis, 0)
    plane[2, 3:8, 3:8] = section
    shifted = np.roll(mask, shift, axis=axis)
    expected = shift * spacing[axis]
    assert hd95(shifted, mask, spacing) == pytest.approx(expected, abs=1e-3 * expected)
    assert hd95(mask, shifted, spacing) == pytest.approx(expected, abs=1e-3 * expected)
