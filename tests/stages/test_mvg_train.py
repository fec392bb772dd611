import json

import numpy as np
import pytest
import torch

from mvg_head.episodes import EpisodeOptions, MVGEpisodeSampler, TaskMix
from mvg_head.model import MVGModel
from mvg_head.training import MVGTrainingModule, make_batch_fn
from tests.mvg_head.conftest import small_config


class Interrupt(Exception):
    pass


def test_stage_entry_point_trains_saves_and_resumes(tmp_path, dataset, monkeypatch):
    """stages/mvg_train.py: interrupted after a checkpoint and resumed, it ends where an uninterrupted run ends."""
    from mvg_head import training
    from segicl_stages import mvg_train

    common = ["--width", "32", "--depth", "4", "--heads", "2", "--head-channels", "16", "--batch-size", "2",
              "--warmup-steps", "1", "--checkpoint-every", "2", "--log-every", "1", "--steps", "4"]
    assert mvg_train.main(common + ["--output-dir", str(tmp_path / "a")]) == 0
    original = training.make_batch_fn

    def crashing(*args, **kwargs):
        make_batch = original(*args, **kwargs)

        def batch(step, rank, world):
            if step == 2:
                raise Interrupt
            return make_batch(step, rank, world)
        return batch

    monkeypatch.setattr(training, "make_batch_fn", crashing)
    with pytest.raises(Interrupt):
        mvg_train.main(common + ["--output-dir", str(tmp_path / "b")])
    monkeypatch.setattr(training, "make_batch_fn", original)
    mvg_train.main(common + ["--output-dir", str(tmp_path / "b"), "--resume"])
    a = MVGModel.from_pretrained(tmp_path / "a" / "model").state_dict()
    b = MVGModel.from_pretrained(tmp_path / "b" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "a" / "train_summary.json").read_text())
    assert summary["steps"] == 4


def test_fine_tuning_with_the_prompt_label_skip_adds_it_and_chains_the_budget(tmp_path, dataset):
    """--init A --prompt-label-skip: the model gains the skip, starts from A's weights, and its summary (and the
    evaluation report's budget line) counts A's steps too."""
    from mvg_head.evaluation import training_budget
    from segicl_stages import mvg_train

    shape = ["--width", "32", "--depth", "4", "--heads", "2", "--head-channels", "16"]
    loop = ["--batch-size", "2", "--warmup-steps", "1", "--checkpoint-every", "2", "--log-every", "1"]
    assert mvg_train.main(shape + loop + ["--steps", "2", "--output-dir", str(tmp_path / "a")]) == 0
    assert mvg_train.main(loop + ["--steps", "3", "--init", str(tmp_path / "a" / "model"), "--prompt-label-skip",
                                  "--output-dir", str(tmp_path / "b")]) == 0
    a = MVGModel.from_pretrained(tmp_path / "a" / "model")
    b = MVGModel.from_pretrained(tmp_path / "b" / "model")
    assert not a.config.prompt_label_skip and b.config.prompt_label_skip
    assert b.head.label_refine[-1].weight.abs().sum() > 0  # trained, not left at its zero start
    summary = json.loads((tmp_path / "b" / "model" / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["total_steps"] == 5 and summary["init"]["steps"] == 2
    assert training_budget(summary).startswith("trained 5 steps in ")
    assert "the last 3 steps from" in training_budget(summary)


def test_init_keeps_the_saved_training_settings_and_refuses_shape_flags(tmp_path, dataset, capsys):
    """--init A: A's colouring stays unless a flag replaces it; a shape flag (which cannot apply) is refused."""
    from segicl_stages import mvg_train
    from segicl_stages.common import run_stage

    shape = ["--width", "32", "--depth", "4", "--heads", "2", "--head-channels", "16"]
    loop = ["--batch-size", "2", "--warmup-steps", "1", "--log-every", "1", "--steps", "1"]
    assert mvg_train.main(shape + loop + ["--colouring", "predefined", "--output-dir", str(tmp_path / "a")]) == 0
    init = ["--init", str(tmp_path / "a" / "model")]
    assert mvg_train.main(loop + init + ["--output-dir", str(tmp_path / "b")]) == 0
    assert MVGModel.from_pretrained(tmp_path / "b" / "model").config.colouring == "predefined"
    assert mvg_train.main(loop + init + ["--colouring", "random", "--output-dir", str(tmp_path / "c")]) == 0
    assert MVGModel.from_pretrained(tmp_path / "c" / "model").config.colouring == "random"
    code = run_stage(lambda: mvg_train.main(loop + init + ["--width", "64", "--output-dir", str(tmp_path / "d")]),
                     "mvg_train.py")
    assert code == 2
    assert "mvg_train.py: error: --width shapes a new model; with --init the saved model's shape is kept" in \
        capsys.readouterr().err
