"""`segicl mvg` and `segicl mvg-eval` (segicl_commands.mvg; the test-split evaluation itself is mvg_head.evaluation)."""
import json

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from mvg_head.model import MVGModel
from segicl_commands.cli import main
from segicl_data.imageio import read_image
from segicl_data.volumes import to_model_slices
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


# ------------------------------------------------- --output-scale: image outputs in the query's intensity scale

CT_SLICE = get_testdata_file("CT_small.dcm")  # a real CT slice in HU (-896..1167)


def run_mvg(tmp_path, task, image, prompt, target, out, *flags):
    """`segicl mvg` with the shipped tiny weights (the default model); returns the exit code."""
    return main(["mvg", "--task", task, "--prompt-image", str(prompt), "--prompt-target", str(target), "--image",
                 str(image), "--out", str(tmp_path / out), *flags])


def ct_prompt(tmp_path):
    """A denoising prompt pair from the CT slice itself, in HU: noisy image -> clean image."""
    clean = to_model_slices(read_image(CT_SLICE))[0]
    noisy = clean + np.random.default_rng(0).normal(0, 40, clean.shape).astype(np.float32)
    np.save(tmp_path / "noisy.npy", noisy)
    np.save(tmp_path / "clean.npy", clean)
    return tmp_path / "noisy.npy", tmp_path / "clean.npy"


def test_mvg_ct_denoising_writes_hounsfield_units(tmp_path, capsys):
    prompt, target = ct_prompt(tmp_path)
    assert run_mvg(tmp_path, "denoising", CT_SLICE, prompt, target, "hu.nii.gz", "--normalization", "ct") == 0
    assert "in the query's intensity scale ([0, 1] -> [-100, 200])" in capsys.readouterr().out
    assert run_mvg(tmp_path, "denoising", CT_SLICE, prompt, target, "unit.nii.gz", "--normalization", "ct",
                   "--output-scale", "unit") == 0
    hounsfield = np.asarray(nib.load(tmp_path / "hu.nii.gz").dataobj)
    unit = np.asarray(nib.load(tmp_path / "unit.nii.gz").dataobj)
    assert hounsfield.shape == unit.shape == (128, 128)
    assert 0 <= unit.min() and unit.max() <= 1
    assert -100 <= hounsfield.min() and hounsfield.max() <= 200 and hounsfield.max() > 100
    np.testing.assert_allclose(hounsfield, unit * 300 - 100, atol=1e-4)


def test_mvg_mri_volume_scaled_by_1000_comes_back_on_its_scale(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("q", "p", "t"):
        volume = (rng.normal(100, 20, (40, 40, 4)).clip(0) * 1000).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / f"{name}.nii.gz")
    assert run_mvg(tmp_path, "synthesis", tmp_path / "q.nii.gz", tmp_path / "p.nii.gz", tmp_path / "t.nii.gz",
                   "out.nii.gz") == 0
    out = np.asarray(nib.load(tmp_path / "out.nii.gz").dataobj)
    low, high = np.percentile(np.asarray(nib.load(tmp_path / "q.nii.gz").dataobj), (0.5, 99.5))
    assert out.shape == (40, 40, 4) and low - 1 <= out.min() and out.max() <= high + 1 and out.max() > 1000


def test_mvg_png_query_to_png_keeps_its_grey_levels(tmp_path):
    image = (np.random.default_rng(2).random((64, 64)) * 200 + 20).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "q.png")
    for out in ("out.png", "out.npy"):
        assert run_mvg(tmp_path, "synthesis", tmp_path / "q.png", tmp_path / "q.png", tmp_path / "q.png", out) == 0
    grey = np.asarray(Image.open(tmp_path / "out.png"))
    np.testing.assert_array_equal(grey, np.rint(np.load(tmp_path / "out.npy")))
    assert grey.max() > 1  # the input's 0..255, not [0, 1]


def test_mvg_refuses_hounsfield_units_into_a_png(tmp_path, capsys):
    prompt, target = ct_prompt(tmp_path)
    assert run_mvg(tmp_path, "denoising", CT_SLICE, prompt, target, "o.png", "--normalization", "ct") == 2
    assert "a PNG holds 0..255" in capsys.readouterr().err and not (tmp_path / "o.png").exists()
    assert run_mvg(tmp_path, "denoising", CT_SLICE, prompt, target, "o.png", "--normalization", "ct",
                   "--output-scale", "unit") == 0


def test_mvg_segmentation_ignores_the_output_scale(tmp_path):
    image = np.random.default_rng(3).random((64, 64)).astype(np.float32) * 1000
    labels = np.zeros((64, 64), np.int16)
    labels[10:40, 10:40] = 3
    np.save(tmp_path / "q.npy", image)
    np.save(tmp_path / "l.npy", labels)
    for scale in ("input", "unit"):
        assert run_mvg(tmp_path, "segmentation", tmp_path / "q.npy", tmp_path / "q.npy", tmp_path / "l.npy",
                       f"{scale}.npy", "--output-scale", scale) == 0
    labelled = np.load(tmp_path / "input.npy")
    assert labelled.dtype == np.int64 and set(np.unique(labelled)) <= {0, 3}
    np.testing.assert_array_equal(labelled, np.load(tmp_path / "unit.npy"))


def test_mvg_segments_a_volume_from_a_prompt_case_of_an_imported_dataset(imported_dataset, nnunet_folder, tmp_path,
                                                                          capsys):
    import nibabel as nib

    query = nnunet_folder / "imagesTs" / "colin_004_0000.nii.gz"
    out = tmp_path / "labels.nii.gz"
    assert main(["mvg", "--task", "segmentation", "--prompt-from", str(imported_dataset.root), "--image", str(query),
                 "--out", str(out)]) == 0
    assert "prompt: case colin_000 of" in capsys.readouterr().out
    written = nib.load(out)
    assert written.shape == nib.load(query).shape
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 3}
    assert main(["mvg", "--task", "denoising", "--prompt-from", str(imported_dataset.root), "--image", str(query),
                 "--out", str(out)]) == 2
    assert "--task denoising needs --prompt-image and --prompt-target" in capsys.readouterr().err
    assert main(["mvg", "--task", "segmentation", "--image", str(query), "--out", str(out)]) == 2
    assert "give the prompt either as --prompt-image and --prompt-target, or with --prompt-from" in \
        capsys.readouterr().err
