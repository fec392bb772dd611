"""MVGConfig.pixel_skip: the head's full-resolution view of the input image of the pair it predicts for."""
import dataclasses
import json

import pytest
import torch

from mvg_head.canvas import block_causal_mask
from mvg_head.config import MVGConfig, full_config, tiny_config
from mvg_head.model import CONFIG_NAME, MVGModel
from tests.mvg_head.conftest import (assert_labels_see_only_earlier_images, assert_reloads_bit_identical,
                                     sentence, small_config)


def live_model(pixel_skip=True, **overrides):
    """A small model whose skip path is live: the zero-initialised last layer of the refinement is randomised."""
    torch.manual_seed(0)
    model = MVGModel(small_config(pixel_skip=pixel_skip, **overrides)).eval()
    if pixel_skip:
        torch.nn.init.normal_(model.head.refine[-1].weight, std=0.05)
    return model


def test_presets_and_validation():
    assert tiny_config().pixel_skip and not full_config().pixel_skip  # full preset: the paper's head and loss
    assert tiny_config().copy_weight < 1 and full_config().copy_weight == 1
    with pytest.raises(ValueError, match="skip_channels"):
        tiny_config(skip_channels=0)
    assert tiny_config(pixel_skip=False, skip_channels=0).skip_channels == 0


@pytest.mark.parametrize("pixel_skip", [True, False])
@pytest.mark.parametrize("mode", ["masked", "autoregressive"])
def test_shapes_with_and_without_the_skip(pixel_skip, mode):
    model = live_model(pixel_skip)
    images = sentence()
    output = model(images, mode, torch.Generator().manual_seed(0))
    assert output.prediction.shape == images.shape and torch.isfinite(output.loss)
    assert model.predict(images, mode).shape == (2, 3, 64, 64)
    has_refine = any(name.startswith("head.refine.") for name in model.state_dict())
    assert has_refine == pixel_skip


def set_gate(model, logit):
    """Every pixel's gate to sigmoid(logit), whatever the features (conv2 emits channel c at rows c p^2 .. (c+1) p^2)."""
    rows = slice(3 * model.config.patch_size**2, 4 * model.config.patch_size**2)
    with torch.no_grad():
        model.head.conv2.weight[rows] = 0
        model.head.conv2.bias[rows] = logit


def test_the_gate_blends_the_coarse_prediction_and_the_input_pixels():
    """The correction starts at zero; an open gate copies the input image, a closed one keeps the coarse pixels."""
    torch.manual_seed(0)
    model = MVGModel(small_config()).eval()
    images = model.normalize(sentence(batch=1))
    features = model.forward_encoder(images)
    with torch.no_grad():
        set_gate(model, 100.0)
        copied = model.forward_head(features, 2, images)
        set_gate(model, -100.0)
        coarse = model.forward_head(features, 2, images)
        other = model.forward_head(features, 2, model.normalize(sentence(batch=1, seed=1)))
    assert torch.allclose(copied[:, 2:], images[:, 2:3].expand(-1, 2, -1, -1, -1), atol=1e-6)
    assert torch.allclose(copied[:, :2], images[:, 0:1].expand(-1, 2, -1, -1, -1), atol=1e-6)
    assert torch.allclose(coarse, other, atol=1e-6) and not torch.allclose(coarse, copied)


@pytest.mark.parametrize("pixel_skip", [True, False])
def test_the_head_reads_the_query_pixels_only_with_the_skip(pixel_skip):
    """Encoder features held fixed: changing the images changes the head's output only through the skip."""
    model = live_model(pixel_skip)
    images = model.normalize(sentence(batch=1))
    features = model.forward_encoder(images)
    changed = images.clone()
    changed[:, 2, :, 30:34, 30:34] += 1.0  # a detail smaller than a patch, on the query image
    with torch.no_grad():
        before = model.forward_head(features, 2, images)
        after = model.forward_head(features, 2, changed)
    difference = (after - before).abs().amax(dim=(2, 3, 4))[0]  # per slot
    if not pixel_skip:
        assert torch.equal(before, after)
        return
    assert difference[2] > 0 and difference[3] > 0  # the query pair's slots: query image and query label
    assert difference[0] == 0 and difference[1] == 0  # the prompt pair reads the prompt image
    outside = (after - before)[0, 3].abs().amax(dim=0)
    outside[27:37, 27:37] = 0  # three 3x3 layers reach 3 pixels around the detail, no further
    assert outside.max() == 0


