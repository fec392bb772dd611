from pathlib import Path

from segicl_data.model_folders import REPOSITORY, shown_path


def test_paths_inside_the_repository_are_shown_relative_to_it(tmp_path, monkeypatch):
    assert shown_path(REPOSITORY / "weights" / "segicl-tiny") == "weights/segicl-tiny"
    monkeypatch.chdir(REPOSITORY)
    assert shown_path(Path("weights/segicl-tiny")) == "weights/segicl-tiny"
    assert shown_path(tmp_path / "model") == str(tmp_path / "model")  # the user's own path, as given
