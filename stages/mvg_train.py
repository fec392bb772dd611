"""Train the MVG engine: masked image modelling + autoregressive training on the four tasks (paper Sec. 3.3, 4.1).

    accelerate launch --config_file accelerate_config.yaml stages/mvg_train.py --output-dir runs/mvg/train

Smooth-L1 loss, AdamW (weight decay 0.05) with warmup + cosine, safetensors checkpoints in
`<output-dir>/checkpoint` (`--resume` continues bit-identically), the trained model in `<output-dir>/model`.
The shared loop is `segicl_stages.common.train`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from segicl_data.atomic import write_folder, write_text
from segicl_stages.common import (StageArgumentParser, add_dataset_argument, add_training_arguments,
                           make_accelerator, open_training_dataset, run_stage, train,
                           training_arguments)


def build_parser() -> argparse.ArgumentParser:
    from mvg_head.config import COLOURINGS, TASKS

    parser = StageArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "full"), help="model preset")
    parser.add_argument("--mae-checkpoint", default=None, help="local MAE checkpoint (full preset: ViT-L/16 .pth)")
    parser.add_argument("--init", type=Path, default=None, help="start from a saved MVG model folder")
    for name in ("width", "depth", "heads", "head-channels"):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"override the preset's ViT {name}")
    parser.add_argument("--pixel-skip", action=argparse.BooleanOptionalAction, default=None,
                        help="the head's full-resolution view of the input image (MVGConfig.pixel_skip); "
                             "default: the preset's")
    parser.add_argument("--prompt-label-skip", action=argparse.BooleanOptionalAction, default=None,
                        help="the head also reads the previous pair's label at full resolution (MVGConfig."
                             "prompt_label_skip; with --init, switches it on for a model trained without it)")
    parser.add_argument("--copy-weight", type=float, default=None,
                        help="loss weight of label pixels that copy the input (MVGConfig.copy_weight; 1: the paper's)")
    parser.add_argument("--colouring", choices=COLOURINGS, default=None,
                        help="segmentation label colouring (default: the preset's, random; with --init: the model's)")
    parser.add_argument("--mask-ratio", type=float, default=None,
                        help="masked image modelling ratio (default: the preset's, 0.75 as the paper; with --init: "
                             "the model's)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks to train on")
    parser.add_argument("--segmentation-probability", type=float, default=0.5, help="share of segmentation episodes")
    parser.add_argument("--task-weight", nargs=2, action="append", metavar=("TASK", "WEIGHT"), default=[],
                        help="relative draw weight of a non-segmentation task (default 1 each), e.g. denoising 2")
    parser.add_argument("--other-autoregressive", type=float, default=0.1,
                        help="autoregressive share of the non-segmentation tasks (paper: 0.1)")
    parser.add_argument("--min-area", type=int, default=64, help="minimum structure area on training query slices")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the built-in dataset's held-out-structure draw")
    add_dataset_argument(parser)
    add_training_arguments(parser, steps=1500, batch_size=8, learning_rate=1e-3, weight_decay=0.05, warmup_steps=75,
                           checkpoint_every=100, output_dir=Path("runs/mvg/train"))
    return parser


def model_config(args: argparse.Namespace):
    from mvg_head.config import get_preset

    extra = {"mae_checkpoint": args.mae_checkpoint} if args.preset == "full" else {}
    names = SHAPE_FLAGS + ("prompt_label_skip",) + TRAINING_FLAGS
    extra.update({name: getattr(args, name) for name in names if getattr(args, name) is not None})
    return get_preset(args.preset, **extra)


SHAPE_FLAGS = ("width", "depth", "heads", "head_channels", "pixel_skip")  # fixed by a saved model
TRAINING_FLAGS = ("colouring", "mask_ratio", "copy_weight")  # a saved model keeps its own unless given


def initial_model(args: argparse.Namespace):
    """The model a run starts from: --init's (its shape kept; the training flags given replace its own), or a new
    one from the preset."""
    from mvg_head.model import MVGModel

    if not args.init:
        return MVGModel.from_config(model_config(args))
    given = [name for name in SHAPE_FLAGS if getattr(args, name) is not None]
    if given:
        raise ValueError(f"--{given[0].replace('_', '-')} shapes a new model; with --init the saved model's shape "
                         "is kept (drop the flag, or train from scratch)")
    model = MVGModel.from_pretrained(args.init).train()
    overrides = {name: getattr(args, name) for name in TRAINING_FLAGS if getattr(args, name) is not None}
    model.config = dataclasses.replace(model.config, **overrides)
    if args.prompt_label_skip:
        model.add_prompt_label_skip()
    return model


def chain_summary(summary: dict, init: Path) -> dict:
    """A run started from `init` adds that model's budget: total steps and wall time of the whole chain, with the
    earlier run's summary under "init" (so exported weights carry what they cost)."""
    path = Path(init) / "train_summary.json"
    if not path.exists():
        return {**summary, "init": str(init)}
    before = json.loads(path.read_text())
    return {**summary, "total_steps": before.get("total_steps", before["steps"]) + summary["steps"],
            "total_train_wall_time_s": round(before.get("total_train_wall_time_s", before["train_wall_time_s"])
                                             + summary["train_wall_time_s"], 1),
            "init": {"path": str(init), **before}}


def main(argv: list[str] | None = None) -> int:
    from mvg_head.episodes import EpisodeOptions, MVGEpisodeSampler, TaskMix
    from mvg_head.model import MVGModel
    from mvg_head.training import MVGTrainingModule, make_batch_fn

    args = build_parser().parse_args(argv)
    training = training_arguments(args)
    accelerator = make_accelerator()
    torch.manual_seed(training.seed)
    model = initial_model(args)
    config = model.config
    dataset = open_training_dataset(args.dataset, config.image_size, args.data_seed, accelerator)
    sampler = MVGEpisodeSampler(dataset, EpisodeOptions(split="train", colouring=config.colouring,
                                                        palette_levels=config.palette_levels,
                                                        min_area=args.min_area, seed=training.seed))
    mix = TaskMix(segmentation_probability=args.segmentation_probability,
                  other_autoregressive=args.other_autoregressive, tasks=tuple(args.tasks),
                  other_weights={task: float(weight) for task, weight in args.task_weight})
    make_batch = make_batch_fn(sampler, mix, training.batch_size, training.seed)
    record = {"model": config.to_dict(), "mix": dataclasses.asdict(mix), "min_area": args.min_area,
              "threads": torch.get_num_threads()}
    state = train(MVGTrainingModule(model), make_batch, training, accelerator, record, description="MVG")
    if accelerator.is_main_process:
        output = Path(training.output_dir)
        summary = {"steps": state["step"], "train_wall_time_s": round(state["wall_time_s"], 1),
                   "threads": torch.get_num_threads(), "batch_size": training.batch_size,
                   "final_losses": state["recent_losses"][-1] if state["recent_losses"] else {}}
        if args.init:
            summary = chain_summary(summary, args.init)
        summary_text = json.dumps(summary, indent=1)

        def write_model(folder: Path) -> None:  # the model folder carries its training budget into exports
            model.save_pretrained(folder)
            (folder / "train_summary.json").write_text(summary_text)

        write_folder(output / "model", write_model)
        write_text(output / "train_summary.json", summary_text)
        print(summary_text)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, "mvg_train.py"))
