"""segicl_commands.export: float16 copies that reload, a CrossConv network put in as the example prior (--prior), and
targets it refuses to delete."""
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


def saved_crossconv(folder: Path, seed: int) -> "CrossConvNet":
    from segicl.config import CrossConvConfig
    from segicl.incontext import CrossConvNet

    torch.manual_seed(seed)
    network = CrossConvNet(CrossConvConfig(widths=(4, 4)))
    network.save_pretrained(folder)
    return network


def test_export_with_a_prior_makes_that_crossconv_network_the_example_prior(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    network = saved_crossconv(tmp_path / "crossconv", seed=1)
    export(tmp_path / "model", tmp_path / "shipped", prior=tmp_path / "crossconv")
    reloaded = SegICLModel.from_pretrained(tmp_path / "shipped")
    assert reloaded.config.prior_source == "crossconv" and reloaded.config.crossconv == network.config
    for name, value in network.state_dict().items():
        assert torch.equal(reloaded.incontext.state_dict()[name], value.half().float()), name
    for name, value in tiny_model.persistent_state_dict().items():  # the rest of the model is the source's
        assert torch.equal(reloaded.state_dict()[name], value.half().float()), name
    other = saved_crossconv(tmp_path / "other", seed=2)  # a model with a prior gets the new one in its place
    export(tmp_path / "shipped", tmp_path / "again", prior=tmp_path / "other")
    again = SegICLModel.from_pretrained(tmp_path / "again")
    assert all(torch.equal(again.incontext.state_dict()[name], value.half().float())
               for name, value in other.state_dict().items())


def test_export_refuses_a_prior_that_is_no_crossconv_network_and_writes_nothing(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="^--prior: no CrossConv model at .*; it holds a SegICL model$"):
        export(tmp_path / "model", tmp_path / "shipped", prior=tmp_path / "model")
    saved_crossconv(tmp_path / "crossconv", seed=1)
    with pytest.raises(FileNotFoundError, match="no SegICL model at .*; it holds a CrossConv model"):
        export(tmp_path / "crossconv", tmp_path / "shipped", prior=tmp_path / "crossconv")
    assert not (tmp_path / "shipped").exists()


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
    saved_crossconv(tmp_path / "crossconv", seed=1)
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "with-prior"), "--prior",
                 str(tmp_path / "crossconv")]) == 0
    assert f"exported {tmp_path / 'model'} with the prior {tmp_path / 'crossconv'} -> {tmp_path / 'with-prior'}" in \
           capsys.readouterr().out
