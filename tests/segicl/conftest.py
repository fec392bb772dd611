import numpy as np
import pytest
import torch

from segicl.pipeline import SegICLPipeline


def random_masks(batch: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        masks[b, 0, top: top + size // 3, left: left + size // 4] = 1
    return masks


@pytest.fixture(scope="module")
def pipeline(tiny_model):
    return SegICLPipeline(tiny_model)


def example(size=(70, 60), seed=0):
    """An example pair: a random image and a square mask inside it."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(size, np.float32)
    mask[10:40, 15:45] = 1
    return rng.random(size).astype(np.float32), mask
