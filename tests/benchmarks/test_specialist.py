"""The benchmark commands: their JSON shapes, the README section they generate, and their helpers."""
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from segicl_benchmarks.speed import PeakMemory, median_run, uncertainty_auroc
from segicl_benchmarks.training import summarize_log
from segicl_benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist, training_slices


def test_specialist_learns_one_structure(dataset):
    images, masks = training_slices(dataset, "brain/brain", ("train",))
    assert images.shape == masks.shape and images.shape[1:] == (1, 64, 64)
    net, info = train_specialist(images, masks, SpecialistConfig(budget_s=600, max_steps=25, batch_size=8,
                                                                 channels=(8, 16, 32)))
    assert info["steps"] == 25 and info["last_loss"] < info["first_loss"]
    prediction = predict_specialist(net, images[:4])
    assert prediction.shape == (4, 64, 64) and set(np.unique(prediction)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="no slices"):
        training_slices(dataset, "no/such_structure", ("train",))


def test_specialist_stops_when_its_validation_loss_stops_falling(dataset):
    """With a zero learning rate the validation loss never improves on its first value: training stops after
    `patience` more validations, and the first validation's weights are the ones kept."""
    images, masks = training_slices(dataset, "brain/brain", ("train",))
    config = SpecialistConfig(learning_rate=0.0, max_steps=1000, batch_size=4, channels=(8, 16),
                              validation_every=3, evaluate_every=5, patience=2)
    _, info = train_specialist(images[:30], masks[:30], config)
    assert info["stopped_by"] == "validation" and info["steps"] == 15 and info["best_step"] == 5
    assert info["validation_slices"] == 10 and info["slices"] == 20


def test_specialist_budget_states_the_steps():
    from segicl_benchmarks.quality import specialist_budget

    training = {"a": {"steps": 740, "best_step": 600, "stopped_by": "validation", "seconds": 90.04},
                "b": {"steps": 1210, "best_step": 1100, "stopped_by": "budget", "seconds": 130.1}}
    assert specialist_budget(training) == ("; the specialists trained 740-1210 steps each (best validation loss at "
                                           "steps 600-1100; 1 of 2 stopped by their validation loss), at most 130 s "
                                           "each")
    assert specialist_budget({}) == ""
