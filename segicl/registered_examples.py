"""The model's answer fused with its examples registered to the query (`Settings.register_examples`).

Off the training distribution (slices along an axis the model never trained on) registration + label fusion is as
good as the model, and the two fail differently. Each example is registered to each query slice (SimpleITK affine,
`segicl.baselines.register_mask`), the registered masks fused by STAPLE, and the answer becomes
w * model + (1 - w) * STAPLE. The examples choose w themselves: each of up to `LEAVE_OUT` examples is answered from
the other examples both ways, and the weight of `WEIGHTS` whose fused answers match their masks best wins (ties go
to the model). Measured in docs/research/registered-examples.md.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from segicl.baselines import RegistrationConfig, fusion_probability, register_mask
from segicl_data.metrics import dice
from segicl_data.preprocess import resample

WEIGHTS = (1.0, 0.8, 0.7, 0.6, 0.5, 0.4)  # the model's share, highest first (ties keep the model's answer)
LEAVE_OUT = 3  # examples answered from the others to choose the weight
MIN_EXAMPLES = 2  # leave-one-out needs an example to answer and one to answer it with


def on_grid(image: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    """A 2-D image resampled onto `shape` (bilinear, or nearest for masks)."""
    return resample(np.asarray(image, np.float32).squeeze(), shape, nearest=nearest)


def registered_probability(pairs: Sequence[tuple[np.ndarray, np.ndarray]], query: np.ndarray,
                           config: RegistrationConfig = RegistrationConfig()) -> np.ndarray:
    """The STAPLE probability [H, W] of the examples' masks, each example registered to the 2-D `query`; examples
    without the structure count as empty raters without being registered (0 where none has it)."""
    shape = np.asarray(query).shape[-2:]
    masks = []
    for image, mask in pairs:
        mask = (on_grid(mask, shape, nearest=True) > 0.5).astype(np.float32)
        masks.append(register_mask(on_grid(image, shape, nearest=False), mask, query, config) if mask.any() else mask)
    return fusion_probability(masks, "staple")


def registered_at(pairs: Sequence[tuple[np.ndarray, np.ndarray]], query: np.ndarray, size: int | None,
                  config: RegistrationConfig = RegistrationConfig()) -> np.ndarray:
    """`registered_probability` computed at `size` x `size` (the model's resolution; None: the query's own) and
    returned on the query's grid. At a scan's native resolution a registration costs about 10x more (0.5 s per
    registration on ~170 px slices against 0.05 s at 64 px), and the model answers at its own size anyway."""
    shape = np.asarray(query).shape[-2:]
    if size is None or tuple(shape) == (size, size):
        return registered_probability(pairs, query, config)
    small = registered_probability(pairs, on_grid(query, (size, size), nearest=False), config)
    return np.clip(on_grid(small, shape, nearest=False), 0.0, 1.0)


def registered_maps(slices: np.ndarray, examples: list, slice_examples: list | None, size: int | None = None,
                    config: RegistrationConfig = RegistrationConfig(), progress: bool = False) -> np.ndarray:
    """`registered_at` for every query slice [S, H, W], with the shared examples or each slice's own (`progress`: a
    bar over the slices)."""
    from tqdm.auto import tqdm

    return np.stack([registered_at(slice_examples[index] if slice_examples is not None else examples, query, size,
                                   config)
                     for index, query in enumerate(tqdm(slices, desc="registering examples", unit="slice",
                                                        disable=not progress or len(slices) < 2))])


def choose_weight(answer: Callable[[np.ndarray, list], np.ndarray], pairs: list,
                  config: RegistrationConfig = RegistrationConfig(), reads: int = 3, size: int | None = None) -> float:
    """The model's share w of the fused answer: each of the first `LEAVE_OUT` examples with the structure is answered
    from up to `reads` other examples by the model (`answer(image [H, W], other pairs)` -> probability [H, W]) and by
    registration (at `size`, `registered_at`); the w of `WEIGHTS` with the best mean Dice against their masks. 1.0
    (the model alone) when fewer than `MIN_EXAMPLES` examples have the structure."""
    present = [index for index, (_, mask) in enumerate(pairs) if np.asarray(mask).any()]
    if len(present) < MIN_EXAMPLES:
        return 1.0
    totals = np.zeros(len(WEIGHTS))
    for held in present[:LEAVE_OUT]:
        image, mask = (np.asarray(array, np.float32).squeeze() for array in pairs[held])
        others = [pairs[index] for index in present if index != held][:reads]
        model = answer(image, others)
        registered = registered_at(others, image, size, config)
        truth = mask > 0.5
        totals += [dice(weight * model + (1 - weight) * registered > 0.5, truth) for weight in WEIGHTS]
    return WEIGHTS[int(np.argmax(totals))]


def fuse(probabilities: np.ndarray, uncertainty: np.ndarray, registered: np.ndarray,
         weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(w * probabilities + (1 - w) * registered, w * uncertainty): registration is deterministic, so the fused
    answer's spread over the decoder's samples is the model's, scaled by its share."""
    fused = weight * probabilities + (1.0 - weight) * registered
    return fused.astype(np.float32), (weight * uncertainty).astype(np.float32)
