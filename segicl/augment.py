"""In-context test-time augmentation (Tyche's idea) and example-subset ensembles.

A view flips or turns the query by multiples of 90 degrees and its examples WITH it, so the model sees a consistent
task; each view's maps are turned back and averaged. When more examples are given than the model reads
(`SegICLConfig.max_examples`), the query is segmented with several subsets of them and the maps averaged. The
uncertainty of the average counts both the decoder's spread within a run and the disagreement between runs (the law
of total variance: sqrt(mean(spread^2) + variance of the runs' probabilities)).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

# The eight symmetries of the square on the last two axes; `views = n` uses the first n. The mirror image (columns
# flipped: left-right on axial and coronal slices in display orientation) comes right after the identity: a mirrored
# brain is still a brain the model trained on, an upside-down or turned one is not (docs/research/test-time-augmentation.md).
VIEWS = ("identity", "flip_columns", "flip_rows", "rotate_180", "rotate_90", "rotate_270", "transpose",
         "anti_transpose")


def apply_view(array: np.ndarray, view: str) -> np.ndarray:
    """`array` (..., H, W) seen in `view`."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    turned = {
        "identity": lambda a: a,
        "flip_rows": lambda a: a[..., ::-1, :],
        "flip_columns": lambda a: a[..., :, ::-1],
        "rotate_180": lambda a: a[..., ::-1, ::-1],
        "rotate_90": lambda a: np.rot90(a, 1, axes=(-2, -1)),
        "rotate_270": lambda a: np.rot90(a, -1, axes=(-2, -1)),
        "transpose": lambda a: np.swapaxes(a, -2, -1),
        "anti_transpose": lambda a: np.swapaxes(a, -2, -1)[..., ::-1, ::-1],
    }[view](np.asarray(array))
    return np.ascontiguousarray(turned)


def undo_view(array: np.ndarray, view: str) -> np.ndarray:
    """The inverse of `apply_view`: every view is its own inverse except the quarter turns, which swap."""
    inverse = {"rotate_90": "rotate_270", "rotate_270": "rotate_90"}.get(view, view)
    return apply_view(array, inverse)


def example_subsets(count: int, size: int, limit: int) -> list[tuple[int, ...]]:
    """Up to `limit` different subsets of `size` of `count` examples, in turn so that every example serves
    (subset j holds examples j*size, j*size + 1, ... modulo count); all of them when `count` <= `size`."""
    if count <= size:
        return [tuple(range(count))]
    subsets: list[tuple[int, ...]] = []
    for j in range(limit):
        subset = tuple(sorted((j * size + i) % count for i in range(size)))
        if subset not in subsets:
            subsets.append(subset)
    return subsets


def view_examples(examples: list, view: str, subset: tuple[int, ...]) -> list:
    """The (image, mask) pairs of `subset`, both seen in `view`."""
    return [(apply_view(examples[i][0], view), apply_view(examples[i][1], view)) for i in subset]


def combine_runs(probabilities: list[np.ndarray], spreads: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The runs' mean probability and total spread: sqrt(mean within-run variance + between-run variance)."""
    stacked = np.stack(probabilities)
    within = np.mean(np.stack(spreads) ** 2, axis=0)
    total = np.sqrt(within + stacked.var(axis=0))
    return stacked.mean(axis=0).astype(np.float32), total.astype(np.float32)


def ensemble_call(call: Callable, slices: np.ndarray, examples: list, slice_examples: list | None, reads: int,
                  views: int = 1, example_sets: int = 1, on_fraction: Callable[[float], None] | None = None):
    """Segment `slices` [S, H, W] over `views` views x up to `example_sets` subsets of the examples (when more are
    given than the model `reads`). `call(slices, examples, slice_examples, run_index, callback)` is one pipeline call
    returning its `SegmentationOutput`; `on_fraction(f)` follows the progress (0..1). Returns (probabilities,
    uncertainty, timings) on `slices`' grid."""
    if not 1 <= views <= len(VIEWS):
        raise ValueError(f"views must be 1 to {len(VIEWS)}, got {views}")
    if example_sets < 1:
        raise ValueError(f"example_sets must be >= 1, got {example_sets}")
    count = len(slice_examples[0]) if slice_examples else len(examples)
    runs = [(view, subset) for subset in example_subsets(count, reads, example_sets) for view in VIEWS[:views]]
    probabilities, spreads, timings = [], [], {}
    for index, (view, subset) in enumerate(runs):
        def step(stage: str, done: int, total: int, index: int = index) -> None:
            passes_done = done + (total if stage == "decode" else 0)
            on_fraction((index + passes_done / (2 * total)) / len(runs))

        shared = view_examples(examples, view, subset) if examples else []
        per_slice = None if slice_examples is None else [view_examples(pairs, view, subset) for pairs in slice_examples]
        output = call(apply_view(slices, view), shared, per_slice, index, None if on_fraction is None else step)
        probabilities.append(undo_view(output.probabilities, view))
        spreads.append(undo_view(output.uncertainty, view))
        for key, value in output.timings.items():
            timings[key] = value if key == "slices" else timings.get(key, 0.0) + value
    if len(runs) == 1:
        return probabilities[0], spreads[0], timings
    probability, uncertainty = combine_runs(probabilities, spreads)
    return probability, uncertainty, timings
