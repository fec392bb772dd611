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
# Fields added after MVG weights had been saved: a saved config without them describes a model built before them.
LEGACY_DEFAULTS = {"pixel_skip": False, "copy_weight": 1.0, "prompt_label_skip": False}


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
        pixel_skip: give the head a direct, full-resolution view of the pixels of the input image of the pair it
            predicts for (for the query label: the query image), as a U-Net skip: besides the coarse per-patch
            prediction, the head's 1x1 conv emits a gate and `skip_channels` feature channels per pixel, and three
            full-resolution conv layers over [coarse prediction, feature channels, input pixels] emit a correction
            and a local gate term; output = coarse + gate * (input - coarse) + correction (see `ConvHead`). Image
            tasks can pass detail through and correct it, segmentation can learn to ignore it. The model stays
            task-agnostic (every slot gets its pair's input image). Ours, not the paper's (docs: research/mvg, for
            the measurements); False: the paper's head. Configs saved before this field existed load with False
            (`LEGACY_DEFAULTS`).
        skip_channels: feature channels of the full-resolution layers of `pixel_skip`.
        prompt_label_skip: with `pixel_skip`, the head of every pair also reads the label image of the pair before
            it at full resolution (for the query label: the last prompt's label; blank for the first pair), through
            three more full-resolution conv layers that emit a per-pixel amount `a` and a second correction:
            output = skip output + a * (previous label - skip output) + correction (`ConvHead.label_refine`). The
            prompt's label is part of the prompt, so the model stays in-context and task-agnostic; at 64 px the
            coarse per-patch path alone cannot draw a label finer than its 8 px patches, the skip gives it the
            prompt's boundaries to move. Both terms start at zero (a model switched on by
            `MVGModel.add_prompt_label_skip` predicts as before). Ours, not the paper's; configs saved before this
            field existed load with False.
        coarse_loss_weight: with `pixel_skip`, the weight of the same loss on the head's coarse prediction (before
            the skip) added to the loss: deep supervision that keeps the ViT predicting the whole label (measured:
            without it, the coarse inpainting fill fell below the mean fill, 17.8 against 21.3 dB).
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
        copy_weight: relative loss weight of the label pixels that equal their pair's input image (copies: outside
            an inpainted hole, the black background, CT air; not white-clipped pixels), each image keeping its total
            weight (see MVGModel.down_weight_copies). Ours, not the paper's: 1 is the paper's loss. Measured with
            `pixel_skip`: at 1, the hole of inpainting carried about 6% of its image's weight and the head returned
            the mean fill; at 0.1, about a third, and inpainting gained 7.6 dB (1000 steps).
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
    pixel_skip: bool = True
    skip_channels: int = 32
    prompt_label_skip: bool = False
    coarse_loss_weight: float = 1.0
    mae_checkpoint: str | None = None
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    mask_ratio: float = 0.75
    mask_labels_only: bool = True
    min_block_patches: int = 4
    query_label_mask_probability: float = 0.5
    balance_foreground: bool = True
    copy_weight: float = 0.1
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
        if self.pixel_skip and self.skip_channels < 1:
            raise ValueError(f"skip_channels must be >= 1 with pixel_skip, got {self.skip_channels}")
        if self.prompt_label_skip and not self.pixel_skip:
            raise ValueError("prompt_label_skip needs pixel_skip (it refines the pixel-skip head's output)")
        if not 0.0 < self.copy_weight <= 1.0:
            raise ValueError(f"copy_weight must be in (0, 1], got {self.copy_weight}")
        if self.coarse_loss_weight < 0:
            raise ValueError(f"coarse_loss_weight must be >= 0, got {self.coarse_loss_weight}")
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
        data = {**{k: v for k, v in LEGACY_DEFAULTS.items() if k not in data}, **data}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}).validate()

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path | str) -> "MVGConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def tiny_config(**overrides: Any) -> MVGConfig:
    """64 px slots, patch 8 (64 tokens per image, 256 on the 2x2 canvas), a 6-block ViT of width 128 and the pixel-skip
    head (2.1M parameters; 1.8M with the paper's head).

    Measured: 0.69 s per training step at batch 8 (2400 steps in 27.8 min) with one thread, while another training
    job used the other core."""
    return dataclasses.replace(MVGConfig(preset="tiny"), **overrides).validate()


def full_config(mae_checkpoint: str | None = None, **overrides: Any) -> MVGConfig:
    """The paper's model: ViT-L/16 (1024 wide, 24 blocks, 16 heads) at 448 px slots, from a local MAE checkpoint.

    The paper's head and loss (no `pixel_skip`, `copy_weight` 1: measured only on the tiny preset; override them to
    add them). Validates without the weights; `MVGModel.from_config` loads them when `mae_checkpoint` is given.
    """
    config = MVGConfig(preset="full", image_size=448, patch_size=16, width=1024, depth=24, heads=16,
                       head_channels=256, mae_checkpoint=mae_checkpoint, min_block_patches=16, pixel_skip=False,
                       copy_weight=1.0)
    return dataclasses.replace(config, **overrides).validate()


PRESETS = {"tiny": tiny_config, "full": full_config}


def get_preset(name: str, **kwargs: Any) -> MVGConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown MVG preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)
