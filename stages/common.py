"""The training loop shared by the stages: accelerate, AdamW + warmup/cosine, deterministic batches,
atomic safetensors checkpoints and exact resume.

Determinism: the batch of step s and the noise generator of step s are functions of (seed, s, rank)
only, so a run resumed from a checkpoint continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from segicl_commands.arguments import check_at_least, check_out_dir, exit_code
from segicl_stages.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint


@dataclass
class TrainingArguments:
    """Options common to every stage.

    Attributes:
        output_dir: where checkpoints and logs go.
        steps: optimisation steps in total (a resumed run continues to this count).
        batch_size: samples per process per step.
        learning_rate, weight_decay, warmup_steps: AdamW with linear warmup then cosine decay.
        seed: seeds model construction, batches and diffusion noise.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        log_every: steps between log lines in `log.jsonl`.
        resume: continue from `output_dir/checkpoint` when it exists.
        max_minutes: stop early (with a checkpoint) after this much wall time; None: no limit.
        grad_clip: gradient-norm clip.
    """

    output_dir: Path
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    resume: bool = False
    max_minutes: float | None = None
    grad_clip: float = 1.0

    def validate(self) -> "TrainingArguments":
        """Refuse values the loop cannot use, naming the flag."""
        check_at_least(self, steps=1, batch_size=1, checkpoint_every=1, log_every=1, warmup_steps=0)
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"--weight-decay and --grad-clip must be >= 0, got {self.weight_decay} and {self.grad_clip}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"--max-minutes must be > 0, got {self.max_minutes}")
        check_out_dir(self.output_dir, flag="--output-dir")
        return self


def add_training_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Command-line flags for every TrainingArguments field (stage-specific defaults override)."""
    base = TrainingArguments(output_dir=Path("runs/train"))
    for name, value in asdict(base).items():
        value = defaults.get(name, value)
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", default=value)
        elif name == "max_minutes":
            parser.add_argument(flag, type=float, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)


def training_arguments(args: argparse.Namespace) -> TrainingArguments:
    fields = TrainingArguments.__dataclass_fields__
    return TrainingArguments(**{name: getattr(args, name) for name in fields}).validate()


