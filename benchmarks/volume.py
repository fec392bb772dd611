"""`segicl bench volume`: whole held-out volumes, as a user runs them.

For held-out structures of the held-out subject, EVERY slice of its volume is segmented (slices without the
structure included), with k = 3 examples from the three training volumes where the structure is labelled (the
support rows), two ways:
- position-matched: slice n of the query's N slices takes slice floor(n * N_TR / N_TE) of each example volume
  (the rule MVG uses; such an example may show no structure, which says "nothing here"),
- fixed: one set for the whole volume, each example volume's slice with the structure's largest area (what a user
  picking "three clear examples" would give `segicl segment`).
No random affines: the volumes as they are. Every method answers every slice; the scores are the 3-D Dice per
structure and the false-positive voxels on the slices where the structure is absent. SegICL and registration + vote are also
scored with their mask's largest 3-D connected component kept (`segicl segment --largest-component`, nnU-Net-style
post-processing).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from segicl_data.dataset import SliceDataset
from segicl_data.episodes import INSTRUCTION_TEMPLATES, Episode, context_rows, prompt_slice
from segicl_data.metrics import dice
from segicl_data.model_folders import shown_path
from segicl.baselines import predict_union
from segicl.evaluation import segment_episodes
from segicl.volume import keep_largest_component

VOLUME_K = 3
# Scored again with the mask's largest 3-D connected component kept: SegICL and the strongest plain peer.
LARGEST_COMPONENT_OF = ("segicl", "registration_vote")
SETTINGS = ("position_matched", "fixed")


def volume_structures(dataset: SliceDataset, volume: str, count: int) -> list[int]:
    """`count` rows of held-out structures on `volume`, evenly spread over their extent (number of slices holding
    them), so that small and large structures are both in."""
    rows = sorted((len(row["slices"]), row["task"], index) for index, row in enumerate(dataset.rows)
                  if row["volume"] == volume and row["split"] == "test" and row["held_out"] and row["kind"] != "multiclass"
                  and len(support_rows(dataset, index)) >= VOLUME_K)
    if not rows:
        raise ValueError(f"no held-out structure with {VOLUME_K} example volumes on {volume}")
    picks = np.unique(np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int))
    return [rows[i][2] for i in picks]


def support_rows(dataset: SliceDataset, row: int) -> list[int]:
    """The rows that lend examples to a test row, one per training volume."""
    seen, chosen = set(), []
    for other in context_rows(dataset, row, "test"):
        volume = dataset.rows[other]["volume"]
        if volume not in seen:
            seen.add(volume)
            chosen.append(other)
    return chosen


def example_slices(dataset: SliceDataset, rows: list[int], setting: str, query_slice: int,
                   query_slices: int) -> list[tuple[int, int]]:
    """(row, slice) of each example for one query slice."""
    if setting == "position_matched":
        return [(r, prompt_slice(query_slice, query_slices, dataset.volumes[dataset.rows[r]["volume"]]["n_slices"]))
                for r in rows]
    if setting == "fixed":
        return [(r, dataset.rows[r]["slices"][int(np.argmax(dataset.rows[r]["areas"]))]) for r in rows]
    raise ValueError(f"unknown example setting {setting!r}; expected one of {SETTINGS}")


def volume_episodes(dataset: SliceDataset, row: int, setting: str, k: int = VOLUME_K) -> list[Episode]:
    """One episode per slice of the row's volume, in slice order."""
    task = dataset.rows[row]
    volume = task["volume"]
    slices = dataset.volumes[volume]["n_slices"]
    rows = support_rows(dataset, row)[:k]
    instruction = INSTRUCTION_TEMPLATES[0].format(name=task["name"], modality=task["modality"])
    episodes = []
    for index in range(slices):
        chosen = example_slices(dataset, rows, setting, index, slices)
        images = np.stack([dataset.image(dataset.rows[r]["volume"], s)[None] for r, s in chosen])
        masks = np.stack([dataset.mask(r, s)[None] for r, s in chosen])
        episodes.append(Episode(instruction, task["name"], images, masks, dataset.image(volume, index)[None],
                                dataset.mask(row, index)[None],
                                {"task": task["task"], "volume": volume, "slice": index, "k": k,
                                 "examples": [{"volume": dataset.rows[r]["volume"], "slice": s} for r, s in chosen]}))
    return episodes


def volume_scores(prediction: np.ndarray, truth: np.ndarray) -> dict:
    """3-D Dice, and the false-positive voxels on the slices without the structure, of [S, R, R] masks."""
    absent = ~truth.reshape(len(truth), -1).any(axis=1)
    return {"dice_3d": round(dice(prediction, truth), 4), "absent_slices": int(absent.sum()),
            "false_positive_voxels_absent": int(prediction[absent].sum()),
            "slices_marked_absent": int(prediction[absent].reshape(int(absent.sum()), -1).any(axis=1).sum()),
            "predicted_voxels": int(prediction.sum()), "true_voxels": int(truth.sum())}


