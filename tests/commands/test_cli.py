"""`segicl data | baseline | demo | segment` (segicl_commands.cli, with the dataset flags of commands.datasets)."""
import json
import os
import re
import subprocess
import sys

import pytest

from segicl_commands.cli import build_parser, main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "baseline", "demo"):
        assert command in out


def test_data_summary_as_json(dataset, capsys):
    assert main(["data", "--json", "--cache-dir", str(dataset.root.parent)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["structures"] == dataset.summary()["structures"]


def test_bad_arguments_are_reported_not_raised(capsys):
    assert main(["data", "--resolution", "4"]) == 2
    assert "resolution must be at least 16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "--axis", "oblique"])


def test_baseline_writes_json(dataset, tmp_path, capsys):
    out = tmp_path / "baseline.json"
    assert main(["baseline", "--episodes", "10", "--cache-dir", str(dataset.root.parent), "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert set(table) == {"with_transforms", "without_transforms"}
    assert set(table["with_transforms"]) == {"train_structures", "held_out_structures"}
    assert "copy-example baseline" in capsys.readouterr().out


def test_segment_writes_a_mask_with_the_input_geometry(tiny_model, tmp_path, capsys):
    import nibabel as nib
    import numpy as np
    from PIL import Image

    affine = np.array([[-1.0, 0, 0, 90], [0, 1.2, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])
    volume = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "query.nii.gz")
    Image.fromarray((np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "ex.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "ex_mask.png")
    tiny_model.save_pretrained(tmp_path / "model")
    code = main(["segment", "--image", str(tmp_path / "query.nii.gz"), "--text", "Segment the brain",
                 "--example", str(tmp_path / "ex.png"), str(tmp_path / "ex_mask.png"), "--out",
                 str(tmp_path / "pred.nii.gz"), "--uncertainty", str(tmp_path / "unc.nii.gz"),
                 "--model", str(tmp_path / "model"), "--samples", "2", "--steps", "2"])
    assert code == 0
    written = nib.load(tmp_path / "pred.nii.gz")
    assert written.shape == (40, 50, 3)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    assert set(np.unique(written.get_fdata())) <= {0.0, 1.0}
    assert nib.load(tmp_path / "unc.nii.gz").shape == (40, 50, 3)
    assert "segmented 3 slice(s)" in capsys.readouterr().out


def test_segment_reports_unreadable_files(tmp_path, capsys):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "model").mkdir()
    code = main(["segment", "--image", str(tmp_path / "broken.nii.gz"), "--text", "x", "--out",
                 str(tmp_path / "o.nii.gz"), "--model", str(tmp_path / "model")])
    assert code == 2
    assert "broken.nii.gz" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0", "--samples", "5"], "steps and samples must be >= 1, got 0 and 5"),
    (["--samples", "1", "--uncertainty", "unc.nii.gz"], "--uncertainty needs --samples >= 2"),
])
def test_segment_refuses_sampler_flags_that_cannot_work(tmp_path, capsys, flags, message):
    code = main(["segment", "--image", str(tmp_path / "q.nii.gz"), "--text", "x", "--out", str(tmp_path / "o.nii.gz"),
                 *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def not_progress_bars(stderr: str) -> list[str]:
    """The stderr lines that are not a tqdm progress bar (a bar redraws itself with carriage returns)."""
    bar = re.compile(r"^.*\d+%\|.*\| *\d+/\d+ \[")
    return [line for line in re.split(r"[\r\n]+", stderr) if line.strip() and not bar.match(line)]


def run_quietly(arguments: list[str], cwd) -> str:
    """Run `segicl ...` in a fresh interpreter (so every import happens) and return its stderr; it must succeed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "segicl_commands.cli", *arguments], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def test_bar_filter_keeps_what_is_not_a_bar():
    bar = "segmenting:  50%|#####     | 1/2 [00:01<00:01,  1.00it/s]"
    assert not_progress_bars(f"\r{bar}\r{bar}\n") == []
    assert not_progress_bars(f"{bar}\nFailed to load CPU gemm_4bit_forward\n") == ["Failed to load CPU gemm_4bit_forward"]


def test_segment_and_mvg_print_nothing_on_stderr_but_progress_bars(tmp_path):
    import nibabel as nib
    import numpy as np

    volume = np.random.default_rng(0).random((40, 48, 2)).astype(np.float32) * 1000
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "query.nii.gz")
    mask = np.zeros((40, 48, 1), np.uint8)
    mask[10:25, 12:30] = 1
    nib.save(nib.Nifti1Image(volume[:, :, :1], np.eye(4)), tmp_path / "example.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    segment = run_quietly(["segment", "--image", "query.nii.gz", "--text", "Segment the brain", "--example",
                           "example.nii.gz", "mask.nii.gz", "--out", "pred.nii.gz", "--steps", "1", "--samples", "1"],
                          tmp_path)
    assert not_progress_bars(segment) == []
    mvg = run_quietly(["mvg", "--task", "segmentation", "--prompt-image", "example.nii.gz", "--prompt-target",
                       "mask.nii.gz", "--image", "query.nii.gz", "--out", "mvg.nii.gz"], tmp_path)
    assert not_progress_bars(mvg) == []
    assert (tmp_path / "pred.nii.gz").exists() and (tmp_path / "mvg.nii.gz").exists()
