import pytest
import torch


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


def random_masks(batch: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        masks[b, 0, top: top + size // 3, left: left + size // 4] = 1
    return masks
