"""Export a trained model folder as small shipped weights: the same layout, tensors stored in float16.

    python -m segicl_commands.export runs/train-demo/stage2/model weights/segicl-tiny

Loading casts them back to the model's float32 parameters (SegICLModel.from_pretrained). An existing target is
replaced only when it is empty or an earlier export (a model folder). `segicl export SOURCE TARGET --prior CROSSCONV`
also makes a trained CrossConv network the SegICL model's example prior (how weights/segicl-tiny got its prior).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from segicl_commands.arguments import check_out_dir, exit_code
from segicl_data.model_folders import MODEL_CONFIGS, WEIGHTS_NAME, check_model_folder


def check_target(source: Path, target: Path) -> None:
    """The target may be new, empty, or an earlier export (a model folder, replaced); anything else is refused so
    that no unrelated file is deleted."""
    if target.resolve() == source.resolve():
        raise ValueError(f"the target {target} is the source itself")
    check_out_dir(target, flag="the target")
    if target.exists() and any(target.iterdir()) and not any((target / name).exists() for name in MODEL_CONFIGS.values()):
        raise ValueError(f"the target {target} is a non-empty folder that holds no saved model; choose a new folder")


def with_prior(source: Path, prior: Path, folder: Path) -> Path:
    """The SegICL model at `source` with the trained CrossConv network at `prior` as its example prior (in place of
    the one it was trained with, or of the union of its examples), saved to `folder`."""
    from segicl.incontext import CrossConvNet
    from segicl.model import SegICLModel

    check_model_folder(prior, "CrossConv", flag="--prior")
    network = CrossConvNet.from_pretrained(prior)
    model = SegICLModel.from_pretrained(source)
    model.use_crossconv_prior(network)
    return model.save_pretrained(folder)


def export(source: Path, target: Path, prior: Path | None = None) -> Path:
    """Copy the model at `source` to `target` as float16; with `prior` (a CrossConv model folder), a SegICL model
    gets that network as its example prior first."""
    if not (source / WEIGHTS_NAME).exists():
        raise FileNotFoundError(f"no trained model at {source} ({WEIGHTS_NAME} missing)")
    check_target(source, target)
    if prior is not None:
        with tempfile.TemporaryDirectory(prefix="segicl-export-") as staging:
            return copy_as_float16(with_prior(source, prior, Path(staging) / "model"), target,
                                   f"{source} with the prior {prior}")
    return copy_as_float16(source, target, str(source))


def copy_as_float16(source: Path, target: Path, what: str) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(WEIGHTS_NAME, "llm_adapter"))
    state = load_file(source / WEIGHTS_NAME)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, target / WEIGHTS_NAME)
    (target / WEIGHTS_NAME).chmod(0o644)  # shipped weights are world-readable like the rest of the repository
    size = (target / WEIGHTS_NAME).stat().st_size / 2**20
    print(f"exported {what} -> {target} ({size:.1f} MiB, float16)")
    return target


def main(source: Path, target: Path) -> int:
    export(source, target)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    sys.exit(exit_code(lambda: main(Path(sys.argv[1]), Path(sys.argv[2])), "segicl_commands.export"))
