"""`segicl bench labelling`: a simulated user labelling a folder, one corrected case at a time.

The folder (the pool): only four real subjects ship (MNI152 2009a, FSL MNI152, ICBM 2009c, Colin27), so each is given
`variants` independent random variations: a smooth elastic deformation with an in-plane rotation and a scale per
axis about the structure, a shift of the structure within its box, and intensity changes (gamma, a smooth bias
field, noise). Each case is cut to a box around its structure plus a margin (a slab of tens of slices, as
examples/make_nnunet_dataset.py cuts its cases) and written as an nnU-Net raw folder of NIfTI files.

The user: starts with one labelled case (the first of a seeded shuffle, the same for every strategy), imported as a
dataset (`segicl_data.importer.import_dataset`); at each labelled count (1, 2, 3, 5, 8) SegICL predicts every
unlabelled case with examples from that dataset's bank (`pipeline.segment(..., examples_from=..., label=...)`, what
`segicl predict --examples-from` runs: the k = min(3, labelled) cases most like each query), and the next cases are
labelled (their truth added with `segicl_data.importer.add_case`, what `segicl bank add` runs):
- ranked: the cases of the highest uncertainty score of that round's predictions (the order `segicl predict` ranks
  by); between two counts the ranking of the earlier count is used, without predicting again;
- random: the next cases of a seeded random order (`orders` orders).
On the ranked strategy's labelled cases, two peers answer the same unlabelled cases: registration + majority vote
(every labelled case's position-matched slice registered to each query slice), and a UNet trained on the labelled
cases' slices for the CPU time (time.process_time) that SegICL spent predicting that round.

Scored: the 3-D Dice of each unlabelled case on its file's grid, its mean over the cases of a round with a bootstrap
95% interval, and the labelled count at which each curve first reaches 90% of its value at the last count.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import io_orientation
from scipy.ndimage import gaussian_filter, map_coordinates
from tqdm.auto import tqdm

from segicl.baselines import RegistrationFusion, fuse_masks
from segicl.pipeline import SegICLPipeline
from segicl.volume import Query, Settings, prepare_query
from segicl_benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist
from segicl_data.bank import ExampleBank, find_structure
from segicl_data.dataset import SPLITS, SliceDataset
from segicl_data.imageio import MedicalImage, read_image
from segicl_data.importer import (MODALITY_WORDS, ImportConfig, add_case, import_dataset, read_case, read_description,
                                  slug)
from segicl_data.metrics import bootstrap_interval, dice
from segicl_data.model_folders import shown_path
from segicl_data.preprocess import from_display_slices, normalize_intensity, resize_slices
from segicl_data.volumes import to_model_slices

# The built-in volumes that are another image of a subject already in the pool (Colin27's head scan).
SAME_SUBJECT_AS = {"colin27_head": "colin27"}
POOL_NAME = "LabellingPool"
COPY_SUFFIX = "_copy"  # the seed dataset's test case: a copy of the first labelled case (see `start_labelled_dataset`)
UNET_CALIBRATION_STEPS = 5
INTENSITY_SCALE = 1000.0  # written intensities, as a scanner's (the models normalise them away)
# The table's rows: method -> label.
METHODS = {"ranked": "SegICL, most uncertain case labelled next",
           "random": "SegICL, a random case labelled next",
           "registration_vote": "registration + majority vote (ranked strategy's cases)",
           "unet": "UNet on the labelled cases, SegICL's CPU time (ranked strategy's cases)"}
REACH = 0.9  # the share of the curve's end whose labelled count is reported


@dataclass(frozen=True)
class SourceCase:
    """One case as display slices: its image [S, H, W], its structure's mask (bool) and the voxel size in mm
    (between slices, rows, columns)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class PoolSource:
    """The real cases a pool is made from, and what to call the results.

    Attributes:
        name: the result files' stem (labelling.json, labelling.md, labelling.png).
        title: the data, in words, for the setting.
        structure: the structure's readable name: the pool's label and its instructions' wording.
        channel: the images' channel name in the pool's dataset.json (its modality words, `modality_words`).
        cases: the source cases, one per subject.
    """

    name: str
    title: str
    structure: str
    channel: str
    cases: tuple[SourceCase, ...]


