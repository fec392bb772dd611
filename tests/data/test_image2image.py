"""Tests for data.image2image: degradations for the in-context image-to-image tasks."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from skimage.measure import label

from segicl_data.image2image import (
    SIMULATED_T2_NOTE,
    LowDoseCTPair,
    add_rician_noise,
    apply_inpainting,
    random_inpainting_mask,
    simulate_low_dose_ct,
    simulate_t2_from_tissue,
)

# ----------------------------------------------------------------------------- low-dose CT


@pytest.fixture(scope="module")
def ct_slice() -> tuple[np.ndarray, float]:
    """The real 128x128 CT slice shipped with pydicom, in HU, and its pixel size (mm)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return hu, float(ds.PixelSpacing[0])


@pytest.fixture(scope="module")
def ct_pairs(ct_slice) -> dict[float, LowDoseCTPair]:
    hu, px = ct_slice
    return {d: simulate_low_dose_ct(hu, dose_fraction=d, rng=7, pixel_size_mm=px) for d in (0.5, 0.1)}


def test_low_dose_ct_shapes(ct_slice, ct_pairs):
    hu, _ = ct_slice
    clean, noisy = ct_pairs[0.5]
    assert clean.shape == noisy.shape == hu.shape
    assert np.isfinite(clean).all() and np.isfinite(noisy).all()


def test_clean_reconstruction_is_close_to_input(ct_slice, ct_pairs):
    hu, _ = ct_slice
    clean = ct_pairs[0.5].clean_hu
    # Measured: correlation 0.998, MAE 14.2 HU (FBP discretisation blur at edges).
    assert np.corrcoef(clean.ravel(), hu.ravel())[0, 1] > 0.99
    assert np.abs(clean - hu).mean() < 25.0
    # The clean target does not depend on dose or seed: it is the noiseless sinogram's FBP.
    np.testing.assert_array_equal(clean, ct_pairs[0.1].clean_hu)


def test_noise_rises_as_dose_falls(ct_pairs):
    std = {d: float(np.std(p.noisy_hu - p.clean_hu)) for d, p in ct_pairs.items()}
    # Measured: 41 HU at 0.5, 93 HU at 0.1. Poisson statistics predict std ~ 1/sqrt(dose),
    # so a ratio of sqrt(0.5 / 0.1) = 2.24.
    assert std[0.1] > std[0.5] > 10.0
    assert std[0.1] / std[0.5] == pytest.approx(math.sqrt(5.0), rel=0.15)


def test_low_dose_ct_deterministic_per_seed(ct_slice):
    hu, px = ct_slice
    a = simulate_low_dose_ct(hu, 0.25, rng=3, pixel_size_mm=px)
    b = simulate_low_dose_ct(hu, 0.25, rng=np.random.default_rng(3), pixel_size_mm=px)
    c = simulate_low_dose_ct(hu, 0.25, rng=4, pixel_size_mm=px)
    np.testing.assert_array_equal(a.noisy_hu, b.noisy_hu)
    assert not np.array_equal(a.noisy_hu, c.noisy_hu)


def test_low_dose_ct_non_square():
    water = np.zeros((40, 64))
    clean, noisy = simulate_low_dose_ct(water, 0.5, rng=0)
    assert clean.shape == noisy.shape == (40, 64)
    assert abs(float(np.median(clean))) < 20.0  # water stays near 0 HU


def test_low_dose_ct_refusals(ct_slice):
    hu, _ = ct_slice
    with pytest.raises(ValueError, match="dose_fraction"):
        simulate_low_dose_ct(hu, dose_fraction=0.0, rng=0)
    with pytest.raises(ValueError, match="dose_fraction"):
        simulate_low_dose_ct(hu, dose_fraction=1.5, rng=0)
    with pytest.raises(ValueError, match="2-D"):
        simulate_low_dose_ct(hu[None], rng=0)
    bad = hu.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        simulate_low_dose_ct(bad, rng=0)


# ----------------------------------------------------------------------------- Rician noise


def test_rician_background_is_rayleigh():
    sigma = 0.1
    out = add_rician_noise(np.zeros((256, 256)), sigma, rng=0)
    # Rayleigh mean sigma*sqrt(pi/2) = 0.1253; std of this estimate is ~3e-5.
    assert out.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.02)
    assert (out >= 0).all()


def test_rician_bright_region_and_zero_sigma():
    img = np.full((64, 64), 0.8)
    # High SNR: Rician ~ Gaussian around sqrt(A^2 + sigma^2).
    assert add_rician_noise(img, 0.02, rng=1).mean() == pytest.approx(math.hypot(0.8, 0.02), abs=2e-3)
    np.testing.assert_array_equal(add_rician_noise(img, 0.0, rng=1), img)


def test_rician_deterministic_per_seed():
    img = np.random.default_rng(0).random((32, 32))
    np.testing.assert_array_equal(add_rician_noise(img, 0.05, 9), add_rician_noise(img, 0.05, np.random.default_rng(9)))
    assert not np.array_equal(add_rician_noise(img, 0.05, 9), add_rician_noise(img, 0.05, 10))


