"""segicl.registered_examples: examples registered to the query, the weight the examples choose, and the fusion."""
import numpy as np
import pytest

from segicl.registered_examples import (WEIGHTS, choose_weight, fuse, registered_at, registered_maps,
                                        registered_probability)
from segicl.volume import Settings
from segicl_data.metrics import dice


def disk_slice(centre: tuple[int, int], radius: float = 6.0, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A bright disk (the structure) at the corner of a dimmer square head, the two moved together so that the disk
    sits at `centre`, on a dark background; and the disk's mask."""
    rows, columns = np.mgrid[:size, :size]
    top, left = centre[0] - 8, centre[1] - 8
    image = np.zeros((size, size), np.float32)
    image[top:top + 24, left:left + 20] = 0.3
    mask = ((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius ** 2).astype(np.float32)
    image[mask > 0] = 1.0
    return image, mask


def test_an_example_registered_to_the_query_lands_on_the_query_structure():
    query, truth = disk_slice((20, 22))
    moved = [disk_slice((27, 28)), disk_slice((26, 19))]
    unregistered = np.mean([mask for _, mask in moved], axis=0) > 0.5
    registered = registered_probability(moved, query) > 0.5
    assert dice(registered, truth) > 0.85 > dice(unregistered, truth)


def test_a_large_query_is_registered_at_the_model_size_and_answered_on_its_own_grid():
    query, truth = disk_slice((40, 44), radius=12.0, size=96)
    moved = [disk_slice((27, 28), radius=8.0, size=64), disk_slice((26, 19), radius=8.0, size=64)]
    probability = registered_at(moved, query, 48)
    assert probability.shape == (96, 96) and 0 <= probability.min() and probability.max() <= 1
    assert dice(probability > 0.5, truth) > 0.8


def test_examples_without_the_structure_are_empty_raters_and_other_sizes_are_resampled():
    query, _ = disk_slice((20, 22))
    blank = (np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32))
    assert not registered_probability([blank, blank], query).any()
    maps = registered_maps(np.stack([query, query]), [], [[blank], [disk_slice((22, 22), size=64)]])
    assert maps.shape == (2, 48, 48) and not maps[0].any() and maps[1].any()


def test_the_examples_choose_the_model_when_it_answers_them_and_registration_when_it_fails():
    pairs = [disk_slice((20 + 3 * i, 22 - 2 * i)) for i in range(3)]
    truths = {pair[0].tobytes(): pair[1] for pair in pairs}
    assert choose_weight(lambda image, others: truths[image.tobytes()], pairs) == 1.0
    assert choose_weight(lambda image, others: np.zeros_like(image), pairs) == min(WEIGHTS)


def test_fewer_than_two_examples_with_the_structure_keep_the_model_without_asking_it():
    def never(image, others):
        raise AssertionError("the model is not asked")

    empty = (np.zeros((48, 48), np.float32), np.zeros((48, 48), np.float32))
    assert choose_weight(never, [disk_slice((20, 22)), empty]) == 1.0


def test_the_fusion_weighs_both_answers_and_scales_the_model_spread():
    probabilities, uncertainty = np.full((2, 4, 4), 0.8, np.float32), np.full((2, 4, 4), 0.2, np.float32)
    registered = np.zeros((2, 4, 4), np.float32)
    fused, spread = fuse(probabilities, uncertainty, registered, 0.6)
    np.testing.assert_allclose(fused, 0.48)
    np.testing.assert_allclose(spread, 0.12)
    same, unchanged = fuse(probabilities, uncertainty, registered, 1.0)
    np.testing.assert_array_equal(same, probabilities)
    np.testing.assert_array_equal(unchanged, uncertainty)


def test_segment_with_registered_examples_reports_the_chosen_weight(pipeline):
    query, _ = disk_slice((20, 22))
    examples = [disk_slice((20 + 3 * i, 22 - 2 * i)) for i in range(1, 4)]
    settings = Settings(steps=1, samples=2, normalization="none", register_examples=True)
    result = pipeline.segment(query, "Segment the disk", examples, settings=settings)
    assert result.mask.shape == (48, 48) and set(np.unique(result.mask)) <= {0, 1}
    assert result.structures["Segment the disk"]["model_weight"] in WEIGHTS
    assert 0 <= result.probabilities.min() and result.probabilities.max() <= 1


def test_registering_a_single_example_is_refused_before_any_work(pipeline):
    query, _ = disk_slice((20, 22))
    settings = Settings(steps=1, samples=1, register_examples=True)
    with pytest.raises(ValueError, match="registering the examples needs at least 2 examples .* got 1"):
        pipeline.segment(query, "Segment the disk", [disk_slice((24, 20))], settings=settings)


def test_a_volume_with_position_matched_examples_is_fused_on_every_slice(pipeline, imported_dataset, nnunet_folder):
    image = nnunet_folder / "imagesTs" / "colin_004_0000.nii.gz"
    common = dict(examples_from=imported_dataset.root, label="thalamus", k=3)
    alone = pipeline.segment(image, settings=Settings(steps=1, samples=2), **common)
    fused = pipeline.segment(image, settings=Settings(steps=1, samples=2, register_examples=True), **common)
    weight = next(iter(fused.structures.values()))["model_weight"]
    assert weight in WEIGHTS[1:] and fused.mask.shape == alone.mask.shape  # these examples chose registration (0.5)
    assert not np.array_equal(fused.probabilities, alone.probabilities)
    np.testing.assert_allclose(fused.uncertainty, weight * alone.uncertainty, atol=1e-6)
