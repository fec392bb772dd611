"""The Makefile's training targets: each runs its shipped recipe through `segicl train` (`make -n` prints the commands
without running them; the recipes themselves are tested in tests/commands/test_train.py), and the MVG ablation loop,
which launches its stage directly, gives it only flags it accepts."""
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from segicl_commands.train import shipped_recipes

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def printed(target: str, *variables: str) -> list[list[str]]:
    """The shell lines of `make -n TARGET` that train (the install prerequisite's lines left out)."""
    out = subprocess.run(["make", "-n", "-C", str(REPO), target, "VENV=/nonexistent-venv", *variables],
                         capture_output=True, text=True, check=True).stdout
    return [shlex.split(line) for line in out.replace("\\\n", " ").splitlines()
            if "/bin/segicl train " in line or "segicl_stages." in line]


@pytest.mark.parametrize("target, recipe, output_dir", [("train-demo", "segicl-tiny", "runs/train-demo"),
                                                        ("train-crossconv", "crossconv-tiny", "runs/train-demo"),
                                                        ("train-mvg", "mvg-tiny", "runs/mvg")])
def test_each_training_target_runs_its_shipped_recipe(target, recipe, output_dir):
    assert recipe in shipped_recipes()
    assert printed(target) == [["/nonexistent-venv/bin/segicl", "train", "--recipe", recipe, "--output-dir", output_dir,
                                "--weights-dir", "weights"]]
    (line,) = printed(target, "TRAIN_DIR=t", "MVG_TRAIN_DIR=t", "WEIGHTS_DIR=w", "TRAIN_ARGS=--dry-run")
    assert line[-5:] == ["--output-dir", "t", "--weights-dir", "w", "--dry-run"]


def test_the_mvg_ablation_gives_its_stage_only_flags_it_accepts():
    from segicl_stages.mvg_train import build_parser

    (loop,) = printed("mvg-ablation")
    launches = [index for index, word in enumerate(loop) if word == "segicl_stages.mvg_train"]
    assert launches
    for index in launches:
        arguments = loop[index + 1:loop.index("&&", index)]
        build_parser().parse_args([word.replace("$colouring", "random") for word in arguments])  # a bad flag exits
