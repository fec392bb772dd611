"""segicl_benchmarks.labelling: the pool of varied cases, the simulated user's rounds, the summary, and one real
(small) run on the built-in data with the shipped weights."""
import json

import numpy as np
import pytest
import torch

from segicl_benchmarks.labelling import (LabelledSet, LabellingOptions, PoolSource, SourceCase, build_pool,
                                         builtin_source, in_order, labelled_to_reach, labelling_lines, method_curve,
                                         most_uncertain, nnunet_source, run_labelling, run_strategy, write_pool)
from segicl_data.bank import bank_structures
from segicl_data.dataset import SliceDataset
from segicl_data.imageio import read_image
from segicl_data.volumes import to_model_slices
from segicl_weights import SEGICL_TINY


def blob_source(subjects: int = 2) -> PoolSource:
    """Small synthetic subjects: a smooth textured volume [20, 32, 32] with an ellipsoid structure, 2 x 1 x 1 mm."""
    rng = np.random.default_rng(0)
    grid = np.indices((20, 32, 32)).astype(np.float32)
    cases = []
    for index in range(subjects):
        centre = np.array([10.0, 16.0 + index, 15.0])
        mask = (((grid - centre[:, None, None, None]) / np.array([4.0, 6.0, 5.0])[:, None, None, None]) ** 2).sum(0) < 1
        image = 100.0 + 50.0 * mask + rng.normal(0, 5, mask.shape) + grid[2]
        cases.append(SourceCase(f"subject{index}", image.astype(np.float32), mask, (2.0, 1.0, 1.0)))
    return PoolSource("labelling", "blobs", "blob", "t1", tuple(cases))


def test_the_pool_is_seeded_its_variants_differ_and_its_masks_are_binary_and_whole(tmp_path):
    source = blob_source()
    pool = build_pool(source, variants=2, seed=0, margin_mm=3.0)
    again = build_pool(source, variants=2, seed=0, margin_mm=3.0)
    assert [case.name for case in pool] == ["subject0_v0", "subject0_v1", "subject1_v0", "subject1_v1"]
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(pool, again))
    other_seed = build_pool(source, variants=2, seed=1, margin_mm=3.0)
    assert not any(a.image.shape == b.image.shape and np.allclose(a.image, b.image) for a, b in zip(pool, other_seed))
    first, second = pool[:2]
    assert first.image.shape != second.image.shape or not np.allclose(first.image, second.image)
    for case in pool:
        assert case.mask.dtype == bool and case.mask.any() and case.mask.shape == case.image.shape
        assert case.image.shape[0] < 20  # cut to the box around the structure (8 slices + 2 x 2 slices of margin)
    written = write_pool(pool, tmp_path / "pool", "blob", "t1")
    case = written["subject0_v1"]
    assert case.image.name == "subject0_v1_0000.nii.gz" and (tmp_path / "pool" / "dataset.json").exists()
    assert np.allclose(to_model_slices(read_image(case.image)), pool[1].image)
    labels = read_image(case.label)
    assert set(np.unique(labels.array)) == {0, 1} and np.array_equal(to_model_slices(labels) > 0, pool[1].mask)


def test_sources_come_from_the_built_in_subjects_or_an_nnunet_folder(dataset, nnunet_folder):
    source = builtin_source(dataset, "harvard_oxford/caudate_both_sides")
    assert [case.name for case in source.cases] == ["colin27", "fsl_mni152", "icbm2009c", "mni152_2009a"]
    assert source.structure == "caudate (both sides)" and "held out of the model's training" in source.title
    assert all(case.mask.any() and case.mask.shape == case.image.shape for case in source.cases)
    with pytest.raises(ValueError, match="no structure 'no such structure'"):
        builtin_source(dataset, "no such structure")
    imported = nnunet_source(nnunet_folder, "Caudate")
    assert len(imported.cases) == 4 and imported.structure == "caudate" and imported.name == "labelling_nnunet"
    assert imported.cases[0].spacing == (2.0, 2.0, 2.0) and all(case.mask.any() for case in imported.cases)
    with pytest.raises(ValueError, match="caudate, putamen, thalamus"):
        nnunet_source(nnunet_folder, "liver")


def fake_round(uncertainty: dict[str, float], seen: list):
    """A predictor that answers each unlabelled case with a fixed uncertainty score, and notes what each round saw:
    the cases asked for, the labelled cases and the bank's size."""

    def predict(labelled: LabelledSet, rest: list[str]) -> dict:
        bank = bank_structures(SliceDataset(labelled.dataset))["blob"]
        seen.append({"rest": list(rest), "labelled": list(labelled.cases), "bank": len(bank.rows)})
        return {"cases": {name: {"segicl": {"dice": 0.5, "uncertainty": uncertainty[name]}} for name in rest}}

    return predict


