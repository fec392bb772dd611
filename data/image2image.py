"""Degradations and input/target pairs for the in-context image-to-image tasks.

- Low-dose CT denoising: :func:`simulate_low_dose_ct` (physical simulation:
  forward projection, Poisson noise at a reduced photon count, filtered back-projection).
- MRI denoising: :func:`add_rician_noise`.
- Inpainting (BraTS-Local style): :func:`random_inpainting_mask` + :func:`apply_inpainting`.
- Cross-modal synthesis: :func:`simulate_t2_from_tissue`, a SIMULATED T2-like contrast
  from tissue probability maps (no real T1/T2 pair ships offline); every caller must
  carry :data:`SIMULATED_T2_NOTE` into its manifests and reports.

Every random function takes ``rng``: a ``np.random.Generator`` or an integer seed, so
the same seed gives the same output. Inputs are validated (2-D, finite, parameter
ranges) and refused with ``ValueError`` naming the problem.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.transform import iradon, radon

SIMULATED_T2_NOTE = (
    "simulated T2-like contrast from tissue probability maps, not a real T2 scan "
    "(CSF 1.0, GM 0.6, WM 0.35, background 0, linear mixture of the probabilities)"
)

# Linear attenuation of water at about 70 keV (effective energy of a 120 kVp spectrum), 1/mm.
MU_WATER_PER_MM = 0.0192

# T2-like intensities of pure tissue classes (relative, [0, 1]).
T2_CSF, T2_GM, T2_WM = 1.0, 0.6, 0.35

RngLike = np.random.Generator | int

__all__ = [
    "SIMULATED_T2_NOTE",
    "MU_WATER_PER_MM",
    "LowDoseCTPair",
    "simulate_low_dose_ct",
    "add_rician_noise",
    "random_inpainting_mask",
    "apply_inpainting",
    "simulate_t2_from_tissue",
]


# ----------------------------------------------------------------------------- validation


def _as_rng(rng: RngLike | None) -> np.random.Generator:
    """A Generator from a Generator or int seed (None: fresh OS entropy, not reproducible)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise ValueError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _check_image(image: np.ndarray, name: str, ndims: tuple[int, ...] = (2,)) -> np.ndarray:
    """Return ``image`` as float64 after checking dimensionality and finiteness."""
    a = np.asarray(image)
    if a.ndim not in ndims:
        dims = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be a {dims} array, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real-valued, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _check_shape2d(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape must be two positive ints (H, W), got {shape!r}")
    return int(shape[0]), int(shape[1])


# ----------------------------------------------------------------------------- low-dose CT


class LowDoseCTPair(NamedTuple):
    """A simulated low-dose CT training pair, both in HU and of the input's shape.

    ``clean_hu`` is the reconstruction of the noiseless sinogram and ``noisy_hu`` of the
    Poisson-noisy one, through the same projector and filtered back-projection, so the
    pair differs only by dose noise (not by discretisation/reconstruction artefacts).
    """

    clean_hu: np.ndarray
    noisy_hu: np.ndarray


def _hu_to_mu(hu: np.ndarray, pixel_size_mm: float) -> np.ndarray:
    """HU -> attenuation per pixel (dimensionless), so a radon sum is a line integral.

    HU below -1000 (e.g. padding outside the scan circle) are clipped to air (mu = 0).
    """
    return np.clip(MU_WATER_PER_MM * pixel_size_mm * (1.0 + hu / 1000.0), 0.0, None)


def _mu_to_hu(mu: np.ndarray, pixel_size_mm: float) -> np.ndarray:
    return 1000.0 * (mu / (MU_WATER_PER_MM * pixel_size_mm) - 1.0)


def _fbp(sinogram: np.ndarray, theta: np.ndarray, size: int) -> np.ndarray:
    return iradon(sinogram, theta=theta, output_size=size, filter_name="ramp", circle=False)


def simulate_low_dose_ct(
    hu_slice: np.ndarray,
    dose_fraction: float = 0.25,
    full_dose_photons: float = 1e5,
    rng: RngLike | None = None,
    pixel_size_mm: float = 1.0,
) -> LowDoseCTPair:
    """Physically simulate a low-dose acquisition of a CT slice in HU.

    1. HU -> linear attenuation ``mu = MU_WATER_PER_MM * pixel_size_mm * (1 + HU/1000)``
       (``MU_WATER_PER_MM`` = 0.0192 /mm, water at ~70 keV), HU < -1000 clipped to air.
    2. Forward projection with ``skimage.transform.radon`` over ``max(H, W)`` angles in
       [0, 180) with ``circle=False`` (the slice is zero-padded to a square first, so
       nothing outside the inscribed circle is lost).
    3. Transmitted counts ``I ~ Poisson(I0 * exp(-line_integral))`` with
       ``I0 = full_dose_photons * dose_fraction`` photons per detector bin.
    4. Back to line integrals ``-log(max(I, 1) / I0)`` (zero counts clamped to one),
       filtered back-projection (``iradon``, ramp filter), back to HU, cropped.

    The noiseless sinogram goes through the same step 4 to give the clean target.
    Noise std in HU scales as ``1 / sqrt(dose_fraction)``.

    Args:
        hu_slice: 2-D slice in Hounsfield units.
        dose_fraction: fraction of the full dose, in (0, 1].
        full_dose_photons: incident photons per detector bin at full dose (> 0).
        rng: Generator or int seed (None: unseeded, not reproducible).
        pixel_size_mm: in-plane pixel size (mm); sets the attenuation per pixel and
            hence the noise level (larger bodies attenuate more).

    Returns:
        ``LowDoseCTPair(clean_hu, noisy_hu)``, float64 arrays of the input's shape.

    Runtime (measured on one CPU): 0.16 s for the 128x128 ``CT_small.dcm``; 10 s for
    the 512x512 ``693_UNCI.dcm`` (radon + two iradon calls dominate).
    """
    hu = _check_image(hu_slice, "hu_slice")
    if not (0.0 < dose_fraction <= 1.0):
        raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction!r}")
    if not (math.isfinite(full_dose_photons) and full_dose_photons > 0):
        raise ValueError(f"full_dose_photons must be finite and > 0, got {full_dose_photons!r}")
    if not (math.isfinite(pixel_size_mm) and pixel_size_mm > 0):
        raise ValueError(f"pixel_size_mm must be finite and > 0, got {pixel_size_mm!r}")
    gen = _as_rng(rng)

    h, w = hu.shape
    size = max(h, w)
    top, left = (size - h) // 2, (size - w) // 2
    mu = np.zeros((size, size))
    mu[top : top + h, left : left + w] = _hu_to_mu(hu, pixel_size_mm)

    theta = np.linspace(0.0, 180.0, size, endpoint=False)
    sinogram = radon(mu, theta=theta, circle=False)

    i0 = full_dose_photons * dose_fraction
    counts = gen.poisson(i0 * np.exp(-sinogram))
    noisy_sinogram = -np.log(np.maximum(counts, 1) / i0)

    def recon_hu(sino: np.ndarray) -> np.ndarray:
        return _mu_to_hu(_fbp(sino, theta, size), pixel_size_mm)[top : top + h, left : left + w]

    return LowDoseCTPair(clean_hu=recon_hu(sinogram), noisy_hu=recon_hu(noisy_sinogram))


