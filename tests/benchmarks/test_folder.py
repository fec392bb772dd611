"""segicl_benchmarks.folder: the folder it makes, its examples, and one real (small) run of the three commands."""
import json

import nibabel as nib
import numpy as np

from segicl_benchmarks.folder import run_folder, write_cases, write_examples
from segicl_data.imageio import read_image
from segicl_weights import SEGICL_TINY


def test_cases_are_distinct_nnunet_named_volumes_of_the_subject(dataset, tmp_path):
    paths = write_cases(dataset, "colin27", 3, tmp_path)
    assert [p.name for p in paths] == ["case000_0000.nii.gz", "case001_0000.nii.gz", "case002_0000.nii.gz"]
    volumes = [np.asarray(nib.load(p).dataobj) for p in paths]
    assert volumes[0].shape == (64, 64, dataset.volumes["colin27"]["n_slices"])
    assert not np.array_equal(volumes[0], volumes[1])


def test_examples_are_the_structures_largest_slices_with_their_masks(dataset, tmp_path):
    pairs = write_examples(dataset, "thalamus", 2, tmp_path)
    assert len(pairs) == 2
    for image, mask in pairs:
        mask_array = read_image(mask).array
        assert read_image(image).array.shape == mask_array.shape == (64, 64) and mask_array.any()


def test_a_small_run_times_every_command_and_writes_its_table(dataset, tmp_path):
    result = run_folder(dataset, tmp_path, cases=1, structure="thalamus", k=1, model=SEGICL_TINY, log=lambda _: None)
    assert json.loads((tmp_path / "folder.json").read_text()) == result
    assert result["cases"] == 1 and result["segment_per_case_s"] > 0 and result["predict_per_case_s"] > 0
    assert result["segment_over_predict"] == round(result["segment_per_case_s"] / result["predict_per_case_s"], 2)
    assert [p.name for p in (tmp_path / "folder" / "predict2").glob("*.nii.gz")] == ["case000.nii.gz"]
