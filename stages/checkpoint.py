"""Checkpoints as safetensors + JSON, written whole or not at all (`segicl_data.atomic.write_folder`: a run killed
while it writes one leaves the previous checkpoint loadable); loading never unpickles anything.

A checkpoint folder holds:
    model.safetensors       the trainable parameters (or all, for a pipeline component)
    optimizer.safetensors   the optimizer's tensors (AdamW moments, steps), keyed "<param index>/<name>"
    optimizer.json          the optimizer's param groups and non-tensor state
    trainer_state.json      step, learning-rate scheduler state, config, seed, recent losses
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from segicl_data.atomic import restore_folder, write_folder


def optimizer_to_safetensors(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors and JSON-able metadata."""
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    """Inverse of `optimizer_to_safetensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path | str, model_state: dict[str, torch.Tensor], trainer_state: dict[str, Any],
                    optimizer_state: dict | None = None) -> Path:
    """Write a checkpoint folder whole: into a temporary sibling, then swapped into place."""

    def write(staging: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, staging / "model.safetensors")
        if optimizer_state is not None:
            tensors, meta = optimizer_to_safetensors(optimizer_state)
            save_file(tensors, staging / "optimizer.safetensors")
            (staging / "optimizer.json").write_text(json.dumps(meta))
        (staging / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))

    return write_folder(folder, write)


def has_checkpoint(folder: Path | str) -> bool:
    """Whether `folder` holds a checkpoint (after putting back the previous one if a save was killed mid-swap)."""
    return (restore_folder(folder) / "model.safetensors").exists()


def load_checkpoint(folder: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict | None]:
    """(model state, trainer state, optimizer state or None) of a checkpoint folder."""
    folder = Path(folder)
    if not has_checkpoint(folder):
        raise FileNotFoundError(f"no checkpoint at {folder} (model.safetensors missing)")
    model_state = load_file(folder / "model.safetensors")
    trainer_state = json.loads((folder / "trainer_state.json").read_text())
    optimizer_state = None
    if (folder / "optimizer.safetensors").exists():
        meta = json.loads((folder / "optimizer.json").read_text())
        optimizer_state = optimizer_from_safetensors(load_file(folder / "optimizer.safetensors"), meta)
    return model_state, trainer_state, optimizer_state