# ----------------------------------------------------------------------------- MRI noise


def add_rician_noise(image01: np.ndarray, sigma: float, rng: RngLike) -> np.ndarray:
    """Rician noise: ``|image + N(0, sigma) + i N(0, sigma)|``, as in magnitude MRI.

    In the background (image 0) the output is Rayleigh distributed with mean
    ``sigma * sqrt(pi / 2)``, so noise also biases dark regions upward. The output is
    not clipped, and may exceed 1.

    Args:
        image01: 2-D image with values in [0, 1].
        sigma: noise std of each of the real and imaginary channels (>= 0), in the
            same units as the image.
        rng: Generator or int seed.
    """
    img = _check_image(image01, "image01")
    if img.min() < 0.0 or img.max() > 1.0:
        raise ValueError(f"image01 must lie in [0, 1], got range [{img.min():.4g}, {img.max():.4g}]")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    gen = _as_rng(rng)
    real = img + gen.normal(0.0, sigma, img.shape)
    imag = gen.normal(0.0, sigma, img.shape)
    return np.hypot(real, imag)


# ----------------------------------------------------------------------------- inpainting


def _blob_mask(shape: tuple[int, int], n_pixels: int, gen: np.random.Generator) -> np.ndarray:
    """A lobulated, tumour-like blob of about ``n_pixels`` pixels.

    A randomly rotated elliptical radius field, perturbed by smooth noise, thresholded
    at the ``n_pixels``-th smallest value; then the largest component with its holes
    filled (which may change the area by a few pixels).
    """
    h, w = shape
    aspect = gen.uniform(0.5, 1.0)
    semi_major = math.sqrt(n_pixels / (math.pi * aspect))
    margin_r = min(semi_major, (h - 1) / 2)
    margin_c = min(semi_major, (w - 1) / 2)
    centre_r = gen.uniform(margin_r, h - 1 - margin_r)
    centre_c = gen.uniform(margin_c, w - 1 - margin_c)
    angle = gen.uniform(0.0, math.pi)

    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    dr, dc = rr - centre_r, cc - centre_c
    u = dr * math.cos(angle) + dc * math.sin(angle)
    v = -dr * math.sin(angle) + dc * math.cos(angle)
    radius = np.hypot(u / semi_major, v / (semi_major * aspect))

    noise = ndimage.gaussian_filter(gen.standard_normal(shape), sigma=max(semi_major / 3, 1.0), mode="wrap")
    noise /= np.abs(noise).max() + 1e-12
    field = radius * (1.0 + 0.4 * noise)

    threshold = np.partition(field.ravel(), n_pixels - 1)[n_pixels - 1]
    mask = field <= threshold
    components = label(mask, connectivity=1)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(components == largest)


