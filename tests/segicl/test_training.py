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
from tests.stages.conftest import fresh_model


def test_stage2_decoder_loss_trains_the_encoder_through_the_frozen_decoder(dataset, tokenizer):
    model = fresh_model(tokenizer)
    batch = episode_batches(model, dataset, 3, 16, 2, seed=0)(0, 0, 1)
    plain = Stage2Model(model)(**batch, generator=torch.Generator().manual_seed(0))
    losses = Stage2Model(model, decoder_loss_weight=1.0)(**batch, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(losses["loss"], plain["loss"] + losses["decoder"])
    model.zero_grad()
    losses["loss"].backward()
    assert model.projector.mlp[-1].weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.decoder.parameters())
