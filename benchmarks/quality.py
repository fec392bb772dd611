"""`segicl bench quality`: the in-context learning curve on the test split, beside what a user would do instead.

For training structures and for held-out structures, and k in {0, 1, 3, 5}, every method is scored on the
SAME nested test episodes (held-out subject, independent random affines on examples and query):
- SegICL (the trained pipeline; k = 5 is beyond the K = 3 it was trained with: extrapolation),
- the CrossConv peer: a UniverSeg-style network trained on the same training episodes (`--crossconv`),
- registration + label fusion: each example registered to the query with SimpleITK (affine, mutual information,
  multi-resolution), its mask carried over, then majority vote, and STAPLE,
- the union of the examples' masks and the copy of the first example,
- MVG (its first example as the prompt pair, the paper's one in-context sample; scored at k = 1), when weights
  are given.
Every cell has its number of episodes and a bootstrap 95% interval of the mean Dice. Held-out structures also
get a specialist comparison: one MONAI UNet per structure for the `specialists` most frequent held-out structures,
each trained on that structure's support slices until its validation loss stops falling, scored with every
method on `specialist_episodes` k = 3 episodes of those structures.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from segicl_data.episodes import Episode, EpisodeConfig, EpisodeSampler, collate_episodes
from segicl_data.importer import slug
from segicl_data.metrics import bootstrap_interval
from segicl_data.model_folders import MODEL_CONFIGS, shown_path
from segicl.baselines import RegistrationFusion
from segicl.evaluation import mean_score, score_episodes
from segicl_benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist, training_slices

QUALITY_K = (0, 1, 3, 5)
GROUPS = {"train_structures": "train", "held_out_structures": "held_out"}
# Where a structure's specialist gets its training slices: the support rows of a held-out structure (the training
# volumes' slices that its examples come from).
SPECIALIST_SPLITS = {"train": ("train",), "held_out": ("support",)}
SPECIALIST_K = 3
# The tables' rows, in order: record key -> label. SegICL answers every k; the others need k >= 1.
METHODS = {
    "segicl": "SegICL",
    "segicl_largest_component": "SegICL + largest component",
    "example_prior": "SegICL's example prior alone (diagnostic)",
    "better_of_segicl_and_prior": "the better of SegICL and its prior, per episode (diagnostic)",
    "crossconv": "CrossConv peer (UniverSeg-style)",
    "registration_vote": "registration + majority vote",
    "registration_vote_largest_component": "registration + majority vote + largest component",
    "registration_staple": "registration + STAPLE",
    "union_examples": "union of the examples",
    "copy_example": "copy the first example",
    "mvg": "MVG (first example as prompt)",
    "specialist_unet": "specialist UNet",
}
# The peers that SegICL's goal is measured against (what a user could do with the same examples).
PEERS = ("crossconv", "registration_vote", "registration_staple", "union_examples")


def with_examples_only(predict_batch):
    """episodes -> one prediction per episode, None for k = 0; `predict_batch` answers the episodes with examples."""

    def predict(episodes: list[Episode]) -> list[np.ndarray | None]:
        with_examples = [e for e in episodes if e.k]
        answers = iter(predict_batch(with_examples) if with_examples else [])
        return [next(answers) if e.k else None for e in episodes]

    return predict


def mvg_method(mvg_dir: Path):
    """Episodes -> MVG binary predictions, the first example as the prompt pair (None for k = 0)."""
    from mvg_head.pipeline import MVGPipeline

    pipeline = MVGPipeline.from_pretrained(mvg_dir)

    def predict_batch(episodes: list[Episode]) -> np.ndarray:
        result = pipeline(np.stack([e.query_image[0] for e in episodes]),
                          np.stack([e.example_images[0, 0] for e in episodes]),
                          np.stack([e.example_masks[0, 0] for e in episodes]).astype(np.int64),
                          task="segmentation", normalization="none")
        return (result.output == 1).astype(np.float32)

    return with_examples_only(predict_batch)


def example_prior_method(model):
    """Episodes -> SegICL's own example prior, binarised (its probability > 0.5; None for k = 0): the map the LLM's
    gate mixes in and the decoder renders from tokens, scored alone to show what the rest of SegICL adds to it."""

    def predict_batch(episodes: list[Episode]) -> np.ndarray:
        batch = collate_episodes(episodes)
        return model.example_prior_mask(batch["example_images"], batch["example_masks"], batch["example_valid"],
                                        batch["query_image"])[:, 0].numpy()

    return with_examples_only(predict_batch)


def crossconv_method(folder: Path):
    """Episodes -> the CrossConv network's binary predictions (None for k = 0)."""
    from segicl.incontext import CrossConvNet

    network = CrossConvNet.from_pretrained(folder)

    def predict_batch(episodes: list[Episode]) -> np.ndarray:
        batch = collate_episodes(episodes)
        return network.predict(batch["query_image"], batch["example_images"], batch["example_masks"],
                               batch["example_valid"])[:, 0].numpy()

    return with_examples_only(predict_batch)


