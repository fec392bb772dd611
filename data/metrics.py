"""Segmentation and image-to-image metrics, computed by MONAI and torchmetrics.

Segmentation metrics (single binary masks, 2-D ``(H, W)`` or 3-D ``(D, H, W)``,
numpy arrays or torch tensors, values in {0, 1, True, False}):

- :func:`dice`  -- ``monai.metrics.compute_dice``
- :func:`iou`   -- ``monai.metrics.compute_iou``
- :func:`hd95`  -- ``monai.metrics.compute_hausdorff_distance(percentile=95)``, in mm
- :func:`nsd`   -- ``monai.metrics.compute_surface_dice`` (normalised surface Dice
  at a tolerance in mm)

Image metrics (2-D or 3-D real images of the same shape):

- :func:`mae`  -- ``torchmetrics`` mean absolute error
- :func:`psnr` -- ``torchmetrics`` peak signal-to-noise ratio, with an explicit
  ``data_range``; identical images give ``float('inf')`` (MSE = 0).
- :func:`ssim` -- ``torchmetrics`` structural similarity (Gaussian window 11, sigma
  1.5), with an explicit ``data_range``; every spatial side must be >= 11 pixels.

Intervals: :func:`bootstrap_interval` -- ``scipy.stats.bootstrap`` percentile interval of a mean.

Empty masks are handled here, before MONAI is called, because MONAI returns nan
(Dice/IoU with ``ignore_empty=True``, HD95, NSD when both are empty) or nan/inf with
warnings (HD95 when one is empty). The values used are:

=====================  =====  =====  =====  ==========================================
case                   Dice   IoU    NSD    HD95
=====================  =====  =====  =====  ==========================================
both empty             1.0    1.0    1.0    0.0 (a perfect prediction of "nothing")
exactly one empty      0.0    0.0    0.0    the image's field-of-view diagonal in mm
=====================  =====  =====  =====  ==========================================

The field-of-view diagonal is ``sqrt(sum((n_i * s_i) ** 2))`` for a mask of shape
``n`` and voxel spacing ``s`` (mm). It is the worst possible distance: larger than
any distance between two voxels of the image, so a missed or hallucinated structure
always scores worse than any real prediction.

``empty="nan"`` (every segmentation metric takes it) leaves an undefined score
undefined instead, for folder evaluations that follow nnU-Net (a class absent from both
prediction and truth is left out of the means): Dice/IoU are NaN when both masks are
empty (0.0 when exactly one is), HD95 and NSD are what MONAI itself returns (MONAI 1.6:
HD95 NaN whenever a mask is empty, NSD NaN when both are and 0.0 when one is; older
MONAI releases gave HD95 inf when one is empty).

Spacing is voxel size in mm per axis (a scalar applies to every axis); ``None`` means
1 mm, i.e. distances in pixels. Bad input (non-binary mask, shape mismatch, NaN, not
2-D or 3-D, bad spacing or data range) is refused with ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from monai.metrics import (
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchmetrics.functional.regression import mean_absolute_error

ArrayLike = np.ndarray | torch.Tensor
Spacing = float | Sequence[float] | None
Empty = Literal["defined", "nan"]
EMPTY_CONVENTIONS: tuple[str, ...] = ("defined", "nan")

SSIM_KERNEL_SIZE = 11

__all__ = [
    "EMPTY_CONVENTIONS",
    "dice",
    "iou",
    "hd95",
    "nsd",
    "segmentation_metrics",
    "mae",
    "psnr",
    "ssim",
    "image_metrics",
]


# ----------------------------------------------------------------------------- input checks


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _check_pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Convert to numpy and check 2-D/3-D, equal shapes and no NaN."""
    p, t = _to_numpy(pred, "pred"), _to_numpy(target, "target")
    for name, a in (("pred", p), ("target", t)):
        if a.ndim not in (2, 3):
            raise ValueError(f"{name} must be 2-D (H, W) or 3-D (D, H, W), got shape {a.shape}")
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: pred has shape {p.shape}, target has shape {t.shape}")
    for name, a in (("pred", p), ("target", t)):
        if a.dtype.kind == "c":
            raise ValueError(f"{name} must be real-valued, got dtype {a.dtype}")
        if a.dtype.kind == "f" and np.isnan(a).any():
            raise ValueError(f"{name} contains NaN")
    return p, t


