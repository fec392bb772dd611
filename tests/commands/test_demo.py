import json

import pytest

from segicl_commands.demo import run_demo


def test_demo_report_has_the_promised_keys(dataset, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    report = run_demo(dataset, tmp_path / "model", tmp_path / "demo", episodes=4, min_area=64, num_steps=2,
                      num_samples=2, seed=0, from_scratch=False, stage1_steps=0, stage2_steps=0,
                      reconstruction_masks=4)
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved == report
    assert 0.0 <= report["stage1_reconstruction_dice"] <= 1.0
    for structures in ("train_structures", "held_out_structures"):
        assert set(report["dice"][structures]) == {"0", "1", "3"}
        assert 0.0 < report["copy_baseline"][structures] <= 1.0
        assert 0.0 < report["union_baseline"][structures] <= 1.0
    assert report["wall_time_s"] > 0
    assert len(list((tmp_path / "demo" / "overlays").glob("*.png"))) == 6
    assert "| held out structures |" in (tmp_path / "demo" / "report.md").read_text()


def test_demo_without_weights_says_how_to_get_them(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="make train-demo"):
        run_demo(dataset, tmp_path / "none", tmp_path / "demo", 4, 64, 2, 2, 0, False, 0, 0)
