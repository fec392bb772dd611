"""The canvas and the visual sentence, block-wise masking and the block-causal attention pattern.

A sentence of n = 2(k + 1) images [P_x1, P_y1, ..., P_xk, P_yk, X, Y] (tensor [B, n, C, H, W]) is laid out on a
canvas of k + 1 rows and two columns ([B, C, (k + 1) H, 2 W]): pair i on row i, image left, label right (for
k = 1 the paper's square: prompt image upper left, prompt label upper right, query lower left, label lower right).
Patch tokens are taken from the canvas in row-major order; `token_images` says which image each token belongs to.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def check_sentence(images: torch.Tensor) -> tuple[int, int]:
    """(batch, pairs) of a sentence [B, 2(k+1), C, H, W]; anything else is refused."""
    if images.ndim != 5:
        raise ValueError(f"a visual sentence must be [B, 2(k+1), C, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] < 4 or images.shape[1] % 2:
        raise ValueError(f"a visual sentence holds an even number (>= 4) of images: (prompt image, prompt label) "
                         f"x k, query image, query label; got {images.shape[1]}")
    return images.shape[0], images.shape[1] // 2


def to_canvas(images: torch.Tensor) -> torch.Tensor:
    """Sentence [B, 2(k+1), C, H, W] -> canvas [B, C, (k+1) H, 2 W]."""
    batch, pairs = check_sentence(images)
    _, _, channels, height, width = images.shape
    grid = images.reshape(batch, pairs, 2, channels, height, width)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, pairs * height, 2 * width)


def from_canvas(canvas: torch.Tensor, image_size: int) -> torch.Tensor:
    """Canvas [B, C, (k+1) H, 2 H] -> sentence [B, 2(k+1), C, H, H] (inverse of `to_canvas`)."""
    if canvas.ndim != 4 or canvas.shape[-1] != 2 * image_size or canvas.shape[-2] % image_size:
        raise ValueError(f"a canvas must be [B, C, (k+1)*{image_size}, {2 * image_size}], got {tuple(canvas.shape)}")
    batch, channels = canvas.shape[:2]
    pairs = canvas.shape[-2] // image_size
    grid = canvas.reshape(batch, channels, pairs, image_size, 2, image_size)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(batch, 2 * pairs, channels, image_size, image_size)


def token_images(pairs: int, grid: int) -> torch.Tensor:
    """Image index (0 .. 2 pairs - 1, sentence order) of every canvas token in row-major order [pairs*grid*2*grid]."""
    rows = torch.arange(pairs * grid) // grid
    cols = torch.arange(2 * grid) // grid
    return (2 * rows[:, None] + cols[None, :]).reshape(-1)


def image_tokens(tokens: torch.Tensor, pairs: int, grid: int) -> torch.Tensor:
    """Canvas-order tokens [B, N, D] -> per-image feature maps [B, 2 pairs, D, grid, grid]."""
    batch, _, dim = tokens.shape
    maps = tokens.reshape(batch, pairs, grid, 2, grid, dim)
    return maps.permute(0, 1, 3, 5, 2, 4).reshape(batch, 2 * pairs, dim, grid, grid)


def block_causal_mask(pairs: int, grid: int) -> torch.Tensor:
    """Boolean attention mask [N, N] (True = may attend): a token sees its own image and every earlier image.

    With it the output at image 2i (the input X_i) depends on S_1 .. S_2i+1 only (1-based: S_1 .. S_{2i-1} of the
    paper's p(S_2i | S_1, ..., S_2i-1)), so it can be trained to predict the next image, label i, without seeing
    label i or any later pair.
    """
    index = token_images(pairs, grid)
    return index[None, :] <= index[:, None]


def block_masking(pairs: int, grid: int, ratio: float, generator: torch.Generator, min_block: int = 4,
                  query_label_probability: float = 0.0, labels_only: bool = True) -> torch.Tensor:
    """Block-wise random masking (BEiT style) of a canvas: bool [N] in canvas token order, True = masked.

    The maskable region is the label column (`labels_only`, as the released MVG / Painter code masks only the
    targets) or the whole canvas (the paper's text). round(ratio * maskable) tokens are masked, in rectangles of
    `min_block` .. max(min_block, maskable / 16) patches and random aspect (0.3 .. 3.3) (BEiT's generator; MVG's
    released settings are 16 .. 128). With probability `query_label_probability` the whole query label (the
    inference condition) is masked first and the rest of the count is drawn in blocks.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    rows, cols = pairs * grid, (grid if labels_only else 2 * grid)
    target = int(round(ratio * rows * cols))
    mask = np.zeros((rows, cols), dtype=bool)
    if float(torch.rand((), generator=generator)) < query_label_probability:
        mask[(pairs - 1) * grid:, cols - grid:] = True
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    rng = np.random.default_rng(seed)
    max_block = max(min_block, rows * cols // 16)
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    attempts = 0
    while mask.sum() < target and attempts < 1000:
        attempts += 1
        remaining = target - int(mask.sum())
        area = rng.uniform(min_block, max(min_block, min(max_block, remaining)))
        aspect = math.exp(rng.uniform(*log_aspect))
        height = int(round(math.sqrt(area * aspect)))
        width = int(round(math.sqrt(area / aspect)))
        if not (1 <= height <= rows and 1 <= width <= cols):
            continue
        top, left = rng.integers(0, rows - height + 1), rng.integers(0, cols - width + 1)
        block = mask[top:top + height, left:left + width]
        new = int((~block).sum())
        if 0 < new <= remaining:
            block[:] = True
    if mask.sum() < target:  # top up one patch at a time (rare: only the last few patches)
        free = np.flatnonzero(~mask.reshape(-1))
        mask.reshape(-1)[rng.choice(free, target - int(mask.sum()), replace=False)] = True
    if labels_only:
        mask = np.concatenate([np.zeros_like(mask), mask], axis=1)
    return torch.from_numpy(mask.reshape(-1))