def test_the_ranked_user_labels_the_most_uncertain_cases_and_the_bank_grows_by_each(tmp_path):
    pool = write_pool(build_pool(blob_source(), variants=3, seed=0, margin_mm=3.0), tmp_path / "pool", "blob", "t1")
    names = list(pool)
    uncertainty = dict(zip(names, (0.0, 0.1, 0.5, 0.3, 0.4, 0.2)))
    seen: list = []
    labelled = LabelledSet(tmp_path / "ranked", pool, names[0], "blob", "t1", 64)
    rounds = run_strategy(labelled, (1, 2, 4), fake_round(uncertainty, seen), most_uncertain)
    # count 1 ranks the rest: names[2] (0.5) first; count 2 ranks again: names[4] (0.4), names[3] (0.3)
    assert labelled.cases == [names[0], names[2], names[4], names[3]]
    assert [r["count"] for r in rounds] == [1, 2, 4] and [s["bank"] for s in seen] == [1, 2, 4]
    for round_, view in zip(rounds, seen):
        assert not set(view["rest"]) & set(view["labelled"])  # a labelled case is never scored
        assert set(round_["cases"]) == set(view["rest"]) and len(view["rest"]) == len(names) - round_["count"]
    order = [names[0], names[5], names[1], names[3], names[2], names[4]]
    random_user = LabelledSet(tmp_path / "random", pool, names[0], "blob", "t1", 64)
    run_strategy(random_user, (1, 3), fake_round(uncertainty, []), in_order(order))
    assert random_user.cases == order[:3]


@pytest.mark.parametrize("counts, message", [((2, 3), "start at 1"), ((1, 3, 2), "increase strictly"),
                                             ((1, 1), "increase strictly"), ((), "start at 1")])
def test_counts_start_at_one_and_increase(counts, message):
    with pytest.raises(ValueError, match=message):
        LabellingOptions(counts=counts, variants=4, orders=2, seed=0, steps=1, samples=1, margin_mm=6.0,
                         unet_max_steps=10)


def test_counts_stay_below_the_pool_and_bad_flags_are_refused():
    options = LabellingOptions(counts=(1, 8), variants=2, orders=1, seed=0, steps=1, samples=1, margin_mm=6.0,
                               unet_max_steps=10)
    with pytest.raises(ValueError, match="below the pool's 8 cases"):
        options.check_pool(4)
    options.check_pool(5)
    with pytest.raises(ValueError, match="--orders must be >= 1"):
        LabellingOptions(counts=(1,), variants=2, orders=0, seed=0, steps=1, samples=1, margin_mm=6.0, unet_max_steps=1)


def test_the_command_refuses_bad_counts_before_reading_any_data(capsys):
    from segicl_commands.cli import main

    assert main(["bench", "labelling", "--counts", "1", "3", "2"]) == 2
    assert "--counts must start at 1 (one labelled case) and increase strictly" in capsys.readouterr().err


def test_curves_average_every_run_and_report_the_count_reaching_ninety_percent():
    def round_(count, dices):
        return {"count": count, "cases": {f"c{i}": {"segicl": {"dice": d}} for i, d in enumerate(dices)}}

    runs = [[round_(1, [0.2, 0.4]), round_(2, [0.7]), round_(3, [0.8])],
            [round_(1, [0.3, 0.3]), round_(2, [0.75]), round_(3, [0.9])]]
    curve = method_curve(runs, "segicl", seed=0)
    assert curve["1"]["episodes"] == 4 and curve["1"]["dice"] == pytest.approx(0.3)
    assert curve["3"]["dice"] == pytest.approx(0.85) and curve["3"]["ci95"] is not None
    assert labelled_to_reach(curve) == 3  # 0.725 < 0.9 * 0.85
    assert labelled_to_reach({"1": {"dice": 0.5}, "2": {"dice": 0.4}}) == 1
    assert method_curve(runs, "unet", seed=0) == {}


@pytest.fixture
def one_thread():
    """One torch thread for the test: on 2 cores shared with other processes, two threads wait on each other (the
    run below took 259 s with two under load, 26 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_small_real_run_writes_its_table_json_and_plot(dataset, tmp_path, one_thread):
    source = builtin_source(dataset, "harvard_oxford/accumbens_both_sides")
    options = LabellingOptions(counts=(1, 2), variants=1, orders=1, seed=0, steps=1, samples=1, margin_mm=2.0,
                               unet_max_steps=3)
    result = run_labelling(source, options, SEGICL_TINY, tmp_path, log=lambda _: None)
    assert json.loads((tmp_path / "labelling.json").read_text()) == result
    curves = result["curves"]
    assert set(curves) == {"ranked", "random", "registration_vote", "unet"}
    for method in ("ranked", "registration_vote", "unet"):
        assert {k: v["episodes"] for k, v in curves[method].items()} == {"1": 3, "2": 2}
        assert all(0 <= v["dice"] <= 1 for v in curves[method].values())
    assert curves["random"]["1"] == curves["ranked"]["1"]  # the same first case: the same first round
    assert set(result["reach"]) == set(curves) and all(result["reach"][m] in (1, 2) for m in curves)
    first, second = result["ranked"]
    assert second["labelled"][0] == first["labelled"][0] == result["first_case"]
    assert second["labelled"][1] == max(first["cases"], key=lambda c: first["cases"][c]["segicl"]["uncertainty"])
    assert first["unet"]["budget_steps"] <= 3 and first["unet"]["segicl_cpu_s"] > 0
    table = (tmp_path / "labelling.md").read_text()
    assert "| SegICL, most uncertain case labelled next | " in table and "n=3" in table
    assert table == "\n".join(labelling_lines(result)) + "\n"
    assert (tmp_path / "labelling.png").stat().st_size > 0
