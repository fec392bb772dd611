"""Tests for `segicl evaluate` (segicl_commands.evaluate): the files it writes, what it prints, and refusals as one line
with exit code 2."""
from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest

from segicl_commands.arguments import exit_code
from segicl_commands.evaluate import add_evaluate_command

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="segicl")
    add_evaluate_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *argv])
    return exit_code(lambda: args.handler(args), "segicl evaluate")


@pytest.fixture
def folders(tmp_path):
    """Two cases of a 20x24x16 map with classes 1 and 2; the prediction misses half of class 2 in case 1."""
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir(), truth.mkdir()
    labels = np.zeros((20, 24, 16), dtype=np.uint8)
    labels[2:8, 2:8, 2:8] = 1
    labels[12:16, 4:10, 4:10] = 2
    missed = labels.copy()
    missed[14:16, 4:10, 4:10] = 0
    for name, p in (("case_1", missed), ("case_2", labels)):
        nib.save(nib.Nifti1Image(p, AFFINE), str(pred / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(labels, AFFINE), str(truth / f"{name}.nii.gz"))
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "tumour"}}))
    return pred, truth, dataset


def test_writes_summary_into_the_prediction_folder_and_prints_the_table(folders, capsys):
    pred, truth, dataset = folders
    assert run(["--pred", str(pred), "--truth", str(truth), "--labels", str(dataset)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["mean"]["tumour"]["dice"] == pytest.approx((2 * 72 / (72 + 144) + 1.0) / 2, abs=1e-6)
    assert summary["mean"]["liver"]["dice"] == pytest.approx(1.0)
    assert "| liver (1) | 1.000 (2/2) |" in out and "| tumour (2) | 0.833 (2/2) |" in out
    assert out.rstrip().endswith(f"wrote {pred / 'summary.json'} and {pred / 'summary.md'}")
    assert (pred / "summary.md").read_text() in out


def test_out_folder_and_tolerance(folders, tmp_path):
    pred, truth, _ = folders
    out = tmp_path / "results" / "fold0"
    assert run(["--pred", str(pred), "--truth", str(truth), "--out", str(out), "--tolerance", "4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tolerance_mm"] == 4.0 and summary["labels"] == {"1": [1], "2": [2]}
    assert summary["mean"]["2"]["nsd"] == pytest.approx(1.0)  # the missed half is 2 voxels = 4 mm away
    assert not (pred / "summary.json").exists()


@pytest.mark.parametrize("problem, message", [
    ("missing truth", "case_2.nii.gz has no truth file"),
    ("bad tolerance", "--tolerance must be a finite number of mm >= 0, got -1.0"),
    ("out is a file", "--out"),
    ("undeclared value", "label value 2 is not declared"),
])
def test_refusals_are_one_line_and_exit_code_2(folders, tmp_path, capsys, problem, message):
    pred, truth, dataset = folders
    argv = ["--pred", str(pred), "--truth", str(truth)]
    if problem == "missing truth":
        (truth / "case_2.nii.gz").unlink()
    elif problem == "bad tolerance":
        argv += ["--tolerance", "-1"]
    elif problem == "out is a file":
        (tmp_path / "taken").write_text("")
        argv += ["--out", str(tmp_path / "taken")]
    else:
        dataset.write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
        argv += ["--labels", str(dataset)]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("segicl evaluate: error: ") and message in err and err.count("\n") == 1
    assert not (pred / "summary.json").exists() and not (pred / "summary.md").exists()


def test_help_names_every_flag(capsys):
    with pytest.raises(SystemExit):
        run(["--help"])
    text = capsys.readouterr().out
    for flag in ("--pred", "--truth", "--labels", "--out", "--tolerance", "HD95", "NSD"):
        assert flag in text