def specialist_method(dataset, tasks: list[str], structures: str, config: SpecialistConfig, log) -> tuple:
    """Train one UNet per task; return (episodes -> predictions or None, training info per task)."""
    networks, info = {}, {}
    for task in tasks:
        images, masks = training_slices(dataset, task, SPECIALIST_SPLITS[structures])
        networks[task], info[task] = train_specialist(images, masks, config)
        log(f"  specialist {task}: {info[task]['steps']} steps (best validation loss at step "
            f"{info[task]['best_step']}, stopped by {info[task]['stopped_by']}) on {info[task]['slices']} slices "
            f"in {info[task]['seconds']:.0f} s")

    def predict(episodes: list[Episode]) -> list[np.ndarray | None]:
        return [predict_specialist(networks[e.meta["task"]], e.query_image[None])[0]
                if e.meta["task"] in networks else None for e in episodes]

    return predict, info


def frequent_tasks(sampler: EpisodeSampler, episodes: int, count: int) -> list[str]:
    """The `count` tasks that occur most often among the first `episodes` episodes (ties: first seen)."""
    tally = Counter(sampler.task_of(i) for i in range(episodes))
    return [task for task, _ in tally.most_common(count)]


def episodes_of_tasks(sampler: EpisodeSampler, tasks: list[str], per_task: int, limit: int = 20000) -> list[Episode]:
    """The first `per_task` episodes of each task, in index order (deterministic for the sampler's seed)."""
    wanted = {task: per_task for task in tasks}
    chosen = []
    for index in range(limit):
        task = sampler.task_of(index)
        if wanted.get(task, 0) > 0:
            wanted[task] -= 1
            chosen.append(sampler[index])
        if not any(wanted.values()):
            break
    return chosen


def cell(records: list[dict], method: str, seed: int = 0) -> dict | None:
    """Mean Dice / IoU / HD95 of one method over the records that have it, the bootstrap 95% interval of the
    mean Dice, and the number of episodes; None when no record has the method."""
    rows = [r[method] for r in records if method in r]
    if not rows:
        return None
    interval = bootstrap_interval([row["dice"] for row in rows], seed=seed)
    return {**{metric: round(float(np.mean([row[metric] for row in rows])), 4) for metric in ("dice", "iou", "hd95")},
            "ci95": None if interval is None else [round(interval[0], 4), round(interval[1], 4)],
            "episodes": len(rows)}


def per_structure(records: list[dict]) -> dict:
    """structure -> method -> {dice, iou, hd95, episodes}, over all k."""
    grouped: dict = defaultdict(lambda: defaultdict(list))
    for record in records:
        for method, scores in record.items():
            if isinstance(scores, dict):
                grouped[record["structure"]][f"{method}_k{record['k']}"].append(scores)
    return {structure: {method: {**{m: round(float(np.mean([s[m] for s in rows])), 4) for m in ("dice", "iou", "hd95")},
                                 "episodes": len(rows)} for method, rows in sorted(methods.items())}
            for structure, methods in sorted(grouped.items())}


def summarize(records: list[dict], seed: int = 0) -> dict:
    """method -> k -> cell, for every method a record holds."""
    cells: dict = {}
    for method in METHODS:
        by_k = {str(k): cell([r for r in records if r["k"] == k], method, seed) for k in QUALITY_K}
        by_k = {k: value for k, value in by_k.items() if value is not None}
        if by_k:
            cells[method] = by_k
    return cells


