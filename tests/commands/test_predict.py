"""`segicl predict`: a folder of cases in their geometry, predictions.json ranked by uncertainty, resuming (also after
SIGKILL), refusing to mix settings, and the same bytes from 2 accelerate processes or 2 jobs as from one."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from segicl_commands.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PROMPT = ["--text", "Segment the thalamus", "--example", str(EXAMPLES / "mni152_thalamus_slice.png"),
          str(EXAMPLES / "mni152_thalamus_mask.png"), "--samples", "2", "--steps", "1", "--no-check-examples"]


def write_cases(folder: Path, count: int) -> dict[str, np.ndarray]:
    """`count` NIfTI volumes (3 slices of the shipped example slice, shifted per case), nnU-Net named; their affines."""
    folder.mkdir(parents=True)
    slice_ = np.asarray(Image.open(EXAMPLES / "colin27_thalamus_slice.png"), np.float32)
    affines = {}
    for index in range(count):
        volume = np.stack([np.roll(slice_, 2 * index, axis=0)] * 3, axis=-1).transpose(1, 0, 2)[:, ::-1]
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        affine[:3, 3] = [index, -3.0, 5.0]
        nib.save(nib.Nifti1Image(volume, affine), folder / f"case{index}_0000.nii.gz")
        affines[f"case{index}"] = affine
    return affines


def run_cli(arguments: list[str], cwd: Path, launcher: list[str] | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}  # one thread: same bytes in any process
    command = (launcher or [sys.executable, "-m"]) + ["segicl_commands.cli", "predict", *arguments]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def finished(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


def outputs(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.nii.gz"))}


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("predict") / "imagesTs"
    return folder, write_cases(folder, 4)


@pytest.fixture(scope="module")
def single_process(cases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    finished(run_cli(["-i", str(cases[0]), "-o", str(out), "--uncertainty", *PROMPT], out.parent))
    return out


def test_a_folder_is_segmented_in_each_cases_geometry_and_ranked_by_uncertainty(cases, single_process):
    folder, affines = cases
    summary = json.loads((single_process / "predictions.json").read_text())
    assert summary["finished"] == summary["total"] == 4
    assert sorted(summary["ranked_by_uncertainty"]) == sorted(affines)
    scores = {record["case"]: record["uncertainty"] for record in summary["cases"]}
    assert [scores[name] for name in summary["ranked_by_uncertainty"]] == sorted(scores.values(), reverse=True)
    for record in summary["cases"]:
        assert record["files"] == {"mask": f"{record['case']}.nii.gz",
                                   "uncertainty": f"{record['case']}_uncertainty.nii.gz"}
        structure = record["structures"]["Segment the thalamus"]
        assert structure["value"] == 1 and structure["seconds"] > 0 and record["slices"] == 3
        mask = nib.load(single_process / f"{record['case']}.nii.gz")
        np.testing.assert_allclose(mask.affine, affines[record["case"]], atol=1e-5)
        assert mask.shape == (64, 64, 3) and set(np.unique(mask.get_fdata())) <= {0.0, 1.0}


def test_a_second_run_skips_finished_cases_and_other_settings_are_refused(cases, single_process, capsys):
    assert main(["predict", "-i", str(cases[0]), "-o", str(single_process), "--uncertainty", *PROMPT]) == 0
    assert "0 case(s) segmented, 4 already finished" in capsys.readouterr().out
    assert main(["predict", "-i", str(cases[0]), "-o", str(single_process), *PROMPT]) == 2
    assert "holds predictions made with other settings (uncertainty differ)" in capsys.readouterr().err


def test_two_accelerate_processes_write_the_same_bytes_as_one(cases, single_process, tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    out = finished(run_cli(["-i", str(cases[0]), "-o", str(tmp_path / "out"), "--uncertainty", *PROMPT], tmp_path,
                           launcher))
    assert "2 case(s) segmented by process 0 of 2" in out
    assert outputs(tmp_path / "out") == outputs(single_process)
    two = json.loads((tmp_path / "out" / "predictions.json").read_text())
    one = json.loads((single_process / "predictions.json").read_text())
    assert two["ranked_by_uncertainty"] == one["ranked_by_uncertainty"]


def test_two_jobs_with_num_parts_cover_the_folder_with_the_same_bytes(cases, single_process, tmp_path):
    jobs = [run_cli(["-i", str(cases[0]), "-o", str(tmp_path / "out"), "--uncertainty", "--num-parts", "2",
                     "--part-id", str(part), *PROMPT], tmp_path) for part in (0, 1)]
    for job in jobs:
        finished(job)
    assert outputs(tmp_path / "out") == outputs(single_process)


def test_a_run_killed_half_way_finishes_the_folder_when_run_again(tmp_path):
    folder = tmp_path / "imagesTs"
    write_cases(folder, 6)
    out = tmp_path / "out"
    process = run_cli(["-i", str(folder), "-o", str(out), *PROMPT], tmp_path, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / ".predict" / "case1.json").exists():  # two cases done, the third under way
        assert process.poll() is None and time.monotonic() < deadline, "predict ended before it could be killed"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    done_before = len(list((out / ".predict").glob("case*.json")))
    assert 2 <= done_before < 6
    rerun = finished(run_cli(["-i", str(folder), "-o", str(out), *PROMPT], tmp_path))
    assert f"{6 - done_before} case(s) segmented, {done_before} already finished" in rerun
    assert sorted(outputs(out)) == [f"case{index}.nii.gz" for index in range(6)]
    for path in out.glob("*.nii.gz"):
        assert nib.load(path).get_fdata().shape == (64, 64, 3)  # every file whole
    assert not list(out.glob(".*partial*")) and not list((out / ".predict").glob(".*partial*"))
