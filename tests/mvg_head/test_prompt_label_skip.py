"""MVGConfig.prompt_label_skip: the head of every pair also reads the previous pair's label at full resolution."""
import json

import pytest
import torch

from mvg_head.config import MVGConfig, tiny_config
from mvg_head.model import CONFIG_NAME, MVGModel
from tests.mvg_head.conftest import (assert_labels_see_only_earlier_images, assert_reloads_bit_identical,
                                     sentence, small_config)


def live_model(**overrides):
    """A small model with both skips live: their zero-initialised last layers are randomised."""
    torch.manual_seed(0)
    model = MVGModel(small_config(prompt_label_skip=True, **overrides)).eval()
    for layers in (model.head.refine, model.head.label_refine):
        torch.nn.init.normal_(layers[-1].weight, std=0.05)
    return model


def set_amount(model, amount):
    """Every pixel's label amount to `amount` and the label correction to zero, whatever the inputs."""
    last = model.head.label_refine[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[-1] = amount


def test_validation_and_defaults():
    assert not MVGConfig().prompt_label_skip
    with pytest.raises(ValueError, match="prompt_label_skip needs pixel_skip"):
        tiny_config(pixel_skip=False, prompt_label_skip=True)


@pytest.mark.parametrize("mode", ["masked", "autoregressive"])
def test_switching_it_on_leaves_predictions_unchanged(mode):
    torch.manual_seed(0)
    model = MVGModel(small_config()).eval()
    images = sentence()
    before = model.predict(images, mode)
    model.add_prompt_label_skip()
    assert model.config.prompt_label_skip and model.head.label_refine is not None
    assert torch.equal(model.predict(images, mode), before)
    output = model(images, mode, torch.Generator().manual_seed(0))
    output.loss.backward()
    assert model.head.label_refine[-1].weight.grad.abs().sum() > 0  # it learns from the first step


def test_a_full_amount_copies_the_previous_label():
    model = live_model()
    images = model.normalize(sentence(batch=1))
    features = model.forward_encoder(images)
    set_amount(model, 1.0)
    with torch.no_grad():
        output = model.forward_head(features, 2, images)
    assert torch.allclose(output[:, 2:], images[:, 1:2].expand(-1, 2, -1, -1, -1), atol=1e-6)  # the prompt label
    assert torch.allclose(output[:, :2], torch.zeros_like(output[:, :2]), atol=1e-6)  # pair 0: blank


def test_the_query_label_reads_the_prompt_label_locally():
    """Encoder features held fixed: a sub-patch change of the prompt label changes the query pair's output around
    the change only, and the prompt pair's output not at all."""
    model = live_model()
    images = model.normalize(sentence(batch=1))
    features = model.forward_encoder(images)
    changed = images.clone()
    changed[:, 1, :, 30:34, 30:34] += 1.0
    with torch.no_grad():
        difference = (model.forward_head(features, 2, changed) - model.forward_head(features, 2, images)).abs()
    assert difference[0, :2].max() == 0
    assert difference[0, 2:].max() > 0
    outside = difference[0, 2:].amax(dim=(0, 1))
    outside[27:37, 27:37] = 0  # three 3x3 layers reach 3 pixels around the change
    assert outside.max() == 0


def test_predict_reads_the_last_prompt_label():
    model = live_model(max_prompts=2)
    images = sentence(batch=1, pairs=3)
    seen = []
    model.head.register_forward_hook(lambda module, args, output: seen.append(args[2]))
    for mode in ("autoregressive", "masked"):
        model.predict(images, mode)
    assert len(seen) == 2
    for labels in seen:
        assert torch.allclose(labels, model.normalize(images)[:, 3])


def test_autoregressive_labels_still_see_only_earlier_images():
    assert_labels_see_only_earlier_images(live_model(max_prompts=2))


def test_masked_label_patches_stay_blank():
    model = live_model()
    pairs, grid = 2, model.config.grid
    images = model.normalize(sentence(batch=1))
    token_mask = torch.zeros(1, pairs * 2 * grid**2, dtype=torch.bool)
    token_mask[0, grid] = True  # the first patch of the prompt label (row 0 of the canvas, second slot)
    labels = model.previous_labels(images, pairs, token_mask)
    assert (labels[0, 2:, :, :8, :8] == 0).all()
    assert torch.equal(labels[0, 2:, :, 8:, 8:], images[0, 1:2, :, 8:, 8:].expand(2, -1, -1, -1))
    assert (labels[0, :2] == 0).all()


def test_save_load_bit_identical(tmp_path):
    model = live_model()
    assert assert_reloads_bit_identical(model, tmp_path / "m").config.prompt_label_skip


def test_configs_saved_before_the_field_load_without_it(tmp_path):
    torch.manual_seed(0)
    old = MVGModel(small_config()).eval()
    old.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / CONFIG_NAME
    saved = json.loads(path.read_text())
    del saved["prompt_label_skip"]
    path.write_text(json.dumps(saved))
    loaded = MVGModel.from_pretrained(tmp_path / "old")
    assert not loaded.config.prompt_label_skip and loaded.head.label_refine is None
    images = sentence(batch=1)
    assert torch.equal(old.predict(images), loaded.predict(images))


def test_training_flag():
    from segicl_stages.mvg_train import build_parser, model_config

    assert not model_config(build_parser().parse_args([])).prompt_label_skip
    assert model_config(build_parser().parse_args(["--prompt-label-skip"])).prompt_label_skip
