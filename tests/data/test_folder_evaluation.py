"""Tests for data.folder_evaluation: hand-computed scores on small NIfTI label maps, the empty-class convention,
the summary files, and every refusal."""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from segicl_data.folder_evaluation import (
    CasePair,
    evaluate_case,
    evaluate_folders,
    list_cases,
    match_cases,
    read_label_table,
    summary_markdown,
    write_summary,
)
from segicl_data.imageio import read_image

SHAPE = (20, 24, 16)
# 2 mm voxels, a flipped first axis and an origin away from zero: distances must come from the affine.
AFFINE = np.array([[-2.0, 0, 0, 40.0], [0, 2.0, 0, -24.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]])
V2_LABELS = {"background": 0, "liver": 1, "tumour": 2, "both": [1, 2]}


def write_nifti(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.uint8), affine), str(path))
    return path


def cube(shift: int = 0) -> np.ndarray:
    """Class 1: a 6x6x6 cube (216 voxels), moved `shift` voxels along the first axis."""
    a = np.zeros(SHAPE, dtype=np.uint8)
    a[2 + shift : 8 + shift, 2:8, 2:8] = 1
    return a


def with_box(a: np.ndarray) -> np.ndarray:
    """Class 2 added: a 4x6x6 box (144 voxels) away from the cube."""
    a = a.copy()
    a[12:16, 4:10, 4:10] = 2
    return a


@pytest.fixture
def folders(tmp_path):
    """Three cases. a: class 1 shifted by 2 voxels (overlap 144 of 216), class 2 perfect. b: class 1 perfect,
    class 2 absent from both. c: class 1 perfect, class 2 only in the truth."""
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir(), truth.mkdir()
    for name, p, t in (("case_a", with_box(cube(2)), with_box(cube())), ("case_b", cube(), cube()),
                       ("case_c", cube(), with_box(cube()))):
        write_nifti(pred / f"{name}.nii.gz", p)
        write_nifti(truth / f"{name}.nii", t)  # endings may differ: cases match by name
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": V2_LABELS}))
    return pred, truth, labels


# ----------------------------------------------------------------------------- labels


def test_label_table_nnunet_v2_with_a_region_and_msd(tmp_path):
    v2, msd = tmp_path / "v2.json", tmp_path / "msd.json"
    v2.write_text(json.dumps({"labels": V2_LABELS, "numTraining": 3}))
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "tumour"}}))
    assert read_label_table(v2) == {"liver": (1,), "tumour": (2,), "both": (1, 2)}
    assert read_label_table(msd) == {"liver": (1,), "tumour": (2,)}