def _box_mask(shape: tuple[int, int], n_pixels: int, gen: np.random.Generator) -> np.ndarray:
    h, w = shape
    aspect = gen.uniform(0.5, 2.0)  # height / width
    box_h = int(np.clip(round(math.sqrt(n_pixels * aspect)), 1, h))
    box_w = int(np.clip(round(n_pixels / box_h), 1, w))
    top = int(gen.integers(0, h - box_h + 1))
    left = int(gen.integers(0, w - box_w + 1))
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + box_h, left : left + box_w] = True
    return mask


def random_inpainting_mask(
    shape: tuple[int, int],
    rng: RngLike,
    kind: Literal["blob", "box"] = "blob",
    area_fraction: tuple[float, float] = (0.02, 0.1),
) -> np.ndarray:
    """A random boolean region to inpaint, covering a fraction of the image.

    The target fraction is drawn uniformly from ``area_fraction``. ``"blob"`` is a
    tumour-like lobulated ellipse (random axes, rotation and boundary; area within a
    few pixels of the target); ``"box"`` an axis-aligned rectangle of random aspect
    ratio lying fully inside the image (area exact up to rounding of its sides).
    """
    h, w = _check_shape2d(shape)
    lo, hi = area_fraction
    if not (0.0 < lo <= hi < 1.0):
        raise ValueError(f"area_fraction must satisfy 0 < low <= high < 1, got {area_fraction!r}")
    gen = _as_rng(rng)
    n_pixels = max(1, round(gen.uniform(lo, hi) * h * w))
    if kind == "blob":
        return _blob_mask((h, w), n_pixels, gen)
    if kind == "box":
        return _box_mask((h, w), n_pixels, gen)
    raise ValueError(f"kind must be 'blob' or 'box', got {kind!r}")


