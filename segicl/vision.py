"""Vision tower: an open_clip ViT plus ONE cross-attention layer with learned queries.

Every image (and every mask, rendered as an image) becomes `num_tokens` tokens of the LLM's width.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import VisionTransformer
from torch import nn

from segicl.config import VisionTowerConfig


def build_backbone(config: VisionTowerConfig) -> VisionTransformer:
    """The ViT: from the shape fields, or an open_clip architecture loaded from a local checkpoint file."""
    if config.open_clip_model is None:
        return VisionTransformer(image_size=config.image_size, patch_size=config.patch_size, width=config.width,
                                 layers=config.layers, heads=config.heads, mlp_ratio=config.mlp_ratio,
                                 output_dim=config.width, output_tokens=True)
    import open_clip

    if config.checkpoint is None:
        model = open_clip.create_model(config.open_clip_model, pretrained=None, force_image_size=config.image_size,
                                       pretrained_text=False)
    else:
        path = Path(config.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"open_clip checkpoint not found: {path} (vision.checkpoint must name a local "
                                    f"{config.open_clip_model} weights file, .safetensors or a state-dict .bin/.pt)")
        model = open_clip.create_model(config.open_clip_model, pretrained=str(path), force_image_size=config.image_size,
                                       weights_only=True, pretrained_text=False)
    visual = model.visual
    visual.output_tokens = True
    return visual


def backbone_width(backbone: VisionTransformer) -> int:
    return int(backbone.conv1.out_channels)


class CrossAttentionResampler(nn.Module):
    """Learned queries attend once over the ViT's patch tokens; the result is projected to `out_dim`."""

    def __init__(self, width: int, num_queries: int, heads: int, out_dim: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, width) * width**-0.5)
        self.norm_queries = nn.LayerNorm(width)
        self.norm_tokens = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.project = nn.Linear(width, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        queries = self.norm_queries(self.queries).expand(tokens.shape[0], -1, -1)
        keys = self.norm_tokens(tokens)
        attended, _ = self.attention(queries, keys, keys, need_weights=False)
        return self.project(attended + self.queries)


class VisionTower(nn.Module):
    """images or masks [B, 1|3, H, W] in [0, 1] -> tokens [B, num_tokens, out_dim]."""

    def __init__(self, config: VisionTowerConfig, out_dim: int, backbone: VisionTransformer | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else build_backbone(config)
        self.backbone.requires_grad_(not config.freeze_backbone)
        self.resampler = CrossAttentionResampler(backbone_width(self.backbone), config.num_tokens,
                                                 config.resampler_heads, out_dim)
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Grey to RGB, resize to the tower's size, CLIP normalisation."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"vision input must be [B, 1 or 3, H, W], got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError("vision input contains NaN or infinite values")
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, patch_tokens = self.backbone(self.preprocess(images))
        return self.resampler(patch_tokens)
