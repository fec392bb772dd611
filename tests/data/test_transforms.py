import numpy as np

from segicl_data.transforms import SpatialTransformConfig, random_affine


def square(size: int = 32) -> np.ndarray:
    image = np.zeros((size, size), np.float32)
    image[8:20, 10:22] = 1.0
    return image


def test_one_draw_moves_images_and_labels_together():
    image = square()
    labels = (image * 3).astype(np.int16)  # a label map of value 3 on the same square
    (moved_a, moved_b), (moved_labels,) = random_affine(SpatialTransformConfig(), [image, image * 2], [labels], 5)
    assert moved_a.dtype == np.float32 and moved_labels.dtype == np.int16
    assert set(np.unique(moved_labels)) <= {0, 3}
    np.testing.assert_allclose(moved_b, moved_a * 2, atol=1e-5)  # the same affine for every image
    inside = moved_a > 0.99
    assert (moved_labels[inside] == 3).all()  # and for the label map
    assert not np.array_equal(moved_a, image)


def test_a_draw_is_a_function_of_its_seed():
    image = square()
    first = random_affine(SpatialTransformConfig(), [image], [], 11)[0][0]
    again = random_affine(SpatialTransformConfig(), [image], [], 11)[0][0]
    other = random_affine(SpatialTransformConfig(), [image], [], 12)[0][0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_a_zero_range_is_the_identity():
    image = square()
    (moved,), (labels,) = random_affine(SpatialTransformConfig(0.0, 0.0, 0.0), [image], [image > 0], 3)
    np.testing.assert_allclose(moved, image, atol=1e-5)
    np.testing.assert_array_equal(labels, image > 0)
