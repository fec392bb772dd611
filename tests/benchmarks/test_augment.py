"""segicl_benchmarks.augment: every setting on the same episodes, the paired gain, the table."""
import json
from argparse import Namespace

import pytest

from segicl_benchmarks.augment import SETTINGS, AugmentSetting, augment_lines, run_augment, summarize_cell


def test_a_cell_pairs_its_gain_with_the_plain_run_of_the_same_episodes():
    cell = summarize_cell([0.5, 0.7, 0.9], plain=[0.4, 0.7, 0.6], seconds=6.0, seed=0)
    assert cell["episodes"] == 3 and cell["dice"] == pytest.approx(0.7)
    assert cell["gain_over_plain"] == pytest.approx((0.1 + 0.0 + 0.3) / 3, abs=1e-4)
    assert cell["gain_interval"][0] <= cell["gain_over_plain"] <= cell["gain_interval"][1]
    assert cell["seconds_per_episode"] == 2.0


def test_every_k_has_its_plain_setting_to_compare_with():
    assert {s.k for s in SETTINGS} == {1, 3, 5}
    assert all(AugmentSetting(s.k) in SETTINGS for s in SETTINGS)
    assert AugmentSetting(5, 1, 4).name == "k=5, views=1, example_sets=4"


def test_a_small_run_writes_every_setting_for_both_groups(dataset, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    args = Namespace(model=tmp_path / "model", episodes=2, min_area=64, steps=1, samples=1, seed=0,
                     out_dir=tmp_path / "bench")
    run_augment(args, dataset, log=lambda _: None)
    result = json.loads((tmp_path / "bench" / "augment.json").read_text())
    for group in ("train_structures", "held_out_structures"):
        assert list(result[group]) == [s.name for s in SETTINGS]
        assert all(cell["episodes"] == 2 and 0 <= cell["dice"] <= 1 for cell in result[group].values())
        assert all(result[group][AugmentSetting(k).name]["gain_over_plain"] == 0 for k in (1, 3, 5))
    table = (tmp_path / "bench" / "augment.md").read_text()
    assert table.splitlines()[0] == augment_lines(result)[0] and table.count("| held |") == len(SETTINGS)
