import dataclasses

import pytest
import torch

from segicl.config import tiny_config
from segicl.decoder import MaskDecoder, PixelCodec
from segicl.pipeline import sample_masks

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
    first = sample_masks(tiny_model.decoder, tokens, 3, 2, torch.Generator().manual_seed(1), scheduler)
    again = sample_masks(tiny_model.decoder, tokens, 3, 2, torch.Generator().manual_seed(1), scheduler)
    assert first.shape == (2, 2, 1, 64, 64)
    assert torch.equal(first, again) and first.min() >= 0 and first.max() <= 1
    with pytest.raises(ValueError, match="num_steps and num_samples must be >= 1"):
        sample_masks(tiny_model.decoder, tokens, 0)


def test_control_map_refuses_wrong_token_count(tiny_model):
    with pytest.raises(ValueError, match="condition tokens must have shape \\[B, 256, 16\\]"):
        tiny_model.decoder.control_map(torch.zeros(1, 100, 16))
    with pytest.raises(ValueError, match="got \\(1, 256, 48\\)"):  # a token width the decoder lacks
        tiny_model.decoder.control_map(torch.zeros(1, 256, 48))


def write_tiny_stable_diffusion(folder, cross_attention_dim: int = 32):
    """A Stable-Diffusion-format folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) with tiny parts."""
    import json

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                         cross_attention_dim=cross_attention_dim, norm_num_groups=8,
                         attention_head_dim=8).save_pretrained(folder / "unet")
    AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  sample_size=64).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=10, hidden_size=cross_attention_dim, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8)
                  ).save_pretrained(folder / "text_encoder")
    (folder / "tokenizer").mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "m": 3, "mask</w>": 4, "s": 5, "k</w>": 6,
             "segmentation</w>": 7, "!": 8, "<unk>": 9}
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "tokenizer" / "vocab.json"), str(folder / "tokenizer" / "merges.txt"), unk_token="<unk>",
                  model_max_length=8).save_pretrained(folder / "tokenizer")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        folder / "scheduler")


def test_latent_decoder_loads_a_local_stable_diffusion_folder(tmp_path):
    """The full preset's loader (SD 1.5 layout, frozen UNet, VAE latents) on a tiny folder in the same format."""
    from segicl.config import ConditionEncoderConfig, DecoderConfig
    from segicl.decoder import VAECodec

    write_tiny_stable_diffusion(tmp_path / "sd")
    config = DecoderConfig(space="latent", pretrained_path=str(tmp_path / "sd"), freeze_unet=True,
                           conditioning_embedding_out_channels=(16, 32), prediction_type="epsilon",
                           mask_loss_weight=0.0)
    decoder = MaskDecoder.from_config(config, ConditionEncoderConfig(), tokenizer=None)
    assert isinstance(decoder.codec, VAECodec) and decoder.codec.latent_shape(64) == (4, 32, 32)
    assert not any(p.requires_grad for p in decoder.unet.parameters())
    assert all(p.requires_grad for p in decoder.controlnet.parameters())
    assert decoder.control_map(torch.zeros(1, 256, 16)).shape == (1, 16, 64, 64)
    losses = decoder.training_loss(random_masks(2), torch.randn(2, 256, 16))
    assert torch.isfinite(losses["loss"])
    assert sample_masks(decoder, torch.randn(1, 256, 16), num_steps=2).shape == (1, 1, 1, 64, 64)
    with pytest.raises(FileNotFoundError, match="lacks \\['unet', 'vae', 'text_encoder', 'tokenizer'\\]"):
        MaskDecoder.from_config(DecoderConfig(space="latent", pretrained_path=str(tmp_path)), ConditionEncoderConfig(),
                                tokenizer=None)
