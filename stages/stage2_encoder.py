"""Stage 2: train the multimodal encoder to regress the frozen teacher's condition tokens.

    accelerate launch --config_file accelerate_config.yaml stages/stage2_encoder.py \\
        --init runs/stage1/model --output-dir runs/stage2

The decoder and condition encoder (from stage 1) stay frozen. Episodes come from the foundation's
sampler: an instruction, k = 0..K examples with independent random affines, the query and its mask.
The trained model is saved to `<output-dir>/model`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from segicl_commands.arguments import apply_config_flags
from segicl_data.atomic import write_folder
from segicl_stages.common import (StageArgumentParser, add_dataset_argument, add_episode_arguments,
                           add_training_arguments, episode_batches, finished_line, make_accelerator,
                           open_training_dataset, run_stage, train, training_arguments)


def build_parser() -> argparse.ArgumentParser:
    parser = StageArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", type=Path, required=True, help="stage-1 model folder (runs/stage1/model)")
    parser.add_argument("--foreground-weight", type=float, default=4.0,
                        help="extra loss weight of condition tokens whose patch holds foreground")
    parser.add_argument("--decoder-loss-weight", type=float, default=0.0,
                        help="weight of the frozen decoder's reconstruction loss on the predicted tokens (0: off)")
    parser.add_argument("--example-prior", action="store_true",
                        help="add the example prior (gate over the union of the example masks) to an --init model "
                             "trained without it")
    parser.add_argument("--crossconv", type=Path, default=None,
                        help="a trained CrossConv folder (stages/crossconv_train.py) to become the example prior's "
                             "source (frozen), instead of the union of the example masks; switches the prior on")
    parser.add_argument("--examples-check-the-llm", action=argparse.BooleanOptionalAction, default=None,
                        help="at inference, answer each example from the others and follow the example prior alone "
                             "where it beats its mix with the LLM there (SegICLConfig.examples_check_the_llm; written "
                             "into the saved config, never used in training; default: the --init model's)")
    add_episode_arguments(parser, min_area=16, anonymous_name_prob=0.0, absent_prob=0.0)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the built-in dataset's held-out-structure draw")
    add_dataset_argument(parser)
    add_training_arguments(parser, steps=2000, batch_size=16, learning_rate=3e-4, checkpoint_every=200,
                           output_dir=Path("runs/stage2"))
    return parser


def main(argv: list[str] | None = None) -> int:
    from segicl.incontext import CrossConvNet
    from segicl.model import SegICLModel
    from segicl.training import Stage2Model

    args = build_parser().parse_args(argv)
    training = training_arguments(args)
    accelerator = make_accelerator()
    torch.manual_seed(training.seed)
    model = SegICLModel.from_pretrained(args.init)
    if args.example_prior:
        model.add_example_prior()
    if args.crossconv is not None:
        model.use_crossconv_prior(CrossConvNet.from_pretrained(args.crossconv))
    apply_config_flags(model, [("--examples-check-the-llm", "examples_check_the_llm", args.examples_check_the_llm)])
    dataset = open_training_dataset(args.dataset, model.config.condition.mask_size, args.data_seed, accelerator)
    stage = Stage2Model(model, args.foreground_weight, args.decoder_loss_weight)
    make_batch = episode_batches(model, dataset, args.max_examples, args.min_area, training.batch_size, training.seed,
                                 args.anonymous_name_prob, args.absent_prob, args.synthetic_prob)
    state = train(stage, make_batch, training, accelerator, model.config.to_dict(), description="stage 2")
    if accelerator.is_main_process:
        write_folder(Path(training.output_dir) / "model", accelerator.unwrap_model(stage).model.save_pretrained)
        print(finished_line("stage 2", state))
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, "stage2_encoder.py"))
