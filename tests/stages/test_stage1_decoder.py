"""The training stages on real data: losses fall, resume equals an uninterrupted run, DeepSpeed syncs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segicl.config import tiny_config
from segicl.model import SegICLModel
from segicl.training import Stage1Model, Stage2Model
from segicl.tokenizer import build_tokenizer, corpus_from_dataset
from segicl_stages.common import TrainingArguments, episode_batches, train
from segicl_stages.stage1_decoder import mask_sampler
from tests.stages.conftest import REPO, Interrupt, fresh_model, mean_loss, stage1_batches


def test_stage1_loss_falls_on_real_masks(dataset, tokenizer, tmp_path):
    args = TrainingArguments(output_dir=tmp_path, steps=30, batch_size=4, learning_rate=2e-3, warmup_steps=3,
                             log_every=1, checkpoint_every=100)
    train(Stage1Model(fresh_model(tokenizer)), stage1_batches(dataset, 4), args)
    assert mean_loss(tmp_path, first=False) < 0.7 * mean_loss(tmp_path, first=True)
    assert (tmp_path / "checkpoint" / "model.safetensors").exists()


def test_stage1_refuses_an_unknown_preset_with_the_known_ones(capsys):
    from segicl_stages.stage1_decoder import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--preset", "bogus", "--output-dir", "unused"])
    assert "invalid choice: 'bogus' (choose from 'tiny', 'full')" in capsys.readouterr().err