def predict_volume(model, episodes: list[Episode], methods: dict, args, generator: torch.Generator) -> dict:
    """method -> [S, R, R] binary prediction of every slice."""
    predictions: dict[str, list] = {name: [] for name in ("segicl", *methods)}
    for first in range(0, len(episodes), args.batch_size):
        chunk = episodes[first:first + args.batch_size]
        probabilities, _ = segment_episodes(model, chunk, args.steps, args.samples, generator)
        predictions["segicl"] += list((probabilities > 0.5).astype(np.float32))
        for name, method in methods.items():
            predictions[name] += list(method(chunk))
    volumes = {name: np.stack(values) for name, values in predictions.items()}
    ordered = {}
    for name, volume in volumes.items():
        ordered[name] = volume
        if name in LARGEST_COMPONENT_OF:
            ordered[f"{name}_largest_component"] = keep_largest_component(volume)
    return ordered


def summarize(structures: dict) -> dict:
    """setting -> method -> mean 3-D Dice over structures and total false-positive voxels on absent slices."""
    summary: dict = {}
    for setting in SETTINGS:
        methods = next(iter(structures.values()))[setting]
        summary[setting] = {
            method: {"mean_dice_3d": round(float(np.mean([s[setting][method]["dice_3d"] for s in structures.values()])), 4),
                     "false_positive_voxels_absent": sum(s[setting][method]["false_positive_voxels_absent"]
                                                         for s in structures.values()),
                     "slices_marked_absent": sum(s[setting][method]["slices_marked_absent"] for s in structures.values())}
            for method in methods}
    summary["absent_slices"] = sum(next(iter(s.values()))["segicl"]["absent_slices"] for s in structures.values())
    return summary


def volume_lines(result: dict) -> list[str]:
    """The whole-volume table as markdown lines."""
    from segicl_benchmarks.quality import METHODS

    lines = ["### Whole volumes (`segicl bench volume`)", "", result["setting"], "",
             "| examples | method | mean 3-D Dice | false-positive voxels on absent slices | absent slices marked |",
             "|---|---|---|---|---|"]
    summary = result["summary"]
    for setting in SETTINGS:
        for method, value in summary[setting].items():
            lines.append(f"| {setting.replace('_', '-')} | {METHODS.get(method, method)} | {value['mean_dice_3d']:.3f} | "
                         f"{value['false_positive_voxels_absent']} | {value['slices_marked_absent']} of "
                         f"{summary['absent_slices']} |")
    lines += ["", "Per structure (3-D Dice, position-matched examples): " + "; ".join(
        f"{task.split('/')[-1]} " + ", ".join(f"{METHODS.get(m, m)} {v['dice_3d']:.3f}"
                                              for m, v in scores["position_matched"].items())
        for task, scores in result["structures"].items()) + ".", ""]
    return lines


def run_volume(args, dataset: SliceDataset, methods: dict, log=print) -> dict:
    """The benchmark; writes volume.json and volume.md into args.out_dir."""
    from segicl.model import SegICLModel

    start = time.perf_counter()
    model = SegICLModel.from_pretrained(args.model).eval()
    methods = {**methods, "union_examples": lambda episodes: [predict_union(e) for e in episodes]}
    rows = volume_structures(dataset, args.volume, args.structures)
    structures: dict = {}
    for row in tqdm(rows, desc="structures"):
        task = dataset.rows[row]["task"]
        structures[task] = {}
        for setting in SETTINGS:
            episodes = volume_episodes(dataset, row, setting)
            truth = np.stack([e.query_mask[0] for e in episodes])
            predictions = predict_volume(model, episodes, methods, args, torch.Generator().manual_seed(args.seed))
            structures[task][setting] = {name: volume_scores(p, truth) for name, p in predictions.items()}
        log(f"  {task}: " + ", ".join(f"{name} {s['dice_3d']:.3f}" for name, s in structures[task]["position_matched"].items()))
    result = {"structures": structures, "summary": summarize(structures)}
    result["setting"] = (
        f"Model `{shown_path(args.model)}`; every one of the {dataset.volumes[args.volume]['n_slices']} slices of the "
        f"held-out subject's volume `{args.volume}` at {dataset.resolution} px, {len(rows)} held-out structures "
        f"spread over their extent, k = {VOLUME_K} examples (one per training volume), no random affines; decoder "
        f"{args.steps} steps x {args.samples} samples; {result['summary']['absent_slices']} (structure, slice) pairs "
        f"without the structure. {torch.get_num_threads()} CPU threads, total {time.perf_counter() - start:.0f} s.")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "volume.json").write_text(json.dumps(result, indent=1))
    (args.out_dir / "volume.md").write_text("\n".join(volume_lines(result)) + "\n")
    return result
