"""The benchmark commands: their JSON shapes, the README section they generate, and their helpers."""
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from segicl_data.episodes import EpisodeConfig, EpisodeSampler

from segicl_benchmarks.speed import PeakMemory, median_run, uncertainty_auroc
from segicl_benchmarks.training import summarize_log
from segicl_benchmarks.specialist import SpecialistConfig, predict_specialist, train_specialist, training_slices


def test_quality_benchmark_writes_the_promised_shape(dataset, tiny_model, tmp_path):
    from segicl_benchmarks.quality import QUALITY_K, run_quality
    from segicl.config import CrossConvConfig
    from segicl.incontext import CrossConvNet

    tiny_model.save_pretrained(tmp_path / "model")
    CrossConvNet(CrossConvConfig(widths=(4, 4, 4, 4))).save_pretrained(tmp_path / "crossconv")
    args = Namespace(model=tmp_path / "model", mvg=None, crossconv=tmp_path / "crossconv", episodes=3, min_area=64,
                     steps=1, samples=1, specialists=2, specialist_episodes=3, specialist_seconds=2.0, seed=0,
                     out_dir=tmp_path / "bench")
    run_quality(args, dataset, log=lambda _: None)
    result = json.loads((tmp_path / "bench" / "quality.json").read_text())
    for group in ("train_structures", "held_out_structures"):
        cells = result[group]["cells"]
        assert set(cells["segicl"]) == {str(k) for k in QUALITY_K}
        for peer in ("crossconv", "registration_vote", "registration_staple", "union_examples", "copy_example"):
            assert set(cells[peer]) == {"1", "3", "5"}, peer  # peers need examples: no k = 0 cell
            for value in cells[peer].values():
                assert value["episodes"] == 3 and 0 <= value["dice"] <= 1
                assert value["ci95"] is None or value["ci95"][0] <= value["dice"] <= value["ci95"][1]
        assert result[group]["per_structure"]
        margins = result[group]["margin_over_best_peer"]
        assert set(margins) == {"1", "3", "5"} and all(m["episodes"] == 3 for m in margins.values())
    comparison = result["held_out_structures"]["specialist_comparison"]
    assert len(comparison["structures"]) == 2 and comparison["episodes"] == 4  # ceil(3 / 2) per structure
    assert {"segicl", "specialist_unet", "registration_vote"} <= set(comparison["cells"])
    assert "specialist_comparison" not in result["train_structures"]
    assert (tmp_path / "bench" / "quality.png").stat().st_size > 0
    report = (tmp_path / "bench" / "quality.md").read_text()
    assert "| held out structures | k=0 |" in report and "| registration + majority vote | - |" in report
    assert "the best peer" in report and "the specialists trained" in report


def test_cells_carry_a_bootstrap_interval_and_the_episode_count():
    from segicl_benchmarks.quality import cell

    records = [{"k": 3, "segicl": {"dice": d, "iou": d, "hd95": 1.0}} for d in (0.2, 0.4, 0.6, 0.8)]
    value = cell(records + [{"k": 3}], "segicl")
    assert value["episodes"] == 4 and value["dice"] == 0.5
    assert 0.2 <= value["ci95"][0] < 0.5 < value["ci95"][1] <= 0.8
    assert cell(records, "crossconv") is None


def test_episodes_of_tasks_takes_the_first_of_each(dataset):
    from segicl_benchmarks.quality import episodes_of_tasks, frequent_tasks

    sampler = EpisodeSampler(dataset, EpisodeConfig(split="test", structures="held_out", num_examples=3,
                                                    max_examples=5, min_area=64))
    tasks = frequent_tasks(sampler, 24, 2)
    episodes = episodes_of_tasks(sampler, tasks, 2)
    assert sorted(e.meta["task"] for e in episodes) == sorted(tasks * 2)
    assert all(sampler.task_of(i) == sampler[i].meta["task"] for i in range(5))


def test_peer_methods_answer_episodes_with_examples_and_skip_k0(dataset, tmp_path):
    from segicl_benchmarks.quality import crossconv_method, mvg_method
    from segicl.config import CrossConvConfig
    from segicl.incontext import CrossConvNet

    CrossConvNet(CrossConvConfig(widths=(4, 4, 4, 4))).save_pretrained(tmp_path / "crossconv")
    config = EpisodeConfig(split="test", structures="held_out", min_area=64, max_examples=3)
    episodes = [EpisodeSampler(dataset, EpisodeConfig(**{**config.__dict__, "num_examples": k}))[0] for k in (0, 3, 1)]
    mvg = Path(__file__).resolve().parents[2] / "weights" / "mvg-tiny"
    for method in (crossconv_method(tmp_path / "crossconv"), mvg_method(mvg)):
        answers = method(episodes)
        assert answers[0] is None and all(a.shape == (64, 64) and set(np.unique(a)) <= {0, 1} for a in answers[1:])
        assert method(episodes[:1]) == [None]


def test_the_example_prior_alone_is_the_models_prior_mask(dataset, tokenizer):
    from segicl_benchmarks.quality import example_prior_method
    from segicl.baselines import predict_union
    from segicl.config import tiny_config
    from segicl.model import SegICLModel

    model = SegICLModel.from_config(tiny_config(), tokenizer).eval()
    model.add_example_prior()  # the union of the example masks: a prior whose answer is known
    config = EpisodeConfig(split="test", structures="held_out", min_area=64, max_examples=3)
    episodes = [EpisodeSampler(dataset, EpisodeConfig(**{**config.__dict__, "num_examples": k}))[i]
                for k, i in ((0, 0), (3, 1), (1, 2))]
    answers = example_prior_method(model)(episodes)
    assert answers[0] is None
    for answer, episode in zip(answers[1:], episodes[1:]):
        assert answer.shape == (64, 64) and np.array_equal(answer, predict_union(episode))


