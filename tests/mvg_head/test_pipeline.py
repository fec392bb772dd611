from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from segicl_data.imageio import read_image
from segicl_data.preprocess import window_ct
from mvg_head.model import MVGModel
from mvg_head.pipeline import MVGPipeline
from tests.mvg_head.conftest import small_config


@pytest.fixture(scope="module")
def pipeline():
    torch.manual_seed(0)
    return MVGPipeline(MVGModel(small_config()))


def test_2d_image_task_keeps_the_query_size(pipeline):
    rng = np.random.default_rng(0)
    query, prompt, target = (rng.random((80, 72)).astype(np.float32) for _ in range(3))
    result = pipeline(query, prompt, target, task="denoising", normalization="none")
    assert result.output.shape == (1, 80, 72) and result.output.dtype == np.float32
    assert 0 <= result.output.min() and result.output.max() <= 1
    assert result.rgb.shape == (1, 3, 64, 64)


def test_3d_prompts_chosen_by_position(pipeline):
    rng = np.random.default_rng(1)
    query = rng.random((10, 64, 64)).astype(np.float32)
    prompts = rng.random((5, 64, 64)).astype(np.float32)
    result = pipeline(query, prompts, prompts, task="synthesis", batch_size=4)
    assert result.output.shape == (10, 64, 64)
    assert result.prompt_slices == [n * 5 // 10 for n in range(10)]


def test_inpainting_keeps_the_input_outside_the_region(pipeline):
    rng = np.random.default_rng(2)
    query = rng.random((64, 64)).astype(np.float32)
    region = np.zeros((64, 64), bool)
    region[20:30, 20:30] = True
    result = pipeline(query, query, query, task="inpainting", normalization="none", region=region)
    assert np.array_equal(result.output[0][~region], query[~region])


@pytest.mark.parametrize("colouring", ["random", "predefined", "binary"])
def test_segmentation_returns_the_prompt_label_values(pipeline, colouring):
    rng = np.random.default_rng(3)
    labels = np.zeros((2, 64, 64), np.int64)
    labels[:, 10:30, 10:30], labels[:, 35:50, 35:60] = 4, 9
    result = pipeline(rng.random((3, 64, 64)), rng.random((2, 64, 64)), labels, task="segmentation",
                      colouring=colouring)
    assert result.output.shape == (3, 64, 64)
    assert set(np.unique(result.output)) <= {0, 4, 9}


def test_bad_inputs_refused(pipeline):
    image = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="prompt/query size mismatch"):
        pipeline(image, np.zeros((32, 32)), np.zeros((32, 32)), task="synthesis")
    with pytest.raises(ValueError, match="must have the same shape"):
        pipeline(image, image, np.zeros((2, 64, 64)), task="synthesis")
    with pytest.raises(ValueError, match="unknown task 'registration'"):
        pipeline(image, image, image, task="registration")
    many = np.arange(64 * 64).reshape(64, 64) % 70  # 69 foreground classes > 63 colours
    with pytest.raises(ValueError, match="69 classes but the palette has only 63 colours"):
        pipeline(image, image, many, task="segmentation")
    with pytest.raises(ValueError, match="no labelled pixel"):
        pipeline(image, image, np.zeros((64, 64)), task="segmentation")
    with pytest.raises(ValueError, match="2-D slice"):
        pipeline(np.zeros((1, 2, 64, 64)), image, image, task="synthesis")
    soft = np.zeros((64, 64))
    soft[10:20, 10:20] = 0.7  # a probability map, not labels: rounding would silently make it all background
    with pytest.raises(ValueError, match=r"integer label map \(0 = background\); found non-integer values such as "
                                         r"\[0.7\]"):
        pipeline(image, image, soft, task="segmentation")
    with pytest.raises(ValueError, match="a region applies to inpainting only, not to 'denoising'"):
        pipeline(image, image, image, task="denoising", region=np.ones((64, 64), bool))
    with pytest.raises(ValueError, match="a label colouring applies to segmentation only, not to 'synthesis'"):
        pipeline(image, image, image, task="synthesis", colouring="binary")


# ---------------------------------------------------------------- image outputs in the query's intensity scale

SHIPPED = Path(__file__).resolve().parents[2] / "weights" / "mvg-tiny"


@pytest.fixture(scope="module")
def shipped():
    return MVGPipeline.from_pretrained(SHIPPED)


def ct_slice_and_noisy(seed=0):
    """The real CT slice of pydicom's test data in HU (-896..1167) and two noisy copies (query, prompt image)."""
    hounsfield = read_image(get_testdata_file("CT_small.dcm")).array
    rng = np.random.default_rng(seed)
    return hounsfield, *(hounsfield + rng.normal(0, 40, hounsfield.shape).astype(np.float32) for _ in range(2))


def test_ct_denoising_comes_back_in_hounsfield_units(shipped):
    clean, query, prompt = ct_slice_and_noisy()
    result = shipped(query, prompt, clean, task="denoising", normalization="ct")
    assert result.intensity_range == (-100.0, 200.0)
    assert 0 <= result.output_normalized.min() and result.output_normalized.max() <= 1
    np.testing.assert_allclose(result.output, result.output_normalized * 300 - 100, atol=1e-4)
    assert -100 <= result.output.min() and result.output.max() <= 200 and result.output.max() > 100  # HU, not [0, 1]
    windowed = np.clip(clean, -100, 200)  # what the window lets the model see
    assert np.abs(result.output[0] - windowed).mean() < 0.6 * np.abs(windowed - windowed.mean()).mean()


def test_mri_scaled_by_1000_comes_back_on_its_scale(shipped):
    rng = np.random.default_rng(4)
    query, prompt, target = (rng.normal(100, 20, (2, 64, 64)).clip(0).astype(np.float32) for _ in range(3))
    unit = shipped(query, prompt, target, task="synthesis")
    scaled = shipped(query * 1000, prompt * 1000, target * 1000, task="synthesis")
    np.testing.assert_allclose(scaled.output_normalized, unit.output_normalized, atol=1e-4)  # percentiles: no scale
    np.testing.assert_allclose(scaled.output, unit.output * 1000, rtol=1e-4, atol=1.0)
    low, high = np.percentile(query * 1000, (0.5, 99.5))
    assert scaled.intensity_range == pytest.approx((low, high), rel=1e-5)
    assert low - 1 <= scaled.output.min() and scaled.output.max() <= high + 1 and scaled.output.max() > 1000


def test_inpainting_in_hounsfield_units_keeps_the_input_outside_the_region(shipped):
    clean, query, _ = ct_slice_and_noisy()
    region = np.zeros(clean.shape, bool)
    region[50:70, 50:70] = True
    result = shipped(clean, clean, clean, task="inpainting", normalization="ct", region=region)
    assert np.array_equal(result.output[0][~region], clean[~region])  # -896..1167 HU, unclipped
    assert np.array_equal(result.output_normalized[0][~region], window_ct(clean)[~region])
    assert -100 <= result.output[0][region].min() and result.output[0][region].max() <= 200


def test_segmentation_has_no_intensity_scale(shipped):
    rng = np.random.default_rng(5)
    labels = np.zeros((64, 64), np.int64)
    labels[10:40, 10:40] = 2
    image = rng.random((64, 64)).astype(np.float32) * 1000
    result = shipped(image, image, labels, task="segmentation")
    assert result.output.dtype == np.int64 and set(np.unique(result.output)) <= {0, 2}
    assert result.output_normalized is None and result.intensity_range is None
