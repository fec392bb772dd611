"""The diffusion mask decoder: a diffusers ControlNet on a UNet2DConditionModel.

The condition tokens, reshaped to their patch grid, are the ControlNet's spatial condition map (the
route that carries the mask, ../shared/FINDINGS.md); a fixed keyword prompt enters through
cross-attention. The diffusion runs in a codec space: the pixel codec folds p x p pixel blocks into
channels (lossless, tiny preset); the latent codec is an AutoencoderKL (full preset: SD 1.5's VAE).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       UNet2DConditionModel)
from monai.losses import DiceLoss
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from segicl.config import ConditionEncoderConfig, DecoderConfig

MASK_LOGIT_SCALE = 4.0  # codec values are +-1 for mask/background; sigmoid(+-4) ~ 0.98 / 0.02


class PixelCodec(nn.Module):
    """mask {0,1} [B,1,S,S] <-> [B, r*r, S/r, S/r] with values +-1: pixel (un)shuffle, no parameters."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def encode(self, mask: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(mask * 2.0 - 1.0, self.factor)

    def decode_logits(self, latent: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latent, self.factor) * MASK_LOGIT_SCALE

    def latent_shape(self, mask_size: int) -> tuple[int, int, int]:
        return (self.factor**2, mask_size // self.factor, mask_size // self.factor)


class VAECodec(nn.Module):
    """A frozen AutoencoderKL: the mask as a 3-channel image in [-1, 1] <-> scaled latents."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae.requires_grad_(False)
        self.scale = float(vae.config.scaling_factor)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    def encode(self, mask: torch.Tensor) -> torch.Tensor:
        image = (mask * 2.0 - 1.0).expand(-1, 3, -1, -1)
        return self.vae.encode(image).latent_dist.mean * self.scale

    def decode_logits(self, latent: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latent / self.scale).sample
        return image.mean(dim=1, keepdim=True) * MASK_LOGIT_SCALE

    def latent_shape(self, mask_size: int) -> tuple[int, int, int]:
        side = mask_size // self.downsample
        return (int(self.vae.config.latent_channels), side, side)


def build_unet(config: DecoderConfig, in_channels: int, sample_size: int) -> UNet2DConditionModel:
    """A UNet from config with cross-attention only in its last (coarsest) block (STACK.md: attention
    on large feature maps is what makes CPU steps slow)."""
    levels = len(config.block_out_channels)
    down = tuple("CrossAttnDownBlock2D" if i == levels - 1 else "DownBlock2D" for i in range(levels))
    up = tuple("CrossAttnUpBlock2D" if i == 0 else "UpBlock2D" for i in range(levels))
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
        down_block_types=down, up_block_types=up, cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_head_dim, norm_num_groups=config.norm_num_groups,
    )


def build_text_encoder(config: DecoderConfig, vocab_size: int, max_tokens: int) -> CLIPTextModel:
    """The tiny keyword-prompt encoder: a small CLIPTextModel over the project tokenizer."""
    text_config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=config.text_hidden_size, intermediate_size=2 * config.text_hidden_size,
        num_hidden_layers=config.text_layers, num_attention_heads=2, max_position_embeddings=max_tokens,
        projection_dim=config.cross_attention_dim, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return CLIPTextModel(text_config)


def train_scheduler(config: DecoderConfig) -> DDPMScheduler:
    """The training noise schedule (cosine for the pixel codec; SD's scaled-linear for latents)."""
    if config.pretrained_path and (Path(config.pretrained_path) / "scheduler").is_dir():
        scheduler = DDPMScheduler.from_pretrained(config.pretrained_path, subfolder="scheduler")
        return DDPMScheduler.from_config(scheduler.config, prediction_type=config.prediction_type, clip_sample=False)
    schedule = "squaredcos_cap_v2" if config.space == "pixel" else "scaled_linear"
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=schedule,
                         beta_start=0.00085, beta_end=0.012, prediction_type=config.prediction_type,
                         clip_sample=False)


def inference_scheduler(config: DecoderConfig, train: DDPMScheduler, name: str | None = None):
    """DDIM or DPM-Solver++ with the training schedule."""
    name = name or config.scheduler
    if name == "ddim":
        return DDIMScheduler.from_config(train.config, timestep_spacing="trailing")
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(train.config, algorithm_type="dpmsolver++",
                                                       timestep_spacing="trailing")
    raise ValueError(f"unknown scheduler {name!r}; expected 'ddim' or 'dpmsolver++'")


class MaskDecoder(nn.Module):
    """Condition tokens -> mask, by conditional diffusion (ControlNet + UNet)."""

    def __init__(self, config: DecoderConfig, condition: ConditionEncoderConfig, unet: UNet2DConditionModel,
                 controlnet: ControlNetModel, codec: nn.Module, text_encoder: CLIPTextModel, keyword_ids: torch.Tensor):
        super().__init__()
        self.config = config
        self.condition = condition
        self.unet = unet.requires_grad_(not config.freeze_unet)
        self.controlnet = controlnet
        self.codec = codec
        self.text_encoder = text_encoder.requires_grad_(False)
        self.register_buffer("keyword_ids", keyword_ids.long(), persistent=False)
        self.scheduler = train_scheduler(config)
        self.dice_loss = DiceLoss(sigmoid=True)

    @classmethod
    def from_config(cls, config: DecoderConfig, condition: ConditionEncoderConfig, tokenizer) -> "MaskDecoder":
        """Build every part from config (tiny), or load the UNet, VAE and text encoder from a local SD directory."""
        if config.pretrained_path is None:
            codec: nn.Module = PixelCodec(config.pixel_unshuffle)
            channels, side, _ = codec.latent_shape(condition.mask_size)
            unet = build_unet(config, channels, side)
            text_encoder = build_text_encoder(config, len(tokenizer), 16)
            keyword_ids = tokenizer(config.keyword_prompt, return_tensors="pt").input_ids
        else:
            unet, codec, text_encoder, keyword_ids = _load_stable_diffusion(config)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_channels=condition.token_dim,
            conditioning_embedding_out_channels=config.conditioning_embedding_out_channels)
        return cls(config, condition, unet, controlnet, codec, text_encoder, keyword_ids)

    def keyword_states(self, batch: int) -> torch.Tensor:
        """The keyword prompt's text-encoder states [batch, L, C] (frozen: computed without grad)."""
        with torch.no_grad():
            states = self.text_encoder(self.keyword_ids).last_hidden_state
        return states.expand(batch, -1, -1)

    def control_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Condition tokens [B, M, D] -> the ControlNet's condition image, nearest-upsampled as needed."""
        grid = self.condition.grid
        if tokens.ndim != 3 or tokens.shape[1] != grid * grid or tokens.shape[2] != self.condition.token_dim:
            raise ValueError(f"condition tokens must have shape [B, {grid * grid}, {self.condition.token_dim}], "
                             f"got {tuple(tokens.shape)}")
        spatial = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid, grid)
        _, side, _ = self.codec.latent_shape(self.condition.mask_size)
        target = side * 2 ** (len(self.config.conditioning_embedding_out_channels) - 1)
        return spatial if target == grid else F.interpolate(spatial, size=(target, target), mode="nearest")

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, control: torch.Tensor,
                states: torch.Tensor | None = None) -> torch.Tensor:
        """One denoiser evaluation: the ControlNet's residuals steer the UNet. `states`: the keyword states
        (computed here when not given; a sampler passes them once for all its steps)."""
        states = self.keyword_states(noisy.shape[0]) if states is None else states
        down, mid = self.controlnet(noisy, timesteps, encoder_hidden_states=states, controlnet_cond=control,
                                    return_dict=False)
        return self.unet(noisy, timesteps, encoder_hidden_states=states, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample

    def predicted_clean(self, output: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0 implied by the model output under the configured parametrisation."""
        alphas = self.scheduler.alphas_cumprod.to(noisy.device)[timesteps].view(-1, 1, 1, 1)
        if self.config.prediction_type == "sample":
            return output
        if self.config.prediction_type == "epsilon":
            return (noisy - (1 - alphas).sqrt() * output) / alphas.sqrt()
        return alphas.sqrt() * noisy - (1 - alphas).sqrt() * output

    def training_loss(self, mask: torch.Tensor, tokens: torch.Tensor,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Diffusion loss (+ Dice/BCE on the predicted clean mask) for reconstructing `mask` from `tokens`."""
        clean = self.codec.encode(mask)
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (clean.shape[0],),
                                  generator=generator, device=clean.device)
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        output = self.predict(noisy, timesteps, self.control_map(tokens))
        target = {"epsilon": noise, "sample": clean,
                  "v_prediction": self.scheduler.get_velocity(clean, noise, timesteps)}[self.config.prediction_type]
        losses = {"diffusion": F.mse_loss(output, target)}
        if self.config.mask_loss_weight > 0:
            logits = self.codec.decode_logits(self.predicted_clean(output, noisy, timesteps).clamp(-3, 3))
            losses["mask"] = self.dice_loss(logits, mask) + F.binary_cross_entropy_with_logits(logits, mask)
        losses["loss"] = losses["diffusion"] + self.config.mask_loss_weight * losses.get("mask", 0.0)
        return losses


def _load_stable_diffusion(config: DecoderConfig):
    """UNet, VAE codec, text encoder and keyword ids from a local Stable Diffusion directory."""
    from transformers import CLIPTokenizer

    root = Path(config.pretrained_path)
    missing = [sub for sub in ("unet", "vae", "text_encoder", "tokenizer") if not (root / sub).is_dir()]
    if missing:
        raise FileNotFoundError(f"Stable Diffusion directory {root} lacks {missing} (expected a local "
                                "stable-diffusion-v1-5 folder: unet/, vae/, text_encoder/, tokenizer/)")
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
    length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    keyword_ids = tokenizer(config.keyword_prompt, padding="max_length", max_length=length, truncation=True,
                            return_tensors="pt").input_ids
    return unet, VAECodec(vae), text_encoder, keyword_ids
