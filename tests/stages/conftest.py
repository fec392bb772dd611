"""Shared helpers of the training-stage tests: a tokenizer from the dataset, a fresh tiny model, batches, logs."""
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


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer(dataset):
    return build_tokenizer(corpus_from_dataset(dataset), 512)


def fresh_model(tokenizer) -> SegICLModel:
    torch.manual_seed(0)
    return SegICLModel.from_config(tiny_config(), tokenizer)


def stage1_batches(dataset, batch_size: int):
    sampler = mask_sampler(dataset, "train", "train", min_area=16, seed=0)
    return lambda step, rank, world: {"masks": torch.stack([torch.from_numpy(sampler[step * batch_size + i].query_mask)
                                                            for i in range(batch_size)])}


def mean_loss(folder: Path, first: bool, count: int = 5) -> float:
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    chosen = rows[:count] if first else rows[-count:]
    return sum(r["loss"] for r in chosen) / len(chosen)


class Interrupt(Exception):
    pass