def with_better_of_segicl_and_prior(records: list[dict]) -> list[dict]:
    """The records with "better_of_segicl_and_prior": SegICL's scores or its example prior's, whichever has the higher
    Dice on that episode. No rule that picks, per query, between the LLM's answer and the prior's (as the examples'
    check does) can score above it, so its distance to SegICL is what a better pick could still buy."""
    for record in records:
        if "segicl" in record and "example_prior" in record:
            better = max(("segicl", "example_prior"), key=lambda method: record[method]["dice"])
            record["better_of_segicl_and_prior"] = dict(record[better])
    return records


def margin_over_best_peer(records: list[dict], cells: dict, seed: int = 0) -> dict:
    """k -> {peer, margin, ci95, episodes}: SegICL's Dice minus that of the best peer at k (by mean, `best_peer`) on
    the episodes both answered, with the paired bootstrap 95% interval of the mean difference. Paired, the interval
    is the one that says whether a margin is there: both methods' own intervals carry the spread between episodes,
    which the difference cancels."""
    margins = {}
    for k in sorted(cells.get("segicl", {}), key=int):
        peer = best_peer(cells, k)
        if peer is None:
            continue
        differences = [r["segicl"]["dice"] - r[peer[0]]["dice"] for r in records
                       if r["k"] == int(k) and "segicl" in r and peer[0] in r]
        interval = bootstrap_interval(differences, seed=seed)
        margins[k] = {"peer": peer[0], "margin": round(float(np.mean(differences)), 4),
                      "ci95": None if interval is None else [round(interval[0], 4), round(interval[1], 4)],
                      "episodes": len(differences)}
    return margins


def run_group(model, dataset, structures: str, args, methods: dict, log) -> dict:
    """All k for one group of structures (and the specialist comparison for held-out structures)."""
    base = EpisodeConfig(split="test", structures=structures, max_examples=max(QUALITY_K), min_area=args.min_area,
                         seed=args.seed)
    records: list[dict] = []
    for k in QUALITY_K:
        sampler = EpisodeSampler(dataset, replace(base, num_examples=k))
        chosen = {name: method for name, method in methods.items() if k and (name != "mvg" or k == 1)}
        rows, _ = score_episodes(model, sampler, args.episodes, args.steps, args.samples, seed=args.seed,
                                 other_methods=chosen, progress=True)
        records += rows
        scores = ", ".join(f"{name} {mean_score(rows, name):.3f}" for name in METHODS if mean_score(rows, name) is not None)
        log(f"  {structures:9s} k={k}: {scores}")
    cells = summarize(with_better_of_segicl_and_prior(records), args.seed)
    summary = {"cells": cells, "margin_over_best_peer": margin_over_best_peer(records, cells, args.seed),
               "per_structure": per_structure(records)}
    if structures == "held_out" and args.specialists:
        summary["specialist_comparison"] = specialist_comparison(model, dataset, base, args, methods, log)
    return summary


def specialist_comparison(model, dataset, base: EpisodeConfig, args, methods: dict, log) -> dict:
    """Every method and a specialist UNet per structure on the same k = 3 episodes of the most frequent structures."""
    sampler = EpisodeSampler(dataset, replace(base, num_examples=SPECIALIST_K))
    tasks = frequent_tasks(sampler, args.episodes, args.specialists)
    config = SpecialistConfig(seed=args.seed, budget_s=args.specialist_seconds)
    specialist, training = specialist_method(dataset, tasks, "held_out", config, log)
    episodes = episodes_of_tasks(sampler, tasks, math.ceil(args.specialist_episodes / len(tasks)))
    chosen = {name: method for name, method in methods.items() if name != "mvg"}
    records, _ = score_episodes(model, episodes, len(episodes), args.steps, args.samples, seed=args.seed,
                                other_methods={**chosen, "specialist_unet": specialist}, progress=True)
    cells = {method: value for method in METHODS if (value := cell(records, method, args.seed)) is not None}
    log(f"  specialist comparison, {len(episodes)} episodes of {len(tasks)} structures: "
        + ", ".join(f"{name} {value['dice']:.3f}" for name, value in cells.items()))
    return {"structures": tasks, "k": SPECIALIST_K, "episodes": len(episodes), "cells": cells, "training": training}


def format_cell(value: dict | None) -> str:
    if value is None:
        return "-"
    interval = f" ({value['ci95'][0]:.2f}-{value['ci95'][1]:.2f})" if value.get("ci95") else ""
    return f"{value['dice']:.3f}{interval}"


