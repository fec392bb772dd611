"""Evaluation of a SegICL model on test episodes, beside the copy-example baseline on the SAME episodes."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from data.episodes import Episode, EpisodeConfig, EpisodeSampler, collate_episodes
from segicl.baselines import predict_copy
from segicl.metrics import dice


@torch.no_grad()
def segment_episodes(model, episodes: list[Episode], num_steps: int, num_samples: int,
                     generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(mean probability, per-pixel std over samples), each [B, S, S], for a batch of episodes."""
    batch = collate_episodes(episodes)
    text_ids, text_mask = model.tokenize(batch["instructions"])
    tokens = model.predict_condition_tokens(text_ids, text_mask, batch["example_images"], batch["example_masks"],
                                            batch["example_valid"], batch["query_image"])
    samples = model.decoder.sample(tokens, num_steps, num_samples, generator)[:, :, 0]
    return samples.mean(dim=1).numpy(), samples.std(dim=1, unbiased=False).numpy()


def evaluate_episodes(model, dataset, config: EpisodeConfig, episodes: int, num_steps: int = 10,
                      num_samples: int = 5, batch_size: int = 16, seed: int = 0, keep: int = 0) -> dict:
    """Mean Dice of the model (and of the copy baseline when k >= 1) over `episodes` test episodes."""
    sampler = EpisodeSampler(dataset, config)
    generator = torch.Generator().manual_seed(seed)
    scores, copy_scores, kept = [], [], []
    start = time.perf_counter()
    for first in range(0, episodes, batch_size):
        chunk = [sampler[i] for i in range(first, min(first + batch_size, episodes))]
        probabilities, spread = segment_episodes(model, chunk, num_steps, num_samples, generator)
        for episode, probability, std in zip(chunk, probabilities, spread):
            truth = episode.query_mask[0]
            scores.append(dice((probability > 0.5).astype(np.float32), truth))
            if episode.k:
                copy_scores.append(dice(predict_copy(episode), truth))
            if len(kept) < keep:
                kept.append((episode, probability, std))
    result = {"dice": float(np.mean(scores)), "episodes": len(scores),
              "seconds_per_episode": (time.perf_counter() - start) / max(len(scores), 1)}
    if copy_scores:
        result["copy_baseline_dice"] = float(np.mean(copy_scores))
    if keep:
        result["examples"] = kept
    return result


@torch.no_grad()
def evaluate_reconstruction(model, dataset, masks: int = 128, min_area: int = 64, num_steps: int = 10,
                            num_samples: int = 1, seed: int = 1234) -> dict:
    """Stage-1 quality: Dice of held-out masks (test volumes, held-out structures) decoded from their
    own condition tokens (teacher tokens -> decoder)."""
    sampler = EpisodeSampler(dataset, EpisodeConfig(split="test", structures="held_out", num_examples=0,
                                                    max_examples=0, min_area=min_area, seed=seed, transform=None))
    targets = torch.stack([torch.from_numpy(sampler[i].query_mask) for i in range(masks)])
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    start = time.perf_counter()
    probabilities = torch.cat([
        model.decoder.sample(model.condition_encoder(chunk), num_steps, num_samples, generator).mean(dim=1)
        for chunk in targets.split(32)])
    seconds = time.perf_counter() - start
    scores = [dice((p[0] > 0.5).numpy(), m[0].numpy()) for p, m in zip(probabilities, targets)]
    return {"reconstruction_dice": float(np.mean(scores)), "masks": len(scores), "min_area": min_area,
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
