"""The whole-volume benchmark: one episode per slice, the example rules, 3-D scores with absent-slice false positives."""
import json
from argparse import Namespace

import numpy as np
import pytest

from segicl_benchmarks.volume import (SETTINGS, example_slices, run_volume, support_rows, volume_episodes, volume_scores,
                               volume_structures)
from segicl_data.episodes import prompt_slice


def test_every_slice_is_an_episode_with_position_matched_or_fixed_examples(dataset):
    row = volume_structures(dataset, "colin27", 1)[0]
    slices = dataset.volumes["colin27"]["n_slices"]
    matched = volume_episodes(dataset, row, "position_matched")
    fixed = volume_episodes(dataset, row, "fixed")
    assert len(matched) == len(fixed) == slices
    assert any(not e.query_mask.any() for e in matched)  # slices without the structure are in
    rows = support_rows(dataset, row)
    assert len({dataset.rows[r]["volume"] for r in rows}) == len(rows) >= 3
    for episode in matched[::40]:
        for example, r in zip(episode.meta["examples"], rows):
            assert example["slice"] == prompt_slice(episode.meta["slice"], slices,
                                                    dataset.volumes[dataset.rows[r]["volume"]]["n_slices"])
    assert all(e.meta["examples"] == fixed[0].meta["examples"] for e in fixed)
    assert all(m.any() for m in fixed[0].example_masks)  # the largest-area slices show the structure
    with pytest.raises(ValueError, match="unknown example setting"):
        example_slices(dataset, rows, "nearest", 0, slices)


def test_structures_spread_over_their_extent(dataset):
    rows = volume_structures(dataset, "colin27", 4)
    extents = [len(dataset.rows[r]["slices"]) for r in rows]
    assert len(rows) == 4 and extents == sorted(extents) and extents[0] < extents[-1]
    with pytest.raises(ValueError, match="no held-out structure"):
        volume_structures(dataset, "mni152_2009a", 2)  # a training volume holds no test rows


def test_volume_scores_count_false_positives_on_absent_slices():
    truth = np.zeros((4, 8, 8), np.float32)
    truth[1, 2:4, 2:4] = 1
    prediction = truth.copy()
    prediction[3, 0:2, 0:3] = 1  # 6 voxels on a slice without the structure
    scores = volume_scores(prediction, truth)
    assert scores["absent_slices"] == 3 and scores["false_positive_voxels_absent"] == 6
    assert scores["slices_marked_absent"] == 1 and scores["dice_3d"] == pytest.approx(8 / 14, abs=1e-4)


def test_volume_benchmark_writes_the_promised_shape(dataset, tiny_model, tmp_path):
    from segicl.baselines import predict_copy

    tiny_model.save_pretrained(tmp_path / "model")
    args = Namespace(model=tmp_path / "model", volume="colin27", structures=1, steps=1, samples=1, batch_size=64,
                     seed=0, out_dir=tmp_path / "bench")
    methods = {name: (lambda episodes: [predict_copy(e) for e in episodes]) for name in ("copy_example",
                                                                                          "registration_vote")}
    result = run_volume(args, dataset, methods, log=lambda _: None)
    saved = json.loads((tmp_path / "bench" / "volume.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    for setting in SETTINGS:
        assert set(saved["summary"][setting]) == {"segicl", "segicl_largest_component", "copy_example",
                                                  "registration_vote", "registration_vote_largest_component",
                                                  "union_examples"}
        scores = next(iter(saved["structures"].values()))[setting]
        for name in ("segicl", "registration_vote"):  # the largest piece of a mask is part of it
            assert scores[f"{name}_largest_component"]["predicted_voxels"] <= scores[name]["predicted_voxels"]
    table = (tmp_path / "bench" / "volume.md").read_text()
    assert "| position-matched | SegICL |" in table and "| position-matched | SegICL + largest component |" in table