def test_predict_passes_the_query_image_to_the_head():
    model = live_model()
    images = sentence(batch=1)
    seen = []
    model.head.register_forward_hook(lambda module, args, output: seen.append(args[1]))
    for mode in ("autoregressive", "masked"):
        model.predict(images, mode)
    for pixels in seen:
        assert torch.allclose(pixels, model.normalize(images)[:, 2])


def test_autoregressive_skip_cannot_see_later_pairs():
    """With a live skip, label i still depends on images 0 .. 2i only."""
    model = live_model(max_prompts=2)
    assert_labels_see_only_earlier_images(model)
    assert block_causal_mask(3, model.config.grid).shape[0] == 6 * model.config.grid**2


def test_masked_patches_do_not_leak_through_the_skip():
    """Masked image modelling of the whole square: a masked patch of an input image is blank in the skip."""
    model = live_model(mask_labels_only=False)
    pairs, grid = 2, model.config.grid
    images = model.normalize(sentence(batch=1))
    token_mask = torch.zeros(1, pairs * 2 * grid**2, dtype=torch.bool)
    token_mask[0, 2 * grid**2] = True  # the first patch of the query image (row 2 * grid of the canvas, column 0)
    pixels = model.skip_pixels(images, pairs, token_mask)
    assert (pixels[0, 2:, :, :8, :8] == 0).all()
    assert torch.equal(pixels[0, 2:, :, 8:, 8:], images[0, 2:3, :, 8:, 8:].expand(2, -1, -1, -1))
    assert torch.equal(pixels[0, :2], images[0, 0:1].expand(2, -1, -1, -1))
    changed = images.clone()
    changed[:, 2, :, :8, :8] = 5.0
    features = model.forward_encoder(images, token_mask=token_mask)
    with torch.no_grad():
        assert torch.equal(model.forward_head(features, pairs, images, token_mask),
                           model.forward_head(features, pairs, changed, token_mask))


def test_save_load_bit_identical_with_the_skip(tmp_path):
    model = live_model()
    assert assert_reloads_bit_identical(model, tmp_path / "m").config.pixel_skip


def test_configs_saved_before_the_field_load_as_the_plain_head(tmp_path):
    """A model folder written before pixel_skip existed (no such field in its config) loads and predicts as before."""
    old = live_model(pixel_skip=False)
    old.save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / CONFIG_NAME
    saved = json.loads(config_path.read_text())
    for name in ("pixel_skip", "skip_channels", "coarse_loss_weight", "copy_weight"):
        del saved[name]
    config_path.write_text(json.dumps(saved))
    assert not MVGConfig.from_dict(saved).pixel_skip
    loaded = MVGModel.from_pretrained(tmp_path / "old")
    assert not loaded.config.pixel_skip and loaded.config.copy_weight == 1.0  # the paper's head and loss
    images = sentence(batch=1)
    assert torch.equal(old.predict(images), loaded.predict(images))



def test_the_coarse_prediction_is_supervised_too():
    model = live_model()
    images = sentence()
    supervised_both = model.forward_autoregressive(images).loss
    model.config = dataclasses.replace(model.config, coarse_loss_weight=0.0)
    output = model.forward_autoregressive(images)
    weights = model.pixel_weights(images, output.supervised)
    assert torch.allclose(output.loss, model.loss(output.prediction, model.normalize(images), weights))
    assert supervised_both > output.loss


def test_training_flags_select_the_head():
    from segicl_stages.mvg_train import build_parser, model_config

    assert model_config(build_parser().parse_args([])).pixel_skip
    assert not model_config(build_parser().parse_args(["--no-pixel-skip"])).pixel_skip
    assert not model_config(build_parser().parse_args(["--preset", "full"])).pixel_skip
