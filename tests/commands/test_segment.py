"""`segicl segment` with a user's dataset: banks (--examples-from), every class in one request (--labels), 3-D example
volumes with --example-label, the output in the input's (oblique) geometry, and the refused flag combinations."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segicl_commands.cli import main

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "weights" / "segicl-tiny"


def oblique_copy(source: Path, target: Path) -> nib.Nifti1Image:
    """The same voxels under an oblique affine (rotated 20 degrees about two axes, anisotropic, shifted)."""
    image = nib.load(source)
    a, b = np.deg2rad(20), np.deg2rad(12)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ \
        np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 2.0, 2.5])
    affine[:3, 3] = [-40.0, 17.0, 3.0]
    oblique = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), affine)
    nib.save(oblique, target)
    return oblique


def test_labels_all_from_a_bank_writes_one_label_map_in_the_oblique_input_geometry(imported_dataset, nnunet_folder,
                                                                                 dataset_writers, tmp_path, capsys):
    """The shipped model on the dataset's unlabelled test case (imagesTs) under an oblique affine."""
    query = oblique_copy(nnunet_folder / "imagesTs" / "colin_004_0000.nii.gz", tmp_path / "query.nii.gz")
    code = main(["segment", "--image", str(tmp_path / "query.nii.gz"), "--examples-from", str(imported_dataset.root),
                 "--labels", "all", "-k", "3", "--out", str(tmp_path / "labels.nii.gz"), "--model", str(SHIPPED),
                 "--no-check-examples"])  # the geometry is under test here; the check triples this test's time
    assert code == 0
    out = capsys.readouterr().out
    assert "segmented 3 structure(s)" in out and '"Segment the putamen in this T1-weighted MRI slice.": 3' in out
    written = nib.load(tmp_path / "labels.nii.gz")
    assert written.shape == query.shape
    np.testing.assert_allclose(written.affine, query.affine, atol=1e-5)
    labels = np.asarray(written.dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    _, truth, affine = dataset_writers.cases(5)[4]
    (tmp_path / "truth").mkdir()
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(truth, query.affine), tmp_path / "truth" / "colin_004.nii.gz")
    (tmp_path / "labels.nii.gz").rename(tmp_path / "pred" / "colin_004.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"), "--labels",
                 str(nnunet_folder / "dataset.json")]) == 0
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    for name in ("thalamus", "caudate", "putamen"):  # the three structures land where they are (measured 0.54-0.73)
        assert summary["mean"][name]["dice"] > 0.35, summary["mean"]


def test_a_3d_example_volume_lends_position_matched_slices_and_example_label_picks_by_name(nnunet_folder, tiny_model,
                                                                                         tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "model")
    image = nnunet_folder / "imagesTr" / "colin_000_0000.nii.gz"
    labels = nnunet_folder / "labelsTr" / "colin_000.nii.gz"
    query = nnunet_folder / "imagesTr" / "colin_001_0000.nii.gz"
    outputs = {}
    for label in ("caudate", "2"):
        out = tmp_path / f"mask_{label}.nii.gz"
        assert main(["segment", "--image", str(query), "--text", "Segment the caudate", "--example", str(image),
                     str(labels), "--example-label", label, "--out", str(out), "--model", str(tmp_path / "model"),
                     "--samples", "1"]) == 0
        outputs[label] = np.asarray(nib.load(out).dataobj)
    np.testing.assert_array_equal(outputs["caudate"], outputs["2"])  # the name resolves to value 2 via dataset.json
    assert outputs["2"].shape == nib.load(query).shape
    code = main(["segment", "--image", str(query), "--text", "Segment it", "--example", str(image), str(labels),
                 "--example-label", "hippocampus", "--out", str(tmp_path / "x.nii.gz"), "--model",
                 str(tmp_path / "model")])
    assert code == 2
    assert "--example-label 'hippocampus' is not in" in capsys.readouterr().err
    code = main(["segment", "--image", str(query), "--text", "Segment it", "--example", str(image), str(labels),
                 "--out", str(tmp_path / "x.nii.gz"), "--model", str(tmp_path / "model")])
    assert code == 2
    err = capsys.readouterr().err
    assert "must be binary" in err and "--example-label" in err


