"""Export a trained model folder as small shipped weights: the same layout, tensors stored in float16.

    python -m segicl.export runs/train-demo/stage2/model weights/segicl-tiny

Loading casts them back to the model's float32 parameters (SegICLModel.from_pretrained).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from segicl.model import WEIGHTS_NAME


def export(source: Path, target: Path) -> Path:
    if not (source / WEIGHTS_NAME).exists():
        raise FileNotFoundError(f"no trained model at {source} ({WEIGHTS_NAME} missing)")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(WEIGHTS_NAME, "llm_adapter"))
    state = load_file(source / WEIGHTS_NAME)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, target / WEIGHTS_NAME)
    size = (target / WEIGHTS_NAME).stat().st_size / 2**20
    print(f"exported {source} -> {target} ({size:.1f} MiB, float16)")
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    export(Path(sys.argv[1]), Path(sys.argv[2]))
