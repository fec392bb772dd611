"""The benchmark commands: their JSON shapes, the README section they generate, and their helpers."""
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from segicl_benchmarks.speed import PeakMemory, median_run, uncertainty_auroc
from segicl_benchmarks.training import summarize_log
from segicl_benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist, training_slices


def test_training_log_summary():
    rows = [{"step": s, "loss": 1.0 / s, "elapsed_s": 10.0 + 2.0 * s} for s in range(1, 11)]
    summary = summarize_log(rows, skip=2)
    assert summary["steps_per_s"] == pytest.approx(0.5)
    assert summary["loss_first_third"] > summary["loss_last_third"]
    with pytest.raises(ValueError, match="logged steps"):
        summarize_log(rows[:3], skip=2)