def test_rician_refusals():
    with pytest.raises(ValueError, match="sigma"):
        add_rician_noise(np.zeros((8, 8)), -0.1, rng=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        add_rician_noise(np.full((8, 8), 2.0), 0.1, rng=0)
    with pytest.raises(ValueError, match="2-D"):
        add_rician_noise(np.zeros(8), 0.1, rng=0)


# ----------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize("kind", ["blob", "box"])
@pytest.mark.parametrize("shape", [(128, 128), (64, 96)])
def test_inpainting_mask_area_and_deterministic(kind, shape):
    lo, hi = 0.02, 0.1
    for seed in range(20):
        m = random_inpainting_mask(shape, seed, kind=kind)
        assert m.dtype == bool and m.shape == shape
        assert m.any()
        # Blobs lose/gain a few pixels to hole filling, boxes to rounding of their sides.
        assert lo * 0.9 <= m.mean() <= hi * 1.1
        assert label(m).max() == 1  # one connected region
        np.testing.assert_array_equal(m, random_inpainting_mask(shape, np.random.default_rng(seed), kind=kind))
    assert not np.array_equal(random_inpainting_mask(shape, 0, kind=kind), random_inpainting_mask(shape, 1, kind=kind))


def test_inpainting_mask_custom_range():
    fractions = [random_inpainting_mask((64, 64), s, area_fraction=(0.2, 0.3)).mean() for s in range(10)]
    assert 0.18 <= min(fractions) and max(fractions) <= 0.33


def test_inpainting_mask_refusals():
    with pytest.raises(ValueError, match="kind"):
        random_inpainting_mask((32, 32), 0, kind="circle")
    with pytest.raises(ValueError, match="area_fraction"):
        random_inpainting_mask((32, 32), 0, area_fraction=(0.5, 0.1))
    with pytest.raises(ValueError, match="shape"):
        random_inpainting_mask((32, 32, 3), 0)


def test_apply_inpainting_values():
    image = np.arange(16, dtype=float).reshape(4, 4)
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :2] = True  # hides the values 0 and 1
    unmasked_mean = (sum(range(16)) - 0 - 1) / 14
    out = apply_inpainting(image, mask, fill="mean")
    np.testing.assert_allclose(out[0, :2], [unmasked_mean, unmasked_mean])
    np.testing.assert_array_equal(out[~mask], image[~mask])
    np.testing.assert_array_equal(apply_inpainting(image, mask, fill="zero")[0, :2], [0.0, 0.0])
    assert image[0, 0] == 0.0 and image[0, 1] == 1.0  # input untouched


def test_apply_inpainting_refusals():
    image = np.zeros((4, 4))
    with pytest.raises(ValueError, match="shape mismatch"):
        apply_inpainting(image, np.zeros((4, 5), dtype=bool))
    with pytest.raises(ValueError, match="whole image"):
        apply_inpainting(image, np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="fill"):
        apply_inpainting(image, np.zeros((4, 4), dtype=bool), fill="median")


# ----------------------------------------------------------------------------- simulated T2


@pytest.fixture
def tissue_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pure CSF, GM and WM bands over a background row, with soft partial volume between."""
    shape = (48, 96)
    csf, gm, wm = (np.zeros(shape) for _ in range(3))
    csf[8:, :32], gm[8:, 32:64], wm[8:, 64:] = 1.0, 1.0, 1.0
    gm[8:, 30:34], csf[8:, 30:34] = 0.5, 0.5
    return csf, gm, wm


def test_t2_contrast_order(tissue_maps):
    csf, gm, wm = tissue_maps
    t2 = simulate_t2_from_tissue(csf, gm, wm)
    assert t2[8:, :28].mean() == pytest.approx(1.0)
    assert t2[8:, 36:64].mean() == pytest.approx(0.6)
    assert t2[8:, 64:].mean() == pytest.approx(0.35)
    assert (t2[:8] == 0).all()
    np.testing.assert_allclose(t2[8:, 31], 0.5 * 1.0 + 0.5 * 0.6)


def test_t2_with_bias_field(tissue_maps):
    csf, gm, wm = tissue_maps
    t2 = simulate_t2_from_tissue(csf, gm, wm, rng=0, bias_strength=0.1)
    assert t2.min() >= 0.0 and t2.max() <= 1.0
    assert t2[8:, :28].mean() > t2[8:, 36:64].mean() > t2[8:, 64:].mean() > 0.0
    assert not np.allclose(t2, simulate_t2_from_tissue(csf, gm, wm))  # the field changes it
    np.testing.assert_array_equal(t2, simulate_t2_from_tissue(csf, gm, wm, rng=0, bias_strength=0.1))


def test_t2_note_says_simulated():
    assert "simulated T2-like contrast from tissue probability maps" in SIMULATED_T2_NOTE
    assert "not a real T2 scan" in SIMULATED_T2_NOTE


def test_t2_refusals(tissue_maps):
    csf, gm, wm = tissue_maps
    with pytest.raises(ValueError, match=r"p_gm must be a probability map in \[0, 1\]"):
        simulate_t2_from_tissue(csf, gm * 2, wm)
    with pytest.raises(ValueError, match="shape mismatch"):
        simulate_t2_from_tissue(csf, gm[:, :10], wm)
    bad = wm.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="p_wm contains NaN or inf"):
        simulate_t2_from_tissue(csf, gm, bad)
