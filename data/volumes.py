"""Between files on disk (any orientation) and the display-oriented slice stacks the models use.

One rule for every input, query, example or prompt alike:

* An image that carries geometry (NIfTI, a DICOM file or series: ``orientation`` is set) is a volume,
  a 2-D one being a volume one slice thick. It is reoriented to RAS+ and cut into display slices
  (``segicl_data.preprocess.to_display_slices``): anterior (or superior) at the top, the patient's left on
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

from segicl_data.imageio import MedicalImage
from segicl_data.preprocess import (AXES, SquareCrop, apply_crop, as_binary_mask, foreground_crop, from_display_slices,
                             to_display_slices)

# CT voxels above this (Hounsfield units) are the body; air is about -1000.
CT_BODY_HU = -500.0


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


def load_example(image: MedicalImage, mask: MedicalImage, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An example pair as one display slice each, by the same rule as the query; the mask must be binary (0 and one
    other value, e.g. a PNG's 0/255) and is returned as 0/1, or, with `label`, a label map of which that value is
    the structure."""
    image_slices, mask_slices = load_example_slices(image, mask, "axial", label)
    if image_slices.shape[0] != 1:
        raise ValueError(f"{image.path}: a 2-D example slice was expected here, got shape {image.array.shape}")
    return image_slices[0], mask_slices[0]


def load_example_slices(image: MedicalImage, mask: MedicalImage, axis: str = "axial",
                        label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An example image (2-D slice or 3-D volume) and its mask or label map as display slices [S, H, W], by the rule
    of the module docstring; the mask as 0/1: binary as given, or the voxels of value `label` of a label map."""
    image_slices = to_model_slices(image, axis)
    mask_slices = to_model_slices(mask, axis)
    if mask_slices.shape != image_slices.shape:
        raise ValueError(f"example {image.path} and its mask {mask.path} differ in size once oriented for display: "
                         f"{image_slices.shape} vs {mask_slices.shape}")
    if not np.allclose(image.spacing, mask.spacing, rtol=0.0, atol=1e-3):
        raise ValueError(f"example {image.path} and its mask {mask.path} have different voxel spacing: "
                         f"{np.round(image.spacing, 4).tolist()} vs {np.round(mask.spacing, 4).tolist()} mm")
    if label is None:
        try:
            return image_slices, as_binary_mask(mask_slices, f"{mask.path}: an example mask")
        except ValueError as error:
            raise ValueError(f"{error}; for a label map, name the structure's label with --example-label") from None
    binary = (np.rint(mask_slices) == label).astype(np.float32)
    if not binary.any():
        values = np.unique(np.rint(mask_slices)).astype(int)
        raise ValueError(f"{mask.path}: no voxel has the label value {label}; values present {values[:12].tolist()}")
    return image_slices, binary


def foreground_of(volume: np.ndarray, ct: bool = False) -> np.ndarray:
    """Head, brain or body voxels: CT above -500 HU; other images above 5% of their 99th percentile (robust to
    background noise)."""
    if ct:
        return volume > CT_BODY_HU
    return volume > 0.05 * np.percentile(volume, 99)


def crop_to_foreground(slices: np.ndarray, ct: bool = False, margin: int = 4,
                       labels: np.ndarray | None = None) -> tuple[np.ndarray, SquareCrop]:
    """A display stack [S, H, W] cut the way the dataset builder cuts its volumes: the slices that hold foreground
    (or labels) and one square around it with a margin (zero-padded; CT padded with air). Returns the cropped
    stack [S', size, size] and the crop (`paste_crop` puts maps back)."""
    foreground = foreground_of(slices, ct)
    if labels is not None:
        foreground |= labels > 0
    if not foreground.any():
        raise ValueError("the image has no foreground to segment (every voxel at the background level)")
    crop = foreground_crop(foreground, margin)
    air = -1024.0 if ct else 0.0
    return apply_crop(slices - air, crop) + air, crop


def paste_crop(maps: np.ndarray, crop: SquareCrop, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of `crop_to_foreground` for output maps [S', size, size]: back into a zero stack of `shape`."""
    out = np.zeros(shape, dtype=maps.dtype)
    rows, cols = shape[1:]
    top, left = max(crop.top, 0), max(crop.left, 0)
    bottom, right = min(crop.top + crop.size, rows), min(crop.left + crop.size, cols)
    out[crop.first_slice: crop.last_slice + 1, top:bottom, left:right] = \
        maps[:, top - crop.top: bottom - crop.top, left - crop.left: right - crop.left]
    return out
