"""The training stages on real data: losses fall, resume equals an uninterrupted run, DeepSpeed syncs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segicl.config import tiny_config
from segicl.model import SegICLModel
from segicl.training import Stage1Model, Stage2Model
from segicl.tokenizer import build_tokenizer, corpus_from_dataset
from segicl_stages.common import TrainingArguments, episode_batches, train
from segicl_stages.stage1_decoder import mask_sampler
from tests.stages.conftest import REPO, Interrupt, fresh_model, mean_loss, stage1_batches


def test_stage2_loss_falls_on_real_episodes(dataset, tokenizer, tmp_path):
    model = fresh_model(tokenizer)
    args = TrainingArguments(output_dir=tmp_path, steps=24, batch_size=4, learning_rate=1e-3, warmup_steps=3,
                             log_every=1, checkpoint_every=100)
    stage = Stage2Model(model)
    frozen_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    train(stage, episode_batches(model, dataset, 3, 16, 4, seed=0), args)
    assert mean_loss(tmp_path, first=False) < 0.8 * mean_loss(tmp_path, first=True)
    for name, value in model.decoder.state_dict().items():
        assert torch.equal(value, frozen_before[name]), f"stage 2 changed the frozen decoder: {name}"


def test_stage2_batches_carry_synthetic_tasks_at_the_stated_rate(dataset, tokenizer):
    """--synthetic-prob 1: every instruction names the synthetic task and every episode has examples."""
    from segicl_data.synthetic import SYNTHETIC_NAME

    model = fresh_model(tokenizer)
    batch = episode_batches(model, dataset, 3, 16, 8, seed=0, synthetic_prob=1.0)(0, 0, 1)
    assert batch["example_valid"].sum(dim=1).min() >= 1
    real = episode_batches(model, dataset, 3, 16, 8, seed=0)(0, 0, 1)
    assert not torch.equal(batch["text_ids"], real["text_ids"])
    assert SYNTHETIC_NAME.split()[0] in model.tokenizer.decode(batch["text_ids"][0].tolist())


def test_stage2_names_a_missing_or_wrong_kind_init_in_one_line(tmp_path, capsys):
    from segicl_stages.common import run_stage
    from segicl_stages.stage2_encoder import main

    mvg_folder = tmp_path / "mvg"
    mvg_folder.mkdir()
    (mvg_folder / "mvg_config.json").write_text("{}")
    for folder, message in ((tmp_path / "nope", "no SegICL model at"), (mvg_folder, "it holds an MVG model")):
        assert run_stage(lambda: main(["--init", str(folder), "--output-dir", str(tmp_path / "out")]),
                         "stage2_encoder.py") == 2
        err = capsys.readouterr().err
        assert err.startswith("stage2_encoder.py: error: ") and message in err and "Traceback" not in err


def test_stage2_fine_tunes_on_an_imported_dataset_and_says_so(imported_dataset, tmp_path, capsys):
    """`--dataset` (a `segicl data import` folder): 20 steps from the shipped weights, on the user's cases only."""
    from segicl_stages.stage2_encoder import main

    assert main(["--dataset", str(imported_dataset.root), "--init", str(REPO / "weights" / "segicl-tiny"),
                 "--output-dir", str(tmp_path / "run"), "--steps", "20", "--batch-size", "2", "--log-every", "5",
                 "--warmup-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert f"training on dataset DeepGrey ({imported_dataset.root}): 3 training volume(s), 3 structures" in out
    assert (tmp_path / "run" / "model" / "segicl_config.json").exists()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_a_stage_refuses_an_unknown_flag_or_a_dataset_of_another_resolution_in_one_line(imported_dataset, tmp_path,
                                                                                       capsys):
    from segicl_stages.common import run_stage
    from segicl_stages.stage1_decoder import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1  # no usage block
    assert err.strip().endswith("error: unrecognized arguments: --data-dir x (see --help)")
    folder = tmp_path / "big"
    from segicl_data.importer import ImportConfig, import_dataset

    import_dataset(Path(imported_dataset.imported["source"]), folder, ImportConfig(resolution=32), progress=False)
    assert run_stage(lambda: main(["--dataset", str(folder), "--output-dir", str(tmp_path / "o"), "--steps", "1"]),
                     "stage1_decoder.py") == 2
    assert "has 32 px slices but the model works at 64 px: import it again with --resolution 64" in capsys.readouterr().err


def test_stage2_saves_the_examples_check_without_checking_in_training(imported_dataset, tmp_path, monkeypatch):
    from segicl_stages.stage2_encoder import main

    def refuse(*args, **kwargs):
        raise AssertionError("training checked the LLM on the examples")

    monkeypatch.setattr(SegICLModel, "_errors_on_examples", refuse)
    assert main(["--dataset", str(imported_dataset.root), "--init", str(REPO / "weights" / "segicl-tiny"),
                 "--output-dir", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", "--warmup-steps", "1",
                 "--examples-check-the-llm"]) == 0
    model = SegICLModel.from_pretrained(tmp_path / "run" / "model")
    assert model.config.examples_check_the_llm and model.use_inference_only_settings


def test_stage2_refuses_an_inference_setting_naming_its_flag_before_training(tokenizer, tmp_path, capsys):
    from segicl_stages.common import run_stage
    from segicl_stages.stage2_encoder import main

    config = tiny_config()
    config.example_prior = False
    init = SegICLModel.from_config(config, tokenizer).save_pretrained(tmp_path / "without_prior")
    assert run_stage(lambda: main(["--init", str(init), "--output-dir", str(tmp_path / "out"),
                                   "--examples-check-the-llm"]), "stage2_encoder.py") == 2
    assert capsys.readouterr().err == ("stage2_encoder.py: error: --examples-check-the-llm: examples_check_the_llm "
                                       "needs example_prior: there is no prior to follow without it\n")
    assert not (tmp_path / "out").exists()