def specialist_budget(training: dict) -> str:
    """"; the specialists trained 740-1210 steps (best at 600-1100) ..." as measured."""
    if not training:
        return ""
    steps = [info["steps"] for info in training.values()]
    best = [info.get("best_step", info["steps"]) for info in training.values()]
    stopped = Counter(info.get("stopped_by", "budget") for info in training.values())
    seconds = max(info["seconds"] for info in training.values())
    return (f"; the specialists trained {min(steps)}-{max(steps)} steps each (best validation loss at steps "
            f"{min(best)}-{max(best)}; {stopped['validation']} of {len(training)} stopped by their validation loss), "
            f"at most {seconds:.0f} s each")


def best_peer(cells: dict, k: str) -> tuple[str, float] | None:
    """The peer with the highest mean Dice at k, and that Dice."""
    scored = [(name, cells[name][k]["dice"]) for name in PEERS if k in cells.get(name, {})]
    return max(scored, key=lambda item: item[1]) if scored else None


def result_name(axis: str, dataset_name: str | None = None) -> str:
    """The files' stem: quality for the axial slices the model trains on, quality_<axis> for another axis (an
    out-of-distribution test: the model never sees those slices), quality_<dataset> for an imported dataset."""
    if dataset_name:
        return f"quality_{slug(dataset_name)}" + ("" if axis == "axial" else f"_{axis}")
    return "quality" if axis == "axial" else f"quality_{axis}"


def dataset_groups(dataset) -> dict[str, str]:
    """The structure groups a dataset can be scored on: an imported one holds no structure out (its own labels are
    all trained on), so only its structures on its test cases."""
    if any(row["held_out"] for row in dataset.rows):
        return GROUPS
    return {"train_structures": "train"}


def quality_lines(quality: dict, plot: str | None = None) -> list[str]:
    """The quality tables as markdown lines (quality.md and the docs' results page)."""
    axis, dataset_name = quality.get("axis", "axial"), quality.get("dataset")
    plot = plot or f"docs/results/{result_name(axis, dataset_name)}.png"
    if dataset_name:
        title = f"### Quality on the imported dataset {dataset_name} (`segicl bench quality --dataset`)"
    elif axis == "axial":
        title = "### Quality: the in-context learning curve (`segicl bench quality`)"
    else:
        title = f"### Out of distribution: {axis} slices, never trained on (`segicl bench quality --axis {axis}`)"
    lines = [title, "", quality["setting"], ""]
    for group in (g for g in GROUPS if g in quality):
        cells = quality[group]["cells"]
        lines += [f"| {group.replace('_', ' ')} | " + " | ".join(f"k={k}" for k in QUALITY_K) + " |",
                  "|---|" + "---|" * len(QUALITY_K)]
        for method, label in METHODS.items():
            if method in cells:
                lines.append(f"| {label} | " + " | ".join(format_cell(cells[method].get(str(k))) for k in QUALITY_K)
                             + " |")
        lines.append("")
    lines += ["Mean Dice (bootstrap 95% interval of the mean) over the episodes stated in the setting; - : the "
              "method needs examples (or, for MVG, is scored with its one prompt at k = 1).", ""]
    group = "held_out_structures" if "held_out_structures" in quality else "train_structures"
    what = "Held-out structures" if group == "held_out_structures" else "The dataset's structures on its test cases"
    held = quality[group]["cells"]
    segicl = {k: held["segicl"][k]["dice"] for k in ("0", "1", "3", "5")}
    peer = best_peer(held, "3")
    ordered = segicl["0"] < segicl["1"] < segicl["3"] <= segicl["5"]
    lines.append(f"- {what}, k = 0 < 1 < 3 <= 5: **{'yes' if ordered else 'no'}** "
                 f"({' / '.join(f'{v:.3f}' for v in segicl.values())}).")
    if peer:
        paired = quality[group].get("margin_over_best_peer", {}).get("3", {}).get("ci95")
        interval = f", paired 95% interval {paired[0]:+.3f} to {paired[1]:+.3f}" if paired else ""
        lines.append(f"- {what}, k = 3: SegICL {segicl['3']:.3f} against the best peer, "
                     f"{METHODS[peer[0]]}, {peer[1]:.3f} (SegICL {segicl['3'] - peer[1]:+.3f}{interval}).")
    comparison = quality[group].get("specialist_comparison")
    if comparison:
        cells = comparison["cells"]
        gap = cells["specialist_unet"]["dice"] - cells["segicl"]["dice"]
        lines.append(f"- Specialist comparison ({comparison['episodes']} held-out episodes, k = {comparison['k']}, of "
                     f"{len(comparison['structures'])} structures: {', '.join(comparison['structures'])}): "
                     + ", ".join(f"{METHODS[name]} {format_cell(value)}" for name, value in cells.items())
                     + f"; gap specialist - SegICL **{gap:+.3f}**" + specialist_budget(comparison["training"]) + ".")
    lines += ["", f"![quality]({plot})", ""]
    return lines


