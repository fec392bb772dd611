import json

import pytest

from segicl.cli import build_parser, main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "baseline", "demo"):
        assert command in out


def test_data_summary_as_json(dataset, capsys):
    assert main(["data", "--json", "--cache-dir", str(dataset.root.parent)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["structures"] == dataset.summary()["structures"]


def test_bad_arguments_are_reported_not_raised(capsys):
    assert main(["data", "--resolution", "4"]) == 2
    assert "resolution must be at least 16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "--axis", "oblique"])


def test_baseline_writes_json(dataset, tmp_path, capsys):
    out = tmp_path / "baseline.json"
    assert main(["baseline", "--episodes", "10", "--cache-dir", str(dataset.root.parent), "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert set(table) == {"with_transforms", "without_transforms"}
    assert set(table["with_transforms"]) == {"train_structures", "held_out_structures"}
    assert "copy-example baseline" in capsys.readouterr().out