class StageArgumentParser(argparse.ArgumentParser):
    """A stage's parser: a refused flag is one line (and exit code 2), not the whole usage block, so that under
    `accelerate launch --quiet` the user reads just what was wrong."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, default=None,
                        help="a built or imported slice dataset folder (`segicl data import`: your own nnU-Net / MSD "
                             "dataset); default: the built-in atlas dataset")


def open_training_dataset(folder: Path | None, resolution: int, data_seed: int, accelerator):
    """The dataset a stage trains on: `folder` (a built or imported dataset, its resolution the model's), or the
    built-in atlas dataset; the main process says which."""
    from segicl_data.build import DatasetConfig
    from segicl_data.dataset import SliceDataset

    if folder is None:
        dataset = SliceDataset.build(DatasetConfig(resolution=resolution, seed=data_seed),
                                     progress=accelerator.is_main_process)
    else:
        dataset = SliceDataset(folder)
        if dataset.resolution != resolution:
            raise ValueError(f"--dataset {folder} has {dataset.resolution} px slices but the model works at {resolution} "
                             f"px: import it again with --resolution {resolution}")
    if accelerator.is_main_process:
        print(training_data_line(dataset))
    return dataset


def training_data_line(dataset) -> str:
    """"training on dataset DeepGrey (/path): 3 training volumes, 3 structures, axial 64 px"."""
    summary = dataset.summary()
    volumes = sum(1 for info in summary["volumes"].values() if info["split"] == "train")
    return (f"training on dataset {summary['name']} ({dataset.root}): {volumes} training volume(s), "
            f"{summary['structures']} structures, {summary['axis']} {summary['resolution']} px")


def run_stage(main: Callable[[], int], program: str) -> int:
    """A stage's entry point: a refused input or a missing file prints one line naming it and exits with 2."""
    return exit_code(main, program)


def make_accelerator():
    """An Accelerator that works on CPU (../shared/STACK.md).

    DeepSpeed (launched with accelerate_deepspeed_zero2.yaml) needs a gloo process group on CPU and no
    `cpu=True`; plain multi-process CPU runs (DDP over gloo) need `cpu=True`. Episodes with k = 0 leave the
    example-boundary embeddings without gradient, so DDP must look for unused parameters.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    use_cpu = not torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if use_cpu and distributed:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(cpu=use_cpu and not deepspeed, kwargs_handlers=handlers)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The noise generator of one step on one rank."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 101 + rank)


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in module.named_parameters() if p.requires_grad}


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def train(module: torch.nn.Module, make_batch: Callable[[int, int, int], dict], args: TrainingArguments,
          accelerator=None, config: dict | None = None, description: str = "training") -> dict:
    """Optimise the trainable parameters of `module`; `module(**batch, generator=g)` returns a dict with "loss".

    Returns the trainer state of the last step (step, recent losses, wall time).
    """
    from transformers import get_cosine_schedule_with_warmup

    accelerator = accelerator or make_accelerator()
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the module has no trainable parameters")
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=args.weight_decay)
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.steps)
    start_step = 0
    checkpoint = output / "checkpoint"
    if args.resume and has_checkpoint(checkpoint):
        if is_deepspeed(accelerator):
            raise ValueError("--resume is not supported under DeepSpeed (its optimizer state is sharded); "
                             "resume a single-process or multi-CPU run")
        model_state, trainer_state, optimizer_state = load_checkpoint(checkpoint)
        missing = set(trainable_state(module)) - set(model_state)
        if missing:
            raise ValueError(f"checkpoint {checkpoint} lacks trainable parameters, e.g. {sorted(missing)[:3]}")
        module.load_state_dict(model_state, strict=False)
        optimizer.load_state_dict(optimizer_state)
        lr_scheduler.load_state_dict(trainer_state["lr_scheduler"])
        start_step = trainer_state["step"]
        recent = list(trainer_state.get("recent_losses", []))
        if start_step > args.steps:
            raise ValueError(f"the checkpoint in {checkpoint} is at step {start_step}, beyond --steps {args.steps}: "
                             "raise --steps, or train into another --output-dir")
    else:
        recent = []
    if is_deepspeed(accelerator):
        # No dataloader goes through prepare(): DeepSpeed must be told the per-process batch size.
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.batch_size
    module, optimizer = accelerator.prepare(module, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes
    start_time = time.perf_counter()
    with contextlib.ExitStack() as files:  # the log is closed however the loop ends
        log = files.enter_context((output / "log.jsonl").open("a")) if accelerator.is_main_process else None
        progress = tqdm(range(start_step, args.steps), desc=description, initial=start_step, total=args.steps,
                        disable=None if accelerator.is_main_process else True)
        done = start_step
        for step in progress:
            module.train()
            batch = make_batch(step, rank, world)
            losses = module(**batch, generator=step_generator(args.seed, step, rank))
            accelerator.backward(losses["loss"])
            if args.grad_clip and not is_deepspeed(accelerator):
                accelerator.clip_grad_norm_(parameters, args.grad_clip)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # Logged values are means over all processes, so a multi-process run logs the same quantity.
            values = {name: float(accelerator.reduce(value.detach().reshape(1), "mean") if world > 1 else value.detach())
                      for name, value in losses.items()}
            recent = (recent + [values])[-50:]
            if log and (step + 1) % args.log_every == 0:
                log.write(json.dumps({"step": step + 1, **values, "lr": lr_scheduler.get_last_lr()[0],
                                      "elapsed_s": round(time.perf_counter() - start_time, 2)}) + "\n")
                log.flush()
                progress.set_postfix(loss=f"{values['loss']:.4f}")
            done = step + 1
            out_of_time = args.max_minutes is not None and time.perf_counter() - start_time > 60 * args.max_minutes
            if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps or out_of_time:
                _write_checkpoint(accelerator, module, optimizer, lr_scheduler, step + 1, args, config, recent)
            if out_of_time:
                break
    if world > 1:
        _write_rank_checksum(accelerator, module, output)
    return {"step": done, "recent_losses": recent, "wall_time_s": time.perf_counter() - start_time}


def finished_line(name: str, state: dict) -> str:
    """"stage 2: 700 steps in 818 s; last losses {...}": what a stage prints when `train` returns."""
    last = state["recent_losses"][-1] if state["recent_losses"] else "none recorded"
    return f"{name}: {state['step']} steps in {state['wall_time_s']:.0f} s; last losses {last}"


def _write_rank_checksum(accelerator, module, output: Path) -> None:
    """Each rank's sum and sum of squares of its trainable parameters: equal on all ranks when synced."""
    state = trainable_state(accelerator.unwrap_model(module))
    total = sum(float(v.double().sum()) for v in state.values())
    squares = sum(float(v.double().pow(2).sum()) for v in state.values())
    path = output / f"checksum_rank{accelerator.process_index}.json"
    path.write_text(json.dumps({"sum": total, "sum_of_squares": squares, "tensors": len(state),
                                "distributed_type": str(accelerator.distributed_type)}))


def _write_checkpoint(accelerator, module, optimizer, lr_scheduler, step: int, args: TrainingArguments,
                      config: dict | None, recent: list[dict[str, float]]) -> None:
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unwrapped = accelerator.unwrap_model(module)
    optimizer_state = None if is_deepspeed(accelerator) else optimizer.state_dict()
    trainer_state = {"step": step, "lr_scheduler": lr_scheduler.state_dict(), "seed": args.seed,
                     "args": {k: str(v) for k, v in asdict(args).items()}, "config": config or {},
                     "recent_losses": recent[-10:]}
    save_checkpoint(Path(args.output_dir) / "checkpoint", trainable_state(unwrapped), trainer_state, optimizer_state)


def add_episode_arguments(parser: argparse.ArgumentParser, min_area: int, anonymous_name_prob: float,
                          absent_prob: float) -> None:
    """The flags of the training episodes that stage 2 draws (`episode_batches`), with the stage's defaults."""
    parser.add_argument("--max-examples", type=int, default=3, help="K: k is drawn from 0..K per episode")
    parser.add_argument("--min-area", type=int, default=min_area, help="minimum query structure area in pixels")
    parser.add_argument("--anonymous-name-prob", type=float, default=anonymous_name_prob,
                        help="probability that an episode with examples names its structure with a made-up word, "
                             "so that only the examples say what to segment")
    parser.add_argument("--absent-prob", type=float, default=absent_prob,
                        help="share of episodes whose query slice does not hold the structure (empty target), so that "
                             "the model learns to leave such slices empty, as whole volumes need")
    add_synthetic_argument(parser)


def add_synthetic_argument(parser: argparse.ArgumentParser) -> None:
    """--synthetic-prob: the share of synthetic in-context tasks among the training episodes."""
    parser.add_argument("--synthetic-prob", type=float, default=0.0,
                        help="share of episodes that are synthetic tasks (random label maps with random intensities, "
                             "textures, bias, blur and noise; segicl_data.synthetic) instead of the dataset's; 0: off")


def episode_batches(model, dataset, max_examples: int, min_area: int, batch_size: int, seed: int,
                    anonymous_name_prob: float = 0.0, absent_prob: float = 0.0, synthetic_prob: float = 0.0):
    """make_batch(step, rank, world) for the training loop: deterministic episodes, tokenized."""
    from segicl_data.episodes import EpisodeConfig, EpisodeSampler, collate_episodes

    sampler = EpisodeSampler(dataset, EpisodeConfig(split="train", max_examples=max_examples, min_area=min_area,
                                                    seed=seed, anonymous_name_prob=anonymous_name_prob,
                                                    absent_prob=absent_prob, synthetic_prob=synthetic_prob))

    def make_batch(step: int, rank: int, world: int) -> dict:
        first = (step * world + rank) * batch_size
        batch = collate_episodes([sampler[first + i] for i in range(batch_size)])
        text_ids, text_mask = model.tokenize(batch.pop("instructions"))
        batch.pop("num_examples")
        return {"text_ids": text_ids, "text_mask": text_mask, **batch}

    return make_batch
