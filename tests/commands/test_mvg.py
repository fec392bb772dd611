"""`segicl mvg` and `segicl mvg-eval` (commands.mvg; the test-split evaluation itself is mvg_head.evaluation)."""
import json

import nibabel as nib
import numpy as np
import torch

from mvg_head.model import MVGModel
from commands.cli import main
from tests.mvg_head.conftest import small_config


def saved_model(path):
    torch.manual_seed(0)
    return MVGModel(small_config()).save_pretrained(path)


def test_mvg_volume_keeps_shape_and_geometry(tmp_path):
    model = saved_model(tmp_path / "model")
    rng = np.random.default_rng(0)
    affine = np.diag([-1.2, 1.0, 2.0, 1.0])  # LAS, anisotropic: must come back exactly
    affine[:3, 3] = [10, -5, 3]
    nib.save(nib.Nifti1Image(rng.random((30, 36, 12)).astype(np.float32), affine), tmp_path / "q.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((30, 36, 8)).astype(np.float32), np.eye(4)), tmp_path / "p.nii.gz")
    labels = np.zeros((30, 36, 8), np.int16)
    labels[5:15, 5:20] = 3
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "pl.nii.gz")
    for task, target in (("synthesis", "p.nii.gz"), ("segmentation", "pl.nii.gz")):
        code = main(["mvg", "--task", task, "--prompt-image", str(tmp_path / "p.nii.gz"), "--prompt-target",
                     str(tmp_path / target), "--image", str(tmp_path / "q.nii.gz"), "--out", str(tmp_path / f"{task}.nii.gz"),
                     "--model", str(model)])
        assert code == 0
        out = nib.load(tmp_path / f"{task}.nii.gz")
        assert out.shape == (30, 36, 12) and np.allclose(out.affine, affine)
    assert set(np.unique(np.asarray(nib.load(tmp_path / "segmentation.nii.gz").dataobj))) <= {0, 3}


def test_mvg_refuses_bad_input(tmp_path, capsys):
    model = saved_model(tmp_path / "model")
    np.save(tmp_path / "a.npy", np.zeros((64, 64), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((32, 32), np.float32))
    code = main(["mvg", "--task", "synthesis", "--prompt-image", str(tmp_path / "b.npy"), "--prompt-target",
                 str(tmp_path / "b.npy"), "--image", str(tmp_path / "a.npy"), "--out", str(tmp_path / "o.npy"),
                 "--model", str(model)])
    assert code == 2 and "prompt/query size mismatch" in capsys.readouterr().err


def test_mvg_eval_writes_the_issue_shape(tmp_path, dataset):
    model = saved_model(tmp_path / "model")
    code = main(["mvg-eval", "--model", str(model), "--out-dir", str(tmp_path / "eval"), "--episodes", "6",
                 "--image-episodes", "4"])
    assert code == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(result["segmentation"]) >= {"dice", "miou", "baseline"}
    assert set(result["segmentation"]["baseline"]) >= {"dice", "miou"}
    for task in ("denoising", "synthesis", "inpainting"):
        assert set(result[task]) >= {"psnr", "ssim", "mae", "baseline"}
        assert set(result[task]["baseline"]) >= {"psnr", "ssim", "mae"}
    assert (tmp_path / "eval" / "report.md").exists()


def test_mvg_eval_without_transforms(tmp_path, dataset):
    model = saved_model(tmp_path / "model")
    code = main(["mvg-eval", "--model", str(model), "--out-dir", str(tmp_path / "eval"), "--episodes", "4",
                 "--tasks", "segmentation", "--no-transforms"])
    assert code == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["setup"]["transforms"].startswith("none") and "denoising" not in result
    assert "as registered" in (tmp_path / "eval" / "report.md").read_text()
