"""The Makefile's training recipes: every stage they launch accepts every flag they give it (`make -n` prints the
commands without running them), so a renamed flag fails here and not hours into `make train-demo`."""
import importlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("train-demo", "train-crossconv", "train-mvg")


def recipe_commands(target: str) -> list[list[str]]:
    printed = subprocess.run(["make", "-n", "-C", str(REPO), target, "VENV=/nonexistent-venv"], capture_output=True,
                             text=True, check=True).stdout
    joined = re.sub(r"\\\n\s*", " ", printed)
    return [shlex.split(line) for line in joined.splitlines() if "stages/" in line and ".py" in line]


def stage_arguments(command: list[str]) -> tuple[str, list[str]]:
    script = next(index for index, word in enumerate(command) if word.startswith("stages/") and word.endswith(".py"))
    return Path(command[script]).stem, command[script + 1:]


def flag(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", RECIPES)
def test_every_stage_of_a_training_recipe_accepts_its_flags(target):
    commands = recipe_commands(target)
    assert commands, f"`make -n {target}` launched no stage"
    for command in commands:
        stage, arguments = stage_arguments(command)
        importlib.import_module(f"stages.{stage}").build_parser().parse_args(arguments)  # a bad flag exits here


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_chain_trains_each_stage_on_the_network_the_shipped_weights_were_made_with():
    commands = [stage_arguments(command) for command in recipe_commands("train-demo")]
    crossconv = [arguments for stage, arguments in commands if stage == "crossconv_train"]
    stages = {Path(flag(arguments, "--output-dir")).name: arguments for stage, arguments in commands
              if stage == "stage2_encoder"}
    assert len(crossconv) == 3
    assert flag(crossconv[1], "--init") == flag(stages["stage2d"], "--crossconv")  # the 80-min export
    assert flag(crossconv[2], "--init") == f"{flag(crossconv[1], '--output-dir')}/model"
    assert flag(stages["stage2i"], "--crossconv") == "weights/crossconv-tiny"  # the last export: the shipped peer
    assert flag(stages["stage2i"], "--prior-registration-min-examples") == "4"
