"""The benchmark commands: their JSON shapes, the README section they generate, and their helpers."""
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.report import RESULTS_END, RESULTS_START, results_section, write_results
from benchmarks.speed import PeakMemory, median_run, uncertainty_auroc
from benchmarks.training import summarize_log
from benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist, training_slices


def test_quality_benchmark_writes_the_promised_shape(dataset, tiny_model, tmp_path):
    from benchmarks.quality import QUALITY_K, run_quality

    tiny_model.save_pretrained(tmp_path / "model")
    args = Namespace(model=tmp_path / "model", mvg=None, episodes=2, min_area=64, steps=1, samples=1, specialists=1,
                     specialist_seconds=1.0, seed=0, out_dir=tmp_path / "bench")
    run_quality(args, dataset, log=lambda _: None)
    result = json.loads((tmp_path / "bench" / "quality.json").read_text())
    for group in ("train_structures", "held_out_structures"):
        assert set(result[group]["segicl"]) == {str(k) for k in QUALITY_K}
        assert 0 <= result[group]["copy_baseline"] <= 1 and 0 <= result[group]["specialist_unet"] <= 1
        assert 0 <= result[group]["union_baseline"] <= 1
        assert result[group]["per_structure"]
    assert (tmp_path / "bench" / "quality.png").stat().st_size > 0
    report = (tmp_path / "bench" / "quality.md").read_text()
    assert "| held out structures |" in report
    steps = result["held_out_structures"]["specialist_comparison"]["training"]
    assert steps and "the specialists trained" in report  # the steps a time budget bought are stated
