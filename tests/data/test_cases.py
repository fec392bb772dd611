"""segicl_data.cases: the cases of an input folder (nnU-Net channel naming, DICOM series folders) and their shares."""
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from segicl_data.cases import list_input_cases, shard


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"")


def test_nnunet_channels_plain_files_and_dicom_series_are_cases(tmp_path):
    touch(tmp_path, "liver_1_0000.nii.gz", "liver_1_0001.nii.gz", "brain.nii", "slice.png", "notes.txt", ".hidden.nii")
    series = tmp_path / "ct_series"
    series.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), series / "1.dcm")
    (tmp_path / "empty_folder").mkdir()
    cases = {case.name: case for case in list_input_cases(tmp_path)}
    assert sorted(cases) == ["brain", "ct_series", "liver_1", "slice"]
    assert cases["liver_1"].path.name == "liver_1_0000.nii.gz"
    assert cases["liver_1"].output(tmp_path / "out") == tmp_path / "out" / "liver_1.nii.gz"
    assert cases["ct_series"].output(Path("o"), "uncertainty") == Path("o/ct_series_uncertainty.nii.gz")
    assert cases["slice"].output(Path("o")) == Path("o/slice.png") and cases["brain"].output_ending == ".nii.gz"


@pytest.mark.parametrize("names, message", [
    (["a.nii", "a.nii.gz"], "two inputs for case 'a'"),
    (["a_0001.nii.gz"], r"has channels \['0001'\] but no _0000"),
    (["a.nii.gz", "a_0000.nii.gz"], "is both a plain file"),
    (["notes.txt"], "no cases in"),
])
def test_folders_that_do_not_say_what_the_cases_are_are_refused(tmp_path, names, message):
    touch(tmp_path, *names)
    with pytest.raises(ValueError, match=message):
        list_input_cases(tmp_path)


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="input folder not found"):
        list_input_cases(tmp_path / "nope")


def test_shards_cover_every_case_once():
    cases = list(range(7))
    parts = [shard(cases, 3, part) for part in range(3)]
    assert sorted(sum(parts, [])) == cases and [len(p) for p in parts] == [3, 2, 2]
    with pytest.raises(ValueError, match="--part-id must be in 0..2 for --num-parts 3, got 3"):
        shard(cases, 3, 3)
