"""Shared fixtures: the real slice dataset, built once into the project's cache (reused by `make demo`)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dataset():
    from data.build import DatasetConfig
    from data.dataset import SliceDataset

    cache = Path(os.environ.get("SEGICL_CACHE", REPO / ".cache" / "segicl"))
    return SliceDataset.build(DatasetConfig(), cache, progress=False)


@pytest.fixture(scope="session")
def tokenizer():
    from segicl.tokenizer import build_tokenizer

    return build_tokenizer(["Segment the left hippocampus in this T1-weighted MRI slice.",
                            "Outline the white matter in the T1-weighted MRI scan."], vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    from segicl.config import tiny_config
    from segicl.model import SegICLModel

    torch.manual_seed(0)
    return SegICLModel.from_config(tiny_config(), tokenizer).eval()
