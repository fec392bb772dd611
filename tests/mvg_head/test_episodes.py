import numpy as np
import pytest

from mvg_head.config import TASKS
from segicl_data.episodes import prompt_slice
from mvg_head.episodes import TEST_VOLUME, TRAIN_VOLUMES, EpisodeOptions, MVGEpisodeSampler, TaskMix


@pytest.fixture(scope="module")
def train_sampler(dataset):
    return MVGEpisodeSampler(dataset, EpisodeOptions(split="train", seed=0))


@pytest.fixture(scope="module")
def test_sampler(dataset):
    return MVGEpisodeSampler(dataset, EpisodeOptions(split="test", min_area=64, seed=0))


def test_prompt_slice_by_position():
    assert prompt_slice(0, 152, 155) == 0
    assert prompt_slice(100, 152, 155) == 100 * 155 // 152
    assert prompt_slice(151, 152, 155) == 151 * 155 // 152 == 153
    assert prompt_slice(9, 10, 5) == 4
    with pytest.raises(ValueError):
        prompt_slice(10, 10, 5)


@pytest.mark.parametrize("task", TASKS)
def test_episodes_are_deterministic_and_well_formed(train_sampler, task):
    first, again = train_sampler.episode(task, 7), train_sampler.episode(task, 7)
    assert np.array_equal(first.sentence, again.sentence)
    assert first.sentence.shape == (4, 3, 64, 64) and first.sentence.dtype == np.float32
    assert first.sentence.min() >= 0 and first.sentence.max() <= 1
    assert first.meta["volume"] != first.meta["prompt_volume"]
    if task == "segmentation":
        labels = first.query_labels
        assert set(np.unique(labels)) <= {0, *first.class_ids}
        # prompt label and query label share the colour table
        assert set(map(tuple, first.colours)) >= {tuple(c) for c in first.sentence[3].reshape(3, -1).T if c.any()}


def test_training_never_sees_test_volume_or_held_out_structures(train_sampler, dataset):
    for i in range(40):
        episode = train_sampler.episode("segmentation", i)
        row = [r for r in dataset.rows if r["task"] == episode.meta["task"] and r["volume"] == episode.meta["volume"]][0]
        assert not row["held_out"] and episode.meta["volume"] in TRAIN_VOLUMES
        assert episode.meta["prompt_volume"] in TRAIN_VOLUMES
    for task in ("synthesis", "inpainting"):
        assert all(train_sampler.episode(task, i).meta["volume"] in TRAIN_VOLUMES for i in range(10))


def test_test_episodes_query_the_test_volume_with_position_matched_prompts(test_sampler, dataset):
    episode = test_sampler.episode("segmentation", 3)
    assert episode.meta["volume"] == TEST_VOLUME and episode.meta["prompt_volume"] in TRAIN_VOLUMES
    n_te = dataset.volumes[TEST_VOLUME]["n_slices"]
    n_tr = dataset.volumes[episode.meta["prompt_volume"]]["n_slices"]
    assert episode.meta["prompt_slice"] == episode.meta["slice"] * n_tr // n_te
    assert test_sampler.episode("inpainting", 0).region.any()
    assert test_sampler.episode("synthesis", 0).meta["volume"] == TEST_VOLUME


def test_held_out_structures_only_at_test(dataset):
    sampler = MVGEpisodeSampler(dataset, EpisodeOptions(split="test", structures="held_out", min_area=64))
    assert all(sampler.episode("segmentation", i).meta["held_out"] for i in range(10))
    with pytest.raises(ValueError, match="held-out structures never enter training"):
        EpisodeOptions(split="train", structures="held_out")


def test_unknown_task_refused(train_sampler):
    with pytest.raises(ValueError, match="unknown task 'registration'"):
        train_sampler.episode("registration", 0)


def test_task_mix_follows_the_paper():
    rng = np.random.default_rng(0)
    draws = [TaskMix().draw(rng) for _ in range(4000)]
    segmentation = [mode for task, mode in draws if task == "segmentation"]
    others = [mode for task, mode in draws if task != "segmentation"]
    assert abs(len(segmentation) / len(draws) - 0.5) < 0.03
    assert set(segmentation) == {"autoregressive"}
    assert abs(others.count("autoregressive") / len(others) - 0.1) < 0.02
    with pytest.raises(ValueError, match="unknown tasks"):
        TaskMix(tasks=("segmentation", "registration"))


def test_task_mix_weights_the_other_tasks():
    rng = np.random.default_rng(0)
    draws = [TaskMix(other_weights={"denoising": 2.0}).draw(rng)[0] for _ in range(8000)]
    shares = {task: draws.count(task) / len(draws) for task in TASKS}
    assert abs(shares["segmentation"] - 0.5) < 0.02
    assert abs(shares["denoising"] - 0.25) < 0.02
    assert abs(shares["synthesis"] - 0.125) < 0.015 and abs(shares["inpainting"] - 0.125) < 0.015
    with pytest.raises(ValueError, match="other_weights"):
        TaskMix(other_weights={"segmentation": 2.0})
    with pytest.raises(ValueError, match="other_weights"):
        TaskMix(other_weights={"denoising": 0.0})


def test_colourings_see_the_same_episodes(dataset):
    """Only the colours differ between a random- and a pre-defined-colour sampler (a fair ablation)."""
    samplers = [MVGEpisodeSampler(dataset, EpisodeOptions(split="test", min_area=64, colouring=c))
                for c in ("random", "predefined")]
    for i in range(5):
        a, b = (s.episode("segmentation", i) for s in samplers)
        assert a.meta == b.meta and np.array_equal(a.query_labels, b.query_labels)
        assert np.array_equal(a.sentence[[0, 2]], b.sentence[[0, 2]])