def _check_masks(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of binary masks and return them as bool arrays."""
    p, t = _check_pair(pred, target)
    for name, a in (("pred", p), ("target", t)):
        if a.dtype != bool and not np.isin(a, (0, 1)).all():
            bad = np.unique(a[~np.isin(a, (0, 1))])[:5]
            raise ValueError(f"{name} is not a binary mask: values other than 0/1 found, e.g. {bad.tolist()}")
    return p.astype(bool), t.astype(bool)


def _check_spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = np.atleast_1d(np.asarray(spacing, dtype=float))
    if values.ndim != 1 or values.size not in (1, ndim):
        raise ValueError(f"spacing must be a scalar or have {ndim} values, got {spacing!r}")
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"spacing must be finite and positive, got {spacing!r}")
    return tuple(float(v) for v in np.broadcast_to(values, (ndim,)))


def _fov_diagonal_mm(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """(spatial...) bool -> (B=1, C=1, spatial...) float, the layout MONAI expects."""
    return torch.from_numpy(mask.astype(np.float64))[None, None]


@contextmanager
def _quiet_monai() -> Iterator[None]:
    # MONAI's own internal call of a deprecated get_mask_edges argument warns on every
    # call; the empty-mask warnings occur only with empty="nan" (otherwise those cases
    # never reach MONAI), where the undefined value is the point.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*always_return_as_numpy.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".* is all 0, this may result in nan/inf distance", category=UserWarning)
        yield


def _check_empty(empty: str) -> None:
    if empty not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty must be one of {EMPTY_CONVENTIONS}, got {empty!r}")


def _empty_case(p: np.ndarray, t: np.ndarray) -> str | None:
    """'both', 'one' or None (both non-empty)."""
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return "both"
    if p_any != t_any:
        return "one"
    return None


# ----------------------------------------------------------------------------- segmentation


def _overlap(pred: ArrayLike, target: ArrayLike, monai_metric, empty: Empty) -> float:
    """An overlap score (MONAI's compute_dice or compute_iou) with the empty cases defined."""
    _check_empty(empty)
    p, t = _check_masks(pred, target)
    case = _empty_case(p, t)
    if case is not None:
        return 0.0 if case == "one" else (1.0 if empty == "defined" else math.nan)
    return float(monai_metric(_as_batch(p), _as_batch(t), include_background=True).item())


def dice(pred: ArrayLike, target: ArrayLike, *, empty: Empty = "defined") -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|) of two binary masks (MONAI).

    Both empty -> 1.0 (``empty="nan"``: NaN), exactly one empty -> 0.0.
    """
    return _overlap(pred, target, compute_dice, empty)


def iou(pred: ArrayLike, target: ArrayLike, *, empty: Empty = "defined") -> float:
    """Intersection over union |P∩T| / |P∪T| of two binary masks (MONAI).

    Both empty -> 1.0 (``empty="nan"``: NaN), exactly one empty -> 0.0.
    """
    return _overlap(pred, target, compute_iou, empty)


def hd95(pred: ArrayLike, target: ArrayLike, spacing: Spacing = None, *, empty: Empty = "defined") -> float:
    """95th-percentile symmetric Hausdorff distance between mask surfaces, in mm (MONAI).

    Both empty -> 0.0; exactly one empty -> the field-of-view diagonal in mm (see the
    module docstring). ``empty="nan"``: whatever MONAI returns for empty masks.
    """
    _check_empty(empty)
    p, t = _check_masks(pred, target)
    sp = _check_spacing(spacing, p.ndim)
    case = _empty_case(p, t)
    if case == "both" and empty == "defined":
        return 0.0
    if case == "one" and empty == "defined":
        return _fov_diagonal_mm(p.shape, sp)
    with _quiet_monai():
        value = compute_hausdorff_distance(
            _as_batch(p), _as_batch(t), include_background=True, percentile=95, spacing=list(sp)
        )
    return float(value.item())


def nsd(pred: ArrayLike, target: ArrayLike, tolerance_mm: float = 1.0, spacing: Spacing = None, *,
        empty: Empty = "defined") -> float:
    """Normalised surface Dice at ``tolerance_mm`` (MONAI ``compute_surface_dice``).

    The fraction of both surfaces lying within ``tolerance_mm`` of the other surface.
    Both empty -> 1.0, exactly one empty -> 0.0. ``empty="nan"``: whatever MONAI
    returns for empty masks.
    """
    _check_empty(empty)
    p, t = _check_masks(pred, target)
    sp = _check_spacing(spacing, p.ndim)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm!r}")
    case = _empty_case(p, t)
    if case is not None and empty == "defined":
        return 1.0 if case == "both" else 0.0
    with _quiet_monai():
        value = compute_surface_dice(
            _as_batch(p), _as_batch(t), [float(tolerance_mm)], include_background=True, spacing=list(sp)
        )
    return float(value.item())


def segmentation_metrics(
    pred: ArrayLike, target: ArrayLike, spacing: Spacing = None, tolerance_mm: float = 1.0, *,
    empty: Empty = "defined",
) -> dict[str, float]:
    """Dice, IoU, HD95 (mm) and NSD (at ``tolerance_mm``) of one pair of binary masks.

    ``empty`` picks the values for empty masks: this module's defined ones, or ``"nan"``
    (see the module docstring)."""
    return {
        "dice": dice(pred, target, empty=empty),
        "iou": iou(pred, target, empty=empty),
        "hd95": hd95(pred, target, spacing=spacing, empty=empty),
        "nsd": nsd(pred, target, tolerance_mm=tolerance_mm, spacing=spacing, empty=empty),
    }


# ----------------------------------------------------------------------------- image-to-image


def _check_images(pred: ArrayLike, target: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two real images; return them as float64 (1, 1, spatial...) tensors."""
    p, t = _check_pair(pred, target)
    for name, a in (("pred", p), ("target", t)):
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains inf")

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))[None, None]

    return to_tensor(p), to_tensor(t)


