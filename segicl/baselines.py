"""Trivial baselines that every model figure is reported beside."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from data.episodes import Episode


def copy_example_baseline(example_mask: np.ndarray, query_shape: tuple[int, int]) -> np.ndarray:
    """Predict the first example's mask, resampled (nearest neighbour) onto the query's grid."""
    mask = np.asarray(example_mask, dtype=np.float32).squeeze()
    if mask.ndim != 2:
        raise ValueError(f"example mask must be 2-D (optionally with singleton axes), got shape {example_mask.shape}")
    if mask.shape != tuple(query_shape):
        mask = F.interpolate(torch.from_numpy(mask)[None, None], size=tuple(query_shape), mode="nearest")[0, 0].numpy()
    return (mask > 0.5).astype(np.float32)


def predict_copy(episode: Episode) -> np.ndarray:
    """The copy baseline on an episode; it needs at least one example."""
    if episode.k == 0:
        raise ValueError("the copy-example baseline needs at least one example (k >= 1)")
    return copy_example_baseline(episode.example_masks[0], episode.query_mask.shape[-2:])


def predict_union(episode: Episode) -> np.ndarray:
    """Label fusion of all examples: the union of their masks (the example prior's mask; k >= 1)."""
    if episode.k == 0:
        raise ValueError("the union-of-examples baseline needs at least one example (k >= 1)")
    return np.stack([copy_example_baseline(mask, episode.query_mask.shape[-2:]) for mask in episode.example_masks]).max(0)
