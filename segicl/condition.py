"""The condition encoder: a 4-layer MLP that turns a mask into a grid of condition tokens.

It is shared: it conditions the decoder in stage 1 and, frozen, is the teacher whose tokens the
LLM regresses in stage 2 (SegICL paper, section 3.3).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from segicl.config import ConditionEncoderConfig


def check_masks(mask: torch.Tensor, size: int, name: str = "mask") -> None:
    """Refuse anything but a finite binary [B, 1, size, size] tensor."""
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (size, size):
        raise ValueError(f"{name} must have shape [B, 1, {size}, {size}], got {tuple(mask.shape)}")
    if not torch.isfinite(mask).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError(f"{name} must be binary (0/1); found values {torch.unique(mask)[:5].tolist()}")


class ConditionEncoder(nn.Module):
    """mask [B, 1, S, S] -> condition tokens [B, (S/p)^2, token_dim], one per p x p patch."""

    def __init__(self, config: ConditionEncoderConfig):
        super().__init__()
        self.config = config
        patch_pixels = config.patch_size**2
        hidden = config.hidden_dim
        self.mlp = nn.Sequential(
            nn.Linear(patch_pixels, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, config.token_dim),
        )
        self.norm = nn.LayerNorm(config.token_dim)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        check_masks(mask, self.config.mask_size)
        p = self.config.patch_size
        patches = rearrange(mask * 2.0 - 1.0, "b 1 (h p) (w q) -> b (h w) (p q)", p=p, q=p)
        return self.norm(self.mlp(patches))

    def to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, M, D] -> spatial map [B, D, g, g] in the mask's patch layout."""
        grid = self.config.grid
        if tokens.ndim != 3 or tokens.shape[1] != grid * grid or tokens.shape[2] != self.config.token_dim:
            raise ValueError(f"condition tokens must have shape [B, {grid * grid}, {self.config.token_dim}], "
                             f"got {tuple(tokens.shape)}")
        return rearrange(tokens, "b (h w) d -> b d h w", h=grid, w=grid)
