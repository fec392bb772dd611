"""One orientation rule: the same display slice stored as NIfTI (any affine), DICOM, PNG or NPY reaches the model as the
same array, as a query and as an example; masks go back to each file's own voxel order."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel.orientations import axcodes2ornt, ornt_transform
from PIL import Image

from segicl_data.imageio import read_image
from segicl_data.preprocess import from_display_slices
from segicl_commands.cli import main
from segicl_data.volumes import crop_to_foreground, from_model_slices, load_example, paste_crop, to_model_slices

ROWS, COLS = 24, 20  # not square, so a rotation cannot pass unnoticed


def display_slice(seed: int) -> np.ndarray:
    """Integer grey values 0..255, exactly representable in every format."""
    return np.random.default_rng(seed).integers(0, 256, size=(ROWS, COLS)).astype(np.float32)


def display_mask() -> np.ndarray:
    mask = np.zeros((ROWS, COLS), np.float32)
    mask[3:11, 2:8] = 1  # off-centre: a flip or a rotation moves it
    return mask


def ras_image(display: np.ndarray) -> nib.Nifti1Image:
    """An H x W display slice as a one-slice RAS+ NIfTI volume (voxel array W x H x 1)."""
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 30.0)
    return nib.Nifti1Image(from_display_slices(display[None], "axial"), affine)


def save_nifti(path: Path, display: np.ndarray, axcodes: str = "RAS", squeeze: bool = False) -> Path:
    """The slice in a file whose voxel axes run along `axcodes` (the same world image, another storage order)."""
    image = ras_image(display)
    if axcodes != "RAS":
        image = image.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(axcodes)))
    array = np.asanyarray(image.dataobj)
    if squeeze:
        array = array[:, :, 0]
    nib.save(nib.Nifti1Image(array.astype(np.float32), image.affine), path)
    return path


def save_dicom(path: Path, display: np.ndarray) -> Path:
    """An axial DICOM slice stored the DICOM way: rows run to the patient's posterior, columns to the patient's left,
    so the file's pixels are the display slice mirrored left to right."""
    image = sitk.GetImageFromArray(np.fliplr(display).astype(np.int16))
    for tag, value in {"0008|0060": "MR", "0020|0032": "0\\0\\0", "0020|0037": "1\\0\\0\\0\\1\\0",
                       "0018|0050": "2"}.items():
        image.SetMetaData(tag, value)
    sitk.WriteImage(image, str(path))
    return path


def save_png(path: Path, display: np.ndarray, mask: bool = False) -> Path:
    Image.fromarray((display * 255 if mask else display).astype(np.uint8)).save(path)
    return path


def save_npy(path: Path, display: np.ndarray) -> Path:
    np.save(path, display)
    return path


FORMATS = {
    "nifti HxWx1 RAS": lambda path, array, mask: save_nifti(path.with_suffix(".nii.gz"), array),
    "nifti HxWx1 LPS": lambda path, array, mask: save_nifti(path.with_suffix(".nii.gz"), array, "LPS"),
    "nifti 1xHxW SAL": lambda path, array, mask: save_nifti(path.with_suffix(".nii.gz"), array, "SAL"),
    "nifti HxW": lambda path, array, mask: save_nifti(path.with_suffix(".nii"), array, squeeze=True),
    "dicom": lambda path, array, mask: save_dicom(path.with_suffix(".dcm"), array),
    "png": lambda path, array, mask: save_png(path.with_suffix(".png"), array, mask),
    "npy": lambda path, array, mask: save_npy(path.with_suffix(".npy"), array),
}


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_gives_the_same_model_slice(tmp_path, name):
    display = display_slice(0)
    image = read_image(FORMATS[name](tmp_path / "query", display, False))
    for axis in ("axial", "coronal", "sagittal"):  # one slice thick: the axis flag cannot turn it
        np.testing.assert_array_equal(to_model_slices(image, axis), display[None])


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_gives_the_same_example(tmp_path, name):
    display, mask = display_slice(1), display_mask()
    write = FORMATS[name]
    example_image, example_mask = load_example(read_image(write(tmp_path / "image", display, False)),
                                               read_image(write(tmp_path / "mask", mask, True)))
    np.testing.assert_array_equal(example_image, display)
    np.testing.assert_array_equal(example_mask, mask)


@pytest.mark.parametrize("name", FORMATS)
def test_a_mask_goes_back_to_the_files_voxel_order(tmp_path, name):
    display = display_slice(2)
    image = read_image(FORMATS[name](tmp_path / "query", display, False))
    back = from_model_slices(to_model_slices(image), image)
    assert back.shape == image.spatial_shape
    np.testing.assert_array_equal(back, np.asarray(image.array, dtype=np.float32).reshape(back.shape))


