"""MVG prompt-label skip: how much of the prompt's label does the head take, per task?

The same layers run for every task; this reads the per-pixel amount `a` of `ConvHead.label_refine` (output = skip
output + a x (prompt label - skip output) + correction) on test episodes of each task, autoregressive inference.

    .venv/bin/python experiments/mvg_label_skip_amount/mvg_label_skip_amount.py --episodes 32

A one-off study (README.md beside this file); not installed with the package.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from segicl_data.build import DatasetConfig
from segicl_data.dataset import SliceDataset
from mvg_head.config import TASKS
from mvg_head.episodes import EpisodeOptions, MVGEpisodeSampler
from mvg_head.model import MVGModel
from segicl_weights import MVG_TINY


def label_amounts(model: MVGModel, sentences: torch.Tensor) -> torch.Tensor:
    """The amount map [B, 1, H, W] of the query label's head for a batch of sentences."""
    seen = []
    hook = model.head.label_refine.register_forward_hook(lambda module, args, output: seen.append(output[:, -1:]))
    try:
        model.predict(sentences)
    finally:
        hook.remove()
    return seen[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MVG_TINY, help="MVG model folder (default: the shipped weights)")
    parser.add_argument("--episodes", type=int, default=32, help="test episodes per task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = MVGModel.from_pretrained(args.model)
    if model.head.label_refine is None:
        parser.error(f"{args.model} has no prompt-label skip (MVGConfig.prompt_label_skip is off)")
    dataset = SliceDataset.build(DatasetConfig(resolution=model.config.image_size), progress=False)
    sampler = MVGEpisodeSampler(dataset, EpisodeOptions(split="test", colouring=model.config.colouring,
                                                        palette_levels=model.config.palette_levels, seed=args.seed))
    result = {}
    for task in TASKS:
        sentences = torch.from_numpy(np.stack([sampler.episode(task, i).sentence for i in range(args.episodes)]))
        amount = label_amounts(model, sentences.float())
        result[task] = {"mean": round(float(amount.mean()), 3), "median": round(float(amount.median()), 3)}
        print(f"{task:13s} amount of the prompt label: mean {result[task]['mean']:.3f}, "
              f"median {result[task]['median']:.3f} ({args.episodes} test episodes)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
