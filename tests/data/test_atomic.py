"""segicl_data.atomic: whole-or-nothing files and the clean-up of a killed writer's partial files."""
import os
import subprocess
import sys

from segicl_data.atomic import partial_path, remove_stale_partials, write_text


def test_write_text_replaces_the_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "predictions.json"
    target.write_text("old")
    write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["predictions.json"]
    assert partial_path(target).name == f".{os.getpid()}.partial.predictions.json"


def test_partials_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".{int(dead.stdout)}.partial.case.nii.gz"
    live = tmp_path / f".{os.getpid()}.partial.other.nii.gz"
    for path in (stale, live, tmp_path / "case.nii.gz"):
        path.write_bytes(b"x")
    assert remove_stale_partials(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "case.nii.gz"])
