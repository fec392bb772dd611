"""The reliability tests' shared pieces: the corpus written once per session, a read-only folder and a full file
system for the write failures, and the tally printed at the end (corpus outcomes per entry point, fuzzing examples
per property: `make reliability` shows it)."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

TALLY = pytest.StashKey[dict]()
# Hypothesis keeps small caches (no example database: test_fuzz.py turns it off) with the project's other caches.
set_hypothesis_home_dir(Path(__file__).resolve().parents[2] / ".cache" / "hypothesis")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from tests.corpus.make_corpus import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tally(request) -> dict:
    """What the reliability tests found: "corpus" a list of (entry point, verdict, known bug), "fuzz" a Counter of
    examples run per property."""
    return request.config.stash.setdefault(TALLY, {"corpus": [], "fuzz": Counter()})


def mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a small tmpfs on `folder` (needs root); whether it worked."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture(scope="session")
def read_only(tmp_path_factory):
    """A folder nobody may write into: a read-only tmpfs as root (whom permissions do not stop), else mode 555."""
    folder = tmp_path_factory.mktemp("read_only")
    if os.geteuid() == 0:
        if not mount_tmpfs(folder, "ro,size=64k"):
            pytest.skip("running as root without mount: no folder is read-only to root")
        yield folder
        unmount(folder)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture(scope="session")
def full_disk(tmp_path_factory):
    """A file system with no space left: a 64 kB tmpfs, filled (needs root; skipped otherwise)."""
    folder = tmp_path_factory.mktemp("full_disk")
    if not mount_tmpfs(folder, "size=64k"):
        pytest.skip("a full file system is made by mounting a small tmpfs, which needs root")
    try:
        (folder / "filler").write_bytes(b"\0" * 2**20)
    except OSError:
        pass  # full
    yield folder
    unmount(folder)


def corpus_table(rows: list[tuple[str, str, str | None]]) -> list[str]:
    """The corpus outcomes per entry point, and the faults over all of them (known bugs apart)."""
    from tests.corpus.expected import (CORRECT_RESULT, ENTRY_POINTS, HALF_WRITTEN_FILE, REFUSED_AS_EXPECTED,
                                       SILENT_WRONG_OUTPUT, TRACEBACK, WRONG_REFUSAL)

    lines = [f"  {'entry point':16s} {'tried':>5s} {REFUSED_AS_EXPECTED:>20s} {CORRECT_RESULT + 's':>16s} "
             f"{'known bugs (xfail)':>19s}"]
    for entry in ENTRY_POINTS:
        mine = [(verdict, bug) for name, verdict, bug in rows if name == entry]
        if mine:
            counts = Counter(verdict for verdict, bug in mine if not bug)
            lines.append(f"  {entry:16s} {len(mine):5d} {counts[REFUSED_AS_EXPECTED]:20d} "
                         f"{counts[CORRECT_RESULT]:16d} {sum(1 for _, bug in mine if bug):19d}")
    faults = Counter(verdict for _, verdict, bug in rows if not bug)
    lines.append(f"  {len(rows)} cases; tracebacks {faults[TRACEBACK]}, silent wrong outputs "
                 f"{faults[SILENT_WRONG_OUTPUT]}, half-written files {faults[HALF_WRITTEN_FILE]}, "
                 f"{WRONG_REFUSAL} {faults[WRONG_REFUSAL]}")
    lines += [f"  known bug ({bug.split()[1]}), {entry}: {verdict}" for entry, verdict, bug in rows if bug]
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    found = config.stash.get(TALLY, None)
    if not found:
        return
    terminalreporter.section("reliability")
    if found["corpus"]:
        terminalreporter.write_line("bad-input corpus (tests/corpus):")
        for line in corpus_table(found["corpus"]):
            terminalreporter.write_line(line)
    if found["fuzz"]:
        terminalreporter.write_line("fuzzing (Hypothesis), examples run per property:")
        for name, count in sorted(found["fuzz"].items()):
            terminalreporter.write_line(f"  {name:60s} {count:5d}")
