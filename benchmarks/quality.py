"""`segicl bench quality`: the in-context learning curve on the test split, beside the baselines.

For training structures and for held-out structures, and k in {0, 1, 3, 5}, every method is scored on the
SAME test episodes (held-out subject, independent random affines on examples and query):
- SegICL (the trained pipeline; k = 5 is beyond the K = 3 it was trained with: extrapolation),
- the copy-example baseline (first example's mask) and, at k = 3, the union of the examples' masks (label
  fusion: the mask behind SegICL's example prior),
- MVG (its first example as the prompt pair, the paper's one in-context sample), when weights are given,
- a specialist MONAI UNet per structure (`benchmarks.specialist`) for the `specialists` most frequent
  structures of the test episodes, each trained with the same CPU time budget; it is compared with SegICL
  on the same episodes of those structures.
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from data.episodes import Episode, EpisodeConfig, EpisodeSampler
from mvg_head.model import CONFIG_NAME as MVG_CONFIG_NAME
from data.model_folders import shown_path
from segicl.evaluation import mean_score, score_episodes
from benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist, training_slices

QUALITY_K = (0, 1, 3, 5)
GROUPS = {"train_structures": "train", "held_out_structures": "held_out"}
# Where a structure's specialist gets its training slices: the training volumes' slices of that structure
# (for held-out structures these are the "support" rows, the slices examples come from).
SPECIALIST_SPLITS = {"train": ("train",), "held_out": ("support",)}


def mvg_method(mvg_dir: Path):
    """Episodes -> MVG binary predictions, the first example as the prompt pair (None for k = 0)."""
    from mvg_head.pipeline import MVGPipeline

    pipeline = MVGPipeline.from_pretrained(mvg_dir)

    def predict(episodes: list[Episode]) -> list[np.ndarray | None]:
        with_examples = [e for e in episodes if e.k]
        if not with_examples:
            return [None] * len(episodes)
        result = pipeline(np.stack([e.query_image[0] for e in with_examples]),
                          np.stack([e.example_images[0, 0] for e in with_examples]),
                          np.stack([e.example_masks[0, 0] for e in with_examples]).astype(np.int64),
                          task="segmentation", normalization="none")
        answers = iter((result.output == 1).astype(np.float32))
        return [next(answers) if e.k else None for e in episodes]

    return predict


def specialist_method(dataset, tasks: list[str], structures: str, config: SpecialistConfig, log) -> tuple:
    """Train one UNet per task; return (episodes -> predictions or None, training info per task)."""
    networks, info = {}, {}
    for task in tasks:
        images, masks = training_slices(dataset, task, SPECIALIST_SPLITS[structures])
        networks[task], info[task] = train_specialist(images, masks, config)
        log(f"  specialist {task}: {info[task]['steps']} steps on {info[task]['slices']} slices in "
            f"{info[task]['seconds']:.0f} s (loss {info[task]['first_loss']:.3f} -> {info[task]['last_loss']:.3f})")

    def predict(episodes: list[Episode]) -> list[np.ndarray | None]:
        return [predict_specialist(networks[e.meta["task"]], e.query_image[None])[0]
                if e.meta["task"] in networks else None for e in episodes]

    return predict, info


def frequent_tasks(sampler: EpisodeSampler, episodes: int, count: int) -> list[str]:
    """The `count` tasks that occur most often among the first `episodes` episodes."""
    tally = Counter(sampler[i].meta["task"] for i in range(episodes))
    return [task for task, _ in tally.most_common(count)]


def per_structure(records: list[dict]) -> dict:
    """structure -> method -> {dice, iou, hd95, episodes}, over all k."""
    grouped: dict = defaultdict(lambda: defaultdict(list))
    for record in records:
        for method, scores in record.items():
            if isinstance(scores, dict):
                grouped[record["structure"]][f"{method}_k{record['k']}" if method == "segicl" else method].append(scores)
    return {structure: {method: {**{m: round(float(np.mean([s[m] for s in rows])), 4) for m in ("dice", "iou", "hd95")},
                                 "episodes": len(rows)} for method, rows in methods.items()}
            for structure, methods in sorted(grouped.items())}


def run_group(model, dataset, structures: str, args, mvg, log) -> tuple[dict, list[dict]]:
    """All k for one group of structures; returns (summary, records)."""
    base = EpisodeConfig(split="test", structures=structures, max_examples=max(QUALITY_K), min_area=args.min_area,
                         seed=args.seed)
    specialist_tasks = frequent_tasks(EpisodeSampler(dataset, replace(base, num_examples=1)), args.episodes,
                                      args.specialists) if args.specialists else []
    budget = SpecialistConfig(budget_s=args.specialist_seconds, seed=args.seed)
    specialist, specialist_info = specialist_method(dataset, specialist_tasks, structures, budget, log)
    records: list[dict] = []
    for k in QUALITY_K:
        sampler = EpisodeSampler(dataset, replace(base, num_examples=k))
        methods = {"specialist_unet": specialist, **({"mvg": mvg} if mvg else {})}
        cell, _ = score_episodes(model, sampler, args.episodes, args.steps, args.samples, seed=args.seed,
                                 other_methods=methods)
        records += cell
        log(f"  {structures:9s} k={k}: SegICL Dice {mean_score(cell, 'segicl'):.3f}"
            + (f", copy {mean_score(cell, 'copy_example'):.3f}" if k else ""))
    return summarize(records, specialist_tasks, specialist_info), records


def specialist_budget(training: dict) -> str:
    """"; the specialists trained 740-754 steps ..." (a time budget buys fewer steps on a busier machine)."""
    if not training:
        return ""
    steps = [info["steps"] for info in training.values()]
    seconds = max(info["seconds"] for info in training.values())
    return f"; the specialists trained {min(steps)}-{max(steps)} steps each in their {seconds:.0f} s"


def summarize(records: list[dict], specialist_tasks: list[str], specialist_info: dict) -> dict:
    by_k = {k: [r for r in records if r["k"] == k] for k in QUALITY_K}
    summary = {"segicl": {str(k): round(mean_score(rows, "segicl"), 4) for k, rows in by_k.items()},
               "copy_baseline": round(mean_score(by_k[1], "copy_example"), 4),
               "union_baseline": round(mean_score(by_k[3], "union_examples"), 4)}
    for metric in ("iou", "hd95"):
        summary[f"segicl_{metric}"] = {str(k): round(mean_score(rows, "segicl", metric), 4) for k, rows in by_k.items()}
    if mean_score(by_k[1], "mvg") is not None:
        summary["mvg"] = round(mean_score(by_k[1], "mvg"), 4)
    if specialist_tasks:
        same = [r for r in by_k[1] if "specialist_unet" in r]
        summary["specialist_unet"] = round(mean_score(same, "specialist_unet"), 4)
        summary["specialist_comparison"] = {
            "structures": specialist_tasks, "episodes": len(same),
            "specialist_unet": summary["specialist_unet"],
            "segicl_same_episodes": {str(k): round(mean_score([r for r in by_k[k] if "specialist_unet" in r],
                                                              "segicl"), 4) for k in QUALITY_K},
            "training": specialist_info}
    summary["per_structure"] = per_structure(records)
    return summary


def quality_lines(quality: dict, plot: str = "docs/results/quality.png") -> list[str]:
    """The quality table as markdown lines (quality.md and the README's Results section)."""
    lines = ["### Quality: the in-context learning curve (`segicl bench quality`)", "", quality["setting"], "",
             "| structures | SegICL k=0 | k=1 | k=3 | k=5 | copy example | union of 3 examples | MVG (1 prompt) "
             "| specialist UNet |",
             "|---|---|---|---|---|---|---|---|---|"]
    for group in ("train_structures", "held_out_structures"):
        row = quality[group]
        value = lambda key: f"{row[key]:.3f}" if key in row else "n/a"  # noqa: E731
        lines.append(f"| {group.replace('_', ' ')} | " + " | ".join(f"{row['segicl'][k]:.3f}" for k in ("0", "1", "3", "5"))
                     + f" | {value('copy_baseline')} | {value('union_baseline')} | {value('mvg')} "
                       f"| {value('specialist_unet')} |")
    lines += ["", "Mean Dice. The specialist column is over the episodes of the structures that got a specialist; "
              "on those same episodes:", ""]
    for group in ("train_structures", "held_out_structures"):
        comparison = quality[group].get("specialist_comparison")
        if comparison:
            segicl = comparison["segicl_same_episodes"]
            gap = comparison["specialist_unet"] - segicl["3"]
            lines.append(f"- {group.replace('_', ' ')}: specialist UNet {comparison['specialist_unet']:.3f} vs SegICL "
                         f"k=3 {segicl['3']:.3f} (gap {gap:+.3f}) on {comparison['episodes']} episodes of "
                         f"{', '.join(comparison['structures'])}" + specialist_budget(comparison.get("training", {})))
    held = quality["held_out_structures"]["segicl"]
    ordered = held["3"] > held["1"] > held["0"]
    lines += ["", f"Held-out structures, k=3 > k=1 > k=0: **{'yes' if ordered else 'no'}** "
              f"({held['0']:.3f} / {held['1']:.3f} / {held['3']:.3f}).", "", f"![quality]({plot})", ""]
    return lines


def plot_curve(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axis, group in zip(axes, GROUPS):
        row = result[group]
        axis.plot(QUALITY_K, [row["segicl"][str(k)] for k in QUALITY_K], "o-", label="SegICL")
        for key, label, style in (("copy_baseline", "copy example", "--"), ("mvg", "MVG (1 prompt)", "-."),
                                  ("specialist_unet", "specialist UNet", ":")):
            if key in row:
                axis.plot([1, max(QUALITY_K)], [row[key]] * 2, style, label=label)
        if "union_baseline" in row:
            axis.plot([3], [row["union_baseline"]], "s", label="union of 3 examples")
        axis.set_title(group.replace("_", " "))
        axis.set_xlabel("examples k")
        axis.set_xticks(QUALITY_K)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run_quality(args, dataset, log=print) -> dict:
    """The whole benchmark; writes quality.json, quality.md and quality.png into args.out_dir."""
    from segicl.model import SegICLModel

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = SegICLModel.from_pretrained(args.model).eval()
    mvg = mvg_method(args.mvg) if args.mvg and (Path(args.mvg) / MVG_CONFIG_NAME).exists() else None
    if args.mvg and mvg is None:
        log(f"  no MVG weights at {args.mvg}: MVG column left out")
    result: dict = {}
    for group, structures in GROUPS.items():
        result[group], _ = run_group(model, dataset, structures, args, mvg, log)
    result["setting"] = (
        f"Model `{shown_path(args.model)}`; {args.episodes} test episodes per (structures, k) on the held-out subject, "
        f"structures >= {args.min_area} px at {dataset.resolution} px, independent random affines, decoder "
        f"{args.steps} steps x {args.samples} samples; specialist UNets: {args.specialists} structures per group, "
        f"{args.specialist_seconds:.0f} s of training each on {torch.get_num_threads()} CPU threads. "
        f"Total {time.perf_counter() - start:.0f} s.")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "quality.json").write_text(json.dumps(result, indent=1))
    (args.out_dir / "quality.md").write_text("\n".join(quality_lines(result, plot="quality.png")) + "\n")
    plot_curve(args.out_dir / "quality.png", result)
    return result
