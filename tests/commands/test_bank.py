"""`segicl bank add` / `list`: a corrected case joins an imported dataset's example bank with the importer's checks,
and the next bank draws on it."""
import re
import shutil

import nibabel as nib
import numpy as np
import pytest

from segicl_commands.cli import main
from segicl_data.bank import ExampleBank, bank_structures
from segicl_data.dataset import SliceDataset


@pytest.fixture
def dataset(imported_dataset, tmp_path):
    """A copy of the imported dataset (3 training cases) that a test may grow."""
    return shutil.copytree(imported_dataset.root, tmp_path / "deepgrey")


@pytest.fixture
def corrected(nnunet_folder, dataset_writers, tmp_path):
    """The dataset's unlabelled test case and its labels, as a user's corrected prediction."""
    _, truth, affine = dataset_writers.cases(5)[4]
    (tmp_path / "corrected").mkdir()
    nib.save(nib.Nifti1Image(truth.astype(np.uint8), affine), tmp_path / "corrected" / "colin_004.nii.gz")
    return nnunet_folder / "imagesTs" / "colin_004_0000.nii.gz", tmp_path / "corrected" / "colin_004.nii.gz"


def lending_cases(root) -> set[str]:
    dataset = SliceDataset(root)
    return {dataset.rows[row]["volume"] for row in bank_structures(dataset)["thalamus"].rows}


def test_a_corrected_case_joins_the_bank_and_lends_examples(dataset, corrected, capsys):
    before = lending_cases(dataset)
    assert main(["bank", "add", str(dataset), "--image", str(corrected[0]), "--label", str(corrected[1])]) == 0
    assert "added colin_004" in capsys.readouterr().out
    assert lending_cases(dataset) == before | {"colin_004"}
    bank = ExampleBank(SliceDataset(dataset), "thalamus", k=len(before) + 1)
    assert "colin_004" in bank.cases and len(bank.examples_for(5, 10)) == len(before) + 1
    assert main(["bank", "list", str(dataset)]) == 0
    assert f"thalamus (label 1): {len(before) + 1} case(s)" in capsys.readouterr().out


def test_a_case_of_the_same_name_is_refused_unless_replaced(dataset, corrected, capsys):
    arguments = ["bank", "add", str(dataset), "--image", str(corrected[0]), "--label", str(corrected[1])]
    assert main(arguments) == 0
    assert main(arguments) == 2
    assert "already has a case 'colin_004'; --replace" in capsys.readouterr().err
    assert main([*arguments, "--replace"]) == 0
    volumes = [row["volume"] for row in SliceDataset(dataset).volumes.values()]
    assert volumes.count("colin_004") == 1


def test_a_folder_of_corrections_is_added_case_by_case(dataset, corrected, nnunet_folder, capsys):
    assert main(["bank", "add", str(dataset), "--images", str(nnunet_folder / "imagesTs"), "--labels",
                 str(corrected[1].parent)]) == 0
    assert "colin_004" in lending_cases(dataset)


@pytest.mark.parametrize("label, message", [
    (np.zeros((8, 8, 4)), "the label map is empty"),
    (np.full((8, 8, 4), 9), r"label value\(s\) \[9\] are not declared"),
])
def test_labels_the_importer_would_refuse_are_refused_and_the_dataset_is_unchanged(dataset, corrected, tmp_path,
                                                                                  capsys, label, message):
    image = nib.load(corrected[0])
    full = np.zeros(image.shape, np.uint8)
    full[: label.shape[0], : label.shape[1], : label.shape[2]] = label
    nib.save(nib.Nifti1Image(full, image.affine), tmp_path / "bad.nii.gz")
    manifest = (dataset / "manifest.jsonl").read_bytes()
    assert main(["bank", "add", str(dataset), "--image", str(corrected[0]), "--label", str(tmp_path / "bad.nii.gz")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert (dataset / "manifest.jsonl").read_bytes() == manifest


@pytest.mark.parametrize("flags, message", [
    (["--image", "a.nii.gz"], "give --image with --label"),
    ([], "give one case (--image, --label) or two folders"),
])
def test_flags_that_do_not_name_cases_are_refused(dataset, flags, message, capsys):
    assert main(["bank", "add", str(dataset), *flags]) == 2
    assert message in capsys.readouterr().err


def test_the_built_in_dataset_takes_no_added_case(dataset, corrected, capsys):
    (dataset / "config.json").write_text('{"kind": "built"}')
    assert main(["bank", "add", str(dataset), "--image", str(corrected[0]), "--label", str(corrected[1])]) == 2
    assert "is not an imported dataset" in capsys.readouterr().err
