"""Between files on disk (any orientation) and the display-oriented slice stacks the models use.

One rule for every input, query, example or prompt alike:

* An image that carries geometry (NIfTI, a DICOM file or series: ``orientation`` is set) is a volume,
  a 2-D one being a volume one slice thick. It is reoriented to RAS+ and cut into display slices
  (``data.preprocess.to_display_slices``): anterior (or superior) at the top, the patient's left on
  the image's left. A volume one slice thick is cut across its thin axis whatever ``axis`` says, so an
  H x W x 1 NIfTI, a plain H x W NIfTI and a DICOM slice all give the one slice they hold.
* An image without geometry (PNG/JPG, NPY) is taken as already display-oriented: a 2-D array is one
  slice, a 3-D NPY array a stack [S, H, W]. A PNG stored as RGB(A) with equal colour channels (a grey
  image saved in colour) is read as grey; a colour one is refused.

So the same slice saved as NIfTI (any affine), DICOM, PNG or NPY reaches the model as the same array.
"""
from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from data.imageio import MedicalImage
from data.preprocess import AXES, as_binary_mask, from_display_slices, to_display_slices


def _grey_raster(image: MedicalImage) -> np.ndarray:
    """A PNG/JPG as a 2-D array: grey as it is, RGB(A) with equal colour channels as one channel."""
    array = image.array
    if array.ndim == 2:
        return array
    colour = array[..., :3]
    if array.shape[-1] >= 3 and (colour == colour[..., :1]).all():
        return colour[..., 0]
    raise ValueError(f"{image.path}: a colour image ({image.meta.get('mode', array.shape)}) cannot be segmented; "
                     "save it as a greyscale image")


def _as_volume(image: MedicalImage) -> np.ndarray:
    """The voxel array of an image with geometry as a 3-D volume (a 2-D image is one voxel thick)."""
    array = image.array
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        return array
    raise ValueError(f"{image.path}: expected a 2-D image or a 3-D volume, got shape {array.shape}")


def _to_ras(image: MedicalImage):
    return ornt_transform(io_orientation(image.affine), axcodes2ornt("RAS"))


def _slicing_axis(ras_shape: tuple[int, ...], axis: str) -> str:
    """`axis`, except that a volume one slice thick is cut across its thin axis."""
    thin = [name for name, index in AXES.items() if ras_shape[index] == 1]
    return thin[0] if len(thin) == 1 else axis


def to_model_slices(image: MedicalImage, axis: str = "axial") -> np.ndarray:
    """Any image as display-oriented slices [S, H, W] (float32), by the rule in the module docstring."""
    if image.orientation is None:
        array = _grey_raster(image) if image.format == "png" else image.array
        if array.ndim not in (2, 3):
            raise ValueError(f"{image.path}: expected a 2-D image or a 3-D stack of slices, got shape {array.shape}")
        array = np.asarray(array, dtype=np.float32)
        return array[None] if array.ndim == 2 else array
    ras = apply_orientation(np.asarray(_as_volume(image), dtype=np.float32), _to_ras(image))
    return to_display_slices(ras, _slicing_axis(ras.shape, axis))


def from_model_slices(slices: np.ndarray, image: MedicalImage, axis: str = "axial") -> np.ndarray:
    """Inverse of `to_model_slices`: back to the file's own voxel order and shape."""
    if image.orientation is None:
        return slices[0] if image.array.ndim == 2 or image.format == "png" else slices
    volume_shape = _as_volume(image).shape
    ras_shape = apply_orientation(np.empty(volume_shape, dtype=np.bool_), _to_ras(image)).shape
    ras = from_display_slices(slices, _slicing_axis(ras_shape, axis))
    from_ras = ornt_transform(axcodes2ornt("RAS"), io_orientation(image.affine))
    return apply_orientation(ras, from_ras).reshape(image.array.shape)


def load_example(image: MedicalImage, mask: MedicalImage) -> tuple[np.ndarray, np.ndarray]:
    """An example pair as one display slice each, by the same rule as the query; the mask must be binary (0 and one
    other value, e.g. a PNG's 0/255) and is returned as 0/1."""
    image_slices = to_model_slices(image)
    mask_slices = to_model_slices(mask)
    if image_slices.shape[0] != 1:
        raise ValueError(f"{image.path}: an example image must be a 2-D slice, got shape {image.array.shape}")
    if mask_slices.shape != image_slices.shape:
        raise ValueError(f"example {image.path} and its mask {mask.path} differ in size once oriented for display: "
                         f"{image_slices.shape[1:]} vs {mask_slices.shape[1:]}")
    return image_slices[0], as_binary_mask(mask_slices[0], f"{mask.path}: an example mask")
