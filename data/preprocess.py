"""Volume -> slice preprocessing shared by the dataset builder and by inference on user volumes.

Slices are cut along one anatomical axis of the volume reoriented to RAS+, rotated for display (anterior or
superior at the top, the patient's left on the image's left: the neurological convention),
cropped to a square around the foreground and resized to the preset resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Resize, ScaleIntensityRange, ScaleIntensityRangePercentiles
from monai.transforms.utils_pytorch_numpy_unification import percentile

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
NORMALIZATIONS = ("percentile", "ct", "none")
MRI_PERCENTILES = (0.5, 99.5)
CT_WINDOW = (-100.0, 200.0)  # the SegICL paper's


def axis_index(axis: str) -> int:
    """RAS+ array axis of an anatomical slicing direction."""
    if axis not in AXES:
        raise ValueError(f"unknown slice axis {axis!r}; expected one of {sorted(AXES)}")
    return AXES[axis]


def normalize_mri(volume: np.ndarray, percentiles: tuple[float, float] = MRI_PERCENTILES) -> np.ndarray:
    """MRI intensities to [0, 1] between two percentiles of the volume, clipped."""
    lower, upper = percentiles
    volume = volume.astype(np.float32)
    if volume.size == 0 or volume.min() == volume.max():
        return np.zeros_like(volume)  # a constant image has no contrast to scale (MONAI would warn and divide by 0)
    scale = ScaleIntensityRangePercentiles(lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(volume[None])[0], dtype=np.float32)


def window_ct(hounsfield: np.ndarray, window: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """CT in Hounsfield units to [0, 1] within a window (the SegICL paper: [-100, 200] HU), clipped."""
    low, high = window
    if not low < high:
        raise ValueError(f"CT window must have low < high, got {window}")
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(hounsfield.astype(np.float32)[None])[0], dtype=np.float32)


def normalize_intensity(image: np.ndarray, mode: str) -> np.ndarray:
    """Map an image or volume to [0, 1] like the training data (MRI percentiles, or the CT window)."""
    if mode == "percentile":
        return normalize_mri(image)
    if mode == "ct":
        return window_ct(image)
    if mode == "none":
        return np.clip(image, 0.0, 1.0)
    raise ValueError(f"unknown normalization {mode!r}; expected one of {NORMALIZATIONS}")


def intensity_range(image: np.ndarray, mode: str) -> tuple[float, float]:
    """The intensities that `normalize_intensity(image, mode)` maps to 0 and 1 (linear between, clipped beyond):
    the image's own percentiles of `normalize_mri` ("percentile": 0.5th and 99.5th), the window of `window_ct`
    ("ct": -100 and 200 HU), or 0 and 1 ("none"). A constant image (normalised to zeros) gives its value twice."""
    if mode == "percentile":
        image = np.ascontiguousarray(image, dtype=np.float32)
        if image.size == 0 or image.min() == image.max():
            value = float(image.flat[0]) if image.size else 0.0
            return value, value
        lower, upper = MRI_PERCENTILES
        tensor = torch.from_numpy(image[None])  # what ScaleIntensityRangePercentiles takes its percentiles of
        return float(percentile(tensor, lower)), float(percentile(tensor, upper))
    if mode == "ct":
        return float(CT_WINDOW[0]), float(CT_WINDOW[1])
    if mode == "none":
        return 0.0, 1.0
    raise ValueError(f"unknown normalization {mode!r}; expected one of {NORMALIZATIONS}")


def denormalize_intensity(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values in [0, 1] back to the intensities of an `intensity_range` (low, high): 0 -> low, 1 -> high, linear.
    Intensities that the normalisation clipped stay at the range's edges."""
    scale = ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=low, b_max=high, clip=False)
    return np.asarray(scale(np.asarray(values, dtype=np.float32)[None])[0], dtype=np.float32)


def as_binary_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """A mask stored as 0 and one other positive value (0/1, a PNG's 0/255, a label value) as float 0/1; a mask with
    more values, or negative ones, is refused."""
    values = np.unique(mask)
    if len(values) > 2 or values.min(initial=0) < 0 or (len(values) == 2 and values[0] != 0):
        raise ValueError(f"{name} must be binary (0 and one other value); found values {values[:6].tolist()}")
    return (mask > 0).astype(np.float32)


def to_display_slices(volume: np.ndarray, axis: str) -> np.ndarray:
    """RAS+ volume -> stack of display-oriented slices [S, rows, cols]."""
    stacked = np.moveaxis(volume, axis_index(axis), 0)
    return np.ascontiguousarray(np.rot90(stacked, k=1, axes=(1, 2)))