@dataclass(frozen=True)
class VariationConfig:
    """How one variant of a source case differs from it.

    Attributes:
        rotate_degrees: in-plane rotation about the structure's centre, drawn from [-r, r].
        scale: relative scale change per axis, drawn from [-s, s].
        elastic_mm: peak displacement of the smooth elastic field per axis.
        elastic_smoothness_mm: Gaussian width of the elastic field.
        translate_mm: shift of the structure within its box per axis, drawn from [-t, t] (at most the margin).
        gamma: range of the gamma applied to intensities scaled to [0, 1] (drawn log-uniformly).
        bias: amplitude of the multiplicative bias field: exp(bias * a smooth field in [-1, 1]).
        bias_smoothness_mm: Gaussian width of the bias field.
        noise: standard deviation of the added Gaussian noise, as a fraction of the intensity range.
    """

    rotate_degrees: float = 10.0
    scale: float = 0.08
    elastic_mm: float = 3.0
    elastic_smoothness_mm: float = 12.0
    translate_mm: float = 4.0
    gamma: tuple[float, float] = (0.7, 1.4)
    bias: float = 0.2
    bias_smoothness_mm: float = 30.0
    noise: float = 0.02

    def words(self) -> str:
        return (f"a smooth elastic deformation (peak {self.elastic_mm:g} mm, width {self.elastic_smoothness_mm:g} mm), "
                f"an in-plane rotation of up to {self.rotate_degrees:g} degrees and a scale of up to "
                f"{self.scale:.0%} per axis about the structure, a shift of up to {self.translate_mm:g} mm of the "
                f"structure in its box, a gamma of {self.gamma[0]:g}-{self.gamma[1]:g}, a smooth bias field of up to "
                f"{self.bias:.0%} and {self.noise:.0%} Gaussian noise")


