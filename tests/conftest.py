"""Shared fixtures: the real slice dataset, built once into the project's cache (reused by `make demo`)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dataset():
    from data.build import DatasetConfig
    from data.dataset import SliceDataset

    cache = Path(os.environ.get("SEGICL_CACHE", REPO / ".cache" / "segicl"))
    return SliceDataset.build(DatasetConfig(), cache, progress=False)