@pytest.mark.parametrize("flags, message", [
    (["--label", "thalamus"], "--label and --labels name structures of a dataset: give it with --examples-from"),
    ([], "--text is required"),
    (["--examples-from", "DATA"], "--examples-from needs one of --label NAME"),
    (["--examples-from", "DATA", "--label", "a", "--labels", "all"], "--examples-from needs one of --label NAME"),
    (["--examples-from", "DATA", "--labels", "all", "--probabilities", "p.nii.gz"],
     "--probabilities and --uncertainty are written for one structure"),
    (["--examples-from", "DATA", "--label", "a", "--example", "i.png", "m.png"], "not both"),
    (["--examples-from", "DATA", "--label", "a", "-k", "-1"], "-k must be >= 0"),
])
def test_flag_combinations_that_cannot_work_are_refused_in_one_line(flags, message, imported_dataset, tmp_path,
                                                                    capsys):
    flags = [str(imported_dataset.root) if flag == "DATA" else flag for flag in flags]
    code = main(["segment", "--image", "q.nii.gz", "--out", str(tmp_path / "o.nii.gz"), "--model", str(SHIPPED),
                 *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_unknown_label_of_the_bank_is_refused_with_the_known_ones(imported_dataset, nnunet_folder, tmp_path, capsys):
    code = main(["segment", "--image", str(nnunet_folder / "imagesTs" / "colin_004_0000.nii.gz"), "--examples-from",
                 str(imported_dataset.root), "--label", "amygdala", "--out", str(tmp_path / "o.nii.gz"),
                 "--model", str(SHIPPED)])
    assert code == 2
    assert "no structure 'amygdala'" in capsys.readouterr().err


def test_largest_component_leaves_one_piece_per_class_of_the_label_map(imported_dataset, nnunet_folder, tmp_path):
    from scipy import ndimage

    image = nnunet_folder / "imagesTs" / "colin_004_0000.nii.gz"
    common = ["segment", "--image", str(image), "--examples-from", str(imported_dataset.root), "--labels", "all",
              "-k", "1", "--model", str(SHIPPED)]
    assert main([*common, "--out", str(tmp_path / "plain.nii.gz")]) == 0
    assert main([*common, "--largest-component", "--out", str(tmp_path / "kept.nii.gz")]) == 0
    plain = np.asarray(nib.load(tmp_path / "plain.nii.gz").dataobj)
    kept = np.asarray(nib.load(tmp_path / "kept.nii.gz").dataobj)
    for value in (1, 2, 3):
        pieces = ndimage.label(kept == value, structure=np.ones((3, 3, 3)))[1]
        assert pieces == 1 and ((kept == value) <= (plain == value)).all()


def test_register_examples_needs_two_examples_and_then_fuses_them(tmp_path, capsys):
    slice_, mask = REPO / "examples" / "mni152_thalamus_slice.png", REPO / "examples" / "mni152_thalamus_mask.png"
    query = REPO / "examples" / "colin27_thalamus_slice.png"
    common = ["segment", "--image", str(query), "--text", "Segment the thalamus", "--model", str(SHIPPED),
              "--register-examples", "--out"]
    assert main([*common, str(tmp_path / "one.png"), "--example", str(slice_), str(mask)]) == 2
    err = capsys.readouterr().err
    assert "registering the examples needs at least 2 examples" in err and "Traceback" not in err
    assert not (tmp_path / "one.png").exists()
    second = REPO / "examples" / "colin27_thalamus_mask.png"
    assert main([*common, str(tmp_path / "two.png"), "--example", str(slice_), str(mask),
                 "--example", str(query), str(second)]) == 0
    assert (tmp_path / "two.png").exists()
