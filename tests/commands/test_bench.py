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


def test_uncertainty_auroc_ranks_wrong_pixels():
    truth = np.zeros((1, 8, 8), np.float32)
    probability = np.zeros((1, 8, 8), np.float32)
    probability[0, :2] = 0.9  # two wrong rows
    spread = np.zeros((1, 8, 8), np.float32)
    spread[0, :2] = 0.4
    assert uncertainty_auroc(probability, spread, truth) == pytest.approx(1.0)
    assert uncertainty_auroc(probability, 0.4 - spread, truth) == pytest.approx(0.0)
    assert np.isnan(uncertainty_auroc(truth, spread, truth))  # nothing wrong: undefined


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as memory:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB
        del block
    with PeakMemory() as idle:
        pass
    assert memory.peak_mib > idle.peak_mib - 1 > 0


def test_median_run_takes_the_median_timing_and_the_peak_memory():
    runs = [{"llm_ms_per_slice": v, "volume_s": 10 * v, "peak_rss_mib": m} for v, m in ((3.0, 100), (1.0, 300), (2.0, 200))]
    assert median_run(runs) == {"llm_ms_per_slice": 2.0, "volume_s": 20.0, "peak_rss_mib": 300, "repeats": 3}


def test_speed_benchmark_writes_the_promised_shape(dataset, tiny_model, tmp_path):
    from benchmarks.speed import FAST_SETTING, SPEED_K, STEPS, run_speed

    tiny_model.save_pretrained(tmp_path / "model")
    args = Namespace(model=tmp_path / "model", structure="brain/brain", slices=3, steps=1, samples=2, batch_size=2,
                     repeats=2, episodes=2, min_area=64, seed=0, out_dir=tmp_path / "bench")
    run_speed(args, dataset, log=lambda _: None)
    result = json.loads((tmp_path / "bench" / "speed.json").read_text())
    for label in ("cached", "uncached"):
        assert set(result["llm_ms_per_slice"][label]) == {str(k) for k in SPEED_K}
        assert all(run["repeats"] == 2 for run in result["per_run"][label].values())
    assert set(result["volume_s"]) == {"cached_k3", "uncached_k3"} and min(result["volume_s"].values()) > 0
    assert set(result["steps_dice"]) == {str(s) for s in STEPS}
    fast = result["fast_setting"]
    assert (fast["steps"], fast["samples"]) == FAST_SETTING and 0 <= fast["dice"] <= 1
    assert all(fast["per_run"][label]["repeats"] == 2 for label in ("cached", "uncached"))
    assert fast["volume_uncached_over_cached_k3"] == pytest.approx(
        fast["volume_s"]["uncached_k3"] / fast["volume_s"]["cached_k3"], abs=1e-3)
    assert (tmp_path / "bench" / "speed.png").stat().st_size > 0
    section = results_section(tmp_path / "bench")
    assert "of the cached k=3 time per slice" in section and "With the fast decoder setting (5 steps x 1" in section


def test_decoder_share_of_a_run():
    from benchmarks.report import decoder_share

    run = {"vision_ms_per_slice": 1.0, "llm_ms_per_slice": 3.0, "decoder_ms_per_slice": 12.0}
    assert decoder_share(run) == pytest.approx(0.75)


def test_decoder_budget_for_a_volume_speedup():
    from benchmarks.report import decoder_budget_for

    cached = {"vision_ms_per_slice": 2.0, "llm_ms_per_slice": 5.0, "decoder_ms_per_slice": 280.0}
    uncached = {"vision_ms_per_slice": 12.0, "llm_ms_per_slice": 13.0, "decoder_ms_per_slice": 280.0}
    # (25 + d) / (7 + d) = 3 at d = 2
    assert decoder_budget_for(3.0, cached, uncached) == ("3x would need a decoder of at most 2.0 ms per slice with "
                                                         "these encoder costs (it takes 280.0).")
    assert "out of reach" in decoder_budget_for(5.0, cached, uncached)


def test_few_step_settings_against_fifty_steps():
    from benchmarks.report import few_step_settings

    assert few_step_settings({"50": 0.371, "20": 0.377, "10": 0.390, "5": 0.355}) == (
        "At most 10 steps within 0.01 Dice of 50 steps (target): **yes**: 10 (+0.019)")
    assert few_step_settings({"50": 0.40, "20": 0.39, "10": 0.38, "5": 0.35}).endswith("**no**")


def test_training_log_summary():
    rows = [{"step": s, "loss": 1.0 / s, "elapsed_s": 10.0 + 2.0 * s} for s in range(1, 11)]
    summary = summarize_log(rows, skip=2)
    assert summary["steps_per_s"] == pytest.approx(0.5)
    assert summary["loss_first_third"] > summary["loss_last_third"]
    with pytest.raises(ValueError, match="logged steps"):
        summarize_log(rows[:3], skip=2)


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


def test_specialist_budget_states_the_steps():
    from benchmarks.quality import specialist_budget

    training = {"a": {"steps": 740, "seconds": 90.04}, "b": {"steps": 754, "seconds": 90.1}}
    assert specialist_budget(training) == "; the specialists trained 740-754 steps each in their 90 s"
    assert specialist_budget({}) == ""


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


@pytest.mark.parametrize("command, message", [
    (["bench", "quality", "--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["bench", "quality", "--specialist-seconds", "-5"], "--specialist-seconds must be >= 1, got -5.0"),
    (["bench", "quality", "--specialists", "-1"], "--specialists must be >= 0, got -1"),
    (["bench", "speed", "--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["bench", "training", "--steps", "2"], "--steps must be >= 4, got 2"),
    (["bench", "training", "--batch-size", "3"], "--batch-size must be even"),
    (["mvg-eval", "--episodes", "0"], "--episodes must be >= 1, got 0"),
])
def test_benchmarks_refuse_bad_flags_before_any_work(capsys, command, message):
    from commands.cli import main

    assert main(command) == 2
    assert message in capsys.readouterr().err


def test_benchmarks_refuse_a_file_as_out_dir_and_the_other_engines_model(tmp_path, capsys):
    from commands.cli import main

    (tmp_path / "afile").write_text("x")
    assert main(["bench", "speed", "--out-dir", str(tmp_path / "afile")]) == 2
    assert "--out-dir" in capsys.readouterr().err
    shipped = Path(__file__).resolve().parents[2] / "weights" / "segicl-tiny"
    assert main(["bench", "quality", "--mvg", str(shipped), "--out-dir", str(tmp_path / "q")]) == 2
    assert f"--mvg: no MVG model at {shipped} (mvg_config.json missing); it holds a SegICL model" in \
        capsys.readouterr().err
    assert main(["mvg-eval", "--model", str(shipped), "--out-dir", str(tmp_path / "m")]) == 2
    assert "it holds a SegICL model" in capsys.readouterr().err


def test_report_copies_the_json_beside_the_plots(tmp_path):
    from commands.cli import main

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
