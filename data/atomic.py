"""Files that appear whole or not at all: each is written under a hidden partial name beside its target (carrying
the writer's process id) and renamed onto it, so a run killed mid-write leaves the previous file, or none, and
never half of one. A killed writer's partial file stays behind; `remove_stale_partials` clears those of processes
that no longer run."""
from __future__ import annotations

import os
import re
from pathlib import Path

PARTIAL = re.compile(r"\.(\d+)\.partial\..+")


def partial_path(path: Path) -> Path:
    """The hidden name `path` is written under first: .PID.partial.NAME (it ends as NAME does, which the image
    writers go by)."""
    path = Path(path)
    return path.with_name(f".{os.getpid()}.partial.{path.name}")


def write_text(path: str | Path, text: str) -> Path:
    """A text file (JSON, a report) written whole or not at all."""
    path = Path(path)
    partial = partial_path(path)
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Delete the partial files in `folder` whose writer no longer runs; returns them."""
    stale = [path for path in Path(folder).glob(".*.partial.*")
             if (match := PARTIAL.fullmatch(path.name)) and not _running(int(match.group(1)))]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
