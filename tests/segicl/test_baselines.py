import numpy as np
import pytest

from segicl_data.episodes import Episode
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


def blob_image(shift: tuple[int, int] = (0, 0), size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A textured image with a bright ellipse (the structure) and its mask, translated by `shift` pixels."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = 30 + shift[0], 26 + shift[1]
    mask = (((yy - cy) / 9) ** 2 + ((xx - cx) / 6) ** 2 <= 1).astype(np.float32)
    head = (((yy - 32 - shift[0]) / 26) ** 2 + ((xx - 32 - shift[1]) / 22) ** 2 <= 1).astype(np.float32)
    return 0.3 * head + 0.5 * mask + 0.05 * np.sin(xx / 3 + shift[1] / 3), mask


def three_raters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three 8 x 8 masks marking the first 4, 5 and 6 rows: rows 0-3 hold 3 votes, row 4 two, row 5 one."""
    a, b, c = (np.zeros((8, 8), np.float32) for _ in range(3))
    a[:4], b[:5], c[:6] = 1, 1, 1
    return a, b, c


def test_registration_carries_the_mask_onto_a_moved_query():
    from segicl_data.metrics import dice
    from segicl.baselines import register_mask

    query_image, query_mask = blob_image()
    example_image, example_mask = blob_image(shift=(6, -5))
    assert dice(example_mask, query_mask) < 0.5  # copying the example misses most of the structure
    assert dice(register_mask(example_image, example_mask, query_image), query_mask) > 0.85


def test_registration_is_repeatable_and_refuses_the_wall_clock_seed(dataset):
    from segicl_data.episodes import EpisodeConfig, EpisodeSampler
    from segicl.baselines import RegistrationConfig, register_mask

    sampler = EpisodeSampler(dataset, EpisodeConfig(split="test", structures="held_out", num_examples=1,
                                                    max_examples=1, min_area=64))
    for index in range(3):  # real slices, where the metric's random sampling decides the optimiser's path
        episode = sampler[index]
        runs = [register_mask(episode.example_images[0], episode.example_masks[0], episode.query_image)
                for _ in range(3)]
        assert all(np.array_equal(runs[0], run) for run in runs[1:])
    with pytest.raises(ValueError, match="seed must be >= 1"):
        RegistrationConfig(seed=0)


def test_registration_does_not_depend_on_simpleitks_default_thread_count(dataset):
    import SimpleITK as sitk

    from segicl_data.episodes import EpisodeConfig, EpisodeSampler
    from segicl.baselines import RegistrationConfig, register_mask

    sampler = EpisodeSampler(dataset, EpisodeConfig(split="test", structures="held_out", num_examples=3,
                                                    max_examples=3, min_area=64))
    pairs = [(e.example_images[j], e.example_masks[j], e.query_image) for e in map(sampler.__getitem__, range(20))
             for j in range(3)]
    default = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    registered = {}
    try:
        for threads in (1, 4):  # unpinned, 2 of these 60 masks differed between the two
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            registered[threads] = [register_mask(*pair) for pair in pairs]
            assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads  # restored after each
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(default)
    assert all(np.array_equal(a, b) for a, b in zip(registered[1], registered[4]))
    with pytest.raises(ValueError, match="threads must be >= 1"):
        RegistrationConfig(threads=0)


def test_label_fusion_votes_and_staple():
    from segicl.baselines import fuse_masks

    a, b, c = three_raters()
    voted = fuse_masks([a, b, c], "vote")
    assert voted[:5].all() and not voted[5:].any()  # rows 0-4 hold 2 or 3 votes, row 5 only one
    assert fuse_masks([a, b, c], "staple")[:4].all()
    assert fuse_masks([a, b], "vote")[4].sum() == 0  # a tie is background
    with pytest.raises(ValueError, match="unknown label fusion"):
        fuse_masks([a], "mean")
    with pytest.raises(ValueError, match="at least one mask"):
        fuse_masks([], "vote")


def test_registration_fusion_registers_each_example_once(dataset):
    from segicl_data.episodes import EpisodeConfig, EpisodeSampler
    from segicl.baselines import RegistrationFusion

    config = EpisodeConfig(split="test", structures="held_out", min_area=64, max_examples=5)
    fusion = RegistrationFusion()
    nested = [EpisodeSampler(dataset, EpisodeConfig(**{**config.__dict__, "num_examples": k}))[0] for k in (0, 1, 3, 5)]
    predictions = fusion(nested)
    assert predictions[0] is None and all(p.shape == (64, 64) for p in predictions[1:])
    assert len(fusion._registered) == 5  # k = 1 and 3 reuse k = 5's registrations of the same examples
    with pytest.raises(ValueError, match="at least one example"):
        fusion.predict(nested[0])


def test_fusion_probability_is_staples_where_defined_and_the_vote_fraction_elsewhere():
    from segicl.baselines import fusion_probability

    a, b, c = three_raters()
    votes = fusion_probability([a, b, c], "vote")
    np.testing.assert_allclose(votes[:, 0], [1, 1, 1, 1, 2 / 3, 1 / 3, 0, 0], rtol=1e-6)
    staple = fusion_probability([a, b, c], "staple")
    assert staple.shape == (8, 8) and (staple[:4] > 0.5).all() and (staple[6:] < 0.5).all()
    assert not np.allclose(staple, votes)
    c[:] = 0  # an empty rater: STAPLE is undefined, the vote fraction stands in
    np.testing.assert_array_equal(fusion_probability([a, b, c], "staple"), fusion_probability([a, b, c], "vote"))
    with pytest.raises(ValueError, match="unknown label fusion 'mean'"):
        fusion_probability([a], "mean")
