"""The dataset build (segicl_data.build) from the shipped scans and atlases (segicl_data.sources), read back through data.dataset."""
import json

import numpy as np
import pytest

from segicl_data.build import DatasetBuilder, DatasetConfig, draw_held_out_families, grouped_label_map, slice_areas


def test_summary_declares_splits(dataset):
    summary = dataset.summary()
    assert summary["structures"] > 300
    assert summary["held_out_fraction"] >= 0.2
    assert summary["held_out_in_training"] == 0
    splits = {info["split"] for info in summary["volumes"].values()}
    assert splits == {"train", "test"}
    assert set(summary["multiclass_tasks"]) == {"tissue/all_classes", "lobes/all_classes", "hemispheres/all_classes"}
    assert summary["ct_slices"] == 5


def test_no_held_out_structure_or_volume_in_training(dataset):
    train_rows = [r for r in dataset.rows if r["split"] == "train"]
    held_out_families = {r["family"] for r in dataset.rows if r["held_out"] and r["kind"] != "multiclass"}
    test_volumes = set(dataset.config.test_volumes)
    assert train_rows
    for row in train_rows:
        assert not row["held_out"]
        assert row["volume"] not in test_volumes
        assert row["family"] not in held_out_families
        for family in row.get("class_families", []):
            assert family not in held_out_families
    for row in dataset.rows:
        if row["volume"] in test_volumes:
            assert row["split"] == "test"
        elif row["held_out"]:
            assert row["split"] == "support"


def test_left_right_and_bilateral_share_the_hold_out_decision(dataset):
    decisions = {}
    for row in dataset.rows:
        if row["kind"] != "multiclass":
            decisions.setdefault(row["family"], set()).add(row["held_out"])
    assert all(len(values) == 1 for values in decisions.values())


def test_manifest_areas_match_label_arrays(dataset):
    rng = np.random.default_rng(0)
    binary = [i for i, r in enumerate(dataset.rows) if r["kind"] != "multiclass"]
    for index in rng.choice(binary, size=20, replace=False):
        row = dataset.rows[index]
        for slice_index, area in list(zip(row["slices"], row["areas"]))[:5]:
            assert dataset.mask(index, slice_index).sum() == area > 0


def test_images_are_normalised_and_positions_ordered(dataset):
    for name, info in dataset.volumes.items():
        images = np.asarray(dataset.images(name))
        assert images.shape == (info["n_slices"], 64, 64)
        assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.9
        positions = np.array(info["relative_position"])
        assert positions[0] == 0.0 and positions[-1] == 1.0 and np.all(np.diff(positions) > 0)


def test_synthesis_pairs_and_ct_slices_exist(dataset):
    head = dataset.image("colin27_head", 80)
    brain = dataset.paired_image("colin27_head", "skull_stripped", 80)
    assert head.shape == brain.shape == (64, 64)
    # The skull-stripped target is zero where the head image shows skull and scalp.
    assert (brain == 0).sum() > (head < 0.02).sum()
    ct = dataset.ct_slices()
    assert len(ct) == 5 and all(a.shape == (64, 64) for a in ct.values())
    assert all(a.min() < -500 and a.max() > 100 for a in ct.values())  # air and bone/contrast, in HU


def test_build_is_reused_not_redone(dataset, tmp_path):
    builder = DatasetBuilder(dataset.config, dataset.root.parent, progress=False)
    before = (dataset.root / "manifest.jsonl").stat().st_mtime_ns
    assert builder.build() == dataset.root
    assert (dataset.root / "manifest.jsonl").stat().st_mtime_ns == before


def test_held_out_draw_is_deterministic_for_a_seed(dataset):
    rows = dataset.rows
    first = draw_held_out_families(rows, DatasetConfig(seed=0))
    assert first == draw_held_out_families(rows, DatasetConfig(seed=0))
    assert first != draw_held_out_families(rows, DatasetConfig(seed=1))
    assert draw_held_out_families(rows, DatasetConfig(held_out_families=("hippocampus",))) == {"hippocampus"}
    with pytest.raises(ValueError, match="unknown held-out families"):
        draw_held_out_families(rows, DatasetConfig(held_out_families=("no_such_region",)))


@pytest.mark.parametrize("kwargs, message", [
    ({"resolution": 8}, "resolution must be at least 16"),
    ({"held_out_fraction": 0.0}, "held_out_fraction"),
    ({"volumes": ("mni152_2009a", "atlantis")}, "unknown volumes"),
    ({"volumes": ("colin27", "colin27_head")}, "at least one volume must stay in training"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DatasetConfig(**kwargs)


def test_grouped_label_map_and_areas():
    aal = np.array([[0, 1, 2], [3, 4, 9]], dtype=np.uint16)
    grouped = grouped_label_map(aal, {1: [1, 2], 2: [4]})
    assert grouped.tolist() == [[0, 1, 1], [0, 2, 0]]
    areas = slice_areas(np.stack([grouped, np.zeros_like(grouped)]))
    assert areas.tolist() == [[3, 2, 1], [6, 0, 0]]


def test_config_round_trips_through_the_folder(dataset):
    saved = json.loads((dataset.root / "config.json").read_text())
    assert saved["resolution"] == dataset.config.resolution == 64
    assert dataset.config.folder_name() == dataset.root.name


def _finished_staging(builder: DatasetBuilder, name: str, marker: str):
    staging = builder.root.with_name(name)
    staging.mkdir(parents=True)
    (staging / "manifest.jsonl").write_text(marker)
    return staging


def test_concurrent_builds_publish_one_complete_folder(tmp_path):
    """Each process stages in its own folder; the first complete build published stays, later ones are dropped."""
    builder = DatasetBuilder(DatasetConfig(), tmp_path, progress=False)
    first = _finished_staging(builder, "first.partial", "first")
    second = _finished_staging(builder, "second.partial", "second")
    assert builder._publish(first, replace=False) == builder.root
    assert builder._publish(second, replace=False) == builder.root
    assert (builder.root / "manifest.jsonl").read_text() == "first"
    assert not first.exists() and not second.exists()
    forced = _finished_staging(builder, "forced.partial", "forced")
    builder._publish(forced, replace=True)
    assert (builder.root / "manifest.jsonl").read_text() == "forced"
