"""Synthetic in-context tasks: label maps with every kind of shape, subjects that differ, masks that agree."""
import numpy as np
import pytest

from segicl_data.episodes import EpisodeConfig, EpisodeSampler
from segicl_data.synthetic import SyntheticConfig, synthetic_pairs, task_template


def test_a_template_holds_blobs_a_nested_pair_and_a_curve():
    config = SyntheticConfig()
    labels = task_template(np.random.default_rng(0), 64, config)
    assert labels.shape == (64, 64)
    present = set(np.unique(labels).tolist())
    assert {config.blobs + 1, config.blobs + 2, config.blobs + 3} <= present  # shape, nested shape, curve
    assert len(present & set(range(1, config.blobs + 1))) >= 2


def test_pairs_of_one_task_are_different_subjects_of_one_target():
    pairs = synthetic_pairs(np.random.default_rng(1), 4, 64, SyntheticConfig(deformation=3.0))
    images, masks = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    assert images.shape == masks.shape == (4, 64, 64)
    assert images.min() >= 0 and images.max() <= 1 and set(np.unique(masks)) <= {0.0, 1.0}
    assert all(mask.any() for mask in masks)
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(masks[0], masks[1])
    overlap = (masks[0] * masks[1]).sum() / max(masks[0].sum(), 1)
    assert overlap > 0.3  # the same structure, deformed: it largely overlaps itself
    far = [mask for _, mask in synthetic_pairs(np.random.default_rng(1), 2, 64, SyntheticConfig(deformation=12.0))]
    assert (far[0] * far[1]).sum() / max(far[0].sum(), 1) < overlap  # larger deformations move subjects further
    again = synthetic_pairs(np.random.default_rng(1), 4, 64, SyntheticConfig(deformation=3.0))
    np.testing.assert_array_equal(images, np.stack([p[0] for p in again]))


def test_the_sampler_mixes_synthetic_tasks_at_its_rate_and_keeps_k_at_least_one(dataset):
    sampler = EpisodeSampler(dataset, EpisodeConfig(synthetic_prob=0.5, seed=3))
    episodes = [sampler[i] for i in range(40)]
    synthetic = [e for e in episodes if e.meta.get("synthetic")]
    assert 10 <= len(synthetic) <= 30
    assert all(e.k >= 1 and e.query_mask.any() and e.example_masks.shape[1:] == (1, 64, 64) for e in synthetic)
    plain = EpisodeSampler(dataset, EpisodeConfig(seed=3))
    real = [i for i, e in enumerate(episodes) if not e.meta.get("synthetic")]
    assert not any(plain[i].meta.get("synthetic") for i in range(10))
    fixed = EpisodeSampler(dataset, EpisodeConfig(synthetic_prob=1.0, num_examples=2))[0]
    assert fixed.k == 2 and real
    with pytest.raises(ValueError, match="synthetic tasks are for training episodes only"):
        EpisodeConfig(split="test", structures="held_out", synthetic_prob=0.5)


def test_synthetic_subjects_wear_the_episodes_random_affine(dataset):
    """Without the transform the subjects share the template's frame; with it each moves on its own, as real examples
    do, so that copying an example is no answer."""
    moved = EpisodeSampler(dataset, EpisodeConfig(synthetic_prob=1.0, num_examples=3, seed=5))[0]
    still = EpisodeSampler(dataset, EpisodeConfig(synthetic_prob=1.0, num_examples=3, seed=5, transform=None))[0]

    def corner_zeros(episode):  # the affine's zero padding shows in the corners
        return sum(int((image[0, :3, :3] == 0).all()) for image in [*episode.example_images, episode.query_image])

    assert corner_zeros(moved) > corner_zeros(still)
    assert moved.query_mask.any() and all(mask.any() for mask in moved.example_masks)
