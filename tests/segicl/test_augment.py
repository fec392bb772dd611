"""In-context test-time augmentation: views undo exactly, the query and its examples turn together, runs combine."""
import numpy as np
import pytest

from segicl.augment import VIEWS, apply_view, combine_runs, ensemble_call, example_subsets, undo_view
from segicl.pipeline import SegmentationOutput

from .conftest import example


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_is_undone_exactly_on_a_non_square_stack(view):
    stack = np.random.default_rng(0).random((3, 5, 7))
    seen = apply_view(stack, view)
    assert seen.shape in {(3, 5, 7), (3, 7, 5)}
    np.testing.assert_array_equal(undo_view(seen, view), stack)


def test_the_views_are_the_eight_different_symmetries_of_the_square():
    square = np.arange(16).reshape(4, 4)
    assert len({apply_view(square, view).tobytes() for view in VIEWS}) == 8
    with pytest.raises(ValueError, match="unknown view 'mirror'"):
        apply_view(square, "mirror")


def test_two_views_are_the_slices_and_their_left_right_mirror():
    seen = []

    def record(slices, examples, slice_examples, run_index, callback):
        seen.append((slices, examples[0][0]))
        return SegmentationOutput(np.zeros(slices.shape, np.float32), None, np.zeros(slices.shape, np.float32))

    slices, image = np.arange(12.0).reshape(1, 3, 4), np.arange(12.0).reshape(3, 4) + 100
    ensemble_call(record, slices, [(image, np.ones((3, 4)))], None, reads=3, views=2)
    np.testing.assert_array_equal(seen[1][0], slices[:, :, ::-1])  # columns reversed, rows kept
    np.testing.assert_array_equal(seen[1][1], image[:, ::-1])


def test_example_subsets_use_every_example_and_all_of_few():
    assert example_subsets(2, 3, 4) == [(0, 1)]
    subsets = example_subsets(5, 3, 4)
    assert len(subsets) == len(set(subsets)) == 4 and all(len(s) == 3 for s in subsets)
    assert set().union(*subsets) == set(range(5))
    assert example_subsets(4, 3, 1) == [(0, 1, 2)]


def test_runs_combine_into_their_mean_and_the_total_spread():
    same = np.full((2, 2), 0.5)
    probability, spread = combine_runs([same, same], [np.full((2, 2), 0.1)] * 2)
    np.testing.assert_allclose(probability, 0.5)
    np.testing.assert_allclose(spread, 0.1, rtol=1e-6)  # no disagreement: the decoder's spread alone
    _, spread = combine_runs([np.zeros((2, 2)), np.ones((2, 2))], [np.zeros((2, 2))] * 2)
    np.testing.assert_allclose(spread, 0.5)  # runs that disagree: their standard deviation


def copy_first_example(slices, examples, slice_examples, run_index, callback):
    """A stand-in model that answers with its first example's mask: right only if the examples turned with the
    query."""
    masks = [pairs[0][1] for pairs in slice_examples] if slice_examples else [examples[0][1]] * len(slices)
    if callback:
        callback("condition", 1, 1), callback("decode", 1, 1)
    return SegmentationOutput(np.stack(masks).astype(np.float32), None, np.zeros(slices.shape, np.float32), {"llm_s": 1.0})


@pytest.mark.parametrize("per_slice", [False, True])
def test_the_examples_turn_with_the_query_so_an_equivariant_answer_survives_every_view(per_slice):
    rng = np.random.default_rng(1)
    slices = rng.random((2, 6, 9))
    mask = (rng.random((6, 9)) > 0.5).astype(np.float32)
    pairs = [(rng.random((6, 9)), mask), (rng.random((6, 9)), mask)]
    examples, slice_examples = ([], [pairs, pairs]) if per_slice else (pairs, None)
    fractions = []
    probability, spread, timings = ensemble_call(copy_first_example, slices, examples, slice_examples, reads=3,
                                                 views=8, on_fraction=fractions.append)
    np.testing.assert_array_equal(probability, np.stack([mask, mask]))
    assert not spread.any() and timings["llm_s"] == 8.0
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_more_examples_than_the_model_reads_run_once_per_subset():
    calls = []

    def record(slices, examples, slice_examples, run_index, callback):
        calls.append(len(examples))
        return SegmentationOutput(np.full(slices.shape, run_index, np.float32), None, np.zeros(slices.shape, np.float32))

    pairs = [(np.zeros((4, 4)), np.ones((4, 4)))] * 5
    probability, _, _ = ensemble_call(record, np.zeros((1, 4, 4)), pairs, None, reads=3, views=2, example_sets=2)
    assert calls == [3, 3, 3, 3]  # 2 subsets x 2 views
    np.testing.assert_allclose(probability, 1.5)
    with pytest.raises(ValueError, match="views must be 1 to 8, got 9"):
        ensemble_call(record, np.zeros((1, 4, 4)), pairs, None, reads=3, views=9)


def test_the_pipeline_segments_with_views_and_more_examples_than_it_reads(pipeline):
    from segicl.volume import Settings

    query = example(seed=9)[0]
    pairs = [example(seed=seed) for seed in range(5)]
    fast = dict(steps=2, samples=2)
    single = pipeline.segment(query, "Segment the thalamus", pairs[:3], settings=Settings(**fast))
    viewed = pipeline.segment(query, "Segment the thalamus", pairs[:3], settings=Settings(**fast, views=4))
    assert viewed.probabilities.shape == single.probabilities.shape == query.shape
    assert not np.array_equal(viewed.probabilities, single.probabilities)
    five = pipeline.segment(query, "Segment the thalamus", pairs, settings=Settings(**fast, example_sets=2))
    assert five.mask.shape == single.mask.shape and set(np.unique(five.mask)) <= {0, 1}
    with pytest.raises(ValueError, match="views must be 1 to 8, got 0"):
        Settings(views=0).validate()
