"""Checks of command-line values shared by the commands, so that a bad flag is refused before any work starts,
with one line naming it."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable


def work_offline() -> None:
    """Nothing is ever downloaded: without these, a model-hub lookup takes ~50 s to fail on a machine without network.
    DeepSpeed is told which accelerator it has instead of probing (and warning) on a CPU machine."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def exit_code(run: Callable[[], int], program: str) -> int:
    """Run a command offline (`work_offline`): a refused input, a missing file or a file system that refuses a write
    (read-only, full, permissions) prints one line naming it (no traceback) and gives 2."""
    work_offline()
    try:
        return run()
    except (ValueError, OSError) as error:
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


def apply_config_flags(model, given: list[tuple[str, str, object]]) -> None:
    """Set `(flag, config field, value)` settings on `model.config`, leaving out those whose value is None (the flag
    not given: keep the model's), after validating the whole config with them (its `validate`; with no flag given,
    the model's own config). A setting the config refuses is refused naming the flags, the model unchanged."""
    given = [(flag, name, value) for flag, name, value in given if value is not None]
    changes = {name: value for _, name, value in given}
    changed = replace(model.config, **changes)  # a copy: parts of the model hold the config object itself
    flags = " / ".join(flag for flag, _, _ in given)
    try:
        changed.validate()
    except ValueError as error:
        raise ValueError(f"{flags}: {error}" if flags else str(error)) from None
    for name, value in changes.items():
        setattr(model.config, name, value)
