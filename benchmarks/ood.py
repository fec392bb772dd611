"""`segicl bench ood`: few-shot segmentation on data the model never trained on, beside what a user would do instead.

The shipped model trains on axial 64 px slices of T1-weighted brain MRI. Each row of this benchmark changes one of
those, with real images and real (atlas or physically defined) labels that ship inside packages:
- coronal and sagittal: the held-out subject's slices along an axis never trained on (the atlases' structures);
- t2_simulated: the quality benchmark's axial episodes with every image, examples and query alike, turned into a
  SIMULATED T2-like contrast (CSF bright, white matter dark) from its own tissue classes (a Gaussian mixture of its
  intensities), an inversion the model never saw;
- ct_hounsfield: the real CT slices of pydicom / pydicom-data, with structures defined by Hounsfield thresholds (bone,
  the body, fat, air inside the body); the query and its examples are different scans, each under its own random
  affine;
- resolution_128: the held-out subject's axial slices at 128 px (the model reads 64 px; the pipeline resizes).
For k = 1, 3, 5 (nested: the k = 1 and k = 3 episodes are the first examples of the k = 5 ones), every method answers
the SAME episodes: SegICL through `SegICLPipeline.segment` (the call users make, with its default settings, and with
its examples registered to the query: `--register-examples`, from k = 2), the
CrossConv network (at its 64 px), registration + majority vote and + STAPLE, the union of the examples, the copy of
the first example, and a UNet trained on the episode's k examples (on the first `unet_episodes` episodes of a cell).
Cells: mean Dice with a bootstrap 95% interval; the goal's comparisons are paired differences with their intervals.
"""
from __future__ import annotations

import fcntl
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.ndimage import binary_fill_holes, label

from segicl.config import DEFAULT_SAMPLES, DEFAULT_STEPS
from segicl_data.metrics import bootstrap_interval
from segicl_data.model_folders import shown_path

if TYPE_CHECKING:  # the episode machinery imports MONAI: loaded when a row runs, not when the CLI lists the rows
    from segicl_data.episodes import Episode

OOD_K = (1, 3, 5)
ROWS = {
    "coronal": "coronal slices of the held-out subject (trained on axial only)",
    "sagittal": "sagittal slices of the held-out subject (trained on axial only)",
    "t2_simulated": "a simulated T2-like contrast of the axial test episodes (trained on T1 only)",
    "ct_hounsfield": "CT slices, structures by Hounsfield thresholds (trained on MRI only)",
    "resolution_128": "axial slices of the held-out subject at 128 px (trained at 64 px)",
}
METHODS = {
    "segicl": "SegICL",
    "segicl_registered": "SegICL, examples registered (--register-examples)",
    "crossconv": "CrossConv network",
    "registration_vote": "registration + majority vote",
    "registration_staple": "registration + STAPLE",
    "union_examples": "union of the examples",
    "copy_example": "copy the first example",
    "unet_on_examples": "UNet trained on the k examples",
}
MODEL_SIZE = 64
# Hounsfield window of the CT images (air to dense bone), and the structures that HU define physically.
CT_WINDOW = (-1000.0, 1000.0)
CT_STRUCTURES = ("bone", "body", "fat", "air inside the body")
# The UNet on the k examples: 400 steps at 5e-3 beat 150 at 2e-3 (Dice 0.08 -> 0.51 on 6 coronal episodes, k = 3).
UNET_LEARNING_RATE = 5e-3
# The simulated T2-like weights of CSF, grey and white matter (segicl_data.image2image.simulate_t2_from_tissue).
T2_WEIGHTS = (1.0, 0.6, 0.35)


@dataclass(frozen=True)
class OODOptions:
    """Attributes:
        episodes: episodes per (row, k) cell.
        min_area: smallest query structure in pixels at 64 px (scaled with the resolution).
        steps, samples: SegICL's decoder steps and samples (the pipeline's defaults).
        unet_episodes: episodes per cell that also get a UNet trained on their examples (the costly peer).
        unet_steps: that UNet's training steps (Adam at `UNET_LEARNING_RATE`).
        seed: episodes, decoder and UNet seed.
    """

    episodes: int = 48
    min_area: int = 64
    steps: int = DEFAULT_STEPS
    samples: int = DEFAULT_SAMPLES
    unet_episodes: int = 8
    unet_steps: int = 400
    seed: int = 0


# ----------------------------------------------------------------------------------------------- the rows' episodes

