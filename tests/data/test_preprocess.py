import numpy as np
import pytest

from monai.transforms import ScaleIntensityRange

from segicl_data.preprocess import (AXES, NORMALIZATIONS, SquareCrop, apply_crop, denormalize_intensity, foreground_crop,
                             from_display_slices, intensity_range, normalize_intensity, normalize_mri, resample,
                             resize_slices,
                             to_display_slices, window_ct)


@pytest.mark.parametrize("axis", sorted(AXES))
def test_display_slices_invert(axis):
    volume = np.random.default_rng(0).random((7, 9, 11))
    slices = to_display_slices(volume, axis)
    assert slices.shape[0] == volume.shape[AXES[axis]]
    np.testing.assert_array_equal(from_display_slices(slices, axis), volume)


def test_axial_display_puts_anterior_at_the_top():
    volume = np.zeros((10, 12, 3))
    volume[:, -1, :] = 1  # the most anterior row in RAS (largest y)
    slices = to_display_slices(volume, "axial")
    assert slices[1, 0].all() and not slices[1, 1:].any()


def test_unknown_axis_refused():
    with pytest.raises(ValueError, match="unknown slice axis 'oblique'"):
        to_display_slices(np.zeros((2, 2, 2)), "oblique")


def test_window_ct_maps_the_paper_window():
    hounsfield = np.array([-1000.0, -100.0, 50.0, 200.0, 1000.0])
    np.testing.assert_allclose(window_ct(hounsfield), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(window_ct(hounsfield, (0.0, 100.0)), [0, 0, 0.5, 1, 1], atol=1e-6)
    with pytest.raises(ValueError, match="low < high"):
        window_ct(hounsfield, (200.0, -100.0))


def test_mri_percentile_normalisation():
    volume = np.random.default_rng(1).normal(100, 20, size=(20, 20, 20))
    out = normalize_mri(volume)
    assert out.min() == 0.0 and out.max() == 1.0
    inside = (volume > np.percentile(volume, 0.5)) & (volume < np.percentile(volume, 99.5))
    assert ((out[inside] > 0) & (out[inside] < 1)).all()


def test_a_constant_image_normalises_to_zeros_without_a_warning():
    out = normalize_mri(np.full((8, 8), 3.0))  # the suite turns warnings into errors
    assert out.dtype == np.float32 and not out.any()


def test_foreground_crop_is_square_and_padded():
    foreground = np.zeros((5, 50, 60), bool)
    foreground[1:3, 10:20, 5:55] = True
    crop = foreground_crop(foreground, margin=2)
    assert (crop.first_slice, crop.last_slice, crop.size) == (1, 2, 54)
    cut = apply_crop(foreground.astype(np.uint8), crop)
    assert cut.shape == (2, 54, 54)
    assert cut.sum() == foreground.sum()  # nothing of the foreground is lost
    with pytest.raises(ValueError, match="foreground is empty"):
        foreground_crop(np.zeros((2, 3, 3), bool))


def test_crop_outside_the_image_pads_with_zeros():
    slices = np.ones((1, 4, 4))
    cut = apply_crop(slices, SquareCrop(top=-2, left=0, size=6, first_slice=0, last_slice=0))
    assert cut[0, :2].sum() == 0 and cut[0, 2:, :4].all() and cut[0, :, 4:].sum() == 0


def test_resize_keeps_label_values():
    labels = np.zeros((2, 100, 100), np.uint16)
    labels[:, 20:60, 30:70] = 7
    labels[:, 70:90, 10:40] = 3
    out = resize_slices(labels, 64, labels=True)
    assert out.shape == (2, 64, 64) and out.dtype == np.uint16
    assert set(np.unique(out)) == {0, 3, 7}
    image = resize_slices(np.random.default_rng(0).random((2, 100, 100)).astype(np.float32), 32, labels=False)
    assert image.shape == (2, 32, 32) and image.dtype == np.float32


def test_resample_keeps_leading_axes_and_mask_values_and_averages_images():
    masks = np.zeros((2, 3, 100, 80), np.float32)
    masks[..., 20:60, 30:70] = 1
    out = resample(masks, (50, 40), nearest=True)
    assert out.shape == (2, 3, 50, 40) and out.dtype == np.float32 and set(np.unique(out)) == {0.0, 1.0}
    assert out[..., 10:30, 15:35].all() and out.sum() == 2 * 3 * 20 * 20
    checker = np.indices((64, 64)).sum(axis=0) % 2  # anti-aliasing averages a 1-px checkerboard to grey
    halved = resample(checker, (32, 32), nearest=False)
    assert halved.shape == (32, 32) and np.allclose(halved[1:-1, 1:-1], 0.5, atol=1e-6)  # edges: half a kernel
    same = resample(checker, (64, 64), nearest=False)
    assert np.array_equal(same, checker) and same is not checker


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_intensity_range_is_the_range_normalize_intensity_maps_to_0_and_1(mode):
    image = np.random.default_rng(2).normal(300, 400, size=(6, 20, 20)).astype(np.float32)
    low, high = intensity_range(image, mode)
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    np.testing.assert_array_equal(normalize_intensity(image, mode), np.asarray(scale(image[None])[0]))


def test_ct_round_trip_to_hounsfield_units():
    hounsfield = np.linspace(-1000, 1500, 2501, dtype=np.float32)
    low, high = intensity_range(hounsfield, "ct")
    assert (low, high) == (-100.0, 200.0)
    back = denormalize_intensity(normalize_intensity(hounsfield, "ct"), low, high)
    inside = (hounsfield >= -100) & (hounsfield <= 200)
    np.testing.assert_allclose(back[inside], hounsfield[inside], atol=1e-4, rtol=0)
    assert (back[hounsfield < -100] == -100).all() and (back[hounsfield > 200] == 200).all()  # clipped: the edges


def test_percentile_inverse_maps_to_the_images_own_percentiles():
    volume = np.random.default_rng(3).normal(100, 20, size=(20, 20, 20)) * 1000
    low, high = intensity_range(volume, "percentile")
    np.testing.assert_allclose((low, high), np.percentile(volume, (0.5, 99.5)), rtol=1e-6)
    np.testing.assert_allclose(denormalize_intensity(np.array([0.0, 0.5, 1.0]), low, high),
                               [low, (low + high) / 2, high], rtol=1e-6)
    assert intensity_range(np.full((4, 4), 3.0), "percentile") == (3.0, 3.0)  # a constant image: zeros -> 3
    assert intensity_range(volume, "none") == (0.0, 1.0)
    with pytest.raises(ValueError, match="unknown normalization 'zscore'"):
        intensity_range(volume, "zscore")