def apply_inpainting(
    image: np.ndarray, mask: np.ndarray, fill: Literal["mean", "zero"] = "mean"
) -> np.ndarray:
    """The masked input of an inpainting pair: ``image`` with ``mask`` filled in.

    ``"mean"`` fills with the mean of the unmasked pixels (also the trivial inpainting
    baseline), ``"zero"`` with 0. Returns a float64 copy; ``image`` is not modified.
    """
    img = _check_image(image, "image")
    m = np.asarray(mask)
    if m.shape != img.shape:
        raise ValueError(f"shape mismatch: image has shape {img.shape}, mask has shape {m.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("mask is not binary: values other than 0/1 found")
        m = m.astype(bool)
    if fill == "mean":
        if m.all():
            raise ValueError("mask covers the whole image: no unmasked pixels to take the mean of")
        value = float(img[~m].mean())
    elif fill == "zero":
        value = 0.0
    else:
        raise ValueError(f"fill must be 'mean' or 'zero', got {fill!r}")
    out = img.copy()
    out[m] = value
    return out


# ----------------------------------------------------------------------------- T2-like synthesis


def _bias_field(shape: tuple[int, ...], strength: float, gen: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field in ``[1 - strength, 1 + strength]``."""
    smooth = ndimage.gaussian_filter(gen.standard_normal(shape), sigma=max(shape) / 4, mode="reflect")
    span = smooth.max() - smooth.min()
    unit = (smooth - smooth.min()) / span if span > 0 else np.full(shape, 0.5)
    return 1.0 + strength * (2.0 * unit - 1.0)


def simulate_t2_from_tissue(
    p_csf: np.ndarray,
    p_gm: np.ndarray,
    p_wm: np.ndarray,
    rng: RngLike | None = None,
    bias_strength: float = 0.1,
) -> np.ndarray:
    """SIMULATED T2-like contrast from tissue probability maps (see SIMULATED_T2_NOTE).

    ``T2 = 1.0 * p_csf + 0.6 * p_gm + 0.35 * p_wm`` (CSF bright, WM dark, background 0),
    then, only if ``rng`` is given, a smooth multiplicative bias field of
    ``+-bias_strength``; clipped to [0, 1]. This is not a real T2 scan: say so (with
    ``SIMULATED_T2_NOTE``) wherever the output is used.

    Args:
        p_csf, p_gm, p_wm: probability maps in [0, 1] of equal shape, 2-D (3-D volumes
            are also accepted).
        rng: Generator or int seed for the bias field; None gives no bias field.
        bias_strength: bias field amplitude, in [0, 1).
    """
    maps = [_check_image(p, name, ndims=(2, 3)) for p, name in ((p_csf, "p_csf"), (p_gm, "p_gm"), (p_wm, "p_wm"))]
    shapes = {m.shape for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"shape mismatch: p_csf {maps[0].shape}, p_gm {maps[1].shape}, p_wm {maps[2].shape}")
    for m, name in zip(maps, ("p_csf", "p_gm", "p_wm")):
        if m.min() < 0.0 or m.max() > 1.0:
            raise ValueError(f"{name} must be a probability map in [0, 1], got range [{m.min():.4g}, {m.max():.4g}]")
    if not (0.0 <= bias_strength < 1.0):
        raise ValueError(f"bias_strength must be in [0, 1), got {bias_strength!r}")
    csf, gm, wm = maps
    t2 = T2_CSF * csf + T2_GM * gm + T2_WM * wm
    if rng is not None and bias_strength > 0:
        t2 = t2 * _bias_field(t2.shape, bias_strength, _as_rng(rng))
    return np.clip(t2, 0.0, 1.0)
