import numpy as np
import pytest

from data.preprocess import (AXES, SquareCrop, apply_crop, foreground_crop, from_display_slices, normalize_mri,
                             resize_slices, to_display_slices, window_ct)


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
