"""Evaluation of a SegICL model on test episodes, beside the copy-example baseline on the SAME episodes."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from segicl_data.dataset import SliceDataset
from segicl_data.episodes import Episode, EpisodeConfig, EpisodeSampler, collate_episodes
from segicl_data.metrics import dice, hd95, iou
from segicl.baselines import predict_copy, predict_union
from segicl.pipeline import sample_masks


@torch.no_grad()
def episode_condition_tokens(model, episodes: list[Episode], use_cache: bool = False) -> torch.Tensor:
    """The decoder's condition [B, M, D] for a batch of episodes through `SegICLModel.condition_tokens`, the function the
    pipeline calls: with `use_cache` each episode's instruction and examples are encoded once as a context (as the
    pipeline does for a volume), otherwise the batch runs the whole sequence of every episode."""
    if not use_cache:
        batch = collate_episodes(episodes)
        text_ids, text_mask = model.tokenize(batch["instructions"])
        return model.condition_tokens(text_ids, text_mask, batch["example_images"], batch["example_masks"],
                                      batch["example_valid"], batch["query_image"])
    tokens = []
    for episode in episodes:
        batch = collate_episodes([episode])
        text_ids, text_mask = model.tokenize(batch["instructions"])
        images, masks = (torch.from_numpy(episode.example_images), torch.from_numpy(episode.example_masks))
        context = model.encode_context(text_ids, images, masks)
        tokens.append(model.condition_tokens(text_ids, text_mask, batch["example_images"], batch["example_masks"],
                                             batch["example_valid"], batch["query_image"], context))
    return torch.cat(tokens)


@torch.no_grad()
def segment_episodes(model, episodes: list[Episode], num_steps: int, num_samples: int,
                     generator: torch.Generator, use_cache: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mean probability, per-pixel std over samples), each [B, S, S], for a batch of episodes, by the pipeline's
    functions (`episode_condition_tokens`, then `sample_masks`)."""
    tokens = episode_condition_tokens(model, episodes, use_cache)
    samples = sample_masks(model.decoder, tokens, num_steps, num_samples, generator)[:, :, 0]
    return samples.mean(dim=1).numpy(), samples.std(dim=1, unbiased=False).numpy()


