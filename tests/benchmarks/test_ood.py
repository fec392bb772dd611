"""segicl_benchmarks.ood: the rows' episodes (CT structures by Hounsfield units, simulated T2, other sizes), the paired
goals, and a small run that merges its row into ood.json."""
import json

import numpy as np
import pytest

from segicl_benchmarks.ood import (CT_STRUCTURES, OOD_K, OODOptions, at_model_size, ct_episodes, hounsfield_structures,
                                   merge_result, paired, run_ood, simulated_t2, verdict)


def test_hounsfield_structures_follow_their_thresholds():
    hounsfield = np.full((32, 32), -1000.0)
    hounsfield[4:28, 4:28] = 40.0  # soft tissue: the body
    hounsfield[10:14, 10:14] = 900.0  # bone
    hounsfield[18:22, 18:22] = -100.0  # fat
    hounsfield[6:8, 20:24] = -800.0  # air inside the body
    masks = hounsfield_structures(hounsfield)
    assert set(masks) == set(CT_STRUCTURES)
    assert masks["body"].sum() == 24 * 24 and masks["bone"].sum() == 16 and masks["fat"].sum() == 16
    assert masks["air inside the body"].sum() == 8 and not masks["air inside the body"][0, 0]


def test_ct_episodes_are_nested_and_take_examples_from_other_scans(dataset):
    options = OODOptions(episodes=6, seed=3)
    by_k = {k: ct_episodes(dataset, k, options) for k in OOD_K}
    for one, five in zip(by_k[1], by_k[5]):
        assert one.k == 1 and five.k == 5 and one.structure == five.structure
        np.testing.assert_array_equal(one.query_image, five.query_image)
        np.testing.assert_array_equal(one.example_masks[0], five.example_masks[0])
        assert five.query_mask.sum() >= options.min_area and 0 <= five.query_image.min() <= five.query_image.max() <= 1
        names = sorted(dataset.ct_slices())
        scan = lambda index: names[index].rsplit("_", 1)[0]  # noqa: E731
        assert all(scan(i) != scan(five.meta["query"]) for i in five.meta["examples"])


def test_simulated_t2_turns_the_t1_contrast_around():
    t1 = np.zeros((48, 48), dtype=np.float32)
    t1[8:40, 8:40] = 0.9  # white matter: bright on T1
    t1[16:32, 16:32] = 0.55  # grey matter
    t1[22:26, 22:26] = 0.2  # CSF: dark on T1
    t1 += np.random.default_rng(0).normal(0, 0.01, t1.shape).astype(np.float32) * (t1 > 0)
    t2 = simulated_t2(t1)
    assert t2[23, 23] > t2[18, 18] > t2[10, 10] > t2[0, 0] == 0


def test_a_64_px_method_answers_episodes_of_another_size_at_their_size(dataset):
    from segicl.baselines import predict_union
    from segicl_data.preprocess import resample

    episode = ct_episodes(dataset, 3, OODOptions(episodes=1))[0]
    seen = []

    def union_at_64(episodes):
        seen.extend(e.query_image.shape for e in episodes)
        return [predict_union(e) for e in episodes]

    from dataclasses import replace
    large = replace(episode, example_images=resample(episode.example_images, (128, 128), nearest=False),
                    example_masks=resample(episode.example_masks, (128, 128), nearest=True),
                    query_image=resample(episode.query_image, (128, 128), nearest=False))
    (answer,) = at_model_size(union_at_64)([large])
    assert seen == [(1, 64, 64)] and answer.shape == (128, 128)
    assert abs(answer.mean() - predict_union(episode).mean()) < 0.02


def test_paired_differences_and_their_verdicts():
    records = [{"segicl": {"dice": a}, "registration_vote": {"dice": b}} for a, b in
               [(0.8, 0.5), (0.7, 0.5), (0.9, 0.6), (0.6, 0.4)]] + [{"segicl": {"dice": 0.1}}]
    comparison = paired(records, "segicl", "registration_vote", seed=0)
    assert comparison["episodes"] == 4 and comparison["difference"] == pytest.approx(0.25)
    assert verdict(comparison) == "yes"
    assert verdict({"difference": 0.01, "ci95": [-0.05, 0.07]}) == "not shown"
    assert verdict({"difference": -0.1, "ci95": [-0.2, -0.01]}) == "no"
    assert verdict({"difference": 0.0, "ci95": [-0.05, 0.05]}, at_least=True) == "yes"
    assert paired(records, "segicl", "copy_example", seed=0) is None


def test_merging_a_row_keeps_the_rows_of_other_runs(tmp_path):
    path = tmp_path / "ood.json"
    merge_result(path, {"coronal": {"cells": {}}}, "first")
    result = merge_result(path, {"ct_hounsfield": {"cells": {}}}, "second")
    assert set(result["rows"]) == {"coronal", "ct_hounsfield"} and result["setting"] == "second"
    assert json.loads(path.read_text()) == result and not list(tmp_path.glob("*.tmp"))


def test_a_small_run_scores_every_method_on_the_same_episodes(dataset, tiny_model, tmp_path):
    from segicl_weights import CROSSCONV_TINY

    tiny_model.save_pretrained(tmp_path / "model")
    options = OODOptions(episodes=2, steps=1, samples=1, unet_episodes=1, unet_steps=2)
    result = run_ood(tmp_path / "model", CROSSCONV_TINY, ["ct_hounsfield"], options, tmp_path / "bench",
                     log=lambda _: None)
    cells = result["rows"]["ct_hounsfield"]["cells"]
    assert set(cells) == {"segicl", "segicl_registered", "crossconv", "registration_vote", "registration_staple",
                          "union_examples", "copy_example", "unet_on_examples"}
    everywhere = [name for name in cells if name not in ("unet_on_examples", "segicl_registered")]
    assert all(cells[name][str(k)]["episodes"] == 2 for name in everywhere for k in OOD_K)
    assert all(cells["unet_on_examples"][str(k)]["episodes"] == 1 for k in OOD_K)
    assert set(cells["segicl_registered"]) == {"3", "5"}  # registering needs 2 examples to choose its weight
    assert cells["copy_example"]["1"]["dice"] == cells["copy_example"]["5"]["dice"]  # nested: the same first example
    goals = result["rows"]["ct_hounsfield"]["goals"]
    assert set(goals["segicl"]) == {"k3_over_registration_vote", "k3_over_union", "k1_over_copy", "k5_over_k3"}
    assert set(goals["segicl_registered"]) == {"k3_over_registration_vote", "k3_over_union", "k5_over_k3"}
    table = (tmp_path / "bench" / "ood.md").read_text()
    assert "| ct_hounsfield | SegICL |" in table and "k=3 over registration + vote" in table
    assert "| ct_hounsfield | SegICL, examples registered (--register-examples) | - |" in table


def test_options_score_segicl_as_the_pipeline_runs_by_default():
    """A caller that leaves the decoder settings alone (experiments/synthetic_tasks/compare_models.py) scores the
    settings users get, not a costlier sampler."""
    from segicl.volume import Settings

    assert (OODOptions().steps, OODOptions().samples) == (Settings().steps, Settings().samples)