def plot_curve(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [group for group in GROUPS if group in result]
    figure, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for axis, group in zip(axes, groups):
        for method, values in result[group]["cells"].items():
            ks = [k for k in QUALITY_K if str(k) in values]
            means = [values[str(k)]["dice"] for k in ks]
            low = [m - (values[str(k)]["ci95"] or [m, m])[0] for k, m in zip(ks, means)]
            high = [(values[str(k)]["ci95"] or [m, m])[1] - m for k, m in zip(ks, means)]
            style = "o-" if method == "segicl" else ("s" if len(ks) == 1 else ".--")
            axis.errorbar(ks, means, yerr=[low, high], fmt=style, capsize=2, label=METHODS[method],
                          linewidth=2 if method == "segicl" else 1)
        axis.set_title(group.replace("_", " "))
        axis.set_xlabel("examples k")
        axis.set_xticks(QUALITY_K)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice (95% interval)")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def peer_methods(args, log, include: tuple[str, ...] = ("registration_vote", "registration_staple", "crossconv",
                                                        "mvg")) -> dict:
    """name -> episodes-to-predictions function, for every peer in `include` whose weights or tools are at hand
    (`args.crossconv` / `args.mvg` name the weights; a missing attribute leaves that peer out)."""
    methods = {name: RegistrationFusion(fusion=name.split("_")[1]) for name in ("registration_vote",
                                                                               "registration_staple") if name in include}
    for name, engine, build in (("crossconv", "CrossConv", crossconv_method), ("mvg", "MVG", mvg_method)):
        folder = getattr(args, name, None) if name in include else None
        if folder and (Path(folder) / MODEL_CONFIGS[engine]).exists():
            methods[name] = build(folder)
        elif folder:
            log(f"  no {engine} weights at {folder}: its rows are left out")
    return methods


def run_quality(args, dataset, log=print) -> dict:
    """The whole benchmark; writes quality.json, quality.md and quality.png (quality_<axis>.* for a dataset sliced
    along another axis than the axial one) into args.out_dir."""
    from segicl.model import SegICLModel

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = SegICLModel.from_pretrained(args.model).eval()
    methods = peer_methods(args, log)
    if model.config.example_prior:
        methods["example_prior"] = example_prior_method(model)
    result: dict = {group: run_group(model, dataset, structures, args, methods, log)
                    for group, structures in dataset_groups(dataset).items()}
    crossconv = f", CrossConv peer `{shown_path(args.crossconv)}`" if "crossconv" in methods else ""
    dataset_name = dataset.imported["name"] if dataset.imported else None
    queries = f"test cases of {dataset_name} (examples from its training cases)" if dataset_name else "held-out subject"
    result["setting"] = (
        f"Model `{shown_path(args.model)}`{crossconv}; {args.episodes} test episodes per (structures, k) on the "
        f"{queries}'s {dataset.config.axis} slices, nested in k, structures >= {args.min_area} px at "
        f"{dataset.resolution} px, independent "
        f"random affines, decoder {args.steps} steps x {args.samples} samples; registration: SimpleITK affine, "
        f"Mattes mutual information, 3 resolutions. {torch.get_num_threads()} CPU threads, total "
        f"{time.perf_counter() - start:.0f} s.")
    result["axis"] = dataset.config.axis
    if dataset_name:
        result["dataset"] = dataset_name
    name = result_name(dataset.config.axis, dataset_name)
    result["name"] = name
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
    (args.out_dir / f"{name}.md").write_text("\n".join(quality_lines(result, plot=f"{name}.png")) + "\n")
    plot_curve(args.out_dir / f"{name}.png", result)
    return result
