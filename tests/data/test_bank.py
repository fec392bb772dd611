"""Example banks: structures found by name, slug or value; k different cases, position-matched."""
import numpy as np
import pytest

from segicl_data.bank import ExampleBank, bank_structures, find_structure
from segicl_data.episodes import prompt_slice


def test_structures_are_found_by_name_slug_task_or_value(imported_dataset):
    assert set(bank_structures(imported_dataset)) == {"thalamus", "caudate", "putamen"}
    for label in ("thalamus", "Thalamus", "deepgrey/thalamus", "1"):
        assert find_structure(imported_dataset, label).name == "thalamus"
    with pytest.raises(ValueError, match=r"no structure 'hippocampus' .* known: caudate, putamen, thalamus"):
        find_structure(imported_dataset, "hippocampus")


def test_a_bank_lends_one_slice_of_each_of_k_training_cases_at_the_query_position(imported_dataset):
    bank = ExampleBank(imported_dataset, "caudate", k=3)
    assert len(set(bank.cases)) == 3
    assert all(imported_dataset.volumes[case]["split"] == "train" for case in bank.cases)
    assert bank.instruction() == "Segment the caudate in this T1-weighted MRI slice."
    query_slices = 12
    per_slice = bank.examples_per_slice(query_slices)
    assert len(per_slice) == query_slices and all(len(pairs) == 3 for pairs in per_slice)
    case = bank.cases[0]
    slices = imported_dataset.volumes[case]["n_slices"]
    for query in (0, 5, 11):
        image, mask = per_slice[query][0]
        expected = prompt_slice(query, query_slices, slices)
        np.testing.assert_array_equal(image, imported_dataset.image(case, expected))
        assert set(np.unique(mask)) <= {0.0, 1.0}
    # the first and last slices of the extent hold no caudate: the bank says so with empty masks
    assert not per_slice[0][0][1].any()
    assert any(pairs[0][1].any() for pairs in per_slice)


@pytest.mark.parametrize("k", [1, 2])
def test_given_a_query_a_bank_with_more_cases_than_k_lends_those_most_like_it(imported_dataset, k):
    first = ExampleBank(imported_dataset, "caudate", k=3).cases

    def volume(case):
        return np.stack([imported_dataset.image(case, index) for index in range(imported_dataset.volumes[case]["n_slices"])])

    def same(a, b):  # two fixture cases differ only by a voxel-order flip, which the import undoes
        return volume(a).shape == volume(b).shape and np.array_equal(volume(a), volume(b))

    for case in first:
        query = volume(case) * 3.0 + 0.5
        chosen = ExampleBank(imported_dataset, "caudate", k=k, query=query).cases
        assert len(chosen) == k and any(same(case, lender) for lender in chosen)
        assert chosen == sorted(chosen, key=first.index)  # kept in the bank's order
        middle = len(query) // 2
        single = ExampleBank(imported_dataset, "caudate", k=1, query=query[middle: middle + 1],
                             position=middle / (len(query) - 1)).cases
        assert same(case, single[0])
    # without a query (or with exactly k cases) the first k cases by name lend, as before
    assert ExampleBank(imported_dataset, "caudate", k=k).cases == first[:k]


def test_a_bank_larger_than_the_labelled_cases_is_refused(imported_dataset):
    with pytest.raises(ValueError, match=r"'putamen' is labelled in 3 case\(s\) .* fewer than -k 4"):
        ExampleBank(imported_dataset, "putamen", k=4)
    with pytest.raises(ValueError, match="-k must be >= 1"):
        ExampleBank(imported_dataset, "putamen", k=0)


def test_a_training_case_is_the_prompt_volume_of_mvg(imported_dataset, dataset):
    from segicl_data.bank import prompt_volume

    images, labels, case = prompt_volume(imported_dataset)
    assert imported_dataset.volumes[case]["split"] == "train"
    assert images.shape == labels.shape == (imported_dataset.volumes[case]["n_slices"], 64, 64)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="no case 'nobody'"):
        prompt_volume(imported_dataset, "nobody")
    with pytest.raises(ValueError, match="is not an imported dataset"):
        prompt_volume(dataset)
