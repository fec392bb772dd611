"""The wheel: what it installs (only the engines and segicl_-prefixed names, the shipped weights as package data), and
that the installed copy segments outside the checkout with the weights it carries."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"segicl", "mvg_head", "segicl_data", "segicl_commands", "segicl_stages", "segicl_benchmarks",
             "segicl_weights", "segicl_recipes"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
                    str(out), str(REPO)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("segicl-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    return target


def test_the_wheel_installs_no_generic_top_level_name_and_carries_the_weights(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packages <= TOP_LEVEL, packages - TOP_LEVEL
    for model in ("segicl-tiny", "crossconv-tiny", "mvg-tiny"):
        assert f"segicl_weights/{model}/model.safetensors" in names
    assert "segicl_weights/segicl-tiny/tokenizer/tokenizer.json" in names
    assert not [name for name in names if name.startswith("tests/") or "__pycache__" in name]


def test_the_installed_wheel_segments_outside_the_checkout(installed, tmp_path):
    """`segicl segment` from the installed copy (not the checkout's editable one) on a PNG slice with one example."""
    examples = REPO / "examples"
    env = {**os.environ, "PYTHONPATH": str(installed)}  # the installed copy comes before the editable checkout
    command = [sys.executable, "-c", "import sys, segicl_weights; from segicl_commands.cli import main; "
               "print(segicl_weights.__file__); sys.exit(main())",
               "segment", "--image", str(examples / "colin27_thalamus_slice.png"), "--text", "Segment the thalamus",
               "--example", str(examples / "mni152_thalamus_slice.png"), str(examples / "mni152_thalamus_mask.png"),
               "--out", str(tmp_path / "mask.png")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0].startswith(str(installed))
    from PIL import Image

    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.any()
