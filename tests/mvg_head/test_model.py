import dataclasses

import pytest
import torch

from mvg_head.config import MVGConfig, full_config, get_preset, tiny_config
from mvg_head.model import MVGModel
from tests.mvg_head.conftest import assert_labels_see_only_earlier_images, sentence, small_config


def test_configs_validate_without_weights():
    full = full_config()
    assert (full.width, full.depth, full.heads, full.patch_size, full.image_size) == (1024, 24, 16, 16, 448)
    assert full.blocks_for_head == (5, 11, 17, 23)
    assert tiny_config().grid == 8
    assert MVGConfig.from_dict(tiny_config().to_dict()) == tiny_config()
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny_config(image_size=60)
    with pytest.raises(ValueError, match="unknown colouring"):
        tiny_config(colouring="rainbow")
    with pytest.raises(ValueError, match="unknown MVG preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown MVGConfig fields"):
        MVGConfig.from_dict({"widht": 3})


@pytest.mark.parametrize("mode", ["masked", "autoregressive"])
def test_forward_shapes_and_loss(small_model, mode):
    images = sentence()
    output = small_model(images, mode, torch.Generator().manual_seed(0))
    assert output.prediction.shape == images.shape
    assert output.supervised.shape == (2, 4, 1, 64, 64)
    assert torch.isfinite(output.loss)
    if mode == "autoregressive":  # supervision solely on the labels
        assert output.supervised[:, 1::2].all() and not output.supervised[:, 0::2].any()
    else:
        assert abs(output.supervised[:, 1::2].float().mean().item() - small_model.config.mask_ratio) < 1e-6
        assert not output.supervised[:, 0::2].any()
    assert small_model.predict(images, mode).shape == (2, 3, 64, 64)


def test_autoregressive_label_cannot_see_later_pairs():
    """The prediction of label i is unchanged when label i itself or any later image is perturbed."""
    torch.manual_seed(0)
    assert_labels_see_only_earlier_images(MVGModel(small_config(max_prompts=2)).eval())


def test_position_embedding_is_shared_by_slots(small_model):
    pairs, grid = 2, small_model.config.grid
    position = small_model.position_embedding(pairs)
    assert position.shape == (1, pairs * 2 * grid**2, small_model.config.width)
    x_first, y_first = position[0, 0], position[0, grid]  # first patch of the prompt image and of its label
    slots = small_model.slot_embed[0]
    assert torch.allclose(x_first - slots[0], y_first - slots[1])


def test_predict_ignores_the_query_label_slot(small_model):
    images = sentence(batch=1)
    other = images.clone()
    other[:, -1] = torch.rand_like(other[:, -1])
    for mode in ("masked", "autoregressive"):
        assert torch.allclose(small_model.predict(images, mode), small_model.predict(other, mode), atol=1e-6)


def test_bad_inputs_refused(small_model):
    with pytest.raises(ValueError, match=r"images must be \[B, n, 3, 64, 64\]"):
        small_model.predict(torch.rand(1, 4, 3, 64, 48))
    with pytest.raises(ValueError, match="at most 1"):
        small_model.predict(torch.rand(1, 6, 3, 64, 64))
    with pytest.raises(ValueError, match="unknown mode"):
        small_model(torch.rand(1, 4, 3, 64, 64), mode="diffusion")


def test_save_load_bit_identical(small_model, tmp_path):
    small_model.save_pretrained(tmp_path / "m")
    loaded = MVGModel.from_pretrained(tmp_path / "m")
    assert loaded.config == small_model.config
    for (name, a), (_, b) in zip(small_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    images = sentence(batch=1)
    assert torch.equal(small_model.predict(images), loaded.predict(images))


def test_float16_export_loads_as_float32(small_model, tmp_path):
    from safetensors.torch import load_file, save_file

    small_model.save_pretrained(tmp_path / "m")
    state = load_file(tmp_path / "m" / "model.safetensors")
    save_file({k: v.half() for k, v in state.items()}, tmp_path / "m" / "model.safetensors")
    loaded = MVGModel.from_pretrained(tmp_path / "m")
    assert loaded.pos_embed.dtype == torch.float32
    assert torch.allclose(loaded.pos_embed, small_model.pos_embed, atol=1e-3)
    with pytest.raises(FileNotFoundError, match="no MVG model"):
        MVGModel.from_pretrained(tmp_path / "missing")


def test_sentence_with_fewer_prompts_than_max():
    torch.manual_seed(0)
    model = MVGModel(dataclasses.replace(small_config(), max_prompts=3)).eval()
    for pairs in (2, 3, 4):
        assert model.predict(sentence(batch=1, pairs=pairs)).shape == (1, 3, 64, 64)


def test_foreground_and_background_weigh_the_same():
    model = MVGModel(small_config(copy_weight=1.0))
    images = torch.zeros(1, 4, 3, 64, 64)
    images[:, 3, :, :8, :8] = 1.0  # a small structure (64 of 4096 pixels) on the query label
    supervised = torch.zeros(1, 4, 1, 64, 64, dtype=torch.bool)
    supervised[:, 3] = True
    weights = model.pixel_weights(images, supervised)
    foreground = weights[0, 3, 0, :8, :8].sum()
    assert torch.isclose(foreground, weights[0, 3].sum() - foreground)
    assert weights[:, :3].sum() == 0
    plain = dataclasses.replace(model.config, balance_foreground=False)
    assert torch.equal(MVGModel(plain).pixel_weights(images, supervised), supervised.float())


def test_label_pixels_that_copy_the_input_weigh_less():
    """copy_weight: a changed region (an inpainted hole) outweighs the copied rest; each image keeps its total."""
    model = MVGModel(small_config(copy_weight=0.1, balance_foreground=False))
    images = 0.9 * torch.rand(1, 4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images[:, 3] = images[:, 2]
    images[:, 3, :, 10:20, 10:20] = 1.0 - images[:, 3, :, 10:20, 10:20]  # the label changes 100 pixels
    images[:, 2:, :, 50:, 50:] = 1.0  # clipped white in both: not counted as a copy
    supervised = torch.zeros(1, 4, 1, 64, 64, dtype=torch.bool)
    supervised[:, 1::2] = True
    weights = model.pixel_weights(images, supervised)[0, :, 0]
    assert torch.isclose(weights[3, 15, 15] / weights[3, 40, 40], torch.tensor(10.0))
    assert torch.isclose(weights[3, 55, 55], weights[3, 15, 15])
    assert torch.isclose(weights[3].sum(), torch.tensor(64.0**2)) and torch.isclose(weights[1].sum(), weights[3].sum())
    assert torch.allclose(weights[1], weights[1, 0, 0])  # no pixel of the prompt label copies the prompt image
    assert weights[0::2].sum() == 0


def test_loading_a_segicl_folder_says_what_it_holds(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MVG model at .*"):
        MVGModel.from_pretrained(tmp_path)
    (tmp_path / "segicl_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="it holds a SegICL model"):
        MVGModel.from_pretrained(tmp_path)
