"""Every case of the bad-input corpus (tests/corpus/expected.py) through its entry point, in-process.

A case passes when the entry point gives the expected outcome and nothing else: no traceback (an exception that
escapes, or one printed), no silent wrong output (a refusal expected but a result given, or a result its check finds
wrong), no half-written file (a `.partial.` name, a leftover temporary file, or a file that does not load) in the
folders it wrote into; and a refusal is exit status 2 with one line on stderr matching the case's pattern.
"""
from __future__ import annotations

import json
import re
import traceback
from pathlib import Path

import numpy as np
import pytest

from tests.corpus.expected import (CASES, ENTRY_POINTS, HALF_WRITTEN_FILE, SILENT_WRONG_OUTPUT, TRACEBACK,
                                   WRONG_REFUSAL, Case, Places)

LEFTOVER = re.compile(r"\.partial[.-]|^\..*\.tmp$")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The cases are small: with one thread they run 5x faster on a shared 2-core machine, where two threads wait on
    each other (measured: 6.7 s against 32 s for the same seven `segicl segment` runs)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def half_written(folders: list[Path]) -> list[str]:
    """Files in `folders` that a writer left half done: partial or temporary names, or files that do not load."""
    from segicl_data.imageio import SUPPORTED_READ_ENDINGS, ending_of, read_image

    loaders = {".json": lambda path: json.loads(path.read_text()), ".npy": np.load}
    found = []
    for path in (path for folder in folders if folder.exists() for path in folder.rglob("*")):
        if LEFTOVER.search(path.name):
            found.append(f"{path} (a partial or temporary file)")
        elif path.is_file() and ending_of(path) in (*SUPPORTED_READ_ENDINGS, ".json"):
            try:
                loaders.get(ending_of(path), read_image)(path)
            except Exception as error:  # any failure to load is what is looked for
                found.append(f"{path} does not load ({type(error).__name__}: {error})")
    return found


def run_entry_point(case: Case, places: Places, capsys) -> tuple[int | None, str, str]:
    """(exit status, stdout, stderr); the status is None, and stderr the traceback, for an exception that escaped."""
    try:
        status = case.run(places)
    except SystemExit as error:
        status = error.code
    except Exception:
        out, err = capsys.readouterr()
        return None, out, err + traceback.format_exc()
    out, err = capsys.readouterr()
    return status, out, err


def judge(case: Case, places: Places, capsys) -> tuple[str, str]:
    """The verdict on one case, its expected outcome or the fault found, and what shows it."""
    status, out, err = run_entry_point(case, places, capsys)
    if status is None or "Traceback" in out + err:
        return TRACEBACK, err[-3000:]
    left = half_written([places.out, *places.folders.values()])
    if left:
        return HALF_WRITTEN_FILE, "; ".join(left)
    lines = err.strip().splitlines()
    if case.refused is not None and status == 0:
        return SILENT_WRONG_OUTPUT, f"expected a refusal matching {case.refused!r}, got a result: {out[-500:]}"
    if case.refused is not None and (status != 2 or len(lines) != 1 or not re.search(case.refused, lines[0])):
        return WRONG_REFUSAL, f"status {status}; expected one line matching {case.refused!r}, got: {err[-1000:]}"
    if case.refused is None and status != 0:
        return WRONG_REFUSAL, f"a correct result was expected, got status {status}: {err[-1000:]}"
    if case.check is not None:
        try:
            case.check(places)
        except AssertionError as error:
            return SILENT_WRONG_OUTPUT, str(error)[-2000:]
    return case.expected, ""


def corpus_params():
    """Each case as a parameter named after it; a known bug's case is expected to fail (strictly: a fix shows)."""
    return [pytest.param(case, id=case.name, marks=[pytest.mark.xfail(reason=case.bug, strict=True)] * bool(case.bug))
            for case in CASES]


@pytest.mark.parametrize("case", corpus_params())
def test_an_input_of_the_corpus_gets_its_expected_outcome(case, corpus, tally, request, capsys, tmp_path):
    folders = {name: request.getfixturevalue(name) for name in case.needs}
    places = Places(corpus, tmp_path / "out", folders)
    places.out.mkdir()
    verdict, evidence = judge(case, places, capsys)
    tally["corpus"].append((case.entry, verdict, case.bug))
    assert verdict == case.expected, f"{verdict}: {evidence}"


def test_the_corpus_covers_every_entry_point_with_40_cases_or_more():
    assert len(CASES) >= 40 and {case.entry for case in CASES} == set(ENTRY_POINTS)
    assert len({case.name for case in CASES}) == len(CASES), "two cases of one name"
    assert all(case.bug is None or case.bug.startswith("BUG: ") for case in CASES)
