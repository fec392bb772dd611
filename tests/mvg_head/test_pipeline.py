import numpy as np
import pytest
import torch

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
