"""Tests for data.metrics: hand-computed values, empty-mask conventions, refusals."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from segicl_data.metrics import (
    dice,
    hd95,
    image_metrics,
    iou,
    mae,
    nsd,
    psnr,
    segmentation_metrics,
    ssim,
)

SHAPE = (32, 32)


def square(row: int, col: int, side: int = 10, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[row : row + side, col : col + side] = True
    return m


@pytest.fixture
def offset_pair() -> tuple[np.ndarray, np.ndarray]:
    # Two 10x10 squares, the second shifted 3 columns right: overlap 10 x 7 = 70 pixels.
    return square(5, 5), square(5, 8)


# ----------------------------------------------------------------------------- overlap


def test_dice_and_iou_hand_computed(offset_pair):
    a, b = offset_pair
    inter, size_a, size_b = 10 * 7, 100, 100
    expected_dice = Fraction(2 * inter, size_a + size_b)  # 7/10
    expected_iou = Fraction(inter, size_a + size_b - inter)  # 7/13
    assert dice(a, b) == pytest.approx(float(expected_dice), abs=1e-6)
    assert iou(a, b) == pytest.approx(float(expected_iou), abs=1e-6)


def test_identical_masks_are_perfect(offset_pair):
    a, _ = offset_pair
    assert segmentation_metrics(a, a) == pytest.approx({"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0})


def test_accepts_torch_int_and_float_masks(offset_pair):
    a, b = offset_pair
    assert dice(torch.from_numpy(a), torch.from_numpy(b).float()) == pytest.approx(0.7, abs=1e-6)
    assert iou(a.astype(np.uint8), b.astype(np.int64)) == pytest.approx(7 / 13, abs=1e-6)


# ----------------------------------------------------------------------------- distances


def test_hd95_of_shift_is_the_shift(offset_pair):
    a, b = offset_pair
    assert hd95(a, a) == 0.0
    assert hd95(a, b) == pytest.approx(3.0)


def test_hd95_scales_with_spacing(offset_pair):
    a, b = offset_pair
    assert hd95(a, b, spacing=2.0) == pytest.approx(6.0)
    # The shift is along axis 1, so only the second spacing matters.
    assert hd95(a, b, spacing=(5.0, 0.5)) == pytest.approx(1.5)


def test_hd95_3d():
    v = np.zeros((12, 32, 32), dtype=bool)
    v[2:8, 5:15, 5:15] = True
    w = np.roll(v, 3, axis=2)
    assert hd95(v, w) == pytest.approx(3.0)
    assert hd95(v, w, spacing=(2.0, 1.0, 0.7)) == pytest.approx(2.1)  # shift is along the last axis


def test_nsd(offset_pair):
    a, b = offset_pair
    assert nsd(a, a) == pytest.approx(1.0)
    # A 3-pixel shift: every surface point is within 3 mm of the other surface,
    # but not every one within 1 mm.
    assert nsd(a, b, tolerance_mm=3.0) == pytest.approx(1.0)
    assert 0.0 < nsd(a, b, tolerance_mm=1.0) < 1.0
    assert nsd(a, b, tolerance_mm=1.0, spacing=0.25) == pytest.approx(1.0)


def test_segmentation_metrics_emit_no_warnings(offset_pair):
    a, b = offset_pair
    empty = np.zeros(SHAPE, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segmentation_metrics(a, b)
        segmentation_metrics(empty, empty)
        segmentation_metrics(a, empty)


# ----------------------------------------------------------------------------- empty masks


def test_both_empty():
    empty = np.zeros(SHAPE, dtype=bool)
    assert segmentation_metrics(empty, empty) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0}


@pytest.mark.parametrize("which", ["pred", "target"])
def test_exactly_one_empty(which, offset_pair):
    a, _ = offset_pair
    empty = np.zeros(SHAPE, dtype=bool)
    pred, target = (empty, a) if which == "pred" else (a, empty)
    diagonal = math.hypot(32, 32)
    assert segmentation_metrics(pred, target) == pytest.approx({"dice": 0.0, "iou": 0.0, "hd95": diagonal, "nsd": 0.0})
    assert hd95(pred, target, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(64, 16))


def test_one_empty_3d_diagonal():
    empty = np.zeros((4, 8, 8), dtype=bool)
    full = np.ones((4, 8, 8), dtype=bool)
    assert hd95(full, empty, spacing=(3.0, 1.0, 1.0)) == pytest.approx(math.sqrt(12**2 + 8**2 + 8**2))


def test_empty_nan_leaves_undefined_scores_undefined(offset_pair):
    """empty="nan" (nnU-Net's folder convention): both empty -> all NaN; one empty -> Dice/IoU/NSD 0, HD95 what
    MONAI gives (not finite); non-empty masks score as with the defined convention, without warnings."""
    a, b = offset_pair
    empty = np.zeros(SHAPE, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = segmentation_metrics(empty, empty, empty="nan")
        one = segmentation_metrics(a, empty, spacing=2.0, empty="nan")
        full = segmentation_metrics(a, b, empty="nan")
    assert all(math.isnan(v) for v in both.values())
    assert (one["dice"], one["iou"], one["nsd"]) == (0.0, 0.0, 0.0) and not math.isfinite(one["hd95"])
    assert full == pytest.approx(segmentation_metrics(a, b))
    with pytest.raises(ValueError, match="empty must be one of"):
        dice(a, b, empty="zero")


# ----------------------------------------------------------------------------- image metrics


def test_mae_hand_computed():
    pred = np.array([[0.0, 1.0], [2.0, 3.0]])
    target = np.array([[0.5, 1.0], [1.0, 5.0]])
    assert mae(pred, target) == pytest.approx((0.5 + 0 + 1.0 + 2.0) / 4)


def test_psnr_hand_computed():
    target = np.zeros((16, 16))
    pred = target.copy()
    pred[:8] = 0.2  # half the pixels off by 0.2 -> MSE = 0.5 * 0.04 = 0.02
    mse = 0.02
    assert psnr(pred, target, data_range=1.0) == pytest.approx(10 * math.log10(1.0**2 / mse), abs=1e-4)
    assert psnr(pred * 100, target * 100, data_range=100.0) == pytest.approx(10 * math.log10(1.0 / mse), abs=1e-4)


def test_psnr_identical_is_inf():
    x = np.random.default_rng(0).random((16, 16))
    assert psnr(x, x, data_range=1.0) == float("inf")


def test_ssim_identical_is_one_and_noise_lowers_it():
    rng = np.random.default_rng(0)
    x = rng.random((32, 32))
    assert ssim(x, x, data_range=1.0) == pytest.approx(1.0)
    assert ssim(x + rng.normal(0, 0.2, x.shape), x, data_range=1.0) < 0.9


def test_ssim_3d_and_image_metrics_dict():
    x = torch.rand(12, 16, 16, dtype=torch.float64)
    out = image_metrics(x, x, data_range=1.0)
    assert out == {"mae": 0.0, "psnr": float("inf"), "ssim": pytest.approx(1.0)}


# ----------------------------------------------------------------------------- refusals


def test_refuses_non_binary_mask(offset_pair):
    a, b = offset_pair
    with pytest.raises(ValueError, match="not a binary mask"):
        dice(a * 2, b)
    with pytest.raises(ValueError, match="target is not a binary mask"):
        hd95(a, b * 0.5)


def test_refuses_shape_mismatch(offset_pair):
    a, _ = offset_pair
    with pytest.raises(ValueError, match=r"shape mismatch.*\(32, 32\).*\(32, 31\)"):
        iou(a, a[:, :31])
    with pytest.raises(ValueError, match="shape mismatch"):
        mae(np.zeros((4, 4)), np.zeros((4, 5)))


def test_refuses_nan(offset_pair):
    a, _ = offset_pair
    bad = a.astype(float)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="pred contains NaN"):
        nsd(bad, a)
    with pytest.raises(ValueError, match="target contains NaN"):
        psnr(a.astype(float), bad, data_range=1.0)


@pytest.mark.parametrize("shape", [(10,), (2, 2, 4, 4)])
def test_refuses_wrong_ndim(shape):
    m = np.zeros(shape, dtype=bool)
    with pytest.raises(ValueError, match="must be 2-D .* or 3-D"):
        dice(m, m)
    with pytest.raises(ValueError, match="must be 2-D .* or 3-D"):
        ssim(m.astype(float), m.astype(float), data_range=1.0)


def test_refuses_bad_spacing_data_range_and_small_ssim(offset_pair):
    a, b = offset_pair
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, b, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        nsd(a, b, spacing=-1.0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(a.astype(float), b.astype(float), data_range=0.0)
    with pytest.raises(ValueError, match="spatial side >= 11"):
        ssim(np.zeros((8, 32)), np.zeros((8, 32)), data_range=1.0)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_values():
    from segicl_data.metrics import bootstrap_interval

    rng = np.random.default_rng(0)
    few, many = rng.uniform(size=12), rng.uniform(size=400)
    low, high = bootstrap_interval(few)
    assert low < few.mean() < high
    wide, narrow = high - low, np.subtract(*bootstrap_interval(many)[::-1])
    assert narrow < wide / 2
    assert bootstrap_interval([0.5]) is None and bootstrap_interval([0.3, 0.3]) is None
    with pytest.raises(ValueError, match="finite"):
        bootstrap_interval([0.1, float("nan")])
