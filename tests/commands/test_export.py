"""segicl_commands.export: float16 copies that reload, and targets it refuses to delete."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segicl_commands.export import export
from segicl.model import SegICLModel

REPO = Path(__file__).resolve().parents[2]


def test_export_halves_the_weights_and_reloads(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    export(tmp_path / "model", tmp_path / "shipped")
    reloaded = SegICLModel.from_pretrained(tmp_path / "shipped")
    for name, value in tiny_model.persistent_state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value.half().float()), name
    export(tmp_path / "model", tmp_path / "shipped")  # an earlier export is replaced
    assert (tmp_path / "shipped" / "segicl_config.json").exists()


def test_export_refuses_targets_it_would_destroy(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="non-empty folder that holds no saved model"):
        export(tmp_path / "model", notes)
    assert (notes / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="is the source itself"):
        export(tmp_path / "model", tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        export(tmp_path / "model", tmp_path / "afile")


def test_export_command_reports_a_missing_source_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "segicl_commands.export", str(tmp_path / "nope"), str(tmp_path / "out")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"segicl_commands.export: error: no trained model at {tmp_path / 'nope'} " \
                                    "(model.safetensors missing)"


def test_segicl_export_is_a_subcommand(tiny_model, tmp_path, capsys):
    from segicl_commands.cli import main

    tiny_model.save_pretrained(tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "exported")]) == 0
    assert "float16" in capsys.readouterr().out and (tmp_path / "exported" / "segicl_config.json").exists()
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "other")]) == 2
    assert "segicl export: error: no trained model at" in capsys.readouterr().err
