"""Stage-1 decoder: which diffusion parametrisation reaches the reconstruction target fastest?

Trains stage 1 with the same steps, batch and seed for each variant and measures reconstruction
Dice on held-out masks (test volume, held-out structures) with the same sampler.

    .venv/bin/python experiments/stage1_parametrisation/stage1_parametrisation.py --steps 800

A one-off study (README.md beside this file); not installed with the package.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segicl_stages import stage1_decoder

VARIANTS = {
    "epsilon": ["--prediction-type", "epsilon", "--mask-loss-weight", "0"],
    "sample": ["--prediction-type", "sample", "--mask-loss-weight", "0"],
    "sample+mask_loss": ["--prediction-type", "sample", "--mask-loss-weight", "1"],
    "v_prediction+mask_loss": ["--prediction-type", "v_prediction", "--mask-loss-weight", "1"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-masks", type=int, default=128)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("runs/experiments/stage1_parametrisation"))
    args = parser.parse_args()
    results = {}
    for name in args.variants:
        folder = args.out / name
        stage1_decoder.main(["--output-dir", str(folder), "--steps", str(args.steps), "--batch-size",
                             str(args.batch_size), "--eval-masks", str(args.eval_masks), "--checkpoint-every",
                             str(args.steps), *VARIANTS[name]])
        results[name] = json.loads((folder / "stage1_eval.json").read_text())
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    lines = ["| variant | steps | train s | reconstruction Dice (held-out, DDIM 10 x 1) |", "|---|---|---|---|"]
    for name, result in results.items():
        lines.append(f"| {name} | {result['train_steps']} | {result['train_wall_time_s']} | {result['reconstruction_dice']:.3f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