@dataclass(frozen=True)
class LabellingOptions:
    """The benchmark's settings (the `segicl bench labelling` flags).

    Attributes:
        counts: the labelled counts at which the rest is predicted and scored (strictly increasing, from 1: the
            user starts with one labelled case).
        variants: random variants of each source case in the pool.
        orders: random labelling orders of the random strategy.
        seed: seed of the pool, of the first case and of the orders (and of the decoder and the UNet).
        steps, samples: SegICL's decoder steps and samples.
        margin_mm: the box around each case's structure.
        unet_max_steps: a ceiling on the UNet's steps, whatever the CPU time allows.
        variation: how the variants differ.
    """

    counts: tuple[int, ...]
    variants: int
    orders: int
    seed: int
    steps: int
    samples: int
    margin_mm: float
    unet_max_steps: int
    variation: VariationConfig = VariationConfig()

    def __post_init__(self) -> None:
        for name in ("variants", "orders", "steps", "samples", "unet_max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.margin_mm <= 0:
            raise ValueError(f"--margin-mm must be > 0, got {self.margin_mm}")
        counts = list(self.counts)
        if not counts or counts[0] != 1 or any(b <= a for a, b in zip(counts, counts[1:])):
            raise ValueError(f"--counts must start at 1 (one labelled case) and increase strictly, got {counts}")

    def check_pool(self, subjects: int) -> None:
        """Refuse counts that leave no case of a pool of `subjects` x `variants` cases to predict."""
        pool = subjects * self.variants
        if self.counts[-1] >= pool:
            raise ValueError(f"--counts must stay below the pool's {pool} cases ({subjects} subjects x {self.variants} "
                             f"variants), so that a case is left to predict; got {self.counts[-1]}")


# ------------------------------------------------------------------------------------------------ the sources


def builtin_source(dataset: SliceDataset, structure: str) -> PoolSource:
    """One case per subject of a built (or imported) dataset that labels `structure` (a task key, or a name that
    `find_structure` knows): its slices and that structure's mask (the built-in volumes are 1 mm templates cut into
    slices of `crop size / resolution` mm)."""
    # Task keys first: several label sets name a structure alike ("caudate (both sides)"), and a name finds one of them.
    task = structure if structure in dataset.rows_by_task else find_structure(dataset, structure, SPLITS).task
    rows = {dataset.rows[row]["volume"]: row for row in dataset.rows_by_task[task]}
    first = dataset.rows[next(iter(rows.values()))]
    cases = []
    for volume, row in sorted(rows.items()):
        if volume in SAME_SUBJECT_AS:
            continue
        images = np.asarray(dataset.images(volume), dtype=np.float32)
        mask = np.stack([dataset.mask(row, index) for index in range(len(images))]) > 0
        pixel = dataset.volumes[volume]["crop"]["size"] / dataset.resolution
        cases.append(SourceCase(volume, images, mask, (1.0, pixel, pixel)))
    held = " (held out of the model's training)" if first["held_out"] else ""
    name = dataset.imported["name"] if dataset.imported else "the built-in atlas dataset"
    return PoolSource("labelling", f"{name}, structure `{task}`{held}", first["name"], channel_named(first["modality"]),
                      tuple(cases))


def channel_named(modality: str) -> str:
    """The dataset.json channel name that instructions word as `modality` ("T1-weighted MRI" -> "t1"), else the
    words themselves."""
    return next((channel for channel, words in MODALITY_WORDS.items() if words == modality), modality)


def display_spacing(image: MedicalImage) -> tuple[float, float, float]:
    """The voxel size in mm along the axial display slices' axes (slices, rows, columns) of a 3-D image."""
    ras_axes = io_orientation(image.affine)[:, 0].astype(int)
    by_ras = {int(ras): float(size) for ras, size in zip(ras_axes, image.spacing)}
    return by_ras[2], by_ras[1], by_ras[0]


def nnunet_source(folder: Path, label: str) -> PoolSource:
    """One case per labelled case of an nnU-Net v2 raw folder, with the mask of its label `label`."""
    description = read_description(folder)
    values = {slug(name): (name, ids) for name, ids in description.structures.items()}
    if slug(label) not in values:
        raise ValueError(f"--label {label!r} is not a label of {folder / 'dataset.json'}: "
                         f"{', '.join(sorted(description.structures))}")
    name, ids = values[slug(label)]
    cases = []
    for case in description.cases:
        image, labels = read_case(case, description)
        mask = np.isin(np.rint(to_model_slices(labels)), ids)
        cases.append(SourceCase(case.name, to_model_slices(image), mask, display_spacing(image)))
    return PoolSource("labelling_nnunet", f"the nnU-Net dataset {description.name} (`{folder}`), label `{name}`",
                      name, description.channel, tuple(cases))


# ------------------------------------------------------------------------------------------------ the pool


def smooth_field(shape: tuple[int, ...], sigma_voxels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to a peak magnitude of 1."""
    field = gaussian_filter(rng.standard_normal(shape), sigma_voxels)
    return field / max(float(np.abs(field).max()), 1e-12)


def deformation(shape: tuple[int, ...], centre: np.ndarray, spacing: np.ndarray, rng: np.random.Generator,
                config: VariationConfig) -> np.ndarray:
    """Where each voxel of the variant takes its value in the source [3, S, H, W]: an in-plane rotation and a scale
    per axis about `centre`, plus a smooth elastic displacement, computed in mm (the voxels may not be cubes)."""
    offsets = (np.indices(shape, dtype=np.float32) - centre[:, None, None, None]) * spacing[:, None, None, None]
    angle = np.deg2rad(rng.uniform(-config.rotate_degrees, config.rotate_degrees))
    matrix = np.eye(3)
    matrix[1:, 1:] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    matrix = matrix @ np.diag(1.0 + rng.uniform(-config.scale, config.scale, size=3))
    source_mm = np.tensordot(matrix, offsets, axes=1)
    for axis in range(3):
        source_mm[axis] += config.elastic_mm * smooth_field(shape, config.elastic_smoothness_mm / spacing, rng)
    return source_mm / spacing[:, None, None, None] + centre[:, None, None, None]


def structure_box(mask: np.ndarray, spacing: np.ndarray, margin_mm: float, shift_mm: np.ndarray) -> tuple[slice, ...]:
    """The box around the mask plus the margin, moved by `shift_mm` (at most the margin, so the structure stays
    inside), within the volume."""
    margin = np.ceil(margin_mm / spacing).astype(int)
    shift = np.clip(np.rint(shift_mm / spacing).astype(int), -margin, margin)
    voxels = np.argwhere(mask)
    low = np.maximum(voxels.min(axis=0) - margin + shift, 0)
    high = np.minimum(voxels.max(axis=0) + margin + shift + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def vary_intensity(image: np.ndarray, spacing: np.ndarray, rng: np.random.Generator,
                   config: VariationConfig) -> np.ndarray:
    """A gamma, a smooth multiplicative bias field and Gaussian noise on the image scaled to [0, 1] (its 0.5th to
    99.5th percentiles), written at INTENSITY_SCALE."""
    low, high = np.percentile(image, (0.5, 99.5))
    scaled = np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    gamma = np.exp(rng.uniform(np.log(config.gamma[0]), np.log(config.gamma[1])))
    bias = np.exp(config.bias * smooth_field(image.shape, config.bias_smoothness_mm / spacing, rng))
    varied = scaled ** gamma * bias + rng.normal(0.0, config.noise, image.shape)
    return (varied * INTENSITY_SCALE).astype(np.float32)


def make_variant(case: SourceCase, name: str, margin_mm: float, rng: np.random.Generator,
                 config: VariationConfig) -> SourceCase:
    """One random variant of a source case, cut to the box around its (moved) structure."""
    spacing = np.asarray(case.spacing, dtype=np.float64)
    centre = np.argwhere(case.mask).mean(axis=0)
    coordinates = deformation(case.image.shape, centre, spacing, rng, config)
    image = map_coordinates(case.image.astype(np.float32), coordinates, order=1, mode="nearest")
    mask = map_coordinates(case.mask.astype(np.float32), coordinates, order=1) > 0.5
    if not mask.any():
        raise ValueError(f"the variant {name} of {case.name} lost its structure; use a smaller deformation")
    box = structure_box(mask, spacing, margin_mm, rng.uniform(-config.translate_mm, config.translate_mm, size=3))
    return SourceCase(name, vary_intensity(image[box], spacing, rng, config), mask[box], case.spacing)


def build_pool(source: PoolSource, variants: int, seed: int, margin_mm: float,
               config: VariationConfig = VariationConfig()) -> list[SourceCase]:
    """`variants` variants of every source case, each drawn from its own seed (subject, variant, `seed`)."""
    return [make_variant(case, f"{case.name}_v{variant}", margin_mm,
                         np.random.default_rng([seed, subject, variant]), config)
            for subject, case in enumerate(source.cases) for variant in range(variants)]


@dataclass(frozen=True)
class PoolCase:
    """A case of the pool on disk, as nnU-Net names it: imagesTr/NAME_0000.nii.gz and labelsTr/NAME.nii.gz."""

    name: str
    image: Path
    label: Path


def write_description(folder: Path, structure: str, channel: str, cases: int) -> None:
    """The nnU-Net v2 dataset.json of a pool (or seed) folder: one channel, one label."""
    (folder / "dataset.json").write_text(json.dumps(
        {"name": POOL_NAME, "channel_names": {"0": channel}, "labels": {"background": 0, structure: 1},
         "numTraining": cases, "file_ending": ".nii.gz"}, indent=1))


def case_paths(folder: Path, name: str) -> PoolCase:
    return PoolCase(name, folder / "imagesTr" / f"{name}_0000.nii.gz", folder / "labelsTr" / f"{name}.nii.gz")


def display_nifti(slices: np.ndarray, spacing: tuple[float, float, float]) -> nib.Nifti1Image:
    """Axial display slices [S, H, W] as a RAS+ NIfTI volume whose axial slices they are."""
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    return nib.Nifti1Image(from_display_slices(slices, "axial"), affine)


def write_pool(cases: list[SourceCase], folder: Path, structure: str, channel: str) -> dict[str, PoolCase]:
    """The pool as an nnU-Net v2 raw folder; name -> its files."""
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    written = {}
    for case in cases:
        paths = case_paths(folder, case.name)
        nib.save(display_nifti(case.image, case.spacing), paths.image)
        nib.save(display_nifti(case.mask.astype(np.uint8), case.spacing), paths.label)
        written[case.name] = paths
    write_description(folder, structure, channel, len(cases))
    return written


# ------------------------------------------------------------------------------------------------ the user


def start_labelled_dataset(first: PoolCase, folder: Path, structure: str, channel: str, resolution: int) -> Path:
    """The user's dataset holding the first labelled case, imported (`import_dataset`). The importer splits a
    dataset into training and test cases, at least one each: the test case is a copy of the first case (named
    NAME_copy, fold 0's validation case of splits_final.json), so no other case's truth is in it; test cases never
    lend examples."""
    source = folder / "seed"
    for sub in ("imagesTr", "labelsTr"):
        (source / sub).mkdir(parents=True, exist_ok=True)
    for name in (first.name, first.name + COPY_SUFFIX):
        paths = case_paths(source, name)
        shutil.copyfile(first.image, paths.image)
        shutil.copyfile(first.label, paths.label)
    write_description(source, structure, channel, 2)
    (source / "splits_final.json").write_text(json.dumps([{"train": [first.name], "val": [first.name + COPY_SUFFIX]}]))
    return import_dataset(source, folder / "dataset", ImportConfig(resolution=resolution), progress=False)


class LabelledSet:
    """The cases one simulated user has labelled, as the imported dataset that `segicl bank add` grows."""

    def __init__(self, folder: Path, pool: dict[str, PoolCase], first: str, structure: str, channel: str,
                 resolution: int):
        self.pool = pool
        self.dataset = start_labelled_dataset(pool[first], folder, structure, channel, resolution)
        self.cases = [first]

    def add(self, name: str) -> None:
        """Label a case: its truth added to the dataset (`add_case`, as `segicl bank add`)."""
        case = self.pool[name]
        add_case(self.dataset, case.image, case.label, name=name)
        self.cases.append(name)

    def rest(self) -> list[str]:
        """The unlabelled cases, in pool order."""
        return [name for name in self.pool if name not in self.cases]


RoundPredictor = Callable[[LabelledSet, list[str]], dict]
"""(labelled set, unlabelled cases) -> {"cases": {case: {method: {"dice": ...}}}, ...}: one round's answers."""
Chooser = Callable[[dict, LabelledSet, int], list[str]]
"""(the round's answers, labelled set, how many) -> the cases to label next."""


def run_strategy(labelled: LabelledSet, counts: tuple[int, ...], predict_round: RoundPredictor,
                 choose_next: Chooser) -> list[dict]:
    """The rounds of one simulated user: at each count, the rest predicted; then the chosen cases labelled up to the
    next count (one `add` each)."""
    rounds = []
    for count, following in zip(counts, (*counts[1:], None)):
        answers = predict_round(labelled, labelled.rest())
        rounds.append({"count": count, "labelled": list(labelled.cases), **answers})
        if following is not None:
            for name in choose_next(answers, labelled, following - count):
                labelled.add(name)
    return rounds


def most_uncertain(answers: dict, labelled: LabelledSet, count: int) -> list[str]:
    """The ranked strategy: the `count` cases of the highest SegICL uncertainty score this round (ties: pool order)."""
    scored = answers["cases"]
    return sorted(scored, key=lambda name: -scored[name]["segicl"]["uncertainty"])[:count]


def in_order(order: list[str]) -> Chooser:
    """The random strategy: the next `count` unlabelled cases of a fixed order."""

    def choose(answers: dict, labelled: LabelledSet, count: int) -> list[str]:
        return [name for name in order if name not in labelled.cases][:count]

    return choose


# ------------------------------------------------------------------------------------------------ the methods


class SegICLCases:
    """Case -> SegICL's answer with the labelled set's bank, as `segicl predict --examples-from` gives it: its Dice,
    its uncertainty score and the CPU seconds it took. Answers are kept by (labelled cases, case), so strategies
    sharing a labelled set (every strategy's first round) predict it once."""

    def __init__(self, pipeline, settings, structure: str, truths: dict[str, np.ndarray], progress: tqdm):
        self.pipeline, self.settings, self.structure, self.truths = pipeline, settings, structure, truths
        self.progress = progress
        self.answers: dict[tuple[frozenset, str], dict] = {}

    def __call__(self, labelled: LabelledSet, name: str) -> dict:
        key = (frozenset(labelled.cases), name)
        if key not in self.answers:
            start = time.process_time()
            result = self.pipeline.segment(labelled.pool[name].image, examples_from=labelled.dataset,
                                           label=self.structure, k=min(3, len(labelled.cases)),
                                           settings=self.settings)
            (structure,) = result.structures.values()
            self.answers[key] = {"dice": round(dice(result.mask, self.truths[name]), 4),
                                 "uncertainty": structure["uncertainty"],
                                 "cpu_s": round(time.process_time() - start, 2)}
        self.progress.update()
        return self.answers[key]


@dataclass
class QueryView:
    """A case as SegICL sees it (the query cut to its foreground, `prepare_query`), at the model's resolution and
    normalised like its slices: what the peers answer on, mapped back to the file's grid as SegICL's answer is."""

    query: Query
    slices: np.ndarray  # [S, size, size] in [0, 1]

    @classmethod
    def of(cls, path: Path, size: int) -> "QueryView":
        query = prepare_query(read_image(path))
        return cls(query, resize_slices(normalize_intensity(query.model_slices, "percentile"), size, labels=False))

    def to_file(self, masks: np.ndarray) -> np.ndarray:
        """Masks [S, size, size] -> the file's grid, resized as the pipeline resizes its probabilities (bilinear,
        then > 0.5): a nearest-neighbour resize shifts a mask by up to a pixel on the way back."""
        maps = F.interpolate(torch.from_numpy(masks.astype(np.float32))[:, None],
                             size=self.query.model_slices.shape[1:], mode="bilinear", align_corners=False)
        return self.query.to_file(self.query.to_display((maps[:, 0].numpy() > 0.5).astype(np.uint8)))


def registration_vote(fusion: RegistrationFusion, dataset: SliceDataset, structure: str, cases: int,
                      view: QueryView) -> np.ndarray:
    """Every labelled case's position-matched slice (the bank's rule) registered to each query slice, then a
    majority vote; [S, size, size]. `fusion` keeps its registrations: a round registers again only its new cases.
    An empty example mask stays empty wherever it is moved, so it is not registered."""
    per_slice = ExampleBank(dataset, structure, k=cases).examples_per_slice(len(view.slices))
    return np.stack([fuse_masks([fusion.register(image, mask, query) if mask.any() else np.zeros_like(query)
                                 for image, mask in pairs], fusion.fusion)
                     for pairs, query in zip(per_slice, view.slices)])


def labelled_slices(dataset: SliceDataset, structure: str) -> tuple[np.ndarray, np.ndarray]:
    """Every slice of the labelled (training) cases [N, 1, R, R] and the structure's masks, slices without it
    included: a whole volume's worth, as the UNet will be asked to answer."""
    images, masks = [], []
    for row in find_structure(dataset, structure).rows:
        volume = dataset.rows[row]["volume"]
        images.append(np.asarray(dataset.images(volume), dtype=np.float32))
        masks.append(np.stack([dataset.mask(row, index) for index in range(len(images[-1]))]))
    return np.concatenate(images)[:, None], np.concatenate(masks)[:, None].astype(np.float32)


class Peers:
    """Registration + vote and the UNet on one round's labelled set and unlabelled cases."""

    def __init__(self, structure: str, size: int, truths: dict[str, np.ndarray], seed: int, max_steps: int):
        self.structure, self.size, self.truths, self.seed, self.max_steps = structure, size, truths, seed, max_steps
        self.fusion = RegistrationFusion(fusion="vote")
        self.cpu_per_step: float | None = None

    def unet_steps(self, images: np.ndarray, masks: np.ndarray, cpu_s: float) -> int:
        """The steps that `cpu_s` CPU seconds buy (measured once, on UNET_CALIBRATION_STEPS steps), at most
        max_steps."""
        if self.cpu_per_step is None:
            start = time.process_time()
            train_specialist(images, masks, SpecialistConfig(max_steps=UNET_CALIBRATION_STEPS, validation_every=0,
                                                             seed=self.seed))
            self.cpu_per_step = (time.process_time() - start) / UNET_CALIBRATION_STEPS
        return int(max(1, min(self.max_steps, cpu_s // self.cpu_per_step)))

    def __call__(self, labelled: LabelledSet, rest: list[str], cpu_s: float) -> dict:
        """{"cases": {case: {"registration_vote": {"dice"}, "unet": {"dice"}}}, "unet": its training}."""
        dataset = SliceDataset(labelled.dataset)
        images, masks = labelled_slices(dataset, self.structure)
        steps = self.unet_steps(images, masks, cpu_s)
        start = time.process_time()
        network, training = train_specialist(images, masks, SpecialistConfig(max_steps=steps, seed=self.seed))
        training = {key: training[key] for key in ("steps", "best_step", "stopped_by", "slices")}
        training.update(budget_steps=steps, cpu_s=round(time.process_time() - start, 2), segicl_cpu_s=round(cpu_s, 2))
        cases = {}
        for name in rest:
            view = QueryView.of(labelled.pool[name].image, self.size)
            answers = {"registration_vote": registration_vote(self.fusion, dataset, self.structure,
                                                              len(labelled.cases), view),
                       "unet": predict_specialist(network, view.slices[:, None])}
            cases[name] = {method: {"dice": round(dice(view.to_file(mask), self.truths[name]), 4)}
                           for method, mask in answers.items()}
        return {"cases": cases, "unet": training}


# ------------------------------------------------------------------------------------------------ the summary


def dice_cell(values: list[float], seed: int) -> dict:
    """Mean Dice, its bootstrap 95% interval and the number of case predictions it averages."""
    interval = bootstrap_interval(values, seed=seed)
    return {"dice": round(float(np.mean(values)), 4),
            "ci95": None if interval is None else [round(interval[0], 4), round(interval[1], 4)],
            "episodes": len(values)}


def method_curve(runs: list[list[dict]], method: str, seed: int) -> dict[str, dict]:
    """count -> the cell of one method's Dice over the unlabelled cases of every run's round at that count."""
    by_count: dict[int, list[float]] = {}
    for rounds in runs:
        for round_ in rounds:
            by_count.setdefault(round_["count"], []).extend(
                case[method]["dice"] for case in round_["cases"].values() if method in case)
    return {str(count): dice_cell(values, seed) for count, values in by_count.items() if values}


def labelled_to_reach(curve: dict[str, dict], share: float = REACH) -> int:
    """The first labelled count whose mean Dice reaches `share` of the Dice at the last count."""
    counts = sorted(curve, key=int)
    end = curve[counts[-1]]["dice"]
    return next(int(count) for count in counts if curve[count]["dice"] >= share * end)


def summarize(ranked: list[dict], random_runs: list[list[dict]], seed: int) -> dict:
    """method -> count -> cell, and method -> the labelled count reaching REACH of its curve's end."""
    curves = {"ranked": method_curve([ranked], "segicl", seed), "random": method_curve(random_runs, "segicl", seed),
              "registration_vote": method_curve([ranked], "registration_vote", seed),
              "unet": method_curve([ranked], "unet", seed)}
    return {"curves": curves, "reach": {method: labelled_to_reach(curve) for method, curve in curves.items()}}


def format_cell(value: dict | None) -> str:
    if value is None:
        return "-"
    interval = f" ({value['ci95'][0]:.2f}-{value['ci95'][1]:.2f})" if value.get("ci95") else ""
    return f"{value['dice']:.3f}{interval}, n={value['episodes']}"


def unet_budget_line(ranked: list[dict]) -> str:
    """The UNet's training per round, against SegICL's CPU seconds."""
    parts = [f"{round_['count']}: {round_['unet']['steps']} steps in {round_['unet']['cpu_s']:.0f} CPU s "
             f"(SegICL {round_['unet']['segicl_cpu_s']:.0f} s, stopped by {round_['unet']['stopped_by']})"
             for round_ in ranked if "unet" in round_]
    return "- The UNet per labelled count: " + "; ".join(parts) + "."


def labelling_lines(result: dict, plot: str | None = None) -> list[str]:
    """The labelling table as markdown lines (labelling.md and the docs' results page)."""
    plot = plot or f"{result['name']}.png"
    counts = result["counts"]
    if result["name"] == "labelling":
        title = "### Labelling a folder, one corrected case at a time (`segicl bench labelling`)"
    else:
        title = "### Labelling an nnU-Net dataset's folder (`segicl bench labelling --nnunet`)"
    lines = [title, "", result["setting"], "",
             "| method | " + " | ".join(f"{count} labelled" for count in counts)
             + f" | labelled cases to reach {REACH:.0%} of the end |",
             "|---|" + "---|" * (len(counts) + 1)]
    for method, label in METHODS.items():
        curve = result["curves"][method]
        lines.append(f"| {label} | " + " | ".join(format_cell(curve.get(str(count))) for count in counts)
                     + f" | {result['reach'][method]} |")
    lines += ["", "Mean 3-D Dice of the unlabelled cases (bootstrap 95% interval of the mean), n = the case "
              "predictions each cell averages (the random strategy's: over its orders).", "",
              unet_budget_line(result["ranked"]), "", f"![labelling]({plot})", ""]
    return lines


def plot_curves(path: Path, result: dict) -> None:
    """Mean Dice (95% interval) against the labelled count, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for method, label in METHODS.items():
        curve = result["curves"][method]
        counts = sorted(int(count) for count in curve)
        means = np.array([curve[str(count)]["dice"] for count in counts])
        bounds = np.array([curve[str(count)]["ci95"] or [curve[str(count)]["dice"]] * 2 for count in counts])
        segicl = method in ("ranked", "random")
        axis.errorbar(counts, means, yerr=[means - bounds[:, 0], bounds[:, 1] - means], fmt="o-" if segicl else ".--",
                      capsize=2, label=label, linewidth=2 if method == "ranked" else 1)
    axis.set_xlabel("labelled cases")
    axis.set_xticks(result["counts"])
    axis.set_ylabel("mean 3-D Dice of the rest (95% interval)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------ the run


def planned_predictions(pool: int, counts: tuple[int, ...], orders: int) -> int:
    """SegICL case predictions asked for: every strategy's unlabelled cases at every count."""
    return (1 + orders) * sum(pool - count for count in counts)


def setting_text(source: PoolSource, pool: list[SourceCase], options: LabellingOptions, model: Path,
                 cpu_per_step: float | None, threads: int, seconds: float) -> str:
    slices = [len(case.image) for case in pool]
    step = f"{1000 * cpu_per_step:.0f} CPU ms per UNet step (measured), " if cpu_per_step else ""
    return (f"Pool: {len(pool)} cases = {len(source.cases)} subjects ({', '.join(c.name for c in source.cases)}: the "
            f"only real subjects) x {options.variants} random variants each ({options.variation.words()}), so that "
            f"cases differ in anatomy and contrast; each cut to a box around its structure + {options.margin_mm:g} mm "
            f"({min(slices)}-{max(slices)} axial slices). Data: {source.title}; structure: {source.structure}. "
            f"The first labelled case is the same for every strategy (seed {options.seed}); ranked: at each count the "
            f"cases of the highest uncertainty score of that count's predictions are labelled up to the next count "
            f"(no prediction in between); random: {options.orders} seeded orders. SegICL: model `{shown_path(model)}`, "
            f"`pipeline.segment(examples_from=the labelled dataset, k=min(3, labelled))`, decoder {options.steps} "
            f"steps x {options.samples} samples. Peers on the ranked strategy's labelled cases: registration "
            f"(SimpleITK affine, Mattes mutual information) of every labelled case's position-matched slice to each "
            f"query slice, then a majority vote; a MONAI UNet trained on every slice of the labelled cases for the "
            f"CPU time SegICL spent predicting that round ({step}early stopping on every "
            f"{SpecialistConfig().validation_every}th slice, at most "
            f"{options.unet_max_steps} steps). Dice on each case's own grid. {threads} CPU thread(s), total "
            f"{seconds / 60:.0f} min.")


def run_labelling(source: PoolSource, options: LabellingOptions, model: Path, out_dir: Path, log=print) -> dict:
    """The whole benchmark on one source; writes <name>.json, .md and .png into out_dir (the pool and the simulated
    users' datasets under out_dir/<name>_work)."""
    start = time.perf_counter()
    options.check_pool(len(source.cases))
    work = out_dir / f"{source.name}_work"
    shutil.rmtree(work, ignore_errors=True)
    pool_cases = build_pool(source, options.variants, options.seed, options.margin_mm, options.variation)
    pool = write_pool(pool_cases, work / "pool", source.structure, source.channel)
    truths = {case.name: read_image(pool[case.name].label).array > 0 for case in pool_cases}
    shuffled = [str(name) for name in np.random.default_rng(options.seed).permutation(list(pool))]
    pipeline = SegICLPipeline.from_pretrained(model)
    settings = Settings(steps=options.steps, samples=options.samples, seed=options.seed)
    total = planned_predictions(len(pool), options.counts, options.orders)
    with tqdm(total=total, desc="case predictions", unit="case") as progress:
        segicl = SegICLCases(pipeline, settings, source.structure, truths, progress)
        peers = Peers(source.structure, pipeline.size, truths, options.seed, options.unet_max_steps)

        def user(folder: str) -> LabelledSet:
            return LabelledSet(work / folder, pool, shuffled[0], source.structure, source.channel, pipeline.size)

        def segicl_round(labelled: LabelledSet, rest: list[str]) -> dict:
            return {"cases": {name: {"segicl": segicl(labelled, name)} for name in rest}}

        def ranked_round(labelled: LabelledSet, rest: list[str]) -> dict:
            answers = segicl_round(labelled, rest)
            cpu_s = sum(case["segicl"]["cpu_s"] for case in answers["cases"].values())
            others = peers(labelled, rest, cpu_s)
            for name, methods in others["cases"].items():
                answers["cases"][name].update(methods)
            log_round("ranked", len(labelled.cases), answers["cases"], log)
            return {**answers, "unet": others["unet"]}

        ranked = run_strategy(user("ranked"), options.counts, ranked_round, most_uncertain)
        random_runs = []
        for order_index in range(options.orders):
            rest = np.random.default_rng([options.seed, order_index + 1]).permutation(shuffled[1:])
            order = [shuffled[0], *map(str, rest)]
            random_runs.append(run_strategy(user(f"random{order_index}"), options.counts, segicl_round,
                                            in_order(order)))
            log_round(f"random order {order_index}", options.counts[-1], random_runs[-1][-1]["cases"], log)
    result = {"name": source.name, "structure": source.structure, "counts": list(options.counts),
              "pool": [case.name for case in pool_cases], "first_case": shuffled[0],
              **summarize(ranked, random_runs, options.seed), "ranked": ranked, "random": random_runs}
    result["setting"] = setting_text(source, pool_cases, options, model, peers.cpu_per_step, torch.get_num_threads(),
                                     time.perf_counter() - start)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{source.name}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"{source.name}.md").write_text("\n".join(labelling_lines(result)) + "\n")
    plot_curves(out_dir / f"{source.name}.png", result)
    return result


def log_round(strategy: str, count: int, cases: dict, log) -> None:
    methods = sorted({method for case in cases.values() for method in case})
    log(f"  {strategy}, {count} labelled, {len(cases)} cases: " + ", ".join(
        f"{method} {np.mean([case[method]['dice'] for case in cases.values()]):.3f}" for method in methods))
