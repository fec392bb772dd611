import dataclasses

import pytest
import torch

from segicl.config import tiny_config
from segicl.decoder import MaskDecoder, PixelCodec

from .conftest import random_masks


def test_pixel_codec_is_lossless():
    codec = PixelCodec(4)
    masks = random_masks(2)
    latent = codec.encode(masks)
    assert latent.shape == (2, 16, 16, 16) and set(latent.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal((codec.decode_logits(latent) > 0).float(), masks)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_training_loss_backpropagates(tiny_model, prediction_type):
    config = tiny_config()
    config.decoder = dataclasses.replace(config.decoder, prediction_type=prediction_type)
    decoder = MaskDecoder.from_config(config.decoder, config.condition, tiny_model.tokenizer)
    masks = random_masks(2)
    tokens = torch.randn(2, 256, 16, requires_grad=True)
    losses = decoder.training_loss(masks, tokens, torch.Generator().manual_seed(0))
    assert set(losses) == {"diffusion", "mask", "loss"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    # ControlNet starts with zero convolutions: the gradient reaches them first, then the condition input.
    zero_convs = decoder.controlnet.controlnet_down_blocks.parameters()
    assert sum(p.grad.abs().sum() for p in zero_convs) > 0
    assert all(p.grad is None for p in decoder.text_encoder.parameters())  # the keyword encoder is frozen


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++"])
def test_sampling_shapes_and_determinism(tiny_model, scheduler):
    tokens = tiny_model.condition_encoder(random_masks(2))
    first = tiny_model.decoder.sample(tokens, 3, 2, torch.Generator().manual_seed(1), scheduler)
    again = tiny_model.decoder.sample(tokens, 3, 2, torch.Generator().manual_seed(1), scheduler)
    assert first.shape == (2, 2, 1, 64, 64)
    assert torch.equal(first, again) and first.min() >= 0 and first.max() <= 1
    with pytest.raises(ValueError, match="num_steps and num_samples must be >= 1"):
        tiny_model.decoder.sample(tokens, 0)


def test_control_map_refuses_wrong_token_count(tiny_model):
    with pytest.raises(ValueError, match="condition tokens must have shape \\[B, 256, D\\]"):
        tiny_model.decoder.control_map(torch.zeros(1, 100, 16))
