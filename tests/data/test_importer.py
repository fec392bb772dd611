"""Importing a user's nnU-Net v2 / MSD dataset as a slice dataset: what comes out, and every refusal."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segicl_data.dataset import SliceDataset
from segicl_data.episodes import EpisodeConfig, EpisodeSampler
from segicl_data.importer import DatasetFormatError, ImportConfig, import_dataset, read_label_names


@pytest.fixture
def imported(imported_dataset) -> SliceDataset:
    return imported_dataset


@pytest.fixture
def small_dataset(dataset_writers):
    """small_dataset(root, count): a fresh nnU-Net folder of `count` labelled cases, to be broken by a test."""
    return lambda root, count=3: dataset_writers.nnunet(root / "Dataset002_Small", count=count, test_cases=0)


def edit_json(root: Path, **changes) -> None:
    description = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            description.pop(key)
        else:
            description[key] = value
    (root / "dataset.json").write_text(json.dumps(description))


def test_an_nnunet_dataset_becomes_a_slice_dataset_split_by_case(imported):
    volumes = imported.volumes
    assert len(volumes) == 4  # the fifth case is in imagesTs (unlabelled): not imported
    assert {info["split"] for info in volumes.values()} == {"train", "test"}
    assert sum(info["split"] == "test" for info in volumes.values()) == 1  # round(0.25 * 4)
    for row in imported.rows:
        assert row["split"] == volumes[row["volume"]]["split"]  # never slices of one case on both sides
        assert not row["held_out"]
    names = {row["name"] for row in imported.rows if row["kind"] != "multiclass"}
    assert names == {"thalamus", "caudate", "putamen"}
    multiclass = [row for row in imported.rows if row["kind"] == "multiclass"]
    assert len(multiclass) == 4 and multiclass[0]["label_ids"] == [1, 2, 3]
    assert imported.imported["unlabelled_test_images"] == ["colin_004"]
    image = imported.images("colin_000")
    assert image.shape[1:] == (64, 64) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_the_label_maps_keep_the_declared_values_and_the_structure_sizes_agree_across_cases(imported):
    labels = np.load(imported.root / "labels" / "colin_000" / "labels.npy")
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    # colin_001 is colin_000 flipped in voxel order with the affine flipped back: the same anatomy once oriented.
    thalamus = {row["volume"]: sum(row["areas"]) for row in imported.rows if row["name"] == "thalamus"}
    assert thalamus["colin_000"] == thalamus["colin_001"]
    first, flipped = imported.images("colin_000"), imported.images("colin_001")
    np.testing.assert_allclose(first, flipped, atol=1e-5)


def test_training_episodes_come_from_the_imported_cases_with_instructions_naming_the_labels(imported):
    sampler = EpisodeSampler(imported, EpisodeConfig(split="train", max_examples=2, min_area=16))
    episode = sampler[0]
    assert episode.structure in {"thalamus", "caudate", "putamen"}
    assert episode.structure in episode.instruction and "T1-weighted MRI" in episode.instruction
    test_volume = next(v for v, info in imported.volumes.items() if info["split"] == "test")
    assert all(sampler[i].meta["volume"] != test_volume for i in range(20))
    test = EpisodeSampler(imported, EpisodeConfig(split="test", structures="all", num_examples=2, max_examples=2))
    episode = test[0]
    assert episode.meta["volume"] == test_volume
    assert all(example["volume"] != test_volume for example in episode.meta["examples"])


def test_splits_final_json_gives_the_test_cases(tmp_path, small_dataset):
    root = small_dataset(tmp_path)
    (root / "splits_final.json").write_text(json.dumps([{"train": ["colin_000", "colin_002"], "val": ["colin_001"]}]))
    dataset = SliceDataset(import_dataset(root, tmp_path / "out", progress=False))
    assert [v for v, info in dataset.volumes.items() if info["split"] == "test"] == ["colin_001"]


def test_an_msd_dataset_imports_the_chosen_channel_of_its_4d_images(tmp_path, dataset_writers):
    root = dataset_writers.msd(tmp_path / "Task01_DeepGrey")
    first = SliceDataset(import_dataset(root, tmp_path / "t1", ImportConfig(channel="T1"), progress=False))
    second = SliceDataset(import_dataset(root, tmp_path / "inv", ImportConfig(channel="1"), progress=False))
    assert first.imported["layout"] == "msd" and first.imported["channel"] == "T1"
    assert {row["name"] for row in first.rows} >= {"thalamus", "caudate", "putamen"}
    a, b = first.images("deepgrey_000"), second.images("deepgrey_000")
    inside = a > 0.2
    assert np.corrcoef(a[inside], b[inside])[0, 1] < -0.5  # the inverted channel, not the first one
    with pytest.raises(ValueError, match="--channel 'T2' is not in"):
        import_dataset(root, tmp_path / "t2", ImportConfig(channel="T2"), progress=False)


def test_read_label_names_reads_both_conventions(tmp_path, nnunet_folder):
    assert read_label_names(nnunet_folder / "dataset.json") == {"thalamus": (1,), "caudate": (2,), "putamen": (3,)}
    msd = tmp_path / "dataset.json"
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "tumour"}}))
    assert read_label_names(msd) == {"liver": (1,), "tumour": (2,)}
    regions = tmp_path / "regions.json"
    regions.write_text(json.dumps({"channel_names": {"0": "FLAIR"}, "labels": {"background": 0, "edema": 1,
                                                                               "whole tumour": [1, 2]}}))
    assert read_label_names(regions) == {"edema": (1,), "whole tumour": (1, 2)}


def test_an_import_is_reused_and_an_other_folder_in_out_is_refused(tmp_path, small_dataset):
    root = small_dataset(tmp_path)
    out = import_dataset(root, tmp_path / "out", progress=False)
    stamp = (out / "manifest.jsonl").stat().st_mtime_ns
    assert import_dataset(root, tmp_path / "out", progress=False) == out
    assert (out / "manifest.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="already holds another dataset or import settings; pass --force"):
        import_dataset(root, tmp_path / "out", ImportConfig(axis="coronal"), progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not an imported dataset"):
        import_dataset(root, tmp_path / "busy", progress=False)


def _missing_key(root):
    edit_json(root, file_ending=None)


def _image_without_label(root):
    (root / "labelsTr" / "colin_001.nii.gz").unlink()


def _label_without_image(root):
    (root / "imagesTr" / "colin_001_0000.nii.gz").unlink()


def _no_channel_suffix(root):
    (root / "imagesTr" / "colin_001_0000.nii.gz").rename(root / "imagesTr" / "colin_001.nii.gz")


def _shape_mismatch(root):
    label = nib.load(root / "labelsTr" / "colin_001.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:-2], label.affine), root / "labelsTr" / "colin_001.nii.gz")


def _affine_mismatch(root):
    label = nib.load(root / "labelsTr" / "colin_001.nii.gz")
    moved = label.affine.copy()
    moved[0, 3] += 4.0
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), moved), root / "labelsTr" / "colin_001.nii.gz")


def _undeclared_value(root):
    label = nib.load(root / "labelsTr" / "colin_001.nii.gz")
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(values, label.affine), root / "labelsTr" / "colin_001.nii.gz")


def _unknown_ending(root):
    edit_json(root, file_ending=".nrrd")


def _unreadable(root):
    (root / "imagesTr" / "colin_001_0000.nii.gz").write_bytes(b"not a nifti file")


def _empty_label(root):
    label = nib.load(root / "labelsTr" / "colin_001.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine), root / "labelsTr" / "colin_001.nii.gz")


def _wrong_count(root):
    edit_json(root, numTraining=9)


def _msd_labels_in_v2(root):
    edit_json(root, labels={"0": "background", "1": "thalamus"})


REFUSALS = {
    "missing key": (_missing_key, r"dataset.json: missing key\(s\) \['file_ending'\]"),
    "image without label": (_image_without_label, r"colin_001_0000.nii.gz: image without a label .*colin_001.nii.gz missing"),
    "label without image": (_label_without_image, r"colin_001.nii.gz: label without an image"),
    "no _0000 suffix": (_no_channel_suffix, r"colin_001.nii.gz: nnU-Net v2 names images CASE_XXXX.nii.gz"),
    "shape mismatch": (_shape_mismatch, r"colin_001.nii.gz: label shape \(38, 40, 30\) differs from the image's \(40, 40, 30\)"),
    "affine mismatch": (_affine_mismatch, r"colin_001.nii.gz: label affine differs from the image's"),
    "undeclared value": (_undeclared_value, r"colin_001.nii.gz: label value\(s\) \[7\] are not declared in"),
    "unknown ending": (_unknown_ending, r"file_ending '.nrrd' is not supported"),
    "unreadable": (_unreadable, r"colin_001_0000.nii.gz: unreadable image"),
    "empty label map": (_empty_label, r"colin_001.nii.gz: the label map is empty"),
    "count": (_wrong_count, r"numTraining is 9 but 3 labelled cases were found"),
    "v1 labels in v2": (_msd_labels_in_v2, r"'labels' maps numbers to names, as MSD / nnU-Net v1 do"),
}


@pytest.mark.parametrize("problem", sorted(REFUSALS))
def test_a_malformed_dataset_is_refused_naming_the_file_and_nothing_is_left_behind(problem, tmp_path, small_dataset):
    root = small_dataset(tmp_path)
    breaks, message = REFUSALS[problem]
    breaks(root)
    with pytest.raises(ValueError, match=message):
        import_dataset(root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.partial-*"))


def test_a_dataset_of_one_case_or_without_dataset_json_is_refused(tmp_path, small_dataset):
    root = small_dataset(tmp_path, count=1)
    with pytest.raises(DatasetFormatError, match="a dataset of 1 labelled case"):
        import_dataset(root, tmp_path / "out", progress=False)
    (root / "dataset.json").unlink()
    with pytest.raises(DatasetFormatError, match="dataset.json not found"):
        import_dataset(root, tmp_path / "out", progress=False)
    shutil.rmtree(root)
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        import_dataset(root, tmp_path / "out", progress=False)
