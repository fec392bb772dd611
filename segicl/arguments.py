"""Checks of command-line values shared by the commands, so that a bad flag is refused before any work starts,
with one line naming it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

REPOSITORY = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = {"SegICL": "segicl_config.json", "MVG": "mvg_config.json"}
ARTICLES = {"SegICL": "a SegICL", "MVG": "an MVG"}


def exit_code(run: Callable[[], int], program: str) -> int:
    """Run a command: a refused input or a missing file prints one line naming it (no traceback) and gives 2."""
    try:
        return run()
    except (ValueError, FileNotFoundError) as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2


def check_at_least(args: argparse.Namespace, **minimums: float) -> None:
    """Refuse any flag (an attribute of `args`, a Namespace or a config) below its minimum:
    check_at_least(args, episodes=1, repeats=1)."""
    for name, low in minimums.items():
        value = getattr(args, name)
        if value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def check_out_dir(folder: Path, flag: str = "--out-dir") -> None:
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ValueError(f"{flag} {folder} exists and is not a folder")


def check_model_folder(folder: Path, engine: str, flag: str | None = None) -> None:
    """Refuse a folder without `engine`'s saved model, saying when it holds the other engine's."""
    folder = Path(folder)
    if (folder / MODEL_CONFIGS[engine]).exists():
        return
    others = [name for name, config in MODEL_CONFIGS.items() if name != engine and (folder / config).exists()]
    held = f"; it holds {ARTICLES[others[0]]} model" if others else ""
    prefix = f"{flag}: " if flag else ""
    raise FileNotFoundError(f"{prefix}no {engine} model at {folder} ({MODEL_CONFIGS[engine]} missing){held}")


def shown_path(path: Path | str) -> str:
    """A path as reports and JSON name it: relative to the repository when inside it (the shipped weights are
    `weights/segicl-tiny` on every machine), otherwise as the user gave it."""
    try:
        return str(Path(path).resolve().relative_to(REPOSITORY))
    except ValueError:
        return str(path)
