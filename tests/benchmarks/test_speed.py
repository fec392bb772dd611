"""The benchmark commands: their JSON shapes, the README section they generate, and their helpers."""
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from segicl_benchmarks.report import results_page
from segicl_benchmarks.speed import PeakMemory, median_run, time_volume, uncertainty_auroc
from segicl_benchmarks.training import summarize_log
from segicl_benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist, training_slices


def test_uncertainty_auroc_ranks_wrong_pixels():
    truth = np.zeros((1, 8, 8), np.float32)
    probability = np.zeros((1, 8, 8), np.float32)
    probability[0, :2] = 0.9  # two wrong rows
    spread = np.zeros((1, 8, 8), np.float32)
    spread[0, :2] = 0.4
    assert uncertainty_auroc(probability, spread, truth) == pytest.approx(1.0)
    assert uncertainty_auroc(probability, 0.4 - spread, truth) == pytest.approx(0.0)
    assert np.isnan(uncertainty_auroc(truth, spread, truth))  # nothing wrong: undefined


def test_recommended_setting_is_the_cheapest_near_the_best_with_a_meaningful_uncertainty():
    from segicl_benchmarks.speed import recommended_setting

    grid = {"10x5": {"dice": 0.60, "uncertainty_auroc": 0.8}, "5x3": {"dice": 0.595, "uncertainty_auroc": 0.75},
            "2x3": {"dice": 0.55, "uncertainty_auroc": 0.75}, "1x1": {"dice": 0.60, "uncertainty_auroc": 0.5},
            "1x3": {"dice": 0.599, "uncertainty_auroc": 0.55}}
    chosen = recommended_setting(grid)
    assert (chosen["steps"], chosen["samples"], chosen["best_dice"]) == (5, 3, 0.60)  # 1x1: no spread; 1x3: AUROC < 0.6
    assert recommended_setting({"1x1": {"dice": 0.6, "uncertainty_auroc": 0.5}}) is None


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


def test_a_timed_volume_gives_per_slice_milliseconds_and_the_volume_seconds():
    def pipeline(*args, **kwargs):
        return Namespace(timings={"vision_s": 0.1, "llm_s": 0.2, "decoder_s": 0.3, "slices": 2})

    run = time_volume(pipeline, None, "text", [], True, Namespace(batch_size=2), steps=1, samples=1)
    assert run["volume_s"] == pytest.approx(0.6) and run["llm_ms_per_slice"] == pytest.approx(100.0)
    assert run["decoder_ms_per_slice"] == pytest.approx(150.0) and run["peak_rss_mib"] > 0


def test_the_fastest_setting_given_as_the_timed_one_runs_once_per_repeat(dataset):
    from segicl_benchmarks.speed import FAST_SETTING, SPEED_K, time_volumes

    calls = []

    def pipeline(*args, num_steps, num_samples, **kwargs):
        calls.append((num_steps, num_samples))
        return Namespace(timings={"vision_s": 0.1, "llm_s": 0.2, "decoder_s": 0.3, "slices": 2})

    args = Namespace(structure="brain/brain", slices=3, steps=FAST_SETTING[0], samples=FAST_SETTING[1],
                     batch_size=2, repeats=2)
    volumes, fast = time_volumes(pipeline, dataset, args, log=lambda _: None)
    assert len(calls) == 2 * len(SPEED_K) * 2  # (cached, uncached) x k x repeats: the k = 3 setting not run twice
    assert fast["cached"] == volumes["cached"]["3"] and fast["cached"]["repeats"] == 2


def test_speed_benchmark_writes_the_promised_shape(dataset, tiny_model, tmp_path):
    from segicl_benchmarks.speed import FAST_SETTING, SPEED_K, run_speed

    tiny_model.save_pretrained(tmp_path / "model")
    args = Namespace(model=tmp_path / "model", structure="brain/brain", slices=3, steps=1, samples=2, batch_size=2,
                     repeats=2, episodes=2, min_area=64, seed=0, out_dir=tmp_path / "bench", sweep_steps=[5, 2],
                     sweep_samples=[1, 3])
    run_speed(args, dataset, log=lambda _: None)
    result = json.loads((tmp_path / "bench" / "speed.json").read_text())
    for label in ("cached", "uncached"):
        assert set(result["llm_ms_per_slice"][label]) == {str(k) for k in SPEED_K}
        assert all(run["repeats"] == 2 for run in result["per_run"][label].values())
    assert set(result["volume_s"]) == {"cached_k3", "uncached_k3"} and min(result["volume_s"].values()) > 0
    assert set(result["steps_dice"]) == {"5", "2", "1"}  # the grid's steps and --steps, at --samples
    assert set(result["sampler_grid"]) == {f"{s}x{n}" for s in (5, 2, 1) for n in (1, 2, 3)}
    assert "recommended_setting" in result
    fast = result["fast_setting"]
    assert (fast["steps"], fast["samples"]) == FAST_SETTING and 0 <= fast["dice"] <= 1
    assert all(fast["per_run"][label]["repeats"] == 2 for label in ("cached", "uncached"))
    assert fast["volume_uncached_over_cached_k3"] == pytest.approx(
        fast["volume_s"]["uncached_k3"] / fast["volume_s"]["cached_k3"], abs=1e-3)
    assert (tmp_path / "bench" / "speed.png").stat().st_size > 0
    section = results_page(tmp_path / "bench")
    assert "of the cached k=3 time per slice" in section and "With the fastest decoder setting (1 step x 1 sample," in section
