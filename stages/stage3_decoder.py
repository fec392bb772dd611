"""Stage 3: fine-tune the mask decoder on the condition the trained encoder predicts for episodes.

    accelerate launch --config_file accelerate_config.yaml stages/stage3_decoder.py \\
        --init runs/stage2d/model --pixel-inputs prior image --output-dir runs/stage3

Stage 1 trains the decoder on the teacher tokens of each mask; here it learns from what it is given at inference:
the LLM's condition tokens for an episode and, with `--pixel-inputs`, the example prior's probability map and the
query image at full resolution (ControlNet condition channels that start at zero weight, so training starts from
the --init model's predictions). The vision tower, LLM, projector, gate, condition encoder and in-context module
stay frozen. The trained model is saved to `<output-dir>/model`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


from segicl_stages.common import (StageArgumentParser, add_dataset_argument, add_episode_arguments,
                           add_training_arguments, episode_batches, finished_line, make_accelerator,
                           open_training_dataset, run_stage, train, training_arguments)


def build_parser() -> argparse.ArgumentParser:
    from segicl.config import PIXEL_INPUTS

    parser = StageArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", type=Path, required=True, help="a stage-2 model folder (runs/stage2d/model)")
    parser.add_argument("--pixel-inputs", nargs="*", choices=PIXEL_INPUTS, default=None,
                        help="maps the decoder reads at full resolution, switched on for an --init model without "
                             "them (nothing given: keep the --init model's)")
    add_episode_arguments(parser, min_area=64, anonymous_name_prob=0.5, absent_prob=0.15)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the built-in dataset's held-out-structure draw")
    add_dataset_argument(parser)
    add_training_arguments(parser, steps=700, batch_size=16, learning_rate=3e-4, checkpoint_every=100,
                           output_dir=Path("runs/stage3"))
    return parser


def main(argv: list[str] | None = None) -> int:
    from segicl.model import SegICLModel
    from segicl.training import Stage3Model

    args = build_parser().parse_args(argv)
    training = training_arguments(args)
    accelerator = make_accelerator()
    torch.manual_seed(training.seed)
    model = SegICLModel.from_pretrained(args.init)
    if args.pixel_inputs:
        model.add_pixel_inputs(tuple(args.pixel_inputs))
    dataset = open_training_dataset(args.dataset, model.config.condition.mask_size, args.data_seed, accelerator)
    stage = Stage3Model(model)
    make_batch = episode_batches(model, dataset, args.max_examples, args.min_area, training.batch_size, training.seed,
                                 args.anonymous_name_prob, args.absent_prob, args.absent_examples_prob,
                                 args.merged_structure_prob)
    state = train(stage, make_batch, training, accelerator, model.config.to_dict(), description="stage 3")
    if accelerator.is_main_process:
        accelerator.unwrap_model(stage).model.save_pretrained(Path(training.output_dir) / "model")
        print(finished_line("stage 3", state))
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, "stage3_decoder.py"))