def from_display_slices(slices: np.ndarray, axis: str) -> np.ndarray:
    """Inverse of `to_display_slices`."""
    stacked = np.rot90(slices, k=-1, axes=(1, 2))
    return np.ascontiguousarray(np.moveaxis(stacked, 0, axis_index(axis)))


@dataclass(frozen=True)
class SquareCrop:
    """A square in-plane window (may extend past the image: padded with zeros) and the slice range kept.

    Attributes:
        top, left: corner of the square in display coordinates (may be negative).
        size: side of the square in pixels before resizing.
        first_slice, last_slice: inclusive range of slices that hold foreground.
    """

    top: int
    left: int
    size: int
    first_slice: int
    last_slice: int

    def as_dict(self) -> dict[str, int]:
        return {"top": self.top, "left": self.left, "size": self.size,
                "first_slice": self.first_slice, "last_slice": self.last_slice}


def foreground_crop(foreground: np.ndarray, margin: int = 4) -> SquareCrop:
    """The square that holds the foreground of every slice plus a margin, and the slices with foreground."""
    if not foreground.any():
        raise ValueError("cannot crop: the foreground is empty")
    slices_with = np.flatnonzero(foreground.any(axis=(1, 2)))
    rows = np.flatnonzero(foreground.any(axis=(0, 2)))
    cols = np.flatnonzero(foreground.any(axis=(0, 1)))
    height = rows[-1] - rows[0] + 1
    width = cols[-1] - cols[0] + 1
    size = int(max(height, width) + 2 * margin)
    top = int(rows[0] + height // 2 - size // 2)
    left = int(cols[0] + width // 2 - size // 2)
    return SquareCrop(top, left, size, int(slices_with[0]), int(slices_with[-1]))


def apply_crop(slices: np.ndarray, crop: SquareCrop) -> np.ndarray:
    """Cut the crop's slices and square from a display stack, zero-padding outside the image."""
    kept = slices[crop.first_slice: crop.last_slice + 1]
    out = np.zeros((kept.shape[0], crop.size, crop.size), dtype=slices.dtype)
    rows, cols = slices.shape[1:]
    src_top, src_left = max(crop.top, 0), max(crop.left, 0)
    src_bottom, src_right = min(crop.top + crop.size, rows), min(crop.left + crop.size, cols)
    out[:, src_top - crop.top: src_bottom - crop.top, src_left - crop.left: src_right - crop.left] = \
        kept[:, src_top:src_bottom, src_left:src_right]
    return out


def resize_slices(slices: np.ndarray, resolution: int | tuple[int, int], *, labels: bool) -> np.ndarray:
    """Resize a stack [S, H, W] to [S, resolution, resolution] (or [S, *resolution]): nearest for labels,
    anti-aliased bilinear for images."""
    size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if labels:
        resize = Resize(size, mode="nearest")
        tensor = torch.from_numpy(slices.astype(np.int32))[:, None]
        out = torch.stack([resize(t) for t in tensor])[:, 0]
        return out.numpy().astype(slices.dtype)
    resize = Resize(size, mode="bilinear", anti_aliasing=True)
    tensor = torch.from_numpy(slices.astype(np.float32))[:, None]
    out = torch.stack([torch.as_tensor(resize(t)) for t in tensor])[:, 0]
    return out.numpy().astype(np.float32)


def resample(array: np.ndarray, shape: tuple[int, int], *, nearest: bool) -> np.ndarray:
    """[..., H, W] -> float32 [..., *shape]: nearest for masks, anti-aliased bilinear for images (torch's). The
    inference paths' resize, the one the shipped weights are measured with; `resize_slices` (MONAI's) builds the
    datasets. A copy, unchanged in values, when the array is already on `shape`."""
    array = np.asarray(array, dtype=np.float32)
    shape = tuple(int(n) for n in shape)
    if array.shape[-2:] == shape:
        return array.copy()
    flat = torch.from_numpy(np.ascontiguousarray(array)).reshape(-1, 1, *array.shape[-2:])
    if nearest:
        out = F.interpolate(flat, size=shape, mode="nearest")
    else:
        out = F.interpolate(flat, size=shape, mode="bilinear", antialias=True, align_corners=False)
    return out.reshape(*array.shape[:-2], *shape).numpy()


def relative_positions(count: int) -> np.ndarray:
    """Position of each kept slice within the foreground extent, 0 (first) to 1 (last)."""
    if count == 1:
        return np.zeros(1)
    return np.linspace(0.0, 1.0, count)