def sampler_episodes(dataset, k: int, options: OODOptions) -> list[Episode]:
    """The first `episodes` test episodes of every structure (training and held-out ones) with k examples."""
    from segicl_data.episodes import EpisodeConfig, EpisodeSampler

    scale = (dataset.resolution / MODEL_SIZE) ** 2
    config = EpisodeConfig(split="test", structures="all", max_examples=max(OOD_K), num_examples=k,
                           min_area=int(options.min_area * scale), seed=options.seed)
    sampler = EpisodeSampler(dataset, config)
    return [sampler[index] for index in range(options.episodes)]


def tissue_probabilities(image: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CSF, grey matter, white matter) probabilities [H, W] of a T1 slice: a 3-class Gaussian mixture of its
    foreground intensities (darkest class CSF, brightest white matter); 0 on the background."""
    from sklearn.mixture import GaussianMixture

    foreground = image > 0.02
    probabilities = np.zeros((3, *image.shape), dtype=np.float32)
    values = image[foreground].reshape(-1, 1)
    if len(values) < 30:
        return probabilities[0], probabilities[1], probabilities[2]
    mixture = GaussianMixture(3, random_state=seed).fit(values)
    order = np.argsort(mixture.means_[:, 0])
    probabilities[:, foreground] = mixture.predict_proba(values)[:, order].T
    return probabilities[0], probabilities[1], probabilities[2]


def simulated_t2(image: np.ndarray) -> np.ndarray:
    """A SIMULATED T2-like image of a T1 slice: its tissue probabilities weighted CSF bright, white matter dark."""
    from segicl_data.image2image import simulate_t2_from_tissue

    csf, grey, white = tissue_probabilities(image)
    return simulate_t2_from_tissue(csf, grey, white).astype(np.float32)


def with_images(episode: Episode, convert) -> Episode:
    """The episode with `convert` applied to its query and example images (masks unchanged)."""
    examples = np.stack([convert(image[0])[None] for image in episode.example_images]) if episode.k else \
        episode.example_images
    return replace(episode, example_images=examples, query_image=convert(episode.query_image[0])[None])


def hounsfield_structures(hounsfield: np.ndarray) -> dict[str, np.ndarray]:
    """The CT structures that Hounsfield units define, as boolean masks: bone (>= 300 HU), the body (> -500 HU, its
    largest component with holes filled), fat (-190 to -30 HU inside the body), air inside the body (< -500 HU)."""
    dense = hounsfield > -500
    components, count = label(dense)
    body = np.zeros_like(dense)
    if count:
        largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
        body = binary_fill_holes(components == largest)
    return {"bone": hounsfield >= 300, "body": body, "fat": body & (hounsfield >= -190) & (hounsfield <= -30),
            "air inside the body": body & (hounsfield < -500)}


def ct_window(hounsfield: np.ndarray) -> np.ndarray:
    low, high = CT_WINDOW
    return np.clip((hounsfield - low) / (high - low), 0, 1).astype(np.float32)


def ct_subjects(dataset) -> dict[str, list[np.ndarray]]:
    """scan -> its HU frames (frames of one file are one subject: examples never come from the query's scan)."""
    subjects: dict[str, list[np.ndarray]] = {}
    for name, hounsfield in sorted(dataset.ct_slices().items()):
        subjects.setdefault(name.rsplit("_", 1)[0], []).append(hounsfield)
    return subjects


def ct_episodes(dataset, k: int, options: OODOptions) -> list[Episode]:
    """Episodes on the real CT slices: a structure, a query frame and max(OOD_K) example frames of other scans (drawn
    with replacement: few scans ship), each under its own random affine; the first k examples are used (nested)."""
    from segicl_data.episodes import INSTRUCTION_TEMPLATES, Episode
    from segicl_data.transforms import SpatialTransformConfig, random_affine

    subjects = ct_subjects(dataset)
    if len(subjects) < 2:
        raise ValueError(f"the CT row needs slices of at least 2 scans, the dataset has {len(subjects)}")
    frames = [(subject, hounsfield, hounsfield_structures(hounsfield))
              for subject, hounsfield_frames in subjects.items() for hounsfield in hounsfield_frames]
    min_area = int(options.min_area * (dataset.resolution / MODEL_SIZE) ** 2)
    candidates = [(index, name) for index, (_, _, masks) in enumerate(frames) for name in CT_STRUCTURES
                  if masks[name].sum() >= min_area]
    transform = SpatialTransformConfig()
    episodes = []
    for episode_index in range(options.episodes):
        rng = np.random.default_rng([options.seed, episode_index])
        query, name = candidates[rng.integers(len(candidates))]
        lenders = [i for i, (subject, _, masks) in enumerate(frames)
                   if subject != frames[query][0] and masks[name].sum() >= min_area]
        if not lenders:
            raise ValueError(f"no other CT scan has {name} of >= {min_area} px")
        chosen = [lenders[rng.integers(len(lenders))] for _ in range(max(OOD_K))]
        moved = [random_affine(transform, [ct_window(frames[i][1])], [frames[i][2][name].astype(np.float32)],
                               int(rng.integers(2**31 - 1))) for i in [query, *chosen]]
        images = [image for (image,), _ in moved]
        masks = [(mask > 0.5).astype(np.float32) for _, (mask,) in moved]
        template = INSTRUCTION_TEMPLATES[rng.integers(len(INSTRUCTION_TEMPLATES))]
        episodes.append(Episode(
            instruction=template.format(name=name, modality="CT"), structure=name,
            example_images=np.stack(images[1:k + 1])[:, None], example_masks=np.stack(masks[1:k + 1])[:, None],
            query_image=images[0][None], query_mask=masks[0][None],
            meta={"task": f"ct/{name}", "k": k, "query": query, "examples": chosen[:k]}))
    return episodes


def row_episodes(row: str, k: int, datasets: dict, options: OODOptions) -> list[Episode]:
    """The row's episodes with k examples (`datasets`: the built-in datasets by row, see `row_dataset_configs`)."""
    if row == "t2_simulated":
        return [with_images(episode, simulated_t2) for episode in sampler_episodes(datasets[row], k, options)]
    if row == "ct_hounsfield":
        return ct_episodes(datasets[row], k, options)
    return sampler_episodes(datasets[row], k, options)


def row_dataset_configs() -> dict:
    """row -> the built-in dataset it draws from (built on first use, like every benchmark's)."""
    from segicl_data.build import DatasetConfig

    return {"coronal": DatasetConfig(axis="coronal"), "sagittal": DatasetConfig(axis="sagittal"),
            "t2_simulated": DatasetConfig(), "ct_hounsfield": DatasetConfig(),
            "resolution_128": DatasetConfig(resolution=128)}


# ----------------------------------------------------------------------------------------------- the methods

def segicl_method(pipeline, options: OODOptions, register_examples: bool = False):
    """Episodes -> SegICL's masks through `SegICLPipeline.segment` (default settings, or with `register_examples`,
    which answers episodes of 2 or more examples only: None for the others; the images are in [0, 1])."""
    from segicl.registered_examples import MIN_EXAMPLES
    from segicl.volume import Settings

    settings = Settings(steps=options.steps, samples=options.samples, normalization="none", seed=options.seed,
                        register_examples=register_examples)

    def predict(episodes: list[Episode]) -> list[np.ndarray | None]:
        return [None if register_examples and e.k < MIN_EXAMPLES else
                pipeline.segment(e.query_image[0], e.instruction,
                                 [(image[0], mask[0]) for image, mask in zip(e.example_images, e.example_masks)],
                                 settings=settings).mask.astype(np.float32) for e in episodes]

    return predict


def at_model_size(predict_batch):
    """A 64 px method run on episodes of another size: images resized to 64 px, its masks back to the episode's."""

    def predict(episodes: list[Episode]) -> list[np.ndarray | None]:
        size = episodes[0].query_image.shape[-1] if episodes else MODEL_SIZE
        if size == MODEL_SIZE:
            return predict_batch(episodes)
        from segicl_data.preprocess import resample

        grid = (MODEL_SIZE, MODEL_SIZE)
        small = [replace(e, example_images=resample(e.example_images, grid, nearest=False),
                         example_masks=(resample(e.example_masks, grid, nearest=False) > 0.5).astype(np.float32),
                         query_image=resample(e.query_image, grid, nearest=False)) for e in episodes]
        return [None if mask is None else (resample(mask, (size, size), nearest=False) > 0.5).astype(np.float32)
                for mask in predict_batch(small)]

    return predict


def unet_method(options: OODOptions):
    """Episodes -> a MONAI UNet trained on each episode's own k examples (random affines), for the first
    `unet_episodes` episodes that it is given; None for the rest."""
    from segicl_benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist

    config = SpecialistConfig(channels=(16, 32, 64), batch_size=8, max_steps=options.unet_steps, validation_every=0,
                              learning_rate=UNET_LEARNING_RATE, seed=options.seed)
    answered = {"count": 0}

    def predict(episodes: list[Episode]) -> list[np.ndarray | None]:
        answers = []
        for episode in episodes:
            if answered["count"] >= options.unet_episodes:
                answers.append(None)
                continue
            answered["count"] += 1
            network, _ = train_specialist(episode.example_images.astype(np.float32),
                                          episode.example_masks.astype(np.float32), config)
            answers.append(predict_specialist(network, episode.query_image[None])[0])
        return answers

    return predict


def peer_methods(crossconv: Path | None, options: OODOptions) -> dict:
    """name -> episodes-to-masks for every peer but copy and union (which `score_episodes` scores itself); the two
    label fusions share their registrations."""
    from segicl.baselines import RegistrationFusion
    from segicl_benchmarks.quality import crossconv_method

    vote = RegistrationFusion(fusion="vote")
    methods = {"registration_vote": vote, "registration_staple": vote.with_fusion("staple")}
    if crossconv is not None:
        methods["crossconv"] = at_model_size(crossconv_method(crossconv))
    return methods


# ----------------------------------------------------------------------------------------------- scoring

def paired(records: list[dict], first: str, second: str, seed: int) -> dict | None:
    """Mean Dice of `first` minus `second` over the records that have both, with its paired bootstrap interval."""
    differences = [r[first]["dice"] - r[second]["dice"] for r in records if first in r and second in r]
    if not differences:
        return None
    interval = bootstrap_interval(differences, seed=seed)
    return {"difference": round(float(np.mean(differences)), 4), "episodes": len(differences),
            "ci95": None if interval is None else [round(interval[0], 4), round(interval[1], 4)]}


def k5_over_k3(by_k: dict[int, list[dict]], seed: int, method: str = "segicl") -> dict | None:
    """`method`'s Dice at k = 5 minus at k = 3 on the same (nested) episodes, paired."""
    pairs = [{"k5": five[method], "k3": three[method]} for five, three in zip(by_k[5], by_k[3])
             if method in five and method in three]
    return paired(pairs, "k5", "k3", seed)


def goal_comparisons(by_k: dict[int, list[dict]], method: str, seed: int) -> dict:
    """The goal's paired comparisons of one SegICL setting (`method`); k = 1 over copy only where it answers k = 1."""
    goals = {"k3_over_registration_vote": paired(by_k[3], method, "registration_vote", seed),
             "k3_over_union": paired(by_k[3], method, "union_examples", seed),
             "k1_over_copy": paired(by_k[1], method, "copy_example", seed),
             "k5_over_k3": k5_over_k3(by_k, seed, method)}
    return {name: value for name, value in goals.items() if value is not None}


def verdict(comparison: dict | None, at_least: bool = False) -> str:
    """"yes" when the paired interval lies above 0 (for `at_least`: when the mean difference is >= 0 and the
    interval's top is above 0), "no" when it lies below, "not shown" otherwise."""
    if comparison is None:
        return "-"
    low, high = comparison["ci95"] or (comparison["difference"],) * 2
    if at_least:
        return "yes" if comparison["difference"] >= 0 else ("no" if high < 0 else "not shown")
    return "yes" if low > 0 else ("no" if high < 0 else "not shown")


def run_row(row: str, dataset, methods: dict, options: OODOptions, log) -> dict:
    """Every k of one row: cells per method, and the goal's paired comparisons."""
    from segicl.evaluation import score_episodes
    from segicl_benchmarks.quality import cell

    start = time.perf_counter()
    by_k: dict[int, list[dict]] = {}
    for k in OOD_K:
        episodes = row_episodes(row, k, {row: dataset}, options)
        chosen = {**methods, "unet_on_examples": unet_method(options)}
        records, _ = score_episodes(None, episodes, len(episodes), seed=options.seed, other_methods=chosen,
                                    progress=True)
        by_k[k] = records
        log(f"  {row} k={k}: " + ", ".join(f"{name} {np.mean([r[name]['dice'] for r in records if name in r]):.3f}"
                                           for name in METHODS if any(name in r for r in records)))
    cells = {name: {str(k): value for k in OOD_K if (value := cell(by_k[k], name, options.seed)) is not None}
             for name in METHODS}
    goals = {method: goal_comparisons(by_k, method, options.seed) for method in SEGICL_SETTINGS
             if any(method in record for records in by_k.values() for record in records)}
    return {"description": ROWS[row], "cells": {name: value for name, value in cells.items() if value},
            "goals": goals, "resolution": dataset.resolution, "seconds": round(time.perf_counter() - start)}


SEGICL_SETTINGS = ("segicl", "segicl_registered")
GOAL_LABELS = {"k3_over_registration_vote": "k=3 over registration + vote",
               "k3_over_union": "k=3 over the union", "k1_over_copy": "k=1 over copy",
               "k5_over_k3": "k=5 at least k=3"}


def format_difference(comparison: dict | None, at_least: bool = False) -> str:
    if comparison is None:
        return "-"
    interval = comparison["ci95"]
    spread = f" [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else ""
    return f"{comparison['difference']:+.3f}{spread} **{verdict(comparison, at_least)}**"


def ood_lines(result: dict) -> list[str]:
    """The table for ood.md and the results page: a block per row (methods x k), then the goals per row."""
    from segicl_benchmarks.quality import format_cell

    lines = ["### Out of distribution: new axes, contrast, modality and resolution (`segicl bench ood`)", "",
             result["setting"], "", "| row | method | k=1 | k=3 | k=5 |", "|---|---|---|---|---|"]
    rows = [row for row in ROWS if row in result["rows"]]
    for row in rows:
        cells = result["rows"][row]["cells"]
        for name, label_text in METHODS.items():
            if name in cells:
                lines.append(f"| {row} | {label_text} | " + " | ".join(format_cell(cells[name].get(str(k)))
                                                                      for k in OOD_K) + " |")
    lines += ["", "Mean Dice (bootstrap 95% interval of the mean). The goals, as SegICL's paired difference "
              "[95% interval] on the same episodes (yes: the interval is above 0; for k=5 at least k=3: the mean "
              "difference is >= 0):", "",
              "| row | SegICL | " + " | ".join(GOAL_LABELS.values()) + " | seconds |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for method, goals in result["rows"][row]["goals"].items():
            lines.append(f"| {row} | {METHODS[method]} | " + " | ".join(
                format_difference(goals.get(name), at_least=name == "k5_over_k3") for name in GOAL_LABELS)
                + f" | {result['rows'][row]['seconds']} |")
    return lines + [""]


def merge_result(path: Path, rows: dict, setting: str) -> dict:
    """ood.json with `rows` replacing those rows (the others kept: rows may run as separate processes), under a lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
        result["rows"].update(rows)
        result["setting"] = setting
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(result, indent=1))
        temporary.replace(path)
    return result


def run_ood(model: Path, crossconv: Path | None, rows: list[str], options: OODOptions, out_dir: Path,
            cache_dir: Path | None = None, log=print) -> dict:
    """The benchmark's `rows`; merges them into out_dir/ood.json and rewrites ood.md from every row there."""
    from segicl.pipeline import SegICLPipeline
    from segicl_data.build import DEFAULT_CACHE
    from segicl_data.dataset import SliceDataset

    torch.manual_seed(options.seed)
    pipeline = SegICLPipeline.from_pretrained(model)
    methods = {"segicl": segicl_method(pipeline, options),
               "segicl_registered": segicl_method(pipeline, options, register_examples=True),
               **peer_methods(crossconv, options)}
    configs = row_dataset_configs()
    results = {}
    for row in rows:
        dataset = SliceDataset.build(configs[row], cache_dir or DEFAULT_CACHE)
        results[row] = run_row(row, dataset, methods, options, log)
    peer = f", CrossConv `{shown_path(crossconv)}`" if crossconv is not None else ""
    setting = (f"Model `{shown_path(model)}`{peer}; {options.episodes} episodes per (row, k), nested in k, query "
               f"structures >= {options.min_area} px at 64 px; SegICL through `SegICLPipeline.segment` (decoder "
               f"{options.steps} steps x {options.samples} samples, its default example subsets at k = 5; and with "
               f"--register-examples from k = 2); "
               f"registration: SimpleITK affine, Mattes mutual information; the UNet (MONAI, 16-32-64 channels) "
               f"trained {options.unet_steps} steps (Adam, {UNET_LEARNING_RATE}) on each episode's k examples under random affines, on the first "
               f"{options.unet_episodes} episodes of every cell. T2-like images are SIMULATED from each slice's own "
               f"tissue classes; CT structures are Hounsfield thresholds. {torch.get_num_threads()} CPU thread(s).")
    result = merge_result(out_dir / "ood.json", results, setting)
    (out_dir / "ood.md").write_text("\n".join(ood_lines(result)) + "\n")
    return result
