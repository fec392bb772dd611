"""Stage 1: train the mask decoder (ControlNet + UNet) and the condition encoder on masks alone.

    accelerate launch --config_file accelerate_config.yaml stages/stage1_decoder.py --output-dir runs/stage1

Each mask is encoded into condition tokens and reconstructed from them by conditional diffusion.
At the end the whole model is saved to `<output-dir>/model` (stage 2 starts from it) and the
reconstruction Dice on HELD-OUT masks (test volume, held-out structures) is written to `stage1_eval.json`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from segicl_data.atomic import write_folder
from segicl_stages.common import (StageArgumentParser, add_dataset_argument, add_training_arguments,
                           make_accelerator, open_training_dataset, run_stage, train,
                           training_arguments)


def build_parser() -> argparse.ArgumentParser:
    parser = StageArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "full"),
                        help="model preset (full needs --sd-path, --llm-path and --clip-checkpoint)")
    parser.add_argument("--sd-path", default=None, help="local Stable Diffusion 1.5 directory (full preset)")
    parser.add_argument("--llm-path", default=None, help="local Qwen 7B folder (full preset)")
    parser.add_argument("--clip-checkpoint", default=None, help="local open_clip ViT-bigG-14 checkpoint (full preset)")
    parser.add_argument("--prediction-type", choices=("epsilon", "sample", "v_prediction"), default=None,
                        help="override the preset's diffusion parametrisation")
    parser.add_argument("--mask-loss-weight", type=float, default=None, help="override the preset's mask-loss weight")
    parser.add_argument("--min-area", type=int, default=16, help="minimum mask area (pixels) for training masks")
    parser.add_argument("--eval-min-area", type=int, default=64, help="minimum area of held-out evaluation masks")
    parser.add_argument("--eval-masks", type=int, default=128, help="held-out masks to evaluate on")
    parser.add_argument("--eval-steps", type=int, default=10, help="sampler steps at evaluation")
    parser.add_argument("--eval-samples", type=int, default=1, help="samples averaged at evaluation")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the built-in dataset's held-out-structure draw")
    add_dataset_argument(parser)
    add_training_arguments(parser, steps=2000, batch_size=16, learning_rate=5e-4, checkpoint_every=200,
                           output_dir=Path("runs/stage1"))
    return parser


def model_config(args: argparse.Namespace):
    from segicl.config import get_preset

    paths = {"sd_path": args.sd_path, "llm_path": args.llm_path, "clip_checkpoint": args.clip_checkpoint}
    config = get_preset(args.preset, **paths) if args.preset == "full" else get_preset(args.preset)
    overrides = {k: v for k, v in (("prediction_type", args.prediction_type),
                                   ("mask_loss_weight", args.mask_loss_weight)) if v is not None}
    config.decoder = dataclasses.replace(config.decoder, **overrides)
    return config.validate()


def mask_sampler(dataset, split: str, structures: str, min_area: int, seed: int, transform: bool = True):
    from segicl_data.episodes import EpisodeConfig, EpisodeSampler
    from segicl_data.transforms import SpatialTransformConfig

    return EpisodeSampler(dataset, EpisodeConfig(split=split, structures=structures, num_examples=0, max_examples=0,
                                                 min_area=min_area, seed=seed,
                                                 transform=SpatialTransformConfig() if transform else None))


def main(argv: list[str] | None = None) -> int:
    from segicl.evaluation import evaluate_reconstruction
    from segicl.model import SegICLModel
    from segicl.training import Stage1Model
    from segicl.tokenizer import build_tokenizer, corpus_from_dataset

    args = build_parser().parse_args(argv)
    training = training_arguments(args)
    config = model_config(args)
    accelerator = make_accelerator()
    dataset = open_training_dataset(args.dataset, config.condition.mask_size, args.data_seed, accelerator)
    tokenizer = build_tokenizer(corpus_from_dataset(dataset), config.llm.vocab_size)
    torch.manual_seed(training.seed)
    model = Stage1Model(SegICLModel.from_config(config, tokenizer))
    sampler = mask_sampler(dataset, "train", "train", args.min_area, training.seed)

    def make_batch(step: int, rank: int, world: int) -> dict:
        first = (step * world + rank) * training.batch_size
        return {"masks": torch.stack([torch.from_numpy(sampler[first + i].query_mask)
                                      for i in range(training.batch_size)])}

    state = train(model, make_batch, training, accelerator, config.to_dict(), description="stage 1")
    if accelerator.is_main_process:
        output = Path(training.output_dir)
        unwrapped = accelerator.unwrap_model(model).model
        write_folder(output / "model", unwrapped.save_pretrained)
        evaluation = evaluate_reconstruction(unwrapped, dataset, args.eval_masks, args.eval_min_area, args.eval_steps,
                                             args.eval_samples)
        result = {**evaluation,
                  "train_steps": state["step"], "train_wall_time_s": round(state["wall_time_s"], 1),
                  "prediction_type": config.decoder.prediction_type,
                  "mask_loss_weight": config.decoder.mask_loss_weight}
        (output / "stage1_eval.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, "stage1_decoder.py"))
