import torch


def random_masks(batch: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        masks[b, 0, top: top + size // 3, left: left + size // 4] = 1
    return masks
