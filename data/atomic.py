"""Files and folders that appear whole or not at all.

A file is written under a hidden partial name beside its target (carrying the writer's process id) and renamed onto
it, so a run killed mid-write leaves the previous file, or none, and never half of one. A killed writer's partial file
stays behind; `remove_stale_partials` clears those of processes that no longer run.

A folder (a checkpoint, a trained model) is filled as FOLDER.tmp and then swapped in by two renames (`write_folder`);
`restore_folder` undoes a swap killed between them, so a reader always finds a whole folder: the previous or the new.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable

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


def staging_folder(folder: Path) -> Path:
    """Where `write_folder` fills the new folder: FOLDER.tmp (never read as FOLDER, removed by the next write)."""
    return folder.with_name(folder.name + ".tmp")


def previous_folder(folder: Path) -> Path:
    """Where `write_folder` keeps the previous folder during its swap: FOLDER.old."""
    return folder.with_name(folder.name + ".old")


def restore_folder(folder: str | Path) -> Path:
    """`folder`, with the previous one put back if a `write_folder` swap was killed between its two renames (FOLDER.old
    there and FOLDER not). Readers call this before they look for the folder."""
    folder = Path(folder)
    previous = previous_folder(folder)
    if not folder.exists() and previous.is_dir():
        os.replace(previous, folder)
    return folder


def write_folder(folder: str | Path, write: Callable[[Path], object]) -> Path:
    """Replace `folder` whole: `write(staging)` fills FOLDER.tmp, the previous FOLDER moves to FOLDER.old, FOLDER.tmp
    becomes FOLDER and FOLDER.old is removed. Killed at any point, it leaves a whole FOLDER (the previous or the new
    one) or, between the two renames, a whole FOLDER.old that `restore_folder` puts back."""
    folder = restore_folder(folder)
    staging, previous = staging_folder(folder), previous_folder(folder)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    if folder.exists():
        shutil.rmtree(previous, ignore_errors=True)  # left by a write killed while removing it; FOLDER is whole
        os.replace(folder, previous)
    os.replace(staging, folder)
    shutil.rmtree(previous, ignore_errors=True)
    return folder
