"""Example banks: in-context examples of one structure taken from a labelled slice dataset (built or imported), so
that a user with labelled cases never picks example slices by hand.

For a query slice at relative position p of its volume, each of k DIFFERENT cases lends its slice at the same
relative position (`segicl_data.episodes.prompt_slice`, the rule MVG uses). Such a slice may not show the structure: its
empty mask then says "not on this slice", which is what whole volumes need.

When more cases are labelled than the model reads, the k that lend examples to a query are those that look most like
it (multi-atlas selection: the mean normalised cross-correlation of the query's slices with each case's
position-matched slices), so that every corrected case a user adds can serve the queries it resembles.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segicl_data.dataset import SliceDataset
from segicl_data.episodes import prompt_slice
from segicl_data.importer import slug
from segicl_data.preprocess import resize_slices

BANK_SPLITS = ("train", "support")
SIMILARITY_SLICES = 16  # query slices compared with each case when choosing the most similar ones
# A single 2-D query slice at relative position p of its volume is matched as slice p * POSITIONS of POSITIONS.
POSITIONS = 1000


def position_slice(position: float) -> int:
    """The matched index (of POSITIONS) of a single query slice at relative position `position` in [0, 1]."""
    return min(int(position * POSITIONS), POSITIONS - 1)


@dataclass(frozen=True)
class BankStructure:
    """One structure of a dataset as a bank knows it: its name in instructions, its rows (one per lending case)."""

    name: str
    task: str
    label_ids: tuple[int, ...]
    modality: str
    rows: tuple[int, ...]


def bank_structures(dataset: SliceDataset, splits: tuple[str, ...] = BANK_SPLITS) -> dict[str, BankStructure]:
    """Every binary structure with rows in `splits` (the cases that lend examples), by its readable name."""
    structures: dict[str, list[int]] = {}
    for index, row in enumerate(dataset.rows):
        if row["kind"] != "multiclass" and row["split"] in splits:
            structures.setdefault(row["task"], []).append(index)
    named = {}
    for task, rows in structures.items():
        first = dataset.rows[rows[0]]
        named[first["name"]] = BankStructure(first["name"], task, tuple(first["label_ids"]), first["modality"],
                                             tuple(sorted(rows, key=lambda r: dataset.rows[r]["volume"])))
    return named


def find_structure(dataset: SliceDataset, label: str, splits: tuple[str, ...] = BANK_SPLITS) -> BankStructure:
    """A structure by its name ("thalamus", "left kidney" or "left_kidney"), its task key, or (for an imported
    dataset) its label value; a clear error listing the names otherwise."""
    structures = bank_structures(dataset, splits)
    wanted = slug(label)
    for structure in structures.values():
        keys = {slug(structure.name), slug(structure.task), slug(structure.task.split("/")[-1])}
        if wanted in keys or (label.isdigit() and structure.label_ids == (int(label),)):
            return structure
    shown = sorted(structures)
    listing = ", ".join(shown[:12]) + (f" ... ({len(shown)} in all)" if len(shown) > 12 else "")
    raise ValueError(f"no structure {label!r} with labelled training cases in {dataset.root}; known: {listing}")


def normalized_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images' intensities; 0 where either is constant."""
    a, b = a - a.mean(), b - b.mean()
    scale = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / scale if scale > 0 else 0.0


class ExampleBank:
    """Position-matched examples of one structure from up to k different cases of a dataset: the first k by name, or,
    given the query's slices and more than k cases, the k most similar to it (`most_similar`).

    `query`: the query's model slices [S, H, W]; `position`: for a single query slice, its relative position in its
    volume (as `examples_for` is then called with it)."""

    def __init__(self, dataset: SliceDataset, label: str, k: int = 3, splits: tuple[str, ...] = BANK_SPLITS,
                 query: np.ndarray | None = None, position: float | None = None):
        if k < 1:
            raise ValueError(f"-k must be >= 1 for an example bank, got {k}")
        self.dataset = dataset
        self.structure = find_structure(dataset, label, splits)
        cases = self.structure.rows
        if len(cases) < k:
            raise ValueError(f"{self.structure.name!r} is labelled in {len(cases)} case(s) of {dataset.root}, fewer than "
                             f"-k {k}")
        self.rows = cases[:k] if query is None or len(cases) == k else self.most_similar(cases, query, k, position)

    def most_similar(self, rows: tuple[int, ...], query: np.ndarray, k: int, position: float | None) -> tuple[int, ...]:
        """The k rows whose cases correlate best with up to SIMILARITY_SLICES of the query's slices at matched
        positions, kept in the bank's order (ties: the earlier case)."""
        size = self.dataset.image(self.dataset.rows[rows[0]]["volume"], 0).shape
        picked = np.unique(np.linspace(0, len(query) - 1, min(len(query), SIMILARITY_SLICES)).round().astype(int))
        slices = resize_slices(np.asarray(query[picked], dtype=np.float32), size, labels=False)
        scores = []
        for row in rows:
            volume = self.dataset.rows[row]["volume"]
            count = self.dataset.volumes[volume]["n_slices"]
            matched = [prompt_slice(position_slice(position), POSITIONS, count) if position is not None
                       else prompt_slice(int(q), len(query), count) for q in picked]
            scores.append(np.mean([normalized_correlation(s, self.dataset.image(volume, m))
                                   for s, m in zip(slices, matched)]))
        best = np.argsort(-np.asarray(scores), kind="stable")[:k]
        return tuple(rows[i] for i in sorted(best))

    @property
    def k(self) -> int:
        return len(self.rows)

    @property
    def cases(self) -> list[str]:
        return [self.dataset.rows[r]["volume"] for r in self.rows]

    def instruction(self) -> str:
        return f"Segment the {self.structure.name} in this {self.structure.modality} slice."

    def examples_for(self, query_slice: int, query_slices: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(image, mask) [R, R] of every lending case at the query slice's relative position; images in [0, 1]."""
        pairs = []
        for row in self.rows:
            volume = self.dataset.rows[row]["volume"]
            index = prompt_slice(query_slice, query_slices, self.dataset.volumes[volume]["n_slices"])
            pairs.append((self.dataset.image(volume, index), self.dataset.mask(row, index)))
        return pairs

    def examples_per_slice(self, query_slices: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        return [self.examples_for(index, query_slices) for index in range(query_slices)]


def prompt_volume(dataset: SliceDataset, case: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """A whole labelled training case of an imported dataset as MVG's prompt: its slices [S, R, R] in [0, 1], its
    label map [S, R, R] (the dataset's label values) and its name; the first training case unless `case` names one."""
    if not dataset.imported:
        raise ValueError(f"{dataset.root} is not an imported dataset (`segicl data import`): its label maps are atlas "
                         "sets, not one label map per case; give --prompt-image and --prompt-target instead")
    training = sorted(v for v, info in dataset.volumes.items() if info["split"] == "train")
    case = case or training[0]
    if case not in dataset.volumes:
        raise ValueError(f"no case {case!r} in {dataset.root}; cases: {', '.join(sorted(dataset.volumes))}")
    labels = np.load(dataset.root / "labels" / case / "labels.npy")
    return np.asarray(dataset.images(case), dtype=np.float32), labels, case
