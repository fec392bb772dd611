"""Train the in-context module alone: the UniverSeg-style cross-convolution network (`segicl.incontext`).

    accelerate launch --config_file accelerate_config.yaml stages/crossconv_train.py --output-dir runs/crossconv

On SegICL's own training episodes (training structures on training volumes, the same examples and random affines
as stage 2), with k drawn from 1..K. Trained this way it is the peer network of `segicl bench quality`; given to
stage 2 (`--crossconv`) it becomes SegICL's example prior. The trained network is saved to `<output-dir>/model`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from segicl_data.atomic import write_folder
from segicl_stages.common import (StageArgumentParser, add_dataset_argument, add_synthetic_argument,
                                  add_training_arguments, finished_line, make_accelerator, open_training_dataset,
                                  run_stage, train, training_arguments)


def build_parser() -> argparse.ArgumentParser:
    parser = StageArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=3, help="K: k is drawn from 1..K per episode")
    parser.add_argument("--min-area", type=int, default=16, help="minimum query structure area in pixels")
    parser.add_argument("--widths", type=int, nargs="+", default=None,
                        help="channels per scale, finest first (default: CrossConvConfig's 32 32 32 32)")
    parser.add_argument("--init", type=Path, default=None, help="continue from a saved CrossConv model folder")
    parser.add_argument("--absent-prob", type=float, default=0.0,
                        help="share of episodes whose query slice does not hold the structure (empty target), so that "
                             "the model learns to leave such slices empty, as whole volumes need")
    add_synthetic_argument(parser)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the built-in dataset's held-out-structure draw")
    add_dataset_argument(parser)
    add_training_arguments(parser, steps=6000, batch_size=8, learning_rate=1e-3, warmup_steps=100,
                           checkpoint_every=500, output_dir=Path("runs/crossconv"))
    return parser


def episode_batches(dataset, max_examples: int, min_area: int, batch_size: int, seed: int,
                    absent_prob: float = 0.0, synthetic_prob: float = 0.0):
    """make_batch(step, rank, world): deterministic episodes whose k cycles through 1..K (nested in k, as the
    samplers of stage 2 and of the benchmark are)."""
    from dataclasses import replace

    from segicl_data.episodes import EpisodeConfig, EpisodeSampler, collate_episodes

    if max_examples < 1:
        raise ValueError(f"--max-examples must be >= 1, got {max_examples}")
    base = EpisodeConfig(split="train", max_examples=max_examples, min_area=min_area, seed=seed,
                         absent_prob=absent_prob, synthetic_prob=synthetic_prob)
    samplers = [EpisodeSampler(dataset, replace(base, num_examples=k)) for k in range(1, max_examples + 1)]

    def make_batch(step: int, rank: int, world: int) -> dict:
        first = (step * world + rank) * batch_size
        batch = collate_episodes([samplers[(first + i) % max_examples][first + i] for i in range(batch_size)])
        return {key: batch[key] for key in ("example_images", "example_masks", "example_valid", "query_image",
                                            "query_mask")}

    return make_batch


def main(argv: list[str] | None = None) -> int:
    from segicl.config import CrossConvConfig
    from segicl.incontext import CrossConvNet
    from segicl.training import CrossConvTraining

    args = build_parser().parse_args(argv)
    training = training_arguments(args)
    accelerator = make_accelerator()
    torch.manual_seed(training.seed)
    if args.init is not None:
        network = CrossConvNet.from_pretrained(args.init)
        if args.widths and tuple(args.widths) != network.config.widths:
            raise ValueError(f"--widths {args.widths} differ from the --init model's {list(network.config.widths)}")
    else:
        network = CrossConvNet(CrossConvConfig(widths=tuple(args.widths)) if args.widths else CrossConvConfig())
    dataset = open_training_dataset(args.dataset, network.config.image_size, args.data_seed, accelerator)
    make_batch = episode_batches(dataset, args.max_examples, args.min_area, training.batch_size, training.seed,
                                 args.absent_prob, args.synthetic_prob)
    stage = CrossConvTraining(network)
    state = train(stage, make_batch, training, accelerator, network.config.to_dict(), description="crossconv")
    if accelerator.is_main_process:
        write_folder(Path(training.output_dir) / "model", accelerator.unwrap_model(stage).network.save_pretrained)
        print(finished_line("crossconv", state))
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, "crossconv_train.py"))
