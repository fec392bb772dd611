import numpy as np
import pytest
import torch

from segicl_data.episodes import INSTRUCTION_TEMPLATES, EpisodeConfig, EpisodeSampler, collate_episodes
from segicl_data.transforms import SpatialTransformConfig


def test_deterministic_for_a_seed(dataset):
    first = EpisodeSampler(dataset, EpisodeConfig(seed=3))[11]
    second = EpisodeSampler(dataset, EpisodeConfig(seed=3))[11]
    other = EpisodeSampler(dataset, EpisodeConfig(seed=4))[11]
    assert first.instruction == second.instruction and first.meta == second.meta
    np.testing.assert_array_equal(first.query_image, second.query_image)
    np.testing.assert_array_equal(first.example_masks, second.example_masks)
    assert first.meta != other.meta or not np.array_equal(first.query_image, other.query_image)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_shapes_and_binary_non_empty_masks(dataset, k):
    sampler = EpisodeSampler(dataset, EpisodeConfig(num_examples=k))
    for index in range(5):
        episode = sampler[index]
        assert episode.k == k
        assert episode.example_images.shape == episode.example_masks.shape == (k, 1, 64, 64)
        assert episode.query_image.shape == episode.query_mask.shape == (1, 64, 64)
        assert episode.query_image.dtype == np.float32
        for mask in [episode.query_mask, *episode.example_masks]:
            assert set(np.unique(mask)) == {0.0, 1.0}
        assert episode.structure in episode.instruction
        assert any(t.split("{")[0] in episode.instruction for t in INSTRUCTION_TEMPLATES)


def test_examples_come_from_another_volume_and_not_the_query(dataset):
    sampler = EpisodeSampler(dataset, EpisodeConfig(num_examples=3))
    for index in range(20):
        meta = sampler[index].meta
        assert all(example["volume"] != meta["volume"] for example in meta["examples"])
        assert len({(e["volume"], e["slice"]) for e in meta["examples"]}) == 3


def test_test_episodes_of_held_out_structures_take_examples_from_training_volumes(dataset):
    sampler = EpisodeSampler(dataset, EpisodeConfig(split="test", structures="held_out", num_examples=2, min_area=20))
    train_volumes = {name for name, info in dataset.volumes.items() if info["split"] == "train"}
    for index in range(10):
        episode = sampler[index]
        assert episode.meta["held_out"]
        assert dataset.volumes[episode.meta["volume"]]["split"] == "test"
        assert {e["volume"] for e in episode.meta["examples"]} <= train_volumes
        assert episode.query_mask.sum() >= 20 or episode.meta["k"] == 2


def test_examples_are_near_the_query_position(dataset):
    sampler = EpisodeSampler(dataset, EpisodeConfig(num_examples=3, position_tolerance=0.05, transform=None))
    gaps = []
    for index in range(20):
        meta = sampler[index].meta
        gaps += [abs(dataset.relative_position(e["volume"], e["slice"]) - meta["position"]) for e in meta["examples"]]
    assert np.median(gaps) <= 0.05


def test_transforms_move_the_masks(dataset):
    plain = EpisodeSampler(dataset, EpisodeConfig(num_examples=1, transform=None))[5]
    moved = EpisodeSampler(dataset, EpisodeConfig(num_examples=1, transform=SpatialTransformConfig(
        rotate_degrees=15, scale=0.1, translate_fraction=0.1)))[5]
    assert plain.meta["task"] == moved.meta["task"] and plain.meta["slice"] == moved.meta["slice"]
    assert not np.array_equal(plain.query_mask, moved.query_mask)
    # Without transforms the query is the stored slice itself.
    row = dataset.rows_by_task[plain.meta["task"]]
    stored = [dataset.mask(r, plain.meta["slice"]) for r in row if dataset.rows[r]["volume"] == plain.meta["volume"]][0]
    np.testing.assert_array_equal(plain.query_mask[0], stored)


