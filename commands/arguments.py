"""Checks of command-line values shared by the commands, so that a bad flag is refused before any work starts,
with one line naming it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

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


def optional_path(value: str) -> Path | None:
    """An argparse type: a path, or None for '' (a flag whose default folder the user leaves out)."""
    return Path(value) if value else None
