"""Typed config of the MVG model, and its named presets (tiny: trains on two CPU cores; full: ViT-L/16 from MAE).

The canvas follows the paper and Painter: with k prompt pairs, images are laid out on a grid of k + 1 rows and two
columns (prompt image | prompt label, ..., query image | query label), each cell a `image_size` slot. The same
images read in row order form the visual sentence (P_x1, P_y1, ..., P_xk, P_yk, X, Y) of autoregressive training.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLOURINGS = ("random", "predefined", "binary")
TASKS = ("segmentation", "synthesis", "denoising", "inpainting")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MVGConfig:
    """Shape and behaviour of an MVG model.

    Attributes:
        preset: name of the preset this config came from ("tiny", "full" or "custom").
        image_size: side of one canvas slot in pixels (tiny 64; full 448, the released code's 896x448 columns).
        patch_size: ViT patch side (tiny 8; full 16).
        in_chans: image channels; grey images are replicated to 3, segmentation labels are coloured RGB.
        width, depth, heads, mlp_ratio: the plain ViT encoder (full: ViT-L/16, 1024 x 24, 16 heads).
        max_prompts: K, the most prompt pairs a sentence may hold; position embeddings cover K + 1 canvas rows.
        feature_blocks: the blocks (0-based) whose outputs feed the head; empty: four evenly spaced blocks
            ending with the last (ViTDet/Painter style).
        head_channels: hidden channels of the two-layer convolutional head.
        mae_checkpoint: local MAE checkpoint (`mae_pretrain_vit_large.pth`: a torch file with a "model" dict) to
            initialise the encoder from; None: random initialisation.
        pixel_mean, pixel_std: per-channel normalisation of inputs and targets (ImageNet's, as MAE was trained).
        mask_ratio: fraction of the maskable patches masked in masked image modelling (the paper: 0.75).
        mask_labels_only: mask only the label images (the released MVG / Painter code, which masks the targets and
            keeps the input images visible, as at inference); False: the whole square (the paper's text). Measured
            here: with the whole square masked, denoising and synthesis stayed below the input baseline at 300
            steps (the query image is mostly hidden in training but fully visible at inference).
        min_block_patches: smallest block of the block-wise masking generator (BEiT style).
        query_label_mask_probability: in masked image modelling, how often the whole query label is among the
            masked patches (the inference condition); the rest of the ratio is drawn in blocks.
        balance_foreground: weight non-black and black supervised pixels equally per image in the loss (ours, not
            the paper's: needed at CPU budgets, see MVGModel.pixel_weights).
        colouring: segmentation label colouring: "random" (per episode, the paper), "predefined" or "binary".
        palette_levels: the colour set is every RGB colour whose channels take this many evenly spaced levels in
            [0, 1], except black (the background): levels**3 - 1 colours (4 levels: 63 colours).
    """

    preset: str = "tiny"
    image_size: int = 64
    patch_size: int = 8
    in_chans: int = 3
    width: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    max_prompts: int = 1
    feature_blocks: tuple[int, ...] = ()
    head_channels: int = 128
    mae_checkpoint: str | None = None
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    mask_ratio: float = 0.75
    mask_labels_only: bool = True
    min_block_patches: int = 4
    query_label_mask_probability: float = 0.5
    balance_foreground: bool = True
    colouring: str = "random"
    palette_levels: int = 4

    @property
    def grid(self) -> int:
        """Patches along one side of a slot."""
        return self.image_size // self.patch_size

    @property
    def blocks_for_head(self) -> tuple[int, ...]:
        if self.feature_blocks:
            return tuple(self.feature_blocks)
        step = self.depth / 4
        return tuple(int(round(step * (i + 1))) - 1 for i in range(4))

    def validate(self) -> "MVGConfig":
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.in_chans != 3:
            raise ValueError(f"in_chans must be 3 (grey replicated, labels RGB), got {self.in_chans}")
        if self.max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {self.max_prompts}")
        if any(not 0 <= b < self.depth for b in self.blocks_for_head) or len(self.blocks_for_head) != 4:
            raise ValueError(f"feature_blocks must be four block indices in 0..{self.depth - 1}, "
                             f"got {self.blocks_for_head}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.query_label_mask_probability <= 1.0:
            raise ValueError(f"query_label_mask_probability must be in [0, 1], got {self.query_label_mask_probability}")
        if self.colouring not in COLOURINGS:
            raise ValueError(f"unknown colouring {self.colouring!r}; expected one of {COLOURINGS}")
        if self.palette_levels < 2:
            raise ValueError(f"palette_levels must be >= 2, got {self.palette_levels}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError("pixel_mean and pixel_std must have 3 values, std > 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MVGConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown MVGConfig fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}).validate()

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path | str) -> "MVGConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def tiny_config(**overrides: Any) -> MVGConfig:
    """64 px slots, patch 8 (64 tokens per image, 256 on the 2x2 canvas), a 6-block ViT of width 128 (1.9M parameters).

    Measured: 1.1 s per step at batch 8 with one thread while another training job shared the two cores."""
    return dataclasses.replace(MVGConfig(preset="tiny"), **overrides).validate()


def full_config(mae_checkpoint: str | None = None, **overrides: Any) -> MVGConfig:
    """The paper's model: ViT-L/16 (1024 wide, 24 blocks, 16 heads) at 448 px slots, from a local MAE checkpoint.

    Validates without the weights; `MVGModel.from_config` loads them when `mae_checkpoint` is given.
    """
    config = MVGConfig(preset="full", image_size=448, patch_size=16, width=1024, depth=24, heads=16,
                       head_channels=256, mae_checkpoint=mae_checkpoint, min_block_patches=16)
    return dataclasses.replace(config, **overrides).validate()


PRESETS = {"tiny": tiny_config, "full": full_config}


def get_preset(name: str, **kwargs: Any) -> MVGConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown MVG preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)
