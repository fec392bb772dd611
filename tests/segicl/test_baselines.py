import numpy as np
import pytest

from data.episodes import Episode
from segicl.baselines import copy_example_baseline, predict_copy, predict_union


def test_copy_resamples_to_the_query_grid():
    mask = np.zeros((1, 32, 32), np.float32)
    mask[0, 8:16, 4:12] = 1
    out = copy_example_baseline(mask, (64, 64))
    assert out.shape == (64, 64) and out.sum() == 4 * mask.sum()
    assert out[16:32, 8:24].all()
    np.testing.assert_array_equal(copy_example_baseline(mask, (32, 32)), mask[0])


def test_copy_needs_an_example_and_a_2d_mask():
    empty = Episode("x", "x", np.zeros((0, 1, 8, 8)), np.zeros((0, 1, 8, 8)), np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), {})
    with pytest.raises(ValueError, match="at least one example"):
        predict_copy(empty)
    with pytest.raises(ValueError, match="must be 2-D"):
        copy_example_baseline(np.zeros((2, 8, 8)), (8, 8))


def test_union_of_examples_is_the_pixelwise_or_on_the_query_grid():
    masks = np.zeros((2, 1, 8, 8), np.float32)
    masks[0, 0, :2, :2] = 1
    masks[1, 0, 6:, 6:] = 1
    episode = Episode("x", "x", np.zeros((2, 1, 8, 8)), masks, np.zeros((1, 16, 16)), np.zeros((1, 16, 16)), {})
    union = predict_union(episode)
    assert union.shape == (16, 16) and union.sum() == 4 * masks.sum()
    assert union[:4, :4].all() and union[12:, 12:].all() and not union[4:12].any()
    np.testing.assert_array_equal(predict_union(Episode("x", "x", masks[:1], masks[:1], masks[0], masks[0], {})),
                                  masks[0, 0])
    with pytest.raises(ValueError, match="at least one example"):
        predict_union(Episode("x", "x", masks[:0], masks[:0], masks[0], masks[0], {}))