def test_an_oblique_volume_round_trips(tmp_path):
    volume = np.random.default_rng(3).random((7, 9, 5)).astype(np.float32)
    angle = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = [[0, -np.cos(angle), np.sin(angle)], [1.1, 0, 0], [0, np.sin(angle), np.cos(angle)]]
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "oblique.nii.gz")
    image = read_image(tmp_path / "oblique.nii.gz")
    for axis in ("axial", "coronal", "sagittal"):
        slices = to_model_slices(image, axis)
        np.testing.assert_array_equal(from_model_slices(slices, image, axis), volume)


def test_grey_saved_as_rgb_is_grey_and_colour_is_refused(tmp_path):
    display = display_slice(4).astype(np.uint8)
    Image.fromarray(np.stack([display] * 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(to_model_slices(read_image(tmp_path / "grey_rgb.png")), display[None])
    colour = np.stack([display, display // 2, display], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour.png: a colour image .* save it as a greyscale image"):
        to_model_slices(read_image(tmp_path / "colour.png"))


def test_examples_that_cannot_be_one_slice_are_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), tmp_path / "volume.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3), np.uint8), np.eye(4)), tmp_path / "volume_mask.nii.gz")
    mask = save_npy(tmp_path / "mask.npy", np.ones((8, 8), np.float32))
    with pytest.raises(ValueError, match="volume.nii.gz: a 2-D example slice was expected here, got shape"):
        load_example(read_image(tmp_path / "volume.nii.gz"), read_image(tmp_path / "volume_mask.nii.gz"))
    image = save_npy(tmp_path / "image.npy", np.ones((8, 9), np.float32))
    with pytest.raises(ValueError, match=r"differ in size once oriented for display: \(1, 8, 9\) vs \(1, 8, 8\)"):
        load_example(read_image(image), read_image(mask))


def test_a_label_map_example_gives_the_named_value_as_its_mask(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[1:3, 1:3], labels[5:7, 4:8] = 2, 5
    image = save_npy(tmp_path / "image.npy", np.ones((8, 8), np.float32))
    label_file = save_npy(tmp_path / "labels.npy", labels)
    _, mask = load_example(read_image(image), read_image(label_file), label=5)
    np.testing.assert_array_equal(mask, (labels == 5).astype(np.float32))
    with pytest.raises(ValueError, match=r"must be binary .* --example-label"):
        load_example(read_image(image), read_image(label_file))
    with pytest.raises(ValueError, match=r"no voxel has the label value 3; values present \[0, 2, 5\]"):
        load_example(read_image(image), read_image(label_file), label=3)


def test_a_volume_cut_to_its_foreground_pastes_back_where_it_was():
    volume = np.zeros((6, 20, 30), np.float32)
    volume[2:5, 4:12, 10:25] = 1.0
    cropped, crop = crop_to_foreground(volume, margin=2)
    assert cropped.shape == (3, 19, 19) and (crop.first_slice, crop.last_slice) == (2, 4)
    np.testing.assert_array_equal(paste_crop(cropped, crop, volume.shape), volume)
    ct = np.full((2, 10, 10), -1000.0, np.float32)
    ct[:, 3:6, 3:6] = 40.0
    cropped, crop = crop_to_foreground(ct, ct=True, margin=4)  # the square reaches past the image: padded with air
    assert cropped.min() == -1024.0 and crop.top < 0
    with pytest.raises(ValueError, match="no foreground to segment"):
        crop_to_foreground(np.zeros((2, 5, 5), np.float32))


def test_segment_gives_the_same_mask_for_a_nifti_and_an_npy_case(tiny_model, tmp_path):
    """The whole command: query and example as 2-D NIfTI, and the same slices as NPY, give the same mask."""
    tiny_model.save_pretrained(tmp_path / "model")
    display, example, mask = display_slice(5), display_slice(6), display_mask()
    predictions = {}
    for name in ("nifti HxWx1 LPS", "npy"):
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        write = FORMATS[name]
        query = write(folder / "query", display, False)
        out = folder / ("pred" + "".join(query.suffixes))
        code = main(["segment", "--image", str(query), "--text", "Segment the brain", "--example",
                     str(write(folder / "example", example, False)), str(write(folder / "mask", mask, True)),
                     "--out", str(out), "--model", str(tmp_path / "model"), "--samples", "1", "--steps", "1"])
        assert code == 0
        predictions[name] = to_model_slices(read_image(out))
    np.testing.assert_array_equal(predictions["nifti HxWx1 LPS"], predictions["npy"])
