"""What `stages/mvg_train.py` optimises: the paper's mix of masked image modelling and autoregressive training.

`make_batch_fn` draws, for every sample of a step, a task and a mode from `TaskMix` (segmentation 100%
autoregressive; the other tasks 90% masked / 10% autoregressive; segmentation half of the episodes) and builds the
episode deterministically from (seed, step, rank, sample), so a resumed run sees the same batches.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mvg_head.episodes import MVGEpisodeSampler, TaskMix
from mvg_head.model import MVGModel


class MVGTrainingModule(nn.Module):
    """Runs the masked and the autoregressive part of a batch; the loss is their sample-weighted mean."""

    def __init__(self, model: MVGModel):
        super().__init__()
        self.model = model

    def forward(self, masked: torch.Tensor, autoregressive: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        parts, counts, losses = [], [], {}
        if masked.shape[0]:
            loss = self.model.forward_masked(masked, generator).loss
            parts.append(loss), counts.append(masked.shape[0])
            losses["loss_masked"] = loss.detach()
        if autoregressive.shape[0]:
            loss = self.model.forward_autoregressive(autoregressive).loss
            parts.append(loss), counts.append(autoregressive.shape[0])
            losses["loss_autoregressive"] = loss.detach()
        if not parts:
            raise ValueError("empty batch")
        total = sum(c * p for c, p in zip(counts, parts)) / sum(counts)
        return {"loss": total, **losses}


def make_batch_fn(sampler: MVGEpisodeSampler, mix: TaskMix, batch_size: int, seed: int):
    """make_batch(step, rank, world) -> {"masked": [Bm, 4, 3, R, R], "autoregressive": [Ba, 4, 3, R, R]}."""
    size = sampler.dataset.resolution

    def make_batch(step: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([seed, step, rank])
        groups: dict[str, list[np.ndarray]] = {"masked": [], "autoregressive": []}
        for i in range(batch_size):
            task, mode = mix.draw(rng)
            groups[mode].append(sampler.episode(task, (step * world + rank) * batch_size + i).sentence)
        return {mode: torch.from_numpy(np.stack(items)) if items else torch.zeros(0, 4, 3, size, size)
                for mode, items in groups.items()}

    return make_batch
