"""`segicl bench full-shapes`: block-time scaling, the volume projection, option checks, and the measured parts
on small stand-ins for the full shapes."""
import dataclasses

import pytest
import torch
from torch import nn

from segicl_benchmarks import full_shapes as bench_full
from segicl_benchmarks.report import results_page
from segicl_benchmarks.full_shapes import (FullShapeOptions, measure_llm, measure_vision, per_slice_seconds, projection,
                               scaled_seconds, time_part)
from segicl.config import tiny_config


class ScriptedClock:
    """A clock that only moves when the model says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Work(nn.Module):
    def __init__(self, clock: ScriptedClock, seconds: float):
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def forward(self, x):
        self.clock.now += self.seconds
        return x


def test_scaled_seconds_scales_only_the_blocks():
    # 10 s in all, 4 s of it in the 2 blocks built; 8 blocks: 6 + 4 * 8 / 2
    assert scaled_seconds(10.0, 4.0, built=2, full=8) == pytest.approx(22.0)
    assert scaled_seconds(10.0, 4.0, built=8, full=8) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="built <= full"):
        scaled_seconds(1.0, 0.5, built=3, full=2)


def test_time_part_times_hooked_blocks_and_scales_them(monkeypatch):
    clock = ScriptedClock()
    monkeypatch.setattr(bench_full, "clock", clock)
    blocks = nn.ModuleList([Work(clock, 3.0), Work(clock, 3.0)])
    outside = Work(clock, 1.0)

    def call():
        outside(None)
        for block in blocks:
            block(None)

    seconds = time_part(call, blocks, built=2, full=6, options=FullShapeOptions(repeats=3))
    assert seconds == pytest.approx(1.0 + 6 * 3.0)
    assert not blocks[0]._forward_hooks and not blocks[0]._forward_pre_hooks  # hooks removed after timing


def hand_parts() -> dict:
    return {"vision_s_per_image": 1.0, "llm_uncached_s_k3": 10.0, "llm_cached_s_k3": 2.0, "llm_prefix_s_k3": 8.0,
            "denoiser_s_per_evaluation": 0.5, "vae_decode_s": 1.0}


def test_per_slice_seconds_with_and_without_the_cache():
    # decoder 5 x 2 x 0.5 + 2 x 1 = 7; uncached 7 images + 10 + 7 = 24; cached 1 + 2 + 7 + (6 + 8) / 7 = 12
    seconds = per_slice_seconds(hand_parts(), k=3, steps=5, samples=2, slices=7)
    assert seconds == pytest.approx({"uncached": 24.0, "cached": 12.0, "decoder": 7.0})


def test_projection_lists_every_decoder_setting_with_its_speedup():
    rows = projection(hand_parts(), slices=64)
    assert list(rows) == [f"{steps}x{samples}" for steps, samples in bench_full.DECODER_SETTINGS]
    one_step = per_slice_seconds(hand_parts(), 3, 1, 1, 64)
    assert rows["1x1"]["volume_uncached_over_cached_k3"] == pytest.approx(one_step["uncached"] / one_step["cached"],
                                                                          abs=1e-3)
    speedups = [row["volume_uncached_over_cached_k3"] for row in rows.values()]
    assert speedups == sorted(speedups)  # the settings are listed from the dearest decoder to the cheapest


@pytest.mark.parametrize("field, value, message", [
    ("vision_layers", 49, "--vision-layers must be in 0..48"),
    ("llm_layers", -1, "--llm-layers must be in 0..32"),
    ("dtype", "float16", "--dtype must be float32 or bfloat16"),
    ("device", "tpu", "--device must be cpu or cuda"),
    ("repeats", 0, "--repeats and --slices must be >= 1"),
])
def test_bad_options_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(FullShapeOptions(), **{field: value}).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_is_refused_without_a_gpu():
    with pytest.raises(ValueError, match="no CUDA device"):
        FullShapeOptions(device="cuda").validate()


def test_cli_refuses_bad_layer_counts(capsys):
    from segicl_commands.cli import main

    assert main(["bench", "full-shapes", "--llm-layers", "40"]) == 2
    assert "--llm-layers must be in 0..32" in capsys.readouterr().err


class RecordingEncoder(bench_full.MultimodalEncoder):
    """Records the sequence length the first block sees during whole-sequence (uncached) calls only."""

    lengths: list = []

    def forward(self, *inputs):
        first = self.decoder().layers[0]
        handle = first.register_forward_pre_hook(lambda _, args, kwargs: self.lengths.append(
            (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).shape[1]), with_kwargs=True)
        try:
            return super().forward(*inputs)
        finally:
            handle.remove()


def test_llm_parts_on_a_small_stand_in_count_the_sequence_it_runs(monkeypatch):
    """The tiny-preset LLM stands in for Qwen-7B: every part is timed, and the token count reported is the
    length of the whole sequence the blocks really see without the cache."""
    monkeypatch.setattr(bench_full, "MultimodalEncoder", RecordingEncoder)
    RecordingEncoder.lengths = []
    parts = measure_llm(tiny_config().llm, num_tokens=4, num_queries=6, options=FullShapeOptions(repeats=1),
                        dtype=torch.float32)
    assert set(RecordingEncoder.lengths) == {parts["sequence_tokens_k0"], parts["sequence_tokens_k3"]}
    for k in (0, 3):
        assert all(parts[f"llm_{kind}_s_k{k}"] > 0 for kind in ("uncached", "prefix", "cached"))


def test_the_block_hooks_fire_and_are_scaled(monkeypatch):
    """Each measured part passes the time spent inside its hooked blocks to the scaling, with the full count."""
    seen = []

    def record(total, inside_blocks, built, full):
        seen.append((inside_blocks, built, full))
        return scaled_seconds(total, inside_blocks, built, full)

    monkeypatch.setattr(bench_full, "scaled_seconds", record)
    config = tiny_config()
    measure_vision(dataclasses.replace(config.vision, layers=2), hidden=32, options=FullShapeOptions(repeats=1),
                   dtype=torch.float32)
    assert seen and all(inside > 0 and (built, full) == (2, 48) for inside, built, full in seen)
    seen.clear()
    measure_llm(config.llm, num_tokens=4, num_queries=6, options=FullShapeOptions(repeats=1), dtype=torch.float32)
    hooked = [(built, full) for inside, built, full in seen if inside > 0]
    assert set(hooked) == {(config.llm.num_layers, 32)}
    assert len(hooked) == 3 * 2  # uncached, prefix and suffix at k = 0 and 3, one timed run each (no warm-up)


def test_vision_part_on_a_small_stand_in():
    config = dataclasses.replace(tiny_config().vision, layers=2)
    parts = measure_vision(config, hidden=32, options=FullShapeOptions(repeats=1), dtype=torch.float32)
    assert parts["vision_s_per_image"] > 0


@pytest.mark.parametrize("seconds, shown", [(0.0123, "12.3 ms"), (8.222, "8.22 s"), (150, "2.5 min"),
                                             (28780, "7.99 h")])
def test_durations_are_shown_in_a_readable_unit(seconds, shown):
    from segicl_benchmarks.report import duration

    assert duration(seconds) == shown


def test_results_page_renders_the_full_shape_table(tmp_path):
    import json

    parts = {**hand_parts(), "llm_uncached_s_k0": 3.0, "llm_cached_s_k0": 1.5, "sequence_tokens_k0": 546,
             "sequence_tokens_k3": 2091}
    result = {"parts": parts, "llm_cached_k3_over_k0": 1.333, "projection": projection(parts, 64),
              "setting": "hand-made parts"}
    (tmp_path / "full_shapes.json").write_text(json.dumps(result))
    section = results_page(tmp_path)
    assert "### Full-preset shapes" in section and "hand-made parts" in section
    assert f"| 1x1 | {result['projection']['1x1']['volume_s_uncached_k3'] / 60:.3g} min |" in section
    assert "vision 1 s per image" in section and "with it 1.5 s / 2 s" in section
    assert "speed.json not generated yet: run `segicl bench speed`" in section


def test_importing_the_benchmark_prints_nothing(tmp_path):
    """It imports diffusers before any segicl module: the package init still quiets bitsandbytes' notice first."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", "import segicl_benchmarks.full_shapes"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == ""
