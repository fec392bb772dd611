import json

import numpy as np
import pytest
import torch

from mvg_head.episodes import EpisodeOptions, MVGEpisodeSampler, TaskMix
from mvg_head.model import MVGModel
from mvg_head.training import MVGTrainingModule, make_batch_fn
from tests.mvg_head.conftest import small_config


@pytest.mark.parametrize("head, fall", [({"pixel_skip": False, "copy_weight": 1.0}, 0.8), ({}, 0.9),
                                        ({"prompt_label_skip": True}, 0.9)],
                         ids=["paper", "pixel_skip", "prompt_label_skip"])
def test_loss_falls_on_real_data(dataset, head, fall):
    """A few dozen AdamW steps on real episodes of every task (mixed masked / autoregressive batches)."""
    torch.manual_seed(0)
    module = MVGTrainingModule(MVGModel(small_config(**head)))
    sampler = MVGEpisodeSampler(dataset, EpisodeOptions(split="train", seed=0))
    make_batch = make_batch_fn(sampler, TaskMix(other_autoregressive=0.5), batch_size=6, seed=0)
    batches = [make_batch(step, 0, 1) for step in range(4)]
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)
    losses = []
    for step in range(36):
        loss = module(**batches[step % 4], generator=torch.Generator().manual_seed(step))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    # measured: paper's head 1.59 -> 1.10; pixel skip (its loss adds the coarse prediction's) 2.80 -> 2.36;
    # with the prompt-label skip too 2.74 -> 2.23
    assert np.mean(losses[-4:]) < fall * np.mean(losses[:4]), losses


def test_batches_are_deterministic(dataset):
    sampler = MVGEpisodeSampler(dataset, EpisodeOptions(split="train", seed=0))
    make_batch = make_batch_fn(sampler, TaskMix(), batch_size=4, seed=3)
    a, b = make_batch(5, 0, 1), make_batch(5, 0, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["masked"].shape[0] + a["autoregressive"].shape[0] == 4
