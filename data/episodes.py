"""In-context episodes: an instruction, k example (image, mask) pairs and a query (image, target).

Examples are other slices of the same structure, from another volume where one has it, near the
query's relative slice position. Examples and query each get an independent random affine (MONAI),
so that copying an example's mask is not the answer. Everything is deterministic for (seed, index).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from segicl_data.dataset import SliceDataset, TaskSlice
from segicl_data.synthetic import SYNTHETIC_MODALITY, SYNTHETIC_NAME, SyntheticConfig, synthetic_pairs
from segicl_data.transforms import SpatialTransformConfig, random_affine

INSTRUCTION_TEMPLATES = (
    "Segment the {name} in this {modality} slice.",
    "Please delineate the {name} on this {modality} image.",
    "Outline the {name} in the {modality} scan.",
    "Generate a mask of the {name} ({modality}).",
    "Where is the {name}? Mark it on this {modality} slice.",
    "Label every pixel of the {name} in this {modality} image.",
)


@dataclass(frozen=True)
class EpisodeConfig:
    """What episodes a sampler draws.

    Attributes:
        split: where queries come from: "train" (training volumes, training structures) or "test"
            (the held-out volumes).
        structures: "train", "held_out" or "all": which structures the queries are of.
        max_examples: K; k is drawn uniformly from 0..K unless `num_examples` fixes it.
        num_examples: a fixed k, or None.
        min_area: minimum structure area (pixels) on the query slice.
        position_tolerance: examples come from slices within this relative position of the query's,
            or the nearest slice when none is that close.
        transform: the spatial transform, or None for none.
        seed: base seed; episode i is a function of (seed, i) only. Episodes are NESTED in k: for the
            same seed and index, the k-example episode's query (with its transform) and first examples
            are those of the K-example episode, so cells with different k compare like with like.
        anonymous_name_prob: probability that an episode with k >= 1 calls its structure by a made-up
            name (`made_up_name`: training-name words in a new combination), so that only the examples
            say what to segment, as for held-out structures, whose names the model never saw. Training only.
        absent_prob: probability that the query is a slice of its volume WITHOUT the structure (empty target).
        synthetic_prob: probability that an episode is a synthetic task instead (`segicl_data.synthetic`: random
            label maps with random intensities, k >= 1, textures from the dataset's training slices). Training only.
        synthetic: how synthetic tasks are drawn.
    """

    split: str = "train"
    structures: str = "train"
    max_examples: int = 3
    num_examples: int | None = None
    min_area: int = 0
    position_tolerance: float = 0.1
    transform: SpatialTransformConfig | None = field(default_factory=SpatialTransformConfig)
    seed: int = 0
    anonymous_name_prob: float = 0.0
    absent_prob: float = 0.0
    synthetic_prob: float = 0.0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ValueError(f"episode split must be 'train' or 'test', got {self.split!r}")
        if self.structures not in ("train", "held_out", "all"):
            raise ValueError(f"structures must be 'train', 'held_out' or 'all', got {self.structures!r}")
        if self.split == "train" and self.structures != "train":
            raise ValueError("training episodes can only use training structures (held-out ones never enter training)")
        if self.num_examples is not None and not 0 <= self.num_examples <= self.max_examples:
            raise ValueError(f"num_examples must be in 0..{self.max_examples}, got {self.num_examples}")
        if not 0.0 <= self.anonymous_name_prob <= 1.0:
            raise ValueError(f"anonymous_name_prob must be in [0, 1], got {self.anonymous_name_prob}")
        if not 0.0 <= self.absent_prob <= 1.0:
            raise ValueError(f"absent_prob must be in [0, 1], got {self.absent_prob}")
        if not 0.0 <= self.synthetic_prob <= 1.0:
            raise ValueError(f"synthetic_prob must be in [0, 1], got {self.synthetic_prob}")
        if self.synthetic_prob and self.split != "train":
            raise ValueError("synthetic tasks are for training episodes only")


@dataclass
class Episode:
    """One in-context episode. Images and masks are float32 [1, R, R]; masks are binary.

    Attributes:
        instruction: the text instruction.
        structure: the structure's readable name.
        example_images, example_masks: [k, 1, R, R].
        query_image, query_mask: [1, R, R] (the mask is the target).
        meta: where every part came from (task, volumes, slices, positions, k).
    """

    instruction: str
    structure: str
    example_images: np.ndarray
    example_masks: np.ndarray
    query_image: np.ndarray
    query_mask: np.ndarray
    meta: dict

    @property
    def k(self) -> int:
        return int(self.example_images.shape[0])


class EpisodeSampler:
    """Draws episodes from a dataset; `sampler[i]` is deterministic for the config's seed."""

    def __init__(self, dataset: SliceDataset, config: EpisodeConfig = EpisodeConfig()):
        self.dataset = dataset
        self.config = config
        held_out = {"train": False, "held_out": True, "all": None}[config.structures]
        self.queries = dataset.select(split=config.split, held_out=held_out, min_area=config.min_area)
        self.queries = [q for q in self.queries if self._example_rows(q)]
        if not self.queries:
            raise ValueError(f"no query slices for {config} in {dataset.root}")
        self._rows_of_queries = sorted({q.row for q in self.queries})
        self._training_names = sorted({row["name"] for row in dataset.rows if not row["held_out"]})
        self._queries_by_row: dict[int, list[TaskSlice]] = {}
        for query in self.queries:
            self._queries_by_row.setdefault(query.row, []).append(query)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> Episode:
        rng = np.random.default_rng([self.config.seed, index])
        if self.config.synthetic_prob and rng.random() < self.config.synthetic_prob:
            return self.synthetic_episode(rng)
        query = self._draw_query(rng)
        if self.config.absent_prob and rng.random() < self.config.absent_prob:
            query = self._absent_slice(query, rng)
        k = self.config.num_examples if self.config.num_examples is not None else int(rng.integers(self.config.max_examples + 1))
        return self.episode_for(query, k, rng)

    def task_of(self, index: int) -> str:
        """The task of episode `index`, without building the episode (its first random draw)."""
        query = self._draw_query(np.random.default_rng([self.config.seed, index]))
        return self.dataset.rows[query.row]["task"]

    def _draw_query(self, rng: np.random.Generator) -> TaskSlice:
        """A row of the queries uniformly, then one of its slices: every structure weighs the same."""
        row = self._rows_of_queries[rng.integers(len(self._rows_of_queries))]
        candidates = self._queries_by_row[row]
        return candidates[rng.integers(len(candidates))]

    def episode_for(self, query: TaskSlice, k: int, rng: np.random.Generator) -> Episode:
        """The episode of a given query slice with k examples, randomness from `rng`."""
        data = self.dataset
        task = data.rows[query.row]
        # Always draw K examples and keep the first k: the random stream, hence the query and its
        # transform, is then the same for every k (nested episodes).
        examples = self._choose_examples(query, max(k, self.config.max_examples), rng)
        pairs = [(data.image(data.rows[r]["volume"], s), data.mask(r, s)) for r, s in examples]
        pairs = [self._transform(image, example_mask, rng) for image, example_mask in pairs]
        examples, pairs = examples[:k], pairs[:k]
        query_image, query_mask = self._transform(data.image(task["volume"], query.slice),
                                                  data.mask(query.row, query.slice), rng)
        template = INSTRUCTION_TEMPLATES[rng.integers(len(INSTRUCTION_TEMPLATES))]
        anonymous = rng.random() < self.config.anonymous_name_prob and k
        name = made_up_name(rng, self._training_names) if anonymous else task["name"]
        size = data.resolution
        return Episode(
            instruction=template.format(name=name, modality=task["modality"]),
            structure=task["name"],
            example_images=np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, 1, size, size), np.float32),
            example_masks=np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, 1, size, size), np.float32),
            query_image=query_image, query_mask=query_mask,
            meta={"task": task["task"], "held_out": task["held_out"], "volume": task["volume"], "slice": query.slice,
                  "position": data.relative_position(task["volume"], query.slice), "k": k,
                  "examples": [{"volume": data.rows[r]["volume"], "slice": s} for r, s in examples]},
        )

    def synthetic_episode(self, rng: np.random.Generator) -> Episode:
        """A synthetic task's episode (`segicl_data.synthetic`): k >= 1 subjects as examples, one more as the query,
        each under the config's random affine; K + 1 subjects are always drawn, so episodes stay nested in k."""
        k = self.config.num_examples or int(rng.integers(1, max(self.config.max_examples, 1) + 1))
        texture = self.queries[rng.integers(len(self.queries))]  # a real slice, whose texture a task may wear
        textures = [self.dataset.image(self.dataset.rows[texture.row]["volume"], texture.slice)]
        pairs = synthetic_pairs(rng, max(k, self.config.max_examples) + 1, self.dataset.resolution,
                                self.config.synthetic, textures)
        # Each subject under its own random affine, as the real episodes' examples and query: a copy is no answer.
        pairs = [tuple(part[0] for part in self._transform(image, mask, rng)) for image, mask in pairs]
        template = INSTRUCTION_TEMPLATES[rng.integers(len(INSTRUCTION_TEMPLATES))]
        return Episode(
            instruction=template.format(name=SYNTHETIC_NAME, modality=SYNTHETIC_MODALITY), structure=SYNTHETIC_NAME,
            example_images=np.stack([image[None] for image, _ in pairs[:k]]),
            example_masks=np.stack([mask[None] for _, mask in pairs[:k]]),
            query_image=pairs[-1][0][None], query_mask=pairs[-1][1][None],
            meta={"task": "synthetic", "held_out": False, "k": k, "synthetic": True})

    def _absent_slice(self, query: TaskSlice, rng: np.random.Generator) -> TaskSlice:
        """A slice of the query's volume without its structure (the query itself when the structure is on all)."""
        task = self.dataset.rows[query.row]
        present = set(task["slices"])
        absent = [s for s in range(self.dataset.volumes[task["volume"]]["n_slices"]) if s not in present]
        return TaskSlice(query.row, absent[rng.integers(len(absent))]) if absent else query

    def _example_rows(self, query: TaskSlice) -> list[int]:
        """Rows that may lend examples: the same structure on training volumes (support rows for held-out ones)."""
        return [r for r in context_rows(self.dataset, query.row, self.config.split)
                if r != query.row or len(self.dataset.rows[r]["slices"]) > 1]

    def _choose_examples(self, query: TaskSlice, k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """k (row, slice) pairs: another volume where possible, near the query's relative position."""
        data = self.dataset
        query_volume = data.rows[query.row]["volume"]
        query_position = data.relative_position(query_volume, query.slice)
        rows = self._example_rows(query)
        other_volumes = [r for r in rows if data.rows[r]["volume"] != query_volume]
        rows = other_volumes or rows
        chosen: list[tuple[int, int]] = []
        for _ in range(k):
            row = rows[rng.integers(len(rows))]
            volume = data.rows[row]["volume"]
            # Distinct examples while the row has unused slices; repeats only when it has run out.
            slices = [s for s in data.rows[row]["slices"]
                      if not (row == query.row and s == query.slice) and (row, s) not in chosen]
            slices = slices or [s for s in data.rows[row]["slices"] if not (row == query.row and s == query.slice)]
            distance = np.abs(np.array([data.relative_position(volume, s) for s in slices]) - query_position)
            near = np.flatnonzero(distance <= self.config.position_tolerance)
            pick = near[rng.integers(len(near))] if near.size else int(np.argmin(distance))
            chosen.append((row, slices[pick]))
        return chosen

    def _transform(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                   attempts: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Random affine of an (image, mask) pair; redrawn when it would push the structure out of view."""
        if self.config.transform is None:
            return image[None].astype(np.float32), mask[None].astype(np.float32)
        for _ in range(attempts):
            (moved,), (moved_mask,) = random_affine(self.config.transform, [image], [mask.astype(np.float32)],
                                                    int(rng.integers(2**31 - 1)))
            new_mask = (moved_mask > 0.5).astype(np.float32)
            if new_mask.any() or not mask.any():
                return moved[None], new_mask[None]
        return image[None].astype(np.float32), mask[None].astype(np.float32)


def context_rows(dataset: SliceDataset, row: int, split: str) -> list[int]:
    """The rows of `row`'s task that may lend examples (SegICL) or prompts (MVG) to a query of it: training rows, and
    for test queries also the support rows (held-out structures on training volumes, never trained on)."""
    allowed = ("train",) if split == "train" else ("train", "support")
    return [r for r in dataset.rows_by_task[dataset.rows[row]["task"]] if dataset.rows[r]["split"] in allowed]


def prompt_slice(query_slice: int, query_slices: int, prompt_slices: int) -> int:
    """The position-matched slice (MVG's prompt choice, from the paper): slice n of N_TE takes slice
    floor(n * N_TR / N_TE) of the prompt volume."""
    if not 0 <= query_slice < query_slices:
        raise ValueError(f"query slice {query_slice} outside 0..{query_slices - 1}")
    return min(query_slice * prompt_slices // query_slices, prompt_slices - 1)


def made_up_name(rng: np.random.Generator, names: list[str], attempts: int = 20) -> str:
    """A name that sounds like the given ones but is none of them: a random one of them with some of its
    words swapped for words of the others ("left postcentral gyrus" from "left precentral gyrus",
    "Brodmann area 31"). Held-out structures look like this to a model trained on `names`: familiar words
    in a combination it never saw."""
    if not names:
        raise ValueError("made_up_name needs at least one real name to imitate")
    vocabulary = sorted({word for name in names for word in name.split()})
    known = set(names)
    for _ in range(attempts):
        words = names[rng.integers(len(names))].split()
        for position in rng.choice(len(words), size=int(rng.integers(1, len(words) + 1)), replace=False):
            words[position] = vocabulary[rng.integers(len(vocabulary))]
        name = " ".join(words)
        if name not in known:
            return name
    return name + " " + vocabulary[rng.integers(len(vocabulary))]


def collate_episodes(episodes: list[Episode]) -> dict:
    """Batch episodes with different k: examples padded to the largest k, with a validity mask.

    Returns tensors: example_images / example_masks [B, K, 1, R, R], example_valid [B, K] (bool),
    query_image / query_mask [B, 1, R, R], num_examples [B]; and the instructions as a list.
    """
    if not episodes:
        raise ValueError("cannot collate an empty list of episodes")
    size = episodes[0].query_image.shape[-1]
    max_k = max(e.k for e in episodes)
    images = torch.zeros(len(episodes), max_k, 1, size, size)
    masks = torch.zeros(len(episodes), max_k, 1, size, size)
    valid = torch.zeros(len(episodes), max_k, dtype=torch.bool)
    for b, episode in enumerate(episodes):
        if episode.query_image.shape[-1] != size:
            raise ValueError(f"episodes have different sizes: {episode.query_image.shape} vs {size}")
        images[b, : episode.k] = torch.from_numpy(episode.example_images)
        masks[b, : episode.k] = torch.from_numpy(episode.example_masks)
        valid[b, : episode.k] = True
    return {
        "instructions": [e.instruction for e in episodes],
        "example_images": images, "example_masks": masks, "example_valid": valid,
        "query_image": torch.stack([torch.from_numpy(e.query_image) for e in episodes]),
        "query_mask": torch.stack([torch.from_numpy(e.query_mask) for e in episodes]),
        "num_examples": valid.sum(dim=1),
    }