@pytest.mark.parametrize("labels, message", [
    ({"background": 0, "liver": "1"}, "label 'liver' has value '1'; expected a non-negative integer"),
    ({"background": 0, "liver": -1}, "label 'liver' has value -1"),
    ({"background": 0, "all": [0, 1]}, "region 'all' contains the background value 0"),
    ({"0": "background", "one": "liver"}, "label '0' has value 'background'"),
    ({"background": 0}, "declares no structure besides the background"),
    ({}, "declares no structure besides the background"),
])
def test_label_table_refusals(tmp_path, labels, message):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels}))
    with pytest.raises(ValueError, match=message):
        read_label_table(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read it as JSON"):
        read_label_table(path)
    with pytest.raises(FileNotFoundError, match="label file not found"):
        read_label_table(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- one case


def test_known_overlap_and_shift_in_mm(folders):
    pred, truth, _ = folders
    scores = evaluate_case(read_image(pred / "case_a.nii.gz"), read_image(truth / "case_a.nii"),
                           {"liver": (1,), "tumour": (2,), "both": (1, 2)}, tolerance=1.0)
    liver = scores["liver"]
    assert liver["dice"] == pytest.approx(2 * 144 / (216 + 216), abs=1e-6)  # 2/3
    assert liver["iou"] == pytest.approx(144 / (216 + 216 - 144), abs=1e-6)  # 1/2
    assert liver["hd95"] == pytest.approx(4.0)  # 2 voxels of 2 mm
    assert 0.0 < liver["nsd"] < 1.0
    assert (liver["n_pred"], liver["n_truth"]) == (216, 216)
    assert scores["tumour"] == pytest.approx({"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0,
                                              "n_pred": 144, "n_truth": 144})
    assert scores["both"]["dice"] == pytest.approx(2 * (144 + 144) / (360 + 360), abs=1e-6)  # the region


def test_spacing_scales_the_distances(tmp_path):
    """The same voxels at 1 mm: half the HD95; the 2 mm pair is fully within a 4 mm tolerance."""
    one_mm = np.diag([1.0, 1.0, 1.0, 1.0])
    p1, t1 = write_nifti(tmp_path / "p1.nii", cube(2), one_mm), write_nifti(tmp_path / "t1.nii", cube(), one_mm)
    p2, t2 = write_nifti(tmp_path / "p2.nii", cube(2)), write_nifti(tmp_path / "t2.nii", cube())
    at_1mm = evaluate_case(read_image(p1), read_image(t1), {"1": (1,)}, 1.0)["1"]
    at_2mm = evaluate_case(read_image(p2), read_image(t2), {"1": (1,)}, 1.0)["1"]
    assert (at_1mm["hd95"], at_2mm["hd95"]) == pytest.approx((2.0, 4.0))
    assert at_2mm["nsd"] < at_1mm["nsd"] < 1.0
    assert evaluate_case(read_image(p2), read_image(t2), {"1": (1,)}, 4.0)["1"]["nsd"] == pytest.approx(1.0)


def test_ignore_label_voxels_are_not_scored(tmp_path):
    """nnU-Net v2's "ignore" label: what the prediction says where the truth is 'ignore' does not count."""
    truth = cube()
    truth[8:10, 2:8, 2:8] = 3  # the part of the shifted cube outside the truth cube is 'ignore' ...
    truth[2:4, 2:8, 2:8] = 3  # ... and so is the part of the truth cube the prediction misses
    p, t = write_nifti(tmp_path / "p.nii", cube(2)), write_nifti(tmp_path / "t.nii", truth)
    scores = evaluate_case(read_image(p), read_image(t), {"liver": (1,), "ignore": (3,)}, 1.0)
    assert list(scores) == ["liver"]
    assert scores["liver"]["dice"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- folders


def test_folder_summary_means_skip_unscored_cases(folders):
    pred, truth, labels = folders
    summary = evaluate_folders(pred, truth, labels, tolerance=1.0, progress=False)
    assert summary["n_cases"] == 3 and summary["labels"] == {"liver": [1], "tumour": [2], "both": [1, 2]}
    per_case = {case["case"]: case["metrics"] for case in summary["metric_per_case"]}
    assert per_case["case_b"]["tumour"] == {"dice": None, "iou": None, "hd95": None, "nsd": None,
                                            "n_pred": 0, "n_truth": 0}  # absent from both: not scored
    assert per_case["case_c"]["tumour"]["dice"] == 0.0 and per_case["case_c"]["tumour"]["hd95"] is None
    assert summary["mean"]["liver"]["dice"] == pytest.approx((2 / 3 + 1 + 1) / 3, abs=1e-6)
    assert summary["mean"]["tumour"] == pytest.approx({"dice": 0.5, "iou": 0.5, "hd95": 0.0, "nsd": 0.5})
    assert summary["cases_scored"]["tumour"] == {"dice": 2, "iou": 2, "hd95": 1, "nsd": 2}
    assert summary["cases_scored"]["liver"]["hd95"] == 3
    class_means = [summary["mean"][name]["dice"] for name in ("liver", "tumour", "both")]
    assert summary["foreground_mean"]["dice"] == pytest.approx(np.mean(class_means))
    assert per_case["case_a"]["liver"]["hd95"] == pytest.approx(4.0)


def test_without_labels_every_value_found_is_a_class(folders):
    pred, truth, _ = folders
    summary = evaluate_folders(pred, truth, progress=False)
    assert summary["labels"] == {"1": [1], "2": [2]}
    per_case = {case["case"]: case["metrics"] for case in summary["metric_per_case"]}
    assert list(per_case["case_b"]) == ["1", "2"] and per_case["case_b"]["2"]["dice"] is None
    assert summary["cases_scored"]["2"]["dice"] == 2


def test_summary_files_parse_and_nothing_is_half_written(folders, tmp_path):
    pred, truth, labels = folders
    summary = evaluate_folders(pred, truth, labels, progress=False)
    json_path, md_path = write_summary(summary, pred)
    assert sorted(p.name for p in pred.iterdir() if not p.name.startswith("case")) == ["summary.json", "summary.md"]
    assert json.loads(json_path.read_text()) == summary  # valid JSON: null, never NaN
    table = md_path.read_text()
    assert table == summary_markdown(summary)
    assert "| tumour (2) | 0.500 (2/3) | 0.500 (2/3) | 0.00 (1/3) | 0.500 (2/3) |" in table
    assert "| both (1, 2) |" in table and "| foreground mean |" in table
    # A rerun with the summary files inside the prediction folder: they are not cases.
    assert evaluate_folders(pred, truth, labels, progress=False)["n_cases"] == 3
    before = sorted((p.name, p.read_bytes()) for p in pred.iterdir())
    with pytest.raises(ValueError):
        write_summary({**summary, "tolerance_mm": math.nan}, pred)  # NaN cannot be valid JSON
    assert sorted((p.name, p.read_bytes()) for p in pred.iterdir()) == before  # no temp file, old summary kept


# ----------------------------------------------------------------------------- refusals


def test_a_prediction_without_truth_is_named_and_extra_truth_cases_are_not_scored(folders):
    pred, truth, labels = folders
    write_nifti(truth / "case_d.nii.gz", cube())  # labelsTr holds every case; only the predicted ones are scored
    assert [pair.name for pair in match_cases(pred, truth)] == ["case_a", "case_b", "case_c"]
    (truth / "case_b.nii").unlink()
    with pytest.raises(ValueError) as error:
        match_cases(pred, truth)
    assert "case_b.nii.gz has no truth file" in str(error.value)


def test_case_matching_skips_other_files_and_refuses_duplicates(folders):
    pred, truth, _ = folders
    (pred / "plans.json").write_text("{}")
    (pred / "case_a.pkl").write_bytes(b"")
    assert [pair.name for pair in match_cases(pred, truth)] == ["case_a", "case_b", "case_c"]
    assert match_cases(pred, truth)[0] == CasePair("case_a", pred / "case_a.nii.gz", truth / "case_a.nii")
    write_nifti(pred / "case_a.nii", cube())
    with pytest.raises(ValueError, match="two files for case 'case_a'"):
        list_cases(pred)


def test_empty_and_missing_folders(tmp_path, folders):
    pred, truth, labels = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"no image files in {empty}"):
        evaluate_folders(empty, truth, labels, progress=False)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        evaluate_folders(tmp_path / "nowhere", truth, labels, progress=False)


def test_shape_mismatch(folders):
    pred, truth, labels = folders
    write_nifti(truth / "case_b.nii", cube()[:, :, :15])
    with pytest.raises(ValueError, match=r"shape mismatch: prediction .*case_b.nii.gz has shape \(20, 24, 16\), "
                                         r"truth .*case_b.nii has shape \(20, 24, 15\)"):
        evaluate_folders(pred, truth, labels, progress=False)


@pytest.mark.parametrize("change, what", [((0, 0, -2.5), "spacing"), ((1, 1, -2.0), "orientation"),
                                          ((2, 3, 11.0), "origin")])
def test_affine_mismatch(folders, change, what):
    pred, truth, labels = folders
    affine = AFFINE.copy()
    affine[change[0], change[1]] = change[2]
    write_nifti(truth / "case_c.nii", with_box(cube()), affine)
    with pytest.raises(ValueError, match=f"affine mismatch: the {what}.*case_c"):
        evaluate_folders(pred, truth, labels, progress=False)


def test_undeclared_label_value(folders):
    pred, truth, labels = folders
    stray = cube()
    stray[18, 20, 14] = 3
    write_nifti(pred / "case_b.nii.gz", stray)
    with pytest.raises(ValueError, match=r"case_b.nii.gz: label value 3 is not declared"):
        evaluate_folders(pred, truth, labels, progress=False)


def test_unreadable_and_non_label_files(folders):
    pred, truth, labels = folders
    (pred / "case_b.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match="case_b.nii.gz"):
        evaluate_folders(pred, truth, labels, progress=False)
    nib.save(nib.Nifti1Image(cube().astype(np.float32) * 0.5, AFFINE), str(pred / "case_b.nii.gz"))
    with pytest.raises(ValueError, match="case_b.nii.gz: not a label map: non-integer values"):
        evaluate_folders(pred, truth, labels, progress=False)
    (pred / "case_b.nii.gz").unlink()
    (pred / "case_b.mha").write_bytes(b"")
    with pytest.raises(ValueError, match=r"case_b.mha: unsupported ending '.mha'"):
        evaluate_folders(pred, truth, labels, progress=False)


def test_bad_tolerance(folders):
    pred, truth, labels = folders
    with pytest.raises(ValueError, match="tolerance must be"):
        evaluate_folders(pred, truth, labels, tolerance=-1.0, progress=False)
