"""Between files on disk (any orientation) and the display-oriented slice stacks the models use."""
from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from data.imageio import MedicalImage
from data.preprocess import from_display_slices, to_display_slices
from segicl.pipeline import as_binary_mask


def to_model_slices(image: MedicalImage, axis: str = "axial") -> np.ndarray:
    """A 2-D image as one slice [1, H, W]; a 3-D volume reoriented to RAS and cut into display slices [S, H, W]."""
    array = np.asarray(image.array, dtype=np.float32)
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and image.orientation is not None:
        to_ras = ornt_transform(io_orientation(image.affine), axcodes2ornt("RAS"))
        return to_display_slices(apply_orientation(array, to_ras), axis)
    if array.ndim == 3:
        return array
    raise ValueError(f"{image.path}: expected a 2-D image or a 3-D volume, got shape {array.shape}")


def from_model_slices(slices: np.ndarray, image: MedicalImage, axis: str = "axial") -> np.ndarray:
    """Inverse of `to_model_slices`: back to the file's own voxel order and shape."""
    if image.array.ndim == 2:
        return slices[0]
    if image.orientation is None:
        return slices
    ras = from_display_slices(slices, axis)
    from_ras = ornt_transform(axcodes2ornt("RAS"), io_orientation(image.affine))
    return apply_orientation(ras, from_ras)


def load_example(image: MedicalImage, mask: MedicalImage) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D example pair; a mask stored as 0/255 (PNG) becomes 0/1; anything with more values is refused."""
    image_array = np.squeeze(np.asarray(image.array, dtype=np.float32))
    mask_array = np.squeeze(np.asarray(mask.array))
    if image_array.ndim != 2:
        raise ValueError(f"{image.path}: an example image must be a 2-D slice, got shape {image.array.shape}")
    return image_array, as_binary_mask(mask_array, f"{mask.path}: an example mask")
