"""Segmentation labels as RGB images and back: random (the paper), pre-defined and binary colouring.

- random: per episode every class gets a colour drawn without replacement from the palette; the prompt label and
  the query label share the table, so the model must read the class colours from the prompt (paper Sec. 3.2).
- predefined: every (label set, class) or structure has one fixed colour for ever (a hash into the palette;
  collisions inside an episode move to the next free colour).
- binary: every class is white; multi-class labels are split into one binary task per class.

Background is black. A prediction is decoded to the nearest colour of the episode's table (background included).
"""
from __future__ import annotations

import hashlib
import itertools

import numpy as np

BACKGROUND = (0.0, 0.0, 0.0)
WHITE = (1.0, 1.0, 1.0)


def palette(levels: int = 4) -> np.ndarray:
    """Every RGB colour with channels in `levels` evenly spaced values of [0, 1], except black: [levels**3 - 1, 3]."""
    values = np.linspace(0.0, 1.0, levels)
    colours = np.array([c for c in itertools.product(values, repeat=3) if any(c)], dtype=np.float32)
    return colours


def _stable_index(key: str, size: int) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "little") % size


def colour_table(class_keys: list[str], mode: str, rng: np.random.Generator | None = None,
                 levels: int = 4) -> np.ndarray:
    """Colours [n, 3] for n classes (one key per class, e.g. "tissue:2" or "aal/Hippocampus_L").

    Refuses more classes than the palette has colours (random, predefined) and unknown modes.
    """
    colours = palette(levels)
    if mode == "binary":
        return np.tile(np.array(WHITE, np.float32), (len(class_keys), 1))
    if len(class_keys) > len(colours):
        raise ValueError(f"label has {len(class_keys)} classes but the palette has only {len(colours)} colours "
                         f"(palette_levels={levels}); use fewer classes or more palette levels")
    if mode == "random":
        if rng is None:
            raise ValueError("random colouring needs an rng")
        return colours[rng.choice(len(colours), size=len(class_keys), replace=False)]
    if mode == "predefined":
        used: list[int] = []
        for key in class_keys:
            index = _stable_index(key, len(colours))
            while index in used:
                index = (index + 1) % len(colours)
            used.append(index)
        return colours[used]
    raise ValueError(f"unknown colouring {mode!r}; expected 'random', 'predefined' or 'binary'")


def encode(label: np.ndarray, class_ids: list[int], table: np.ndarray) -> np.ndarray:
    """Integer label map [H, W] -> RGB [3, H, W]; class_ids[i] gets table[i], everything else black."""
    if len(class_ids) != len(table):
        raise ValueError(f"{len(class_ids)} class ids but {len(table)} colours")
    rgb = np.zeros((3,) + label.shape, dtype=np.float32)
    for class_id, colour in zip(class_ids, table):
        rgb[:, label == class_id] = np.asarray(colour, np.float32)[:, None]
    return rgb


def decode(rgb: np.ndarray, class_ids: list[int], table: np.ndarray) -> np.ndarray:
    """RGB [3, H, W] -> label map [H, W]: each pixel takes the class of the nearest table colour (0 = background)."""
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"a coloured label must be [3, H, W], got shape {rgb.shape}")
    colours = np.concatenate([np.array([BACKGROUND], np.float32), np.asarray(table, np.float32)])
    ids = np.array([0] + list(class_ids))
    distance = ((rgb[None] - colours[:, :, None, None]) ** 2).sum(axis=1)
    return ids[np.argmin(distance, axis=0)].astype(np.int64)
