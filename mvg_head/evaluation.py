"""Test-split evaluation of an MVG model beside the trivial baselines; writes eval.json and report.md.

- segmentation: Dice and mIoU (MONAI, per episode the mean over the classes present) on the test volume (Colin27),
  training structures; baseline: copy the prompt's label. Held-out structures are reported separately.
- synthesis / denoising / inpainting: MAE, PSNR, SSIM (torchmetrics, data range 1); baselines: the input
  (synthesis: the T1 itself; denoising: the noisy input; inpainting: the mean-filled input). Inpainting
  predictions are pasted into the known region (outside it the input is kept, as for the baseline).
  `prompt_copy` is also given: the prompt's target as the answer.
Every episode applies independent random affines to prompt and query pairs (see mvg_head.episodes).
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mvg_head.colouring import decode
from mvg_head.episodes import SYNTHESIS_NOTE, EpisodeOptions, MVGEpisodeSampler, class_scores
from mvg_head.model import MVGModel
from mvg_head.pipeline import INFERENCE_MODES
from segicl_data.model_folders import shown_path
from segicl_data.metrics import image_metrics

IMAGE_TASKS = ("denoising", "synthesis", "inpainting")


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]} if rows else {}


def predict_batched(model: MVGModel, sentences: np.ndarray, mode: str, batch_size: int = 32) -> np.ndarray:
    outputs = [model.predict(torch.from_numpy(sentences[i:i + batch_size]), mode)
               for i in range(0, len(sentences), batch_size)]
    return torch.cat(outputs).numpy()


def evaluate_segmentation(model: MVGModel, sampler: MVGEpisodeSampler, episodes: int,
                          mode: str = "autoregressive") -> dict:
    items = [sampler.episode("segmentation", i) for i in range(episodes)]
    rgb = predict_batched(model, np.stack([e.sentence for e in items]), mode)
    model_scores, copy_scores = [], []
    for episode, prediction in zip(items, rgb):
        labels = decode(prediction, episode.class_ids, episode.colours)
        d, i = class_scores(labels, episode.query_labels, episode.class_ids)
        model_scores.append({"dice": d, "miou": i})
        d, i = class_scores(episode.prompt_labels, episode.query_labels, episode.class_ids)
        copy_scores.append({"dice": d, "miou": i})
    multiclass = sum(len(e.class_ids) > 1 for e in items)
    return {**_mean(model_scores), "baseline": _mean(copy_scores), "episodes": episodes,
            "multiclass_episodes": multiclass, "mode": mode}


def evaluate_image_task(model: MVGModel, sampler: MVGEpisodeSampler, task: str, episodes: int, mode: str) -> dict:
    items = [sampler.episode(task, i) for i in range(episodes)]
    rgb = predict_batched(model, np.stack([e.sentence for e in items]), mode)
    groups: dict[str, dict[str, list]] = {}
    for episode, prediction in zip(items, rgb):
        grey = prediction.mean(axis=0)
        if episode.region is not None:
            grey = np.where(episode.region, grey, episode.query_input)
        group = "ct" if "CT" in episode.meta.get("noise", "") else "mri"
        scores = groups.setdefault(group, {"model": [], "baseline": [], "prompt_copy": []})
        scores["model"].append(image_metrics(grey, episode.query_target, 1.0))
        scores["baseline"].append(image_metrics(episode.query_input, episode.query_target, 1.0))
        scores["prompt_copy"].append(image_metrics(episode.prompt_target, episode.query_target, 1.0))
    every = {key: sum((g[key] for g in groups.values()), []) for key in ("model", "baseline", "prompt_copy")}
    result = {**_mean(every["model"]), "baseline": _mean(every["baseline"]),
              "prompt_copy": _mean(every["prompt_copy"]), "episodes": episodes, "mode": mode}
    if task == "denoising":
        result["by_modality"] = {name: {**_mean(g["model"]), "baseline": _mean(g["baseline"]), "episodes": len(g["model"])}
                                 for name, g in sorted(groups.items())}
    return result


def evaluate(model: MVGModel, dataset, episodes: int = 200, image_episodes: int = 100, seed: int = 0,
             min_area: int = 64, held_out: bool = True, progress: bool = True,
             tasks: tuple[str, ...] = ("segmentation",) + IMAGE_TASKS, transforms: bool = True) -> dict:
    """The eval.json dictionary (see the module docstring), for the tasks named. transforms=False: prompt and query
    pairs as they are (the templates and Colin27 are in one space: what registered data looks like)."""
    start = time.perf_counter()
    options = EpisodeOptions(split="test", colouring=model.config.colouring, palette_levels=model.config.palette_levels,
                             min_area=min_area, seed=seed)
    if not transforms:
        options = replace(options, transform=None)
    steps = (["segmentation"] + (["segmentation_held_out"] if held_out else []) if "segmentation" in tasks else []) \
        + [t for t in IMAGE_TASKS if t in tasks]
    result: dict = {}
    for name in tqdm(steps, desc="MVG eval", disable=not progress):
        if name.startswith("segmentation"):
            structures = "held_out" if name.endswith("held_out") else "train"
            sampler = MVGEpisodeSampler(dataset, replace(options, structures=structures))
            result[name] = evaluate_segmentation(model, sampler, episodes, INFERENCE_MODES["segmentation"])
        else:
            sampler = MVGEpisodeSampler(dataset, options)
            result[name] = evaluate_image_task(model, sampler, name, image_episodes, INFERENCE_MODES[name])
            other = "masked" if INFERENCE_MODES[name] == "autoregressive" else "autoregressive"
            alternative = evaluate_image_task(model, sampler, name, image_episodes, other)
            result[name]["other_mode"] = {k: alternative[k] for k in ("mode", "psnr", "ssim", "mae")}
    if "synthesis" in result:
        result["synthesis"]["note"] = SYNTHESIS_NOTE
    result["setup"] = {"test_volume": "colin27 (MRI); CT_small, explicit_VR-UN (CT)", "seed": seed,
                       "min_area_px": min_area, "transforms": "independent random affines on prompt and query pairs" if transforms
                       else "none (prompt and query pairs as registered)",
                       "colouring": model.config.colouring, "wall_time_s": round(time.perf_counter() - start, 1)}
    return result


def training_budget(training: dict) -> str:
    """"trained N steps in M min ..." from a train_summary.json, the whole chain for a model fine-tuned from another."""
    steps = training.get("total_steps", training["steps"])
    minutes = training.get("total_train_wall_time_s", training["train_wall_time_s"]) / 60
    text = f"trained {steps} steps in {minutes:.1f} min with {training['threads']} thread(s), batch {training['batch_size']}"
    if "total_steps" in training:
        text += f" (the last {training['steps']} steps from `{training['init']['path']}`)"
    return text


def write_report(out_dir: Path, result: dict, model_dir: str, training: dict | None = None) -> Path:
    """report.md beside eval.json: one table, model beside baseline."""
    lines = ["# MVG evaluation (test split)", "",
             f"Model: `{model_dir}`" + (", " + training_budget(training) if training else "") + ".",
             f"Setup: {result['setup']['test_volume']}; {result['setup']['transforms']}; "
             f"segmentation structures >= {result['setup']['min_area_px']} px, colouring {result['setup']['colouring']}.",
             "", "| task | metric | model | trivial baseline |", "|---|---|---|---|"]
    baselines = {"segmentation": "copy prompt label", "segmentation_held_out": "copy prompt label",
                 "denoising": "noisy input", "synthesis": "input (T1)", "inpainting": "mean fill"}
    for task, metrics in (("segmentation", ("dice", "miou")), ("segmentation_held_out", ("dice", "miou")),
                          ("denoising", ("psnr", "ssim", "mae")), ("synthesis", ("psnr", "ssim", "mae")),
                          ("inpainting", ("psnr", "ssim", "mae"))):
        if task not in result:
            continue
        for metric in metrics:
            lines.append(f"| {task.replace('_', ' ')} | {metric} | {result[task][metric]:.4f} | "
                         f"{result[task]['baseline'][metric]:.4f} ({baselines[task]}) |")
    for task in IMAGE_TASKS:
        if task in result:
            other = result[task]["other_mode"]
            lines.append(f"| {task} ({other['mode']} inference) | psnr | {other['psnr']:.4f} | "
                         f"{result[task]['baseline']['psnr']:.4f} |")
    if "by_modality" in result.get("denoising", {}):
        for name, values in result["denoising"]["by_modality"].items():
            lines.append(f"| denoising ({name}) | psnr | {values['psnr']:.4f} | {values['baseline']['psnr']:.4f} |")
    lines += ["", f"Synthesis: {SYNTHESIS_NOTE}." if "synthesis" in result else "", f"Evaluation time (model and data already loaded): {result['setup']['wall_time_s']:.0f} s."]
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_evaluation(model_dir: Path, out_dir: Path, dataset, episodes: int, image_episodes: int, seed: int,
                   min_area: int, progress: bool = True, tasks: tuple[str, ...] = ("segmentation",) + IMAGE_TASKS,
                   transforms: bool = True) -> dict:
    model = MVGModel.from_pretrained(model_dir)
    result = evaluate(model, dataset, episodes, image_episodes, seed, min_area, progress=progress, tasks=tasks,
                      transforms=transforms)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=1))
    summary = Path(model_dir) / "train_summary.json"
    training = json.loads(summary.read_text()) if summary.exists() else None
    write_report(out_dir, result, shown_path(model_dir), training)
    return result
