"""The benchmark commands: their JSON shapes, the README section they generate, and their helpers."""
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from segicl_benchmarks.speed import PeakMemory, median_run, uncertainty_auroc
from segicl_benchmarks.training import summarize_log
from segicl_benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist, training_slices


@pytest.mark.parametrize("command, message", [
    (["bench", "quality", "--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["bench", "quality", "--specialist-seconds", "-5"], "--specialist-seconds must be >= 1, got -5.0"),
    (["bench", "quality", "--specialists", "-1"], "--specialists must be >= 0, got -1"),
    (["bench", "speed", "--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["bench", "training", "--steps", "2"], "--steps must be >= 4, got 2"),
    (["bench", "training", "--batch-size", "3"], "--batch-size must be even"),
    (["mvg-eval", "--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["bench", "ood", "--rows", "axial", "mri"], "--rows: unknown row(s) axial, mri; known: coronal, sagittal"),
    (["bench", "ood", "--unet-steps", "0"], "--unet-steps must be >= 1, got 0"),
])
def test_benchmarks_refuse_bad_flags_before_any_work(capsys, command, message):
    from segicl_commands.cli import main

    assert main(command) == 2
    assert message in capsys.readouterr().err


def test_benchmarks_refuse_a_file_as_out_dir_and_the_other_engines_model(tmp_path, capsys):
    from segicl_commands.cli import main

    (tmp_path / "afile").write_text("x")
    assert main(["bench", "speed", "--out-dir", str(tmp_path / "afile")]) == 2
    assert "--out-dir" in capsys.readouterr().err
    shipped = Path(__file__).resolve().parents[2] / "weights" / "segicl-tiny"
    assert main(["bench", "quality", "--mvg", str(shipped), "--out-dir", str(tmp_path / "q")]) == 2
    assert f"--mvg: no MVG model at {shipped} (mvg_config.json missing); it holds a SegICL model" in \
        capsys.readouterr().err
    assert main(["mvg-eval", "--model", str(shipped), "--out-dir", str(tmp_path / "m")]) == 2
    assert "it holds a SegICL model" in capsys.readouterr().err


def test_the_speed_benchmark_times_the_pipelines_decoder_setting_by_default():
    from segicl.config import DEFAULT_SAMPLES, DEFAULT_STEPS
    from segicl_commands.cli import build_parser

    args = build_parser().parse_args(["bench", "speed"])
    assert (args.steps, args.samples) == (DEFAULT_STEPS, DEFAULT_SAMPLES)


def test_an_empty_peer_folder_leaves_the_peer_out_and_a_wrong_one_is_refused(tmp_path, capsys):
    from segicl_commands.cli import build_parser, main

    args = build_parser().parse_args(["bench", "quality", "--mvg", "", "--crossconv", ""])
    assert args.mvg is None and args.crossconv is None
    shipped = Path(__file__).resolve().parents[2] / "weights" / "segicl-tiny"
    assert main(["bench", "quality", "--mvg", "", "--crossconv", str(shipped), "--out-dir", str(tmp_path)]) == 2
    assert "--crossconv: no CrossConv model at" in capsys.readouterr().err
