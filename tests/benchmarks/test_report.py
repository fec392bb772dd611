"""The benchmark commands: their JSON shapes, the README section they generate, and their helpers."""
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from segicl_benchmarks.report import RESULTS_END, RESULTS_START, results_section, write_results
from segicl_benchmarks.speed import PeakMemory, median_run, uncertainty_auroc
from segicl_benchmarks.training import summarize_log
from segicl_benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist, training_slices


def test_decoder_share_of_a_run():
    from segicl_benchmarks.report import decoder_share

    run = {"vision_ms_per_slice": 1.0, "llm_ms_per_slice": 3.0, "decoder_ms_per_slice": 12.0}
    assert decoder_share(run) == pytest.approx(0.75)


def test_decoder_budget_for_a_volume_speedup():
    from segicl_benchmarks.report import decoder_budget_for

    cached = {"vision_ms_per_slice": 2.0, "llm_ms_per_slice": 5.0, "decoder_ms_per_slice": 280.0}
    uncached = {"vision_ms_per_slice": 12.0, "llm_ms_per_slice": 13.0, "decoder_ms_per_slice": 280.0}
    # (25 + d) / (7 + d) = 3 at d = 2
    assert decoder_budget_for(3.0, cached, uncached) == ("3x would need a decoder of at most 2.0 ms per slice with "
                                                         "these encoder costs (it takes 280.0).")
    assert "out of reach" in decoder_budget_for(5.0, cached, uncached)


def test_few_step_settings_against_fifty_steps():
    from segicl_benchmarks.report import few_step_settings

    assert few_step_settings({"50": 0.371, "20": 0.377, "10": 0.390, "5": 0.355}) == (
        "At most 10 steps within 0.01 Dice of 50 steps (target): **yes**: 10 (+0.019)")
    assert few_step_settings({"50": 0.40, "20": 0.39, "10": 0.38, "5": 0.35}).endswith("**no**")


def test_readme_results_are_generated_between_markers(tmp_path):
    (tmp_path / "training.json").write_text(json.dumps({
        "setting": "2 steps", **{stage: {"single": {"steps_per_s": 1.0, "loss_first_third": 1.0, "loss_last_third": 0.5},
                                         "deepspeed_zero2": {"steps_per_s": 0.8, "loss_first_third": 1.0,
                                                             "loss_last_third": 0.5},
                                         "deepspeed_over_single_speed": 0.8} for stage in ("stage1", "stage2")}}))
    section = results_section(tmp_path)
    assert "| stage1 | single | 1.000 |" in section and "quality.json not generated yet" in section
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n")
    write_results(readme, section)
    write_results(readme, section)  # idempotent: replaced, not appended twice
    text = readme.read_text()
    assert text.count(RESULTS_START) == 1 and text.count(RESULTS_END) == 1 and text.startswith("# Title")


def test_report_copies_the_json_beside_the_plots(tmp_path):
    from segicl_commands.cli import main

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "training.json").write_text(json.dumps({
        "setting": "2 steps", **{stage: {"single": {"steps_per_s": 1.0, "loss_first_third": 1.0, "loss_last_third": 0.5},
                                         "deepspeed_zero2": {"steps_per_s": 0.8, "loss_first_third": 1.0,
                                                             "loss_last_third": 0.5},
                                         "deepspeed_over_single_speed": 0.8} for stage in ("stage1", "stage2")}}))
    (tmp_path / "README.md").write_text("# Title\n")
    assert main(["bench", "report", "--readme", str(tmp_path / "README.md"), "--out-dir", str(bench)]) == 0
    assert (tmp_path / "docs" / "results" / "training.json").read_text() == (bench / "training.json").read_text()
    assert not (tmp_path / "docs" / "results" / "quality.json").exists()
