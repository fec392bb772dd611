"""Tests for data/imageio.py: round trips, geometry, DICOM rescaling and error messages."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.data import get_testdata_file

from segicl_data.imageio import (
    SUPPORTED_READ_ENDINGS,
    SUPPORTED_WRITE_ENDINGS,
    ImageReadError,
    MedicalImage,
    check_finite,
    ending_of,
    read_image,
    write_image,
)


def _rotated_affine() -> np.ndarray:
    """Rotation about z and y, anisotropic zooms, translation; float32-exact entries
    because NIfTI stores the sform as float32."""
    a, b = 0.4, -0.25
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = [-91.5, 12.25, 40.0]
    return affine.astype(np.float32).astype(np.float64)


def _in_message(path: Path) -> str:
    return re.escape(str(path))


# ----------------------------------------------------------------------------- endings


@pytest.mark.parametrize(
    ("name", "ending"),
    [("a.nii.gz", ".nii.gz"), ("A.NII.GZ", ".nii.gz"), ("b.nii", ".nii"), ("c.gz", ".gz"),
     ("d.tar.png", ".png"), ("e.DCM", ".dcm"), ("noext", "")],
)
def test_ending_of(name: str, ending: str) -> None:
    assert ending_of(Path("/x") / name) == ending


def test_supported_endings() -> None:
    assert ".nii.gz" in SUPPORTED_READ_ENDINGS and ".dcm" in SUPPORTED_READ_ENDINGS
    assert ".dcm" not in SUPPORTED_WRITE_ENDINGS
    assert set(SUPPORTED_WRITE_ENDINGS) <= set(SUPPORTED_READ_ENDINGS)


# ----------------------------------------------------------------------------- NIfTI


def _nifti_reference(tmp_path: Path) -> MedicalImage:
    affine = _rotated_affine()
    volume = np.random.default_rng(0).normal(size=(6, 7, 5)).astype(np.float32)
    path = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return read_image(path)


def test_nifti_float_round_trip(tmp_path: Path) -> None:
    affine = _rotated_affine()
    volume = np.random.default_rng(1).normal(size=(9, 8, 7)).astype(np.float32)
    reference = MedicalImage(volume, affine, (0.8, 1.2, 2.5), "RAS", "mem", "npy")

    out = write_image(tmp_path / "vol.nii.gz", volume, reference=reference)
    image = read_image(out)

    assert out == tmp_path / "vol.nii.gz"
    assert image.format == "nifti"
    assert image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, volume)
    np.testing.assert_array_equal(image.affine, affine)
    assert image.spacing == pytest.approx((0.8, 1.2, 2.5), abs=1e-6)
    assert image.orientation == "".join(nib.aff2axcodes(affine))


def test_nifti_without_reference_gets_identity(tmp_path: Path) -> None:
    volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    image = read_image(write_image(tmp_path / "plain.nii", volume))
    np.testing.assert_array_equal(image.affine, np.eye(4))
    np.testing.assert_array_equal(image.array, volume)
    assert image.orientation == "RAS"
    assert image.spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32])
def test_nifti_label_map_stays_integer(tmp_path: Path, dtype: type) -> None:
    labels = np.random.default_rng(2).integers(0, 5, size=(5, 6, 4)).astype(dtype)
    image = read_image(write_image(tmp_path / "labels.nii.gz", labels))
    assert image.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image.array, labels)


def test_nifti_int64_and_bool_are_written_as_integers(tmp_path: Path) -> None:
    labels = np.array([[[0, 3], [7, 1]]], dtype=np.int64)
    assert read_image(write_image(tmp_path / "i64.nii.gz", labels)).array.dtype == np.int32
    mask = labels > 2
    back = read_image(write_image(tmp_path / "bool.nii.gz", mask)).array
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask.astype(np.uint8))


def test_nifti_scaled_integers_read_as_float(tmp_path: Path) -> None:
    stored = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, str(path))
    array = read_image(path).array
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, stored * 2.0 - 1024.0)


def test_mask_written_with_nifti_reference_keeps_geometry(tmp_path: Path) -> None:
    reference = _nifti_reference(tmp_path)
    mask = (reference.array > 0).astype(np.uint8)

    written = read_image(write_image(tmp_path / "mask.nii.gz", mask, reference=reference))

    assert written.array.shape == reference.array.shape
    assert written.array.dtype == np.uint8
    np.testing.assert_array_equal(written.array, mask)
    np.testing.assert_array_equal(written.affine, reference.affine)
    ref_header, header = reference.meta["nifti_header"], written.meta["nifti_header"]
    for key in ("sform_code", "qform_code", "srow_x", "srow_y", "srow_z",
                "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"):
        np.testing.assert_array_equal(header[key], ref_header[key], err_msg=key)


def test_reference_scaling_is_not_applied_to_written_mask(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), _rotated_affine())
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    reference = read_image(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(reference.array, -1024.0)

    mask = np.ones((3, 3, 3), np.uint8)
    back = read_image(write_image(tmp_path / "m.nii.gz", mask, reference=reference))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask)


def test_write_with_wrong_shape_names_both_shapes(tmp_path: Path) -> None:
    reference = _nifti_reference(tmp_path)
    path = tmp_path / "bad.nii.gz"
    with pytest.raises(ValueError, match=r"\(6, 7, 4\).*\(6, 7, 5\)") as info:
        write_image(path, np.zeros((6, 7, 4), np.uint8), reference=reference)
    assert str(path) in str(info.value)
    assert not path.exists()


# ----------------------------------------------------------------------------- DICOM file


def test_ct_dicom_is_read_in_hounsfield_units() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)

    image = read_image(path)

    assert image.format == "dicom"
    assert image.array.dtype == np.float32
    assert image.array.shape == (128, 128)
    np.testing.assert_array_equal(image.array, expected.astype(np.float32))
    assert image.meta["Modality"] == "CT"
    assert image.meta["RescaleIntercept"] == -1024.0
    assert image.spacing == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    # Stored values are 128..2191; only the rescaled image reaches air-like HU.
    assert ds.pixel_array.min() > 0
    assert image.array.min() < -500
    assert image.array.max() < ds.pixel_array.max()


def test_ct_dicom_affine_is_ras() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    # IOP is identity (rows run to patient posterior, columns to patient left) so in
    # RAS+ the first two world axes flip sign.
    np.testing.assert_allclose(image.affine[:3, 3], [-x, -y, z])
    np.testing.assert_allclose(image.affine[:3, 0], [0.0, -row_mm, 0.0])
    np.testing.assert_allclose(image.affine[:3, 1], [-col_mm, 0.0, 0.0])
    assert image.orientation == "PLS"


# ----------------------------------------------------------------------------- DICOM series


def _write_series(folder: Path, volume_zyx: np.ndarray, spacing: tuple[float, float, float],
                  origin: tuple[float, float, float]) -> None:
    """Write one .dcm file per slice with the tags GDCM needs to sort them into a series."""
    folder.mkdir()
    volume = sitk.GetImageFromArray(volume_zyx)
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    root = "1.2.826.0.1.3680043.2.1125.99"
    for z in range(volume_zyx.shape[0]):
        slice_ = volume[:, :, z]
        position = volume.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "CT",
            "0020|000d": f"{root}.1",
            "0020|000e": f"{root}.2",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{spacing[2]:g}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_folder(tmp_path: Path) -> None:
    volume_zyx = np.random.default_rng(3).integers(-1000, 1500, size=(4, 6, 5)).astype(np.int16)
    folder = tmp_path / "series"
    _write_series(folder, volume_zyx, spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 30.0))

    image = read_image(folder)

    assert image.format == "dicom-series"
    assert image.array.shape == (5, 6, 4)  # (x, y, z)
    assert image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, volume_zyx.transpose(2, 1, 0))
    assert image.spacing == pytest.approx((0.7, 0.8, 2.5))
    # Identity direction in LPS: origin (10, -20, 30) LPS is (-10, 20, 30) RAS.
    np.testing.assert_allclose(image.affine[:3, 3], [-10.0, 20.0, 30.0])
    np.testing.assert_allclose(np.diag(image.affine)[:3], [-0.7, -0.8, 2.5])
    assert image.orientation == "LPS"
    assert image.meta["Modality"] == "CT"
    assert image.meta["n_files"] == 4


def test_series_mask_written_as_nifti_keeps_geometry(tmp_path: Path) -> None:
    volume_zyx = np.zeros((3, 4, 5), np.int16)
    folder = tmp_path / "series"
    _write_series(folder, volume_zyx, spacing=(1.0, 1.5, 3.0), origin=(0.0, 0.0, 0.0))
    reference = read_image(folder)
    mask = np.zeros(reference.array.shape, np.uint8)
    mask[1, 2, 0] = 1
    back = read_image(write_image(tmp_path / "seg.nii.gz", mask, reference=reference))
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_allclose(back.affine, reference.affine, atol=1e-5)


# ----------------------------------------------------------------------------- PNG / NPY


def test_png_binary_mask_round_trip(tmp_path: Path) -> None:
    mask = np.zeros((7, 9), np.uint8)
    mask[2:5, 3:8] = 1
    image = read_image(write_image(tmp_path / "mask.png", mask))
    assert image.format == "png"
    assert image.array.dtype == np.uint8
    assert image.array.shape == (7, 9)
    np.testing.assert_array_equal(image.array, mask * 255)
    assert image.orientation is None
    assert image.spacing == (1.0, 1.0)
    np.testing.assert_array_equal(image.affine, np.eye(4))


def test_png_label_map_and_float_image(tmp_path: Path) -> None:
    labels = np.array([[0, 2, 7], [255, 1, 0]], np.int32)
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "l.png", labels)).array, labels)
    floats = np.array([[0.0, 0.5], [1.0, 0.2]], np.float32)
    back = read_image(write_image(tmp_path / "f.png", floats)).array
    np.testing.assert_array_equal(back, [[0, 128], [255, 51]])


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.array([[0, 300]], np.int32), "0..255"),
        (np.array([[-1, 2]], np.int16), "0..255"),
        (np.array([[0.0, 1.5]]), r"\[0, 1\]"),
        (np.array([[0.0, np.nan]]), r"\[0, 1\]"),
        (np.zeros((2, 2, 2), np.uint8), "2-D"),
    ],
)
def test_png_writer_refuses_unrepresentable_arrays(tmp_path: Path, array: np.ndarray, reason: str) -> None:
    path = tmp_path / "x.png"
    with pytest.raises(ValueError, match=reason) as info:
        write_image(path, array)
    assert str(path) in str(info.value)


def test_png_rgb_and_palette_reading(tmp_path: Path) -> None:
    rgb = np.random.default_rng(4).integers(0, 256, size=(5, 6, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    image = read_image(tmp_path / "rgb.png")
    assert image.array.shape == (5, 6, 3)
    np.testing.assert_array_equal(image.array, rgb)
    assert image.spatial_shape == (5, 6)

    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "pal.png")
    image = read_image(tmp_path / "pal.png")
    assert image.array.shape == (5, 6)
    assert image.meta["mode"] == "P"


def test_jpeg_grayscale_reads_2d(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 100, np.uint8)).save(tmp_path / "g.jpg")
    image = read_image(tmp_path / "g.jpg")
    assert image.array.shape == (4, 5)
    assert np.abs(image.array.astype(int) - 100).max() <= 2


def test_npy_round_trip(tmp_path: Path) -> None:
    volume = np.random.default_rng(5).normal(size=(3, 4, 5)).astype(np.float64)
    image = read_image(write_image(tmp_path / "v.npy", volume))
    assert image.format == "npy"
    assert image.array.dtype == np.float64
    np.testing.assert_array_equal(image.array, volume)
    np.testing.assert_array_equal(image.affine, np.eye(4))
    assert image.spacing == (1.0, 1.0, 1.0)
    assert image.orientation is None


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(FileNotFoundError, match="not found: " + _in_message(path)):
        read_image(path)


def test_unknown_ending_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "volume.xyz"
    path.write_bytes(b"data")
    with pytest.raises(ValueError, match=_in_message(path) + r".*\.nii\.gz") as info:
        read_image(path)
    assert not isinstance(info.value, ImageReadError)
    with pytest.raises(ValueError, match=_in_message(path) + r".*\.nii\.gz, \.png, \.npy"):
        write_image(path, np.zeros((2, 2)))


@pytest.mark.parametrize("name", ["corrupt.nii.gz", "corrupt.nii", "corrupt.png", "corrupt.dcm", "corrupt.npy"])
def test_corrupt_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(6).bytes(512))
    with pytest.raises(ImageReadError, match="Could not read .*" + _in_message(path)):
        read_image(path)


def test_empty_directory_is_not_a_series(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(ImageReadError, match="No DICOM series.*" + _in_message(folder)):
        read_image(folder)


def test_writing_dicom_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.dcm"
    with pytest.raises(ValueError, match=_in_message(path) + ".*DICOM output is not supported.*nii.gz"):
        write_image(path, np.zeros((4, 4), np.int16))
    assert not path.exists()


def test_check_finite(tmp_path: Path) -> None:
    array = np.ones((3, 4, 5), np.float32)
    array[0, 0, 0] = np.nan
    array[1, 2, 3] = np.inf
    path = write_image(tmp_path / "nan.nii.gz", array)
    image = read_image(path)  # reading non-finite data is allowed
    assert np.isnan(image.array[0, 0, 0])
    with pytest.raises(ValueError, match=_in_message(path) + ": 2 non-finite"):
        check_finite(image)
    check_finite(read_image(write_image(tmp_path / "ok.nii.gz", np.ones((2, 2, 2), np.float32))))
    check_finite(read_image(write_image(tmp_path / "int.nii.gz", np.ones((2, 2, 2), np.int16))))


def test_an_interrupted_write_leaves_the_previous_file_and_no_partial_one(tmp_path, monkeypatch):
    import segicl_data.imageio as imageio

    target = write_image(tmp_path / "mask.nii.gz", np.ones((4, 4, 2), np.uint8))
    before = target.read_bytes()

    def killed_half_way(path, array, reference):
        Path(path).write_bytes(b"half an image")
        raise KeyboardInterrupt

    monkeypatch.setitem(imageio._WRITERS, ".nii.gz", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        write_image(target, np.zeros((4, 4, 2), np.uint8))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]
