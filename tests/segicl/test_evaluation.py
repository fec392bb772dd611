"""Evaluation scores what the pipeline answers, on the same episodes as its baselines."""
import numpy as np
import pytest
import torch

from segicl_data.episodes import EpisodeConfig, EpisodeSampler
from segicl.evaluation import evaluate_copy_baseline, segment_episodes
from segicl.pipeline import SegICLPipeline


@pytest.fixture(scope="module")
def pipeline(tiny_model):
    return SegICLPipeline(tiny_model)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_the_pipeline_and_the_evaluation_give_bit_identical_masks(pipeline, dataset, k, use_cache):
    """Every published figure is scored on what `segicl segment` / `SegICLPipeline` would answer for that episode."""
    episode = EpisodeSampler(dataset, EpisodeConfig(split="test", structures="held_out", num_examples=k, seed=0))[0]
    probability, spread = segment_episodes(pipeline.model, [episode], 2, 3, torch.Generator().manual_seed(7), use_cache)
    examples = [(episode.example_images[i, 0], episode.example_masks[i, 0]) for i in range(k)]
    output = pipeline(episode.query_image[0], episode.instruction, examples, num_samples=3, num_steps=2,
                      use_cache=use_cache, normalization="none", seed=7)
    np.testing.assert_array_equal(output.probabilities, probability[0])
    np.testing.assert_array_equal(output.uncertainty, spread[0])


def test_copy_baseline_falls_under_transforms(dataset):
    plain = evaluate_copy_baseline(dataset, EpisodeConfig(split="test", num_examples=1, min_area=20, transform=None), 60)
    moved = evaluate_copy_baseline(dataset, EpisodeConfig(split="test", num_examples=1, min_area=20), 60)
    assert plain["episodes"] == moved["episodes"] == 60
    assert 0.0 < moved["mean_dice"] < plain["mean_dice"] < 1.0
