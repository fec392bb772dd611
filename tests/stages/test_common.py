"""The training stages on real data: losses fall, resume equals an uninterrupted run, DeepSpeed syncs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segicl.config import tiny_config
from segicl.model import SegICLModel
from segicl.training import Stage1Model, Stage2Model
from segicl.tokenizer import build_tokenizer, corpus_from_dataset
from segicl_stages.common import TrainingArguments, episode_batches, train
from segicl_stages.stage1_decoder import mask_sampler
from tests.stages.conftest import REPO, Interrupt, fresh_model, mean_loss, stage1_batches


def test_resume_equals_an_uninterrupted_run(dataset, tokenizer, tmp_path):
    batches = stage1_batches(dataset, 2)
    common = dict(steps=6, batch_size=2, learning_rate=1e-3, warmup_steps=2, checkpoint_every=3)
    straight = Stage1Model(fresh_model(tokenizer))
    train(straight, batches, TrainingArguments(output_dir=tmp_path / "straight", **common))

    def crash_at_step_4(step, rank, world):
        if step == 4:
            raise Interrupt
        return batches(step, rank, world)

    with pytest.raises(Interrupt):
        train(Stage1Model(fresh_model(tokenizer)), crash_at_step_4, TrainingArguments(output_dir=tmp_path / "r", **common))
    resumed = Stage1Model(fresh_model(tokenizer))
    state = train(resumed, batches, TrainingArguments(output_dir=tmp_path / "r", resume=True, **common))
    assert state["step"] == 6
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name


def test_deepspeed_zero2_two_processes_stay_in_sync(tokenizer, tmp_path):
    """Stage 2 for 2 steps under `accelerate launch` with DeepSpeed ZeRO-2, 2 CPU processes (gloo)."""
    pytest.importorskip("deepspeed")
    model = fresh_model(tokenizer)
    model.save_pretrained(tmp_path / "init")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_deepspeed_zero2.yaml"), str(REPO / "stages" / "stage2_encoder.py"),
               "--init", str(tmp_path / "init"), "--output-dir", str(tmp_path / "run"), "--steps", "2",
               "--batch-size", "2", "--warmup-steps", "1", "--checkpoint-every", "100"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = [json.loads((tmp_path / "run" / f"checksum_rank{r}.json").read_text()) for r in (0, 1)]
    assert "DEEPSPEED" in checksums[0]["distributed_type"]
    assert checksums[0] == checksums[1]
    # The run really trained: parameters moved away from the initial ones.
    start = sum(float(p.detach().double().sum()) for n, p in Stage2Model(fresh_model(tokenizer)).named_parameters()
                if p.requires_grad)
    assert checksums[0]["sum"] != pytest.approx(start, abs=1e-6)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "--steps must be >= 1, got 0"),
    ("batch_size", 0, "--batch-size must be >= 1, got 0"),
    ("checkpoint_every", 0, "--checkpoint-every must be >= 1, got 0"),
    ("log_every", 0, "--log-every must be >= 1, got 0"),
    ("learning_rate", 0.0, "--learning-rate must be > 0, got 0.0"),
    ("learning_rate", -1.0, "--learning-rate must be > 0, got -1.0"),
    ("max_minutes", 0.0, "--max-minutes must be > 0, got 0.0"),
])
def test_training_arguments_refuse_values_the_loop_cannot_use(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(output_dir=tmp_path, **{field: value}).validate()


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="afile exists and is not a folder"):
        TrainingArguments(output_dir=tmp_path / "afile").validate()


def test_resuming_a_finished_run_trains_nothing_and_reports_its_steps(dataset, tokenizer, tmp_path):
    batches = stage1_batches(dataset, 2)
    common = dict(output_dir=tmp_path, steps=3, batch_size=2, learning_rate=1e-3, warmup_steps=1, checkpoint_every=3)
    first = train(Stage1Model(fresh_model(tokenizer)), batches, TrainingArguments(**common))
    again = Stage1Model(fresh_model(tokenizer))
    state = train(again, batches, TrainingArguments(resume=True, **common))
    assert state["step"] == first["step"] == 3
    assert state["recent_losses"] == first["recent_losses"][-10:]  # the checkpoint's, not an empty list
    with pytest.raises(ValueError, match="is at step 3, beyond --steps 2"):
        train(Stage1Model(fresh_model(tokenizer)), batches, TrainingArguments(resume=True, **{**common, "steps": 2}))


def test_finished_line_names_steps_time_and_the_last_losses():
    from segicl_stages.common import finished_line

    state = {"step": 700, "wall_time_s": 818.4, "recent_losses": [{"loss": 1.5}, {"loss": 1.0}]}
    assert finished_line("stage 2", state) == "stage 2: 700 steps in 818 s; last losses {'loss': 1.0}"
    assert finished_line("crossconv", {**state, "recent_losses": []}).endswith("last losses none recorded")