def overlap_scores(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, IoU and HD95 (in pixels of the model grid) of one binary prediction."""
    return {"dice": dice(prediction, truth), "iou": iou(prediction, truth), "hd95": hd95(prediction, truth)}


def score_episodes(model, sampler: EpisodeSampler, episodes: int, num_steps: int = 10, num_samples: int = 5,
                   batch_size: int = 16, seed: int = 0, keep: int = 0,
                   other_methods: dict[str, Callable[[list[Episode]], np.ndarray]] | None = None,
                   progress: bool = False, use_cache: bool = False) -> tuple[list[dict], list]:
    """Per-episode scores of SegICL (unless `model` is None), of the copy and union-of-examples baselines (k >= 1)
    and of `other_methods` (name -> a function mapping a list of episodes to one binary prediction [S, S] or None
    (no answer) per episode), all on the SAME episodes: the one scoring loop of every SegICL figure.

    Returns (records, kept): one record per episode {"task", "structure", "k", "<method>": {dice, iou, hd95}},
    and up to `keep` (episode, probability, uncertainty) triples (for overlays and uncertainty scores)."""
    generator = torch.Generator().manual_seed(seed)
    records, kept = [], []
    for first in tqdm(range(0, episodes, batch_size), desc="episodes", disable=None if progress else True):
        chunk = [sampler[i] for i in range(first, min(first + batch_size, episodes))]
        if model is not None:
            probabilities, spread = segment_episodes(model, chunk, num_steps, num_samples, generator, use_cache)
        others = {name: method(chunk) for name, method in (other_methods or {}).items()}
        for index, episode in enumerate(chunk):
            truth = episode.query_mask[0]
            record = {"task": episode.meta["task"], "structure": episode.structure, "k": episode.k}
            if model is not None:
                record["segicl"] = overlap_scores((probabilities[index] > 0.5).astype(np.float32), truth)
                if len(kept) < keep:
                    kept.append((episode, probabilities[index], spread[index]))
            if episode.k:
                record["copy_example"] = overlap_scores(predict_copy(episode), truth)
                record["union_examples"] = overlap_scores(predict_union(episode), truth)
            for name, predictions in others.items():
                if predictions[index] is not None:
                    record[name] = overlap_scores(predictions[index], truth)
            records.append(record)
    return records, kept


def evaluate_copy_baseline(dataset: SliceDataset, config: EpisodeConfig, episodes: int = 200,
                           progress: bool = False) -> dict:
    """Mean Dice of the copy baseline over `episodes` test episodes drawn with `config` (k forced to >= 1)."""
    config = replace(config, num_examples=max(config.num_examples or 1, 1), max_examples=max(config.max_examples, 1))
    records, _ = score_episodes(None, EpisodeSampler(dataset, config), episodes, progress=progress)
    scores = [record["copy_example"]["dice"] for record in records]
    return {"mean_dice": float(np.mean(scores)), "std_dice": float(np.std(scores)), "episodes": len(scores)}


def mean_score(records: list[dict], method: str, metric: str = "dice") -> float | None:
    """Mean of one metric of one method over the records that have it (None when none has)."""
    values = [r[method][metric] for r in records if method in r]
    return float(np.mean(values)) if values else None


def evaluate_episodes(model, dataset, config: EpisodeConfig, episodes: int, num_steps: int = 10,
                      num_samples: int = 5, batch_size: int = 16, seed: int = 0, keep: int = 0) -> dict:
    """Mean Dice of the model (and of the copy and union baselines when k >= 1) over `episodes` test episodes."""
    start = time.perf_counter()
    records, kept = score_episodes(model, EpisodeSampler(dataset, config), episodes, num_steps, num_samples,
                                   batch_size, seed, keep)
    result = {"dice": mean_score(records, "segicl"), "episodes": len(records),
              "seconds_per_episode": (time.perf_counter() - start) / max(len(records), 1)}
    if any("copy_example" in r for r in records):
        result["copy_baseline_dice"] = mean_score(records, "copy_example")
        result["union_baseline_dice"] = mean_score(records, "union_examples")
    if keep:
        result["examples"] = kept
    return result


@torch.no_grad()
def evaluate_reconstruction(model, dataset, masks: int = 128, min_area: int = 64, num_steps: int = 10,
                            num_samples: int = 1, seed: int = 1234) -> dict:
    """Stage-1 quality: Dice of held-out masks (test volumes, held-out structures; every structure of the test
    volumes where the dataset holds none out, as an imported one) decoded from their own condition tokens."""
    structures = "held_out" if any(row["held_out"] for row in dataset.rows) else "all"
    sampler = EpisodeSampler(dataset, EpisodeConfig(split="test", structures=structures, num_examples=0,
                                                    max_examples=0, min_area=min_area, seed=seed, transform=None))
    targets = torch.stack([torch.from_numpy(sampler[i].query_mask) for i in range(masks)])
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    start = time.perf_counter()
    probabilities = torch.cat([
        sample_masks(model.decoder, model.condition_encoder(chunk), num_steps, num_samples, generator).mean(dim=1)
        for chunk in targets.split(32)])
    seconds = time.perf_counter() - start
    scores = [dice((p[0] > 0.5).numpy(), m[0].numpy()) for p, m in zip(probabilities, targets)]
    return {"reconstruction_dice": float(np.mean(scores)), "masks": len(scores), "structures": structures,
            "min_area": min_area,
            "steps": num_steps, "samples": num_samples, "decode_s_per_mask": seconds / len(scores)}


def save_overlay(path: Path, episode: Episode, probability: np.ndarray, uncertainty: np.ndarray) -> None:
    """A PNG with the query image, the truth, the prediction and the uncertainty side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = episode.query_image[0]
    panels = [("image", image, None), ("truth", episode.query_mask[0], "Greens"),
              ("prediction", (probability > 0.5).astype(float), "Reds"), ("uncertainty", uncertainty, "magma")]
    figure, axes = plt.subplots(1, 4 + episode.k, figsize=(2.4 * (4 + episode.k), 2.6))
    for axis, (title, values, cmap) in zip(axes, panels):
        axis.imshow(image, cmap="gray")
        if cmap:
            shown = values if title == "uncertainty" else np.ma.masked_equal(values, 0)
            axis.imshow(shown, cmap=cmap, alpha=0.8 if title == "uncertainty" else 0.55,
                        vmin=0, vmax=max(float(values.max()), 1e-3) if title == "uncertainty" else 1)
        axis.set_title(title, fontsize=9)
    for index in range(episode.k):
        axis = axes[4 + index]
        axis.imshow(episode.example_images[index, 0], cmap="gray")
        axis.imshow(np.ma.masked_equal(episode.example_masks[index, 0], 0), cmap="Blues", alpha=0.55, vmin=0, vmax=1)
        axis.set_title(f"example {index + 1}", fontsize=9)
    for axis in axes:
        axis.axis("off")
    figure.suptitle(f"{episode.structure} (k = {episode.k})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
