import pytest
import torch


def small_config(**overrides):
    """The tiny preset's slots (64 px, patch 8) with a much smaller ViT, for fast tests."""
    from mvg_head.config import tiny_config

    return tiny_config(**{"width": 32, "depth": 4, "heads": 2, "head_channels": 16, **overrides})


@pytest.fixture()
def small_model():
    from mvg_head.model import MVGModel

    torch.manual_seed(0)
    return MVGModel(small_config()).eval()


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tests share two cores with other work, where two threads thrash (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
