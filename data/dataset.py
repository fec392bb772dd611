"""Read access to a built slice dataset (see `segicl_data.build` for the folder layout)."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from segicl_data.build import DEFAULT_CACHE, DatasetBuilder, DatasetConfig
from segicl_data.importer import ImportConfig

SPLITS = ("train", "support", "test")


@dataclass(frozen=True)
class TaskSlice:
    """One slice of one task instance: which manifest row and which slice of its volume."""

    row: int
    slice: int


class SliceDataset:
    """A built dataset: volumes, the task manifest, and the cached arrays (memory-mapped)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if not (self.root / "manifest.jsonl").exists():
            raise FileNotFoundError(f"no slice dataset at {self.root} (manifest.jsonl missing): `segicl data` builds the "
                                    "built-in one, `segicl data import FOLDER` imports an nnU-Net / MSD dataset")
        config = json.loads((self.root / "config.json").read_text())
        # An imported dataset (segicl_data.importer) keeps its import settings and label table; a built one its DatasetConfig.
        self.imported: dict | None = config if config.get("kind") == "imported" else None
        self.config = ImportConfig(**_tuples(config["import"])) if self.imported else DatasetConfig(**_tuples(config))
        self.volumes = {row["volume"]: row for row in json.loads((self.root / "volumes.json").read_text())}
        with (self.root / "manifest.jsonl").open() as handle:
            self.rows = [json.loads(line) for line in handle]
        self._arrays: dict[str, np.ndarray] = {}

    @classmethod
    def build(cls, config: DatasetConfig | None = None, cache_dir: Path | str = DEFAULT_CACHE,
              progress: bool = True) -> "SliceDataset":
        """Build (or reuse) the dataset for a config and open it."""
        return cls(DatasetBuilder(config or DatasetConfig(), cache_dir, progress).build())

    @property
    def resolution(self) -> int:
        return self.config.resolution

    def _array(self, relative: str) -> np.ndarray:
        if relative not in self._arrays:
            self._arrays[relative] = np.load(self.root / relative, mmap_mode="r")
        return self._arrays[relative]

    def image(self, volume: str, slice_index: int) -> np.ndarray:
        """Normalised image slice [R, R] float32 in [0, 1]."""
        return np.array(self._array(f"images/{volume}.npy")[slice_index], dtype=np.float32)

    def images(self, volume: str) -> np.ndarray:
        """Every kept slice of a volume [S, R, R]."""
        return self._array(f"images/{volume}.npy")

    def label_map(self, volume: str, label_set: str, slice_index: int) -> np.ndarray:
        """Label map slice [R, R] uint16."""
        return np.array(self._array(f"labels/{volume}/{label_set}.npy")[slice_index])

    def mask(self, row: int, slice_index: int) -> np.ndarray:
        """Binary mask [R, R] float32 of a manifest row's structure on one slice."""
        task = self.rows[row]
        labels = self.label_map(task["volume"], task["label_set"], slice_index)
        return np.isin(labels, task["label_ids"]).astype(np.float32)

    def paired_image(self, volume: str, name: str, slice_index: int) -> np.ndarray:
        return np.array(self._array(f"paired/{volume}/{name}.npy")[slice_index], dtype=np.float32)

    def ct_slices(self) -> dict[str, np.ndarray]:
        """Real CT slices in Hounsfield units, by name."""
        return {path.stem: np.load(path) for path in sorted((self.root / "ct").glob("*.npy"))}

    def relative_position(self, volume: str, slice_index: int) -> float:
        return float(self.volumes[volume]["relative_position"][slice_index])

    def select(self, *, split: str | None = None, held_out: bool | None = None, binary: bool = True,
               min_area: int = 0) -> list[TaskSlice]:
        """Every (row, slice) of the matching rows whose structure covers at least `min_area` pixels."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        selected = []
        for index, row in enumerate(self.rows):
            if split is not None and row["split"] != split:
                continue
            if held_out is not None and row["held_out"] != held_out:
                continue
            if binary and row["kind"] == "multiclass":
                continue
            selected += [TaskSlice(index, s) for s, area in zip(row["slices"], row["areas"]) if area >= max(min_area, 1)]
        return selected

    @cached_property
    def rows_by_task(self) -> dict[str, list[int]]:
        by_task: dict[str, list[int]] = {}
        for index, row in enumerate(self.rows):
            by_task.setdefault(row["task"], []).append(index)
        return by_task

    def summary(self) -> dict:
        """Volumes, structures, slices per split and the held-out-structure fraction."""
        binary = [row for row in self.rows if row["kind"] != "multiclass"]
        structures = {row["task"] for row in binary}
        held_out = {row["task"] for row in binary if row["held_out"]}
        slices_per_split = Counter()
        task_slices_per_split = Counter()
        for row in binary:
            task_slices_per_split[row["split"]] += len(row["slices"])
        for volume, info in self.volumes.items():
            slices_per_split[info["split"]] += info["n_slices"]
        training_tasks = {row["task"] for row in binary if row["split"] == "train"}
        return {
            "root": str(self.root),
            "name": self.imported["name"] if self.imported else "built-in atlases",
            "resolution": self.resolution,
            "axis": self.config.axis,
            "volumes": {name: {"split": info["split"], "slices": info["n_slices"], "modality": info["modality"]}
                        for name, info in self.volumes.items()},
            "structures": len(structures),
            "held_out_structures": len(held_out),
            "held_out_fraction": round(len(held_out) / max(len(structures), 1), 4),
            "held_out_in_training": len(held_out & training_tasks),
            "multiclass_tasks": sorted({row["task"] for row in self.rows if row["kind"] == "multiclass"}),
            "volume_slices_per_split": dict(slices_per_split),
            "structure_slices_per_split": dict(task_slices_per_split),
            "ct_slices": len(list((self.root / "ct").glob("*.npy"))),
        }


def _tuples(config: dict) -> dict:
    """JSON lists back to the tuples DatasetConfig declares."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}
