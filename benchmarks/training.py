"""`segicl bench training`: training throughput of stage 1 and stage 2, one process against two processes
under DeepSpeed ZeRO-2 on this CPU, with the same global batch and the same episodes per step.

Each run is a real `accelerate launch` of the stage entry point. The single process uses all CPU threads and
`--batch-size B`; the DeepSpeed run uses 2 processes x 1 thread and `--batch-size B/2` each (the stages hand
rank r of step s episodes (2s + r) * B/2 ..., i.e. the same episodes per global step). Logged losses are
means over the processes, so the two loss curves can be compared directly (the diffusion noise differs per
rank, so they agree statistically, not bit for bit).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from segicl_data.model_folders import shown_path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"single": REPO / "accelerate_config.yaml", "deepspeed_zero2": REPO / "accelerate_deepspeed_zero2.yaml"}


def launch(stage: str, setup: str, out: Path, steps: int, batch_size: int, init: Path) -> dict:
    """Run one stage under one accelerate config; return its throughput and losses."""
    module = {"stage1": "segicl_stages.stage1_decoder", "stage2": "segicl_stages.stage2_encoder"}[stage]
    per_process = batch_size if setup == "single" else batch_size // 2
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS[setup]),
               "-m", module, "--output-dir", str(out), "--steps", str(steps),
               "--batch-size", str(per_process), "--warmup-steps", "2", "--log-every", "1",
               "--checkpoint-every", str(steps + 1)]
    command += ["--eval-masks", "8"] if stage == "stage1" else ["--init", str(init)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if setup == "deepspeed_zero2":
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{stage} ({setup}) failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return summarize_log(rows)


def summarize_log(rows: list[dict], skip: int = 2) -> dict:
    """Steps per second after the first `skip` steps (start-up), and mean losses at the start and the end."""
    if len(rows) <= skip + 1:
        raise ValueError(f"need more than {skip + 1} logged steps, got {len(rows)}")
    timed = rows[skip:]
    seconds = timed[-1]["elapsed_s"] - timed[0]["elapsed_s"]
    third = max(len(rows) // 3, 1)
    return {"steps": rows[-1]["step"], "steps_per_s": round((len(timed) - 1) / seconds, 4),
            "loss_first_third": round(float(np.mean([r["loss"] for r in rows[:third]])), 4),
            "loss_last_third": round(float(np.mean([r["loss"] for r in rows[-third:]])), 4),
            "losses": [round(r["loss"], 4) for r in rows]}


def run_training(args, log=print) -> dict:
    """Both stages, both setups; writes training.json into args.out_dir."""
    if args.batch_size % 2:
        raise ValueError(f"--batch-size must be even (split over 2 processes), got {args.batch_size}")
    result: dict = {}
    for stage in ("stage1", "stage2"):
        result[stage] = {}
        for setup in CONFIGS:
            run = launch(stage, setup, args.out_dir / "training" / f"{stage}_{setup}", args.steps, args.batch_size,
                         args.model)
            result[stage][setup] = run
            log(f"  {stage} {setup:16s}: {run['steps_per_s']:.3f} steps/s, loss {run['loss_first_third']:.3f} -> "
                f"{run['loss_last_third']:.3f}")
        result[stage]["deepspeed_over_single_speed"] = round(
            result[stage]["deepspeed_zero2"]["steps_per_s"] / result[stage]["single"]["steps_per_s"], 3)
    result["setting"] = (f"{args.steps} steps per run, global batch {args.batch_size}; single process with "
                         f"{torch.get_num_threads()} threads vs DeepSpeed ZeRO-2, 2 processes x 1 thread; stage 2 "
                         f"starts from `{shown_path(args.model)}`.")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "training.json").write_text(json.dumps(result, indent=1))
    return result
