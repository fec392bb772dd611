"""segicl.volume: the volume-level API (`SegICLPipeline.segment`) on arrays and files, its postprocessing, and the
prompts it refuses."""
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from segicl.pipeline import SegICLPipeline
from segicl.volume import (Settings, VolumeSegmentation, keep_largest_component, label_map, postprocess,
                           uncertainty_score)

from .conftest import example

FAST = Settings(steps=1, samples=2, batch_size=8)


def test_label_map_takes_the_most_probable_class_above_one_half():
    probabilities = [np.array([[0.9, 0.2, 0.6]]), np.array([[0.7, 0.4, 0.8]])]
    np.testing.assert_array_equal(label_map(probabilities, [3, 7]), [[3, 0, 7]])


def test_keep_largest_component_keeps_the_largest_3d_piece():
    mask = np.zeros((4, 10, 10), np.uint8)
    mask[1:3, 2:5, 2:5] = 1  # 18 voxels over two slices: one piece
    mask[0, 8, 8] = mask[3, 0, 9] = 1  # specks on other slices
    kept = keep_largest_component(mask)
    assert kept.dtype == np.uint8 and kept.sum() == 18 and not kept[0].any() and not kept[3].any()
    assert not keep_largest_component(np.zeros((3, 5, 5), np.uint8)).any()


def test_postprocess_thresholds_one_structure_and_keeps_one_piece_per_class_of_a_label_map():
    first = np.zeros((3, 8, 8), np.float32)
    first[1, 1:4, 1:4] = 0.9
    first[0, 7, 7] = 0.8  # a speck of the first class
    second = np.zeros_like(first)
    second[1, 5:8, 5:8] = 0.7
    second[2, 0, 0] = 0.6  # a speck of the second class
    mask = postprocess([first], None)
    assert mask.dtype == np.uint8 and mask.sum() == 10
    assert postprocess([first], None, largest_component=True).sum() == 9
    labels = postprocess([first, second], [2, 5], largest_component=True)
    assert (labels == 2).sum() == 9 and (labels == 5).sum() == 9 and labels[0, 7, 7] == labels[2, 0, 0] == 0


def test_segment_an_array_slice_keeps_its_shape_and_equals_the_slice_pipeline(pipeline):
    image = np.random.default_rng(1).random((80, 72)).astype(np.float32) * 300
    examples = [example((70, 60))]
    result = pipeline.segment(image, "Segment the brain", examples, settings=FAST)
    assert isinstance(result, VolumeSegmentation) and result.slices == 1
    assert result.mask.shape == result.probabilities.shape == result.uncertainty.shape == (80, 72)
    assert result.mask.dtype == np.uint8 and set(np.unique(result.mask)) <= {0, 1}
    direct = pipeline(image, "Segment the brain", examples, num_samples=2, num_steps=1, batch_size=8)
    np.testing.assert_array_equal(result.probabilities, direct.probabilities)
    assert result.label_values == {"Segment the brain": 1}


def test_segment_a_nifti_volume_answers_on_its_grid_and_saves_its_geometry(pipeline, tmp_path):
    rng = np.random.default_rng(3)
    volume = np.zeros((40, 36, 6), np.float32)
    volume[6:34, 5:31, :] = rng.random((28, 26, 6)) * 100 + 50  # a foreground inside an empty border
    affine = np.diag([1.5, 1.2, 3.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 7.0]
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "scan.nii.gz")
    result = pipeline.segment(tmp_path / "scan.nii.gz", "Segment the brain", [example((64, 64))], settings=FAST)
    assert result.mask.shape == result.uncertainty.shape == volume.shape
    assert result.slices == 6
    written = nib.load(result.save(tmp_path / "mask.nii.gz"))
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), result.mask)
    assert nib.load(result.save(tmp_path / "unc.nii.gz", "uncertainty")).shape == volume.shape


def test_segment_with_a_dataset_bank_writes_a_label_map_of_its_values(pipeline, imported_dataset, nnunet_folder):
    image = nnunet_folder / "imagesTs" / "colin_004_0000.nii.gz"
    result = pipeline.segment(image, examples_from=imported_dataset.root, labels=["thalamus", "putamen"], k=1,
                              settings=FAST)
    assert result.mask.shape == nib.load(image).shape and result.mask.dtype == np.uint16
    assert set(result.label_values.values()) == {1, 3} and set(np.unique(result.mask)) <= {0, 1, 3}
    for structure in result.structures.values():
        assert structure["seconds"] > 0 and 0 <= structure["uncertainty"] <= 0.5


@pytest.mark.parametrize("prompt, message", [
    (dict(text=""), "--text is required"),
    (dict(text="x", label="thalamus"), "--label and --labels name structures of a dataset"),
    (dict(text="x", axis="oblique"), "unknown axis 'oblique'"),
    (dict(text="x", examples=[(np.ones((8, 8)), np.ones((8, 8)))], example_label="thalamus"),
     "is a name, which is looked up beside a mask file"),
    (dict(text="x", settings=Settings(steps=0)), "steps and samples must be >= 1"),
    (dict(text="x", settings=Settings(normalization="zscore")), "unknown normalization 'zscore'"),
])
def test_prompts_that_cannot_work_are_refused_with_the_reason(pipeline, prompt, message):
    with pytest.raises(ValueError, match=message):
        pipeline.segment(np.arange(256, dtype=np.float32).reshape(16, 16), **prompt)


def test_an_image_of_another_type_is_refused(pipeline):
    with pytest.raises(ValueError, match="image must be a path, a MedicalImage or a numpy array, got list"):
        pipeline.segment([[0.0, 1.0]], "Segment the brain")


def test_the_package_exports_both_pipelines_and_imports_neither_on_import():
    code = ("import sys, segicl; assert 'torch' not in sys.modules; "
            "from segicl import SegICLPipeline, MVGPipeline; print(SegICLPipeline.__name__, MVGPipeline.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SegICLPipeline", "MVGPipeline"]


def test_from_pretrained_without_a_folder_loads_the_shipped_weights():
    from segicl_weights import SEGICL_TINY

    shipped = SegICLPipeline.from_pretrained()
    assert shipped.model.config.to_dict() == SegICLPipeline.from_pretrained(SEGICL_TINY).model.config.to_dict()


def test_uncertainty_score_is_the_mean_spread_where_the_structure_may_be():
    probabilities = np.array([[0.0, 0.04, 0.5, 0.9]], np.float32)
    spread = np.array([[0.3, 0.3, 0.2, 0.1]], np.float32)
    assert uncertainty_score(probabilities, spread) == pytest.approx(0.15)
    assert uncertainty_score(np.zeros((2, 2)), np.ones((2, 2))) == 0.0
