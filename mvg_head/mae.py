"""Initialise the MVG encoder from a local MAE checkpoint (facebookresearch/mae `mae_pretrain_vit_large.pth`).

The file is a torch pickle holding {"model": state_dict}; it is read with `torch.load(weights_only=True)`, which
refuses anything but tensors and plain containers. Encoder keys (`patch_embed.*`, `blocks.*`, `norm.*`) load as
they are; `pos_embed` [1, 1 + G*G, D] loses its cls entry and is interpolated (bicubic) from the G x G grid to the
slot grid (shared by every image of the canvas; the slot embeddings stay as initialised); the cls token, the MAE decoder (`decoder_*`) and its `mask_token` are ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ENCODER_PREFIXES = ("patch_embed.", "blocks.", "norm.")


@dataclass
class MAELoadReport:
    loaded: list[str]
    ignored: list[str]
    not_in_checkpoint: list[str]


def interpolate_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int, has_cls: bool = True) -> torch.Tensor:
    """[1, (1 +) G*G, D] square grid -> [1, rows*cols, D] (cls entry dropped)."""
    tokens = pos_embed[:, 1:] if has_cls else pos_embed
    side = int(math.isqrt(tokens.shape[1]))
    if side * side != tokens.shape[1]:
        raise ValueError(f"pos_embed holds {tokens.shape[1]} grid tokens, not a square grid")
    grid = tokens.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    if (side, side) != (rows, cols):
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)


def load_mae_checkpoint(model, path: Path | str) -> MAELoadReport:
    """Copy an MAE checkpoint's encoder into `model` (an MVGModel); shapes must match the config."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MAE checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict with a 'model' state dict (MAE format)")
    own = model.state_dict()
    config = model.config
    rows = cols = config.grid
    new_state, loaded, ignored = {}, [], []
    for key, value in state.items():
        if key == "pos_embed":
            value = interpolate_pos_embed(value, rows, cols, has_cls=True)
        elif not key.startswith(ENCODER_PREFIXES):
            ignored.append(key)
            continue
        if key not in own:
            ignored.append(key)
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)} "
                             f"(does the preset match the checkpoint's width/depth/patch?)")
        new_state[key] = value.to(own[key].dtype)
        loaded.append(key)
    if "patch_embed.proj.weight" not in new_state:
        raise ValueError(f"{path}: no encoder weights found (patch_embed.proj.weight missing)")
    model.load_state_dict(new_state, strict=False)
    encoder_keys = [k for k in own if k.startswith(ENCODER_PREFIXES) or k == "pos_embed"]
    return MAELoadReport(loaded, ignored, [k for k in encoder_keys if k not in new_state])