def _check_data_range(data_range: float) -> float:
    if isinstance(data_range, bool) or not isinstance(data_range, numbers.Real):
        raise ValueError(f"data_range must be a finite positive number, got {data_range!r}")
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a finite positive number, got {data_range!r}")
    return float(data_range)


def mae(pred: ArrayLike, target: ArrayLike) -> float:
    """Mean absolute error, in the images' units (torchmetrics)."""
    p, t = _check_images(pred, target)
    return float(mean_absolute_error(p, t).item())


def psnr(pred: ArrayLike, target: ArrayLike, data_range: float) -> float:
    """PSNR = 10 log10(data_range^2 / MSE) in dB (torchmetrics).

    ``data_range`` is the span of possible values (e.g. 1.0 for [0, 1] images); it is
    required because estimating it from the data makes scores incomparable. Identical
    images (MSE = 0) give ``float('inf')``.
    """
    p, t = _check_images(pred, target)
    dr = _check_data_range(data_range)
    if torch.equal(p, t):
        return float("inf")
    return float(peak_signal_noise_ratio(p, t, data_range=dr).item())


def ssim(pred: ArrayLike, target: ArrayLike, data_range: float) -> float:
    """Mean structural similarity (torchmetrics, Gaussian window 11, sigma 1.5).

    2-D images use a 2-D window, 3-D volumes a 3-D window; every spatial side must be
    at least 11 pixels.
    """
    p, t = _check_images(pred, target)
    dr = _check_data_range(data_range)
    spatial = tuple(p.shape[2:])
    if min(spatial) < SSIM_KERNEL_SIZE:
        raise ValueError(f"ssim needs every spatial side >= {SSIM_KERNEL_SIZE} pixels, got shape {spatial}")
    return float(structural_similarity_index_measure(p, t, data_range=dr).item())


def image_metrics(pred: ArrayLike, target: ArrayLike, data_range: float) -> dict[str, float]:
    """MAE, PSNR (dB) and SSIM of one pair of images with a known ``data_range``."""
    return {
        "mae": mae(pred, target),
        "psnr": psnr(pred, target, data_range),
        "ssim": ssim(pred, target, data_range),
    }


# ----------------------------------------------------------------------------- intervals


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float] | None:
    """The percentile bootstrap interval of the mean of `values` (scipy.stats.bootstrap); None for fewer than two
    values or when every value is the same (no spread to resample)."""
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or not np.isfinite(data).all():
        raise ValueError(f"bootstrap_interval needs a 1-D list of finite values, got shape {data.shape}")
    if data.size < 2 or np.all(data == data[0]):
        return None
    result = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                       rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
