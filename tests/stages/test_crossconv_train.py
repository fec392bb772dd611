"""Training the CrossConv peer on real episodes: its loss falls, k cycles through 1..K, the command saves a model."""
import pytest
import torch

from segicl.config import CrossConvConfig
from segicl.incontext import CrossConvNet
from segicl.training import CrossConvTraining
from segicl_stages.common import TrainingArguments, train
from segicl_stages.crossconv_train import episode_batches, main
from tests.stages.conftest import mean_loss


def test_batches_hold_one_to_k_examples(dataset):
    make_batch = episode_batches(dataset, max_examples=3, min_area=16, batch_size=6, seed=0)
    batch = make_batch(0, 0, 1)
    assert batch["example_valid"].sum(dim=1).tolist() == [1, 2, 3, 1, 2, 3]
    assert batch["query_image"].shape == (6, 1, 64, 64) and set(batch) == {
        "example_images", "example_masks", "example_valid", "query_image", "query_mask"}
    with pytest.raises(ValueError, match="--max-examples must be >= 1"):
        episode_batches(dataset, max_examples=0, min_area=16, batch_size=2, seed=0)


def test_synthetic_prob_mixes_synthetic_tasks_into_the_batches(dataset):
    """All synthetic at 1.0 (k still cycles through 1..K), none at 0.0: the flag reaches the sampler."""
    synthetic = episode_batches(dataset, max_examples=3, min_area=16, batch_size=6, seed=0, synthetic_prob=1.0)(0, 0, 1)
    real = episode_batches(dataset, max_examples=3, min_area=16, batch_size=6, seed=0)(0, 0, 1)
    assert synthetic["example_valid"].sum(dim=1).tolist() == [1, 2, 3, 1, 2, 3]
    assert not torch.equal(synthetic["query_image"], real["query_image"])
    assert synthetic["query_mask"].flatten(1).amax(1).tolist() == [1.0] * 6


def test_crossconv_loss_falls_on_real_episodes(dataset, tmp_path):
    torch.manual_seed(0)
    stage = CrossConvTraining(CrossConvNet(CrossConvConfig(widths=(8, 8, 8, 8))))
    args = TrainingArguments(output_dir=tmp_path, steps=40, batch_size=4, learning_rate=3e-3, warmup_steps=2,
                             log_every=1, checkpoint_every=100)
    train(stage, episode_batches(dataset, 3, 16, 4, seed=0), args)
    assert mean_loss(tmp_path, first=False) < 0.85 * mean_loss(tmp_path, first=True)


def test_the_command_saves_a_model_that_reloads(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", "--widths", "4", "4",
                 "--absent-prob", "0.5", "--synthetic-prob", "0.5"]) == 0
    network = CrossConvNet.from_pretrained(tmp_path / "run" / "model")
    assert network.config.widths == (4, 4)
    with pytest.raises(ValueError, match="differ from the --init model"):
        main(["--output-dir", str(tmp_path / "again"), "--steps", "1", "--init", str(tmp_path / "run" / "model"),
              "--widths", "8", "8"])