def test_collate_pads_variable_k(dataset):
    sampler = EpisodeSampler(dataset, EpisodeConfig(max_examples=3))
    episodes = [EpisodeSampler(dataset, EpisodeConfig(num_examples=k))[0] for k in (0, 2, 3)]
    batch = collate_episodes(episodes)
    assert batch["example_images"].shape == (3, 3, 1, 64, 64)
    assert batch["example_valid"].tolist() == [[False] * 3, [True, True, False], [True] * 3]
    assert batch["num_examples"].tolist() == [0, 2, 3]
    assert torch.all(batch["example_masks"][0] == 0) and torch.all(batch["example_images"][1, 2] == 0)
    assert batch["query_image"].shape == (3, 1, 64, 64) and len(batch["instructions"]) == 3
    assert len(sampler) > 1000
    with pytest.raises(ValueError, match="empty list"):
        collate_episodes([])


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "valid"}, "episode split must be"),
    ({"structures": "some"}, "structures must be"),
    ({"split": "train", "structures": "held_out"}, "held-out ones never enter training"),
    ({"num_examples": 5, "max_examples": 3}, "num_examples must be in 0..3"),
])
def test_bad_episode_config_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpisodeConfig(**kwargs)


def test_episodes_are_nested_in_k(dataset):
    """The same index gives the same query (and transform) for every k, and k=1's example is k=3's first."""
    samplers = {k: EpisodeSampler(dataset, EpisodeConfig(split="test", structures="held_out", num_examples=k,
                                                         max_examples=3, min_area=20, seed=5)) for k in (0, 1, 3)}
    for index in range(4):
        episodes = {k: sampler[index] for k, sampler in samplers.items()}
        for k in (1, 3):
            np.testing.assert_array_equal(episodes[k].query_image, episodes[0].query_image)
            np.testing.assert_array_equal(episodes[k].query_mask, episodes[0].query_mask)
        np.testing.assert_array_equal(episodes[3].example_masks[:1], episodes[1].example_masks)
        np.testing.assert_array_equal(episodes[3].example_images[:1], episodes[1].example_images)
        assert episodes[3].meta["examples"][:1] == episodes[1].meta["examples"]


def test_anonymous_names_replace_the_structure_only_when_examples_show_it(dataset):
    always = EpisodeSampler(dataset, EpisodeConfig(anonymous_name_prob=1.0, seed=2))
    never = EpisodeSampler(dataset, EpisodeConfig(anonymous_name_prob=0.0, seed=2))
    renamed = 0
    for index in range(30):
        episode, named = always[index], never[index]
        np.testing.assert_array_equal(episode.query_mask, named.query_mask)
        assert episode.structure == named.structure and named.structure in named.instruction
        if episode.k == 0:
            assert episode.instruction == named.instruction
        else:
            renamed += episode.structure not in episode.instruction
    assert renamed >= 10


def test_made_up_names_recombine_real_words_into_new_names():
    from segicl_data.episodes import made_up_name

    real = ["left caudate", "right caudate", "left putamen", "Brodmann area 6", "insula"]
    names = [made_up_name(np.random.default_rng(seed), real) for seed in range(40)]
    assert names == [made_up_name(np.random.default_rng(seed), real) for seed in range(40)]
    words = {w for n in real for w in n.split()}
    assert not set(names) & set(real) and len(set(names)) >= 20
    assert all(set(n.split()) <= words for n in names)
    with pytest.raises(ValueError, match="at least one real name"):
        made_up_name(np.random.default_rng(0), [])


def test_anonymous_name_probability_is_checked():
    with pytest.raises(ValueError, match="anonymous_name_prob"):
        EpisodeConfig(anonymous_name_prob=1.5)


def test_absent_queries_are_empty_slices_of_the_same_volume(dataset):
    with_absent = EpisodeSampler(dataset, EpisodeConfig(split="train", min_area=16, absent_prob=0.5, seed=3))
    episodes = [with_absent[i] for i in range(40)]
    absent = [e for e in episodes if not e.query_mask.any()]
    assert 8 <= len(absent) <= 32
    for episode in absent:
        row = next(r for r in dataset.rows_by_task[episode.meta["task"]] if dataset.rows[r]["volume"] == episode.meta["volume"])
        assert episode.meta["slice"] not in dataset.rows[row]["slices"]  # a slice without the structure
        assert all(mask.any() for mask in episode.example_masks)  # the examples still show it
    assert all(e.query_mask.sum() >= 1 for e in episodes if e not in absent)


def test_absent_probability_zero_draws_the_episodes_it_always_did(dataset):
    plain = EpisodeSampler(dataset, EpisodeConfig(split="train", min_area=16, seed=3))
    zero = EpisodeSampler(dataset, EpisodeConfig(split="train", min_area=16, seed=3, absent_prob=0.0))
    for index in range(5):
        assert np.array_equal(plain[index].query_image, zero[index].query_image)
    with pytest.raises(ValueError, match="absent_prob"):
        EpisodeConfig(absent_prob=1.5)