def test_the_margin_over_the_best_peer_is_paired_on_the_same_episodes():
    from segicl_benchmarks.quality import margin_over_best_peer, quality_lines, summarize

    rng = np.random.default_rng(0)
    hardness = rng.uniform(0.2, 0.8, size=40)  # a spread between episodes far wider than the margin
    records = [{"k": 3, "structure": "s", "segicl": {"dice": h + 0.02, "iou": h, "hd95": 1.0},
                "registration_vote": {"dice": h, "iou": h, "hd95": 1.0},
                "union_examples": {"dice": h - 0.1, "iou": h, "hd95": 1.0}} for h in hardness]
    records[0]["segicl"]["dice"] -= 0.01  # some spread in the difference itself
    records += [{"k": 0, "structure": "s", "segicl": {"dice": 0.1, "iou": 0.1, "hd95": 1.0}}]
    cells = summarize(records)
    margin = margin_over_best_peer(records, cells)
    assert set(margin) == {"3"} and margin["3"]["peer"] == "registration_vote" and margin["3"]["episodes"] == 40
    assert margin["3"]["margin"] == pytest.approx(0.02 - 0.01 / 40, abs=1e-4)
    low, high = margin["3"]["ci95"]
    assert 0 < low <= margin["3"]["margin"] <= high < 0.021  # the unpaired intervals (width ~0.1) would overlap
    assert cells["segicl"]["3"]["ci95"][0] < cells["registration_vote"]["3"]["dice"]
    cells["segicl"]["1"] = cells["segicl"]["5"] = cells["segicl"]["3"]
    lines = quality_lines({"setting": "s", "held_out_structures": {"cells": cells, "margin_over_best_peer": margin}})
    assert any("paired 95% interval +0.0" in line for line in lines)


def test_another_axis_writes_its_own_files_and_title():
    from segicl_benchmarks.quality import quality_lines, result_name

    assert result_name("axial") == "quality" and result_name("coronal") == "quality_coronal"
    cells = {"segicl": {str(k): {"dice": 0.1 * (k + 1), "ci95": None, "episodes": 2} for k in (0, 1, 3, 5)}}
    quality = {"setting": "s", "axis": "coronal", "train_structures": {"cells": cells},
               "held_out_structures": {"cells": cells}}
    lines = quality_lines(quality)
    assert lines[0].startswith("### Out of distribution: coronal slices") and "![quality](docs/results/quality_coronal.png)" in lines


def test_peer_methods_build_only_what_is_asked_and_at_hand(tmp_path):
    from segicl_benchmarks.quality import peer_methods
    from segicl.config import CrossConvConfig
    from segicl.incontext import CrossConvNet

    CrossConvNet(CrossConvConfig(widths=(4, 4, 4, 4))).save_pretrained(tmp_path / "crossconv")
    logged = []
    args = Namespace(crossconv=tmp_path / "crossconv", mvg=tmp_path / "no_mvg")
    assert set(peer_methods(args, logged.append)) == {"registration_vote", "registration_staple", "crossconv"}
    assert logged == [f"  no MVG weights at {tmp_path / 'no_mvg'}: its rows are left out"]
    volume_peers = peer_methods(Namespace(crossconv=tmp_path / "crossconv"), logged.append,
                                include=("registration_vote", "crossconv"))
    assert set(volume_peers) == {"registration_vote", "crossconv"} and volume_peers["registration_vote"].fusion == "vote"


def test_an_imported_dataset_is_scored_on_its_own_structures_into_files_of_its_name(imported_dataset, dataset):
    from segicl_benchmarks.quality import GROUPS, dataset_groups, result_name

    assert dataset_groups(imported_dataset) == {"train_structures": "train"}  # nothing held out of a user's labels
    assert dataset_groups(dataset) == GROUPS
    assert result_name("axial", "Deep Grey") == "quality_deep_grey"
    assert result_name("coronal", "Deep Grey") == "quality_deep_grey_coronal"


def test_the_better_of_segicl_and_its_prior_takes_the_higher_dice_of_each_episode():
    from segicl_benchmarks.quality import best_peer, summarize, with_better_of_segicl_and_prior

    def scores(dice):
        return {"dice": dice, "iou": dice / 2, "hd95": 1.0}

    records = [{"k": 3, "structure": "s", "segicl": scores(0.6), "example_prior": scores(0.4)},
               {"k": 3, "structure": "s", "segicl": scores(0.5), "example_prior": scores(0.7)},
               {"k": 0, "structure": "s", "segicl": scores(0.2)}]
    cells = summarize(with_better_of_segicl_and_prior(records))
    assert [r.get("better_of_segicl_and_prior", {}).get("dice") for r in records] == [0.6, 0.7, None]
    assert records[1]["better_of_segicl_and_prior"]["iou"] == 0.35  # the chosen method's own scores
    assert cells["better_of_segicl_and_prior"]["3"]["dice"] == pytest.approx(0.65)
    assert cells["segicl"]["3"]["dice"] == pytest.approx(0.55) and cells["example_prior"]["3"]["dice"] == 0.55
    assert "0" not in cells["better_of_segicl_and_prior"]
    assert best_peer(cells, "3") is None  # a diagnostic, never the peer SegICL is measured against
