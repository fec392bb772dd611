"""MVG episodes on the foundation's real data: (prompt image, prompt label, query image, query label) per task.

- segmentation: atlas structures and multi-class label sets; labels coloured (random / predefined / binary).
- synthesis: T1 -> a T2-like contrast SIMULATED from the T1 itself (per-volume 3-class intensity model -> soft
  CSF/GM/WM probabilities -> `segicl_data.image2image.simulate_t2_from_tissue`). Not a real T2 scan; the same generator
  makes the training (MNI templates) and test (Colin27) pairs, so the subjects are disjoint.
- denoising: Rician noise on the brain MRI slices, and physically simulated low-dose CT on the real CT slices
  (`693_UNCI`, `eCT_Supplemental` x2 train; `CT_small`, `explicit_VR-UN` test).
- inpainting: a tumour-like blob mostly inside the brain filled with the mean (BraTS-Local style); target: the slice.

Training episodes use the training volumes only (held-out structures never appear); test episodes take the query
from the test volume (Colin27) and the prompt from a training volume at slice floor(n * N_TR / N_TE) (the paper).
Prompt pair and query pair each get an independent random affine with the parameters of SegICL's episodes
(`segicl_data.transforms`: +-10 deg, +-8% scale per axis, +-6% shift; MONAI's RandAffined, about 5 ms per pair), so copying the
prompt's label is not the answer. Every episode is a function of (seed, index) only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segicl_data.dataset import SliceDataset

from segicl_data.episodes import context_rows, prompt_slice
from segicl_data.transforms import SpatialTransformConfig, random_affine
from segicl_data.image2image import add_rician_noise, apply_inpainting, random_inpainting_mask, simulate_low_dose_ct, \
    simulate_t2_from_tissue
from segicl_data.preprocess import window_ct
from mvg_head.colouring import colour_table, encode
from mvg_head.config import TASKS

TRAIN_CT = ("693_UNCI_0", "eCT_Supplemental_0", "eCT_Supplemental_1")
TEST_CT = ("CT_small_0", "explicit_VR-UN_0")
TRAIN_VOLUMES = ("mni152_2009a", "fsl_mni152", "icbm2009c")
TEST_VOLUME = "colin27"
SYNTHESIS_NOTE = ("T2-like target SIMULATED from the T1 slice (3-class intensity model -> soft tissue probabilities "
                  "-> simulate_t2_from_tissue); not a real T2 scan")


@dataclass(frozen=True)
class EpisodeOptions:
    """What episodes a sampler draws.

    Attributes:
        split: "train" (training volumes and structures) or "test" (query from the test volume).
        structures: segmentation queries of "train" or "held_out" structures (test split only).
        colouring: "random", "predefined" or "binary".
        palette_levels: see MVGConfig.
        min_area: minimum structure area (pixels) on the query slice (segmentation).
        transform: independent random affine on prompt pair and query pair; None: none.
        rician_sigma: MRI noise std range (train) — test uses its midpoint.
        ct_dose: low-dose fraction range (train) — test uses its midpoint.
        ct_pixel_mm: pixel size given to the CT simulation (sets the attenuation per 64-px pixel).
        inpaint_area: area fraction range of the inpainting blob.
        prompt_jitter: training prompts come from within this many slices of the position-matched slice.
        seed: base seed.
    """

    split: str = "train"
    structures: str = "train"
    colouring: str = "random"
    palette_levels: int = 4
    min_area: int = 64
    transform: SpatialTransformConfig | None = field(default_factory=SpatialTransformConfig)
    rician_sigma: tuple[float, float] = (0.03, 0.09)
    ct_dose: tuple[float, float] = (0.1, 0.4)
    ct_pixel_mm: float = 2.0
    inpaint_area: tuple[float, float] = (0.02, 0.06)
    prompt_jitter: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.structures not in ("train", "held_out"):
            raise ValueError(f"structures must be 'train' or 'held_out', got {self.structures!r}")
        if self.split == "train" and self.structures != "train":
            raise ValueError("held-out structures never enter training")


@dataclass
class MVGEpisode:
    """One episode. `sentence` [4, 3, R, R] in [0, 1]: prompt image, prompt label, query image, query label.

    Attributes:
        task: one of TASKS.
        sentence: the four images (grey replicated to 3 channels; segmentation labels coloured).
        query_input, query_target, prompt_target: grey [R, R] (image tasks) — for metrics and baselines.
        class_ids, colours: segmentation class ids and their colours (shared by prompt and query label).
        query_labels, prompt_labels: segmentation integer maps [R, R] (after the transforms).
        region: inpainting mask [R, R] bool (the filled region), else None.
        meta: provenance (volumes, slices, task detail).
    """

    task: str
    sentence: np.ndarray
    query_input: np.ndarray | None = None
    query_target: np.ndarray | None = None
    prompt_target: np.ndarray | None = None
    class_ids: list[int] | None = None
    colours: np.ndarray | None = None
    query_labels: np.ndarray | None = None
    prompt_labels: np.ndarray | None = None
    region: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def grey3(image: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(image, np.float32)[None], 3, axis=0)


class TissueContrast:
    """Per-volume soft tissue probabilities from T1 intensities (3-class k-means inside the brain mask)."""

    def __init__(self, dataset: SliceDataset):
        self.dataset = dataset
        self._cache: dict[str, np.ndarray] = {}

    def t2_like(self, volume: str) -> np.ndarray:
        if volume not in self._cache:
            images = np.asarray(self.dataset.images(volume), dtype=np.float32)
            brain = np.asarray(self.dataset._array(f"labels/{volume}/brain.npy")) > 0
            values = images[brain]
            centres = np.quantile(values, [0.1, 0.5, 0.9])
            for _ in range(30):
                assign = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
                centres = np.array([values[assign == c].mean() if (assign == c).any() else centres[c] for c in range(3)])
            centres = np.sort(centres)
            sigma = max(float(np.diff(centres).min()) / 2, 1e-3)
            logits = -((images[..., None] - centres) ** 2) / (2 * sigma**2)
            probabilities = np.exp(logits - logits.max(-1, keepdims=True))
            probabilities /= probabilities.sum(-1, keepdims=True)
            probabilities *= brain[..., None]
            self._cache[volume] = simulate_t2_from_tissue(*np.moveaxis(probabilities, -1, 0)).astype(np.float32)
        return self._cache[volume]


class MVGEpisodeSampler:
    """`sampler.episode(task, index)` is deterministic for (options.seed, task, index)."""

    def __init__(self, dataset: SliceDataset, options: EpisodeOptions = EpisodeOptions()):
        self.dataset = dataset
        self.options = options
        self.tissue = TissueContrast(dataset)
        self._segmentation_queries = self._select_segmentation_queries()
        self._ct = dataset.ct_slices()

    # ------------------------------------------------------------------ helpers
    def _select_segmentation_queries(self) -> list[tuple[int, int]]:
        data, o = self.dataset, self.options
        held_out = o.structures == "held_out"
        queries = []
        for index, row in enumerate(data.rows):
            if row["split"] != o.split or row["held_out"] != held_out:
                continue
            if not self._prompt_rows(index):
                continue
            queries += [(index, s) for s, area in zip(row["slices"], row["areas"]) if area >= max(o.min_area, 1)]
        return queries

    def _prompt_rows(self, row: int) -> list[int]:
        volume = self.dataset.rows[row]["volume"]
        return [r for r in context_rows(self.dataset, row, self.options.split) if self.dataset.rows[r]["volume"] != volume]

    def _prompt_slice(self, query_volume: str, query_slice: int, prompt_volume: str, rng: np.random.Generator) -> int:
        n_query = self.dataset.volumes[query_volume]["n_slices"]
        n_prompt = self.dataset.volumes[prompt_volume]["n_slices"]
        base = prompt_slice(query_slice, n_query, n_prompt)
        if self.options.split == "train" and self.options.prompt_jitter:
            base += int(rng.integers(-self.options.prompt_jitter, self.options.prompt_jitter + 1))
        return int(np.clip(base, 0, n_prompt - 1))

    def _transform(self, channels: list[np.ndarray], labels: np.ndarray | None,
                   rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray | None]:
        """One random affine for a pair: images bilinear, the integer label map nearest."""
        if self.options.transform is None:
            return channels, labels
        images, moved_labels = random_affine(self.options.transform, channels, [] if labels is None else [labels],
                                             int(rng.integers(2**31 - 1)))
        labels = moved_labels[0] if moved_labels else None
        return images, labels

    def _query_volume_and_slice(self, rng: np.random.Generator) -> tuple[str, int]:
        volume = TEST_VOLUME if self.options.split == "test" else TRAIN_VOLUMES[rng.integers(len(TRAIN_VOLUMES))]
        brain = self.dataset._array(f"labels/{volume}/brain.npy")
        n = self.dataset.volumes[volume]["n_slices"]
        while True:  # slices with a reasonable amount of brain
            s = int(rng.integers(n))
            if (np.asarray(brain[s]) > 0).sum() >= 0.1 * brain.shape[-1] ** 2:
                return volume, s

    def _prompt_volume(self, query_volume: str, rng: np.random.Generator) -> str:
        others = [v for v in TRAIN_VOLUMES if v != query_volume]
        return others[rng.integers(len(others))]

    # ------------------------------------------------------------------ tasks
    def episode(self, task: str, index: int) -> MVGEpisode:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        rng = np.random.default_rng([self.options.seed, TASKS.index(task), index])
        return getattr(self, f"_{task}")(rng)

    def _segmentation(self, rng: np.random.Generator) -> MVGEpisode:
        data, o = self.dataset, self.options
        if not self._segmentation_queries:
            raise ValueError(f"no segmentation queries for {o}")
        row, query_slice = self._segmentation_queries[rng.integers(len(self._segmentation_queries))]
        task = data.rows[row]
        prompt_row = (prompts := self._prompt_rows(row))[rng.integers(len(prompts))]
        prompt_volume = data.rows[prompt_row]["volume"]
        p_slice = self._prompt_slice(task["volume"], query_slice, prompt_volume, rng)
        multiclass = task["kind"] == "multiclass"
        class_ids = list(task["label_ids"]) if multiclass else [1]
        if multiclass and o.colouring == "binary":
            class_ids = [class_ids[rng.integers(len(class_ids))]]

        def labels_of(r: int, volume: str, s: int) -> np.ndarray:
            if multiclass:
                return data.label_map(volume, task["label_set"], s).astype(np.int64)
            return data.mask(r, s).astype(np.int64)

        keys = [f"{task['label_set']}:{c}" for c in class_ids] if multiclass else [task["task"]]
        # Colours from their own generator, drawn the same way for every colouring: the episodes (slices,
        # transforms) of a random-colour and a pre-defined-colour evaluation are then identical.
        colour_rng = np.random.default_rng(int(rng.integers(2**31)))
        table = colour_table(keys, o.colouring, colour_rng, o.palette_levels)
        (p_image,), p_labels = self._transform([data.image(prompt_volume, p_slice)],
                                               labels_of(prompt_row, prompt_volume, p_slice), rng)
        (q_image,), q_labels = self._transform([data.image(task["volume"], query_slice)],
                                               labels_of(row, task["volume"], query_slice), rng)
        p_labels = np.where(np.isin(p_labels, class_ids), p_labels, 0)
        q_labels = np.where(np.isin(q_labels, class_ids), q_labels, 0)
        sentence = np.stack([grey3(p_image), encode(p_labels, class_ids, table), grey3(q_image),
                             encode(q_labels, class_ids, table)])
        return MVGEpisode("segmentation", sentence, class_ids=class_ids, colours=table, query_labels=q_labels,
                          prompt_labels=p_labels, meta={"task": task["task"], "held_out": task["held_out"],
                                                        "volume": task["volume"], "slice": query_slice,
                                                        "prompt_volume": prompt_volume, "prompt_slice": p_slice})

    def _image_pair(self, rng: np.random.Generator, make) -> MVGEpisode:
        """Prompt and query pairs made by `make(volume, slice, rng) -> (input, target, region)`."""
        q_volume, q_slice = self._query_volume_and_slice(rng)
        p_volume = self._prompt_volume(q_volume, rng)
        p_slice = self._prompt_slice(q_volume, q_slice, p_volume, rng)
        p_input, p_target, _ = make(p_volume, p_slice, rng)
        q_input, q_target, region = make(q_volume, q_slice, rng)
        sentence = np.stack([grey3(p_input), grey3(p_target), grey3(q_input), grey3(q_target)])
        return MVGEpisode("", sentence, query_input=q_input, query_target=q_target, prompt_target=p_target,
                          region=region, meta={"volume": q_volume, "slice": q_slice, "prompt_volume": p_volume,
                                               "prompt_slice": p_slice})

    def _synthesis(self, rng: np.random.Generator) -> MVGEpisode:
        def make(volume, s, rng):
            t1, t2 = self.dataset.image(volume, s), self.tissue.t2_like(volume)[s]
            (t1, t2), _ = self._transform([t1, t2], None, rng)
            return np.clip(t1, 0, 1), np.clip(t2, 0, 1), None

        episode = self._image_pair(rng, make)
        episode.task, episode.meta["note"] = "synthesis", SYNTHESIS_NOTE
        return episode

    def _inpainting(self, rng: np.random.Generator) -> MVGEpisode:
        def make(volume, s, rng):
            (image,), _ = self._transform([self.dataset.image(volume, s)], None, rng)
            image = np.clip(image, 0, 1)
            inside = image > 0.05
            for _ in range(20):
                region = random_inpainting_mask(image.shape, rng, "blob", self.options.inpaint_area)
                if inside[region].mean() >= 0.8:
                    break
            return apply_inpainting(image, region, "mean").astype(np.float32), image, region

        episode = self._image_pair(rng, make)
        episode.task = "inpainting"
        return episode

    def _denoising(self, rng: np.random.Generator) -> MVGEpisode:
        o = self.options
        if rng.random() < 0.5:
            return self._denoising_ct(rng)
        sigma = float(rng.uniform(*o.rician_sigma)) if o.split == "train" else float(np.mean(o.rician_sigma))

        def make(volume, s, rng):
            (image,), _ = self._transform([self.dataset.image(volume, s)], None, rng)
            image = np.clip(image, 0, 1)
            noisy = add_rician_noise(image, sigma, rng).astype(np.float32)
            return np.clip(noisy, 0, 1), image, None

        episode = self._image_pair(rng, make)
        episode.task, episode.meta["noise"] = "denoising", f"MRI Rician sigma {sigma:.3f}"
        return episode

    def _denoising_ct(self, rng: np.random.Generator) -> MVGEpisode:
        o = self.options
        dose = float(rng.uniform(*o.ct_dose)) if o.split == "train" else float(np.mean(o.ct_dose))
        queries = TRAIN_CT if o.split == "train" else TEST_CT
        q_name = queries[rng.integers(len(queries))]
        p_name = [n for n in TRAIN_CT if n != q_name][rng.integers(len(TRAIN_CT) - (q_name in TRAIN_CT))]

        def make(name):
            pair = simulate_low_dose_ct(self._ct[name], dose, 1e5, rng, o.ct_pixel_mm)
            clean, noisy = window_ct(pair.clean_hu), window_ct(pair.noisy_hu)
            if o.split == "train":  # exact augmentation: rotations by 90 degrees and flips, no interpolation
                turns, flip = int(rng.integers(4)), bool(rng.integers(2))
                clean, noisy = (np.rot90(a, turns) for a in (clean, noisy))
                clean, noisy = ((np.flip(a, 1) if flip else a) for a in (clean, noisy))
            return np.ascontiguousarray(noisy), np.ascontiguousarray(clean)

        p_input, p_target = make(p_name)
        q_input, q_target = make(q_name)
        sentence = np.stack([grey3(p_input), grey3(p_target), grey3(q_input), grey3(q_target)])
        return MVGEpisode("denoising", sentence, query_input=q_input, query_target=q_target, prompt_target=p_target,
                          meta={"volume": q_name, "prompt_volume": p_name, "noise": f"low-dose CT, dose {dose:.2f}"})


@dataclass(frozen=True)
class TaskMix:
    """The paper's training mix.

    Attributes:
        segmentation_probability: share of segmentation episodes (the paper: 0.5); the rest is split evenly
            between synthesis, denoising and inpainting.
        segmentation_autoregressive: fraction of segmentation episodes trained autoregressively (paper: 1.0).
        other_autoregressive: fraction of the other tasks trained autoregressively (paper: 0.1; the rest masked).
        tasks: the tasks to draw from (a subset for ablations).
        other_weights: relative draw weights of the non-segmentation tasks, by name (missing: 1; empty: the
            paper's even split).
    """

    segmentation_probability: float = 0.5
    segmentation_autoregressive: float = 1.0
    other_autoregressive: float = 0.1
    tasks: tuple[str, ...] = TASKS
    other_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"unknown tasks {sorted(unknown)}; expected a non-empty subset of {TASKS}")
        for name in ("segmentation_probability", "segmentation_autoregressive", "other_autoregressive"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if set(self.other_weights) - (set(TASKS) - {"segmentation"}) or min(self.other_weights.values(), default=1) <= 0:
            raise ValueError(f"other_weights must give non-segmentation tasks positive weights, got {self.other_weights}")

    def draw(self, rng: np.random.Generator) -> tuple[str, str]:
        """(task, mode) of one training episode."""
        others = [t for t in self.tasks if t != "segmentation"]
        if "segmentation" in self.tasks and (not others or rng.random() < self.segmentation_probability):
            task = "segmentation"
        elif self.other_weights:
            weights = np.array([self.other_weights.get(t, 1.0) for t in others])
            task = others[rng.choice(len(others), p=weights / weights.sum())]
        else:
            task = others[rng.integers(len(others))]
        share = self.segmentation_autoregressive if task == "segmentation" else self.other_autoregressive
        return task, ("autoregressive" if rng.random() < share else "masked")


def class_scores(prediction: np.ndarray, target: np.ndarray, class_ids: list[int]) -> tuple[float, float]:
    """(mean Dice, mean IoU) over the classes present in the prediction or the target (MONAI metrics)."""
    from segicl_data.metrics import dice, iou

    dices, ious = [], []
    for c in class_ids:
        p, t = prediction == c, target == c
        if not p.any() and not t.any():
            continue
        dices.append(dice(p, t))
        ious.append(iou(p, t))
    if not dices:
        return 1.0, 1.0
    return float(np.mean(dices)), float(np.mean(ious))
