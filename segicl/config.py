"""Typed configs of the SegICL components, and the named presets.

Every component has a `tiny` preset (trains on two CPU cores) and a `full` preset with the paper's
shapes, whose weights load from local paths the user names (nothing is downloaded).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("segicl")


@dataclass
class VisionTowerConfig:
    """open_clip ViT + one cross-attention layer with learned queries (a resampler).

    Attributes:
        image_size: input side in pixels (tiny 64; full 448).
        patch_size, width, layers, heads, mlp_ratio: the ViT's shape (used when building from config).
        num_tokens: learned queries = tokens per image after the cross-attention layer (paper: 256).
        resampler_heads: heads of the cross-attention layer.
        open_clip_model: name of an open_clip architecture (e.g. "ViT-bigG-14") whose vision tower
            to build instead of the shape above; None builds from the shape fields.
        checkpoint: local open_clip checkpoint file (.safetensors or .pt/.bin state dict) to load.
        freeze_backbone: keep the ViT frozen (the paper trains only the new cross-attention layer).
    """

    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    layers: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    num_tokens: int = 16
    resampler_heads: int = 4
    open_clip_model: str | None = None
    checkpoint: str | None = None
    freeze_backbone: bool = False

    def validate(self) -> None:
        if self.open_clip_model is None and self.image_size % self.patch_size:
            raise ValueError(f"vision image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_tokens < 1:
            raise ValueError(f"vision num_tokens must be >= 1, got {self.num_tokens}")
        if self.open_clip_model is None and self.width % self.heads:
            raise ValueError(f"vision width {self.width} is not divisible by heads {self.heads}")


@dataclass
class LanguageModelConfig:
    """The causal LLM that reads the interleaved sequence (any AutoModelForCausalLM).

    Attributes:
        pretrained_path: local model directory (full: a Qwen 7B folder); None builds a Qwen2 from the
            shape fields below with random weights (tiny).
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: Qwen2 shape when built.
        vocab_size: vocabulary of the locally built tokenizer (tiny) — ignored with pretrained_path.
        lora_rank, lora_alpha, lora_dropout, lora_targets: LoRA (peft) on the attention projections.
        train_base_model: also train the base weights (tiny: they start random, so LoRA alone would
            adapt noise); the full preset keeps the pretrained base frozen.
        load_in_4bit: QLoRA: load the base in 4-bit NF4 with bitsandbytes.
    """

    pretrained_path: str | None = None
    hidden_size: int = 192
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    vocab_size: int = 1024
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    train_base_model: bool = True
    load_in_4bit: bool = False

    def validate(self) -> None:
        if self.pretrained_path is None and self.hidden_size % self.num_heads:
            raise ValueError(f"llm hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.pretrained_path is None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"llm num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.lora_rank < 1:
            raise ValueError(f"llm lora_rank must be >= 1, got {self.lora_rank}")


@dataclass
class ConditionEncoderConfig:
    """The 4-layer MLP that turns a mask into condition tokens (one token per mask patch).

    Attributes:
        mask_size: mask side in pixels.
        patch_size: mask pixels per token side; tokens = (mask_size / patch_size) ** 2 (paper: 256).
        token_dim: width of a condition token.
        hidden_dim: width of the MLP's hidden layers.
        train_noise: std of Gaussian noise added to the tokens in stage 1, so the decoder tolerates
            the imperfect tokens the LLM will regress in stage 2.
    """

    mask_size: int = 64
    patch_size: int = 4
    token_dim: int = 16
    hidden_dim: int = 128
    train_noise: float = 0.1

    @property
    def grid(self) -> int:
        return self.mask_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    def validate(self) -> None:
        if self.mask_size % self.patch_size:
            raise ValueError(f"condition mask_size {self.mask_size} is not a multiple of patch_size {self.patch_size}")


@dataclass
class DecoderConfig:
    """Diffusion mask decoder: diffusers ControlNetModel on a UNet2DConditionModel.

    Attributes:
        space: "pixel" (the mask, pixel-unshuffled by `pixel_unshuffle` into channels: lossless and
            cheap) or "latent" (an AutoencoderKL; full: SD 1.5's VAE).
        pixel_unshuffle: factor of the pixel codec (64 px -> 16x16x16 with 4).
        pretrained_path: local Stable Diffusion 1.5 directory (unet/, vae/, text_encoder/, tokenizer/);
            None builds every part from the shape fields (tiny).
        block_out_channels, layers_per_block, attention_head_dim, cross_attention_dim, norm_num_groups: the UNet's
            shape when built from config (attention only in the last block).
        conditioning_embedding_out_channels: the ControlNet's condition embedding; one entry means the
            condition map is already at the UNet's resolution.
        text_hidden_size, text_layers: the keyword-prompt CLIPTextModel when built from config.
        prediction_type: "epsilon", "sample" (x0) or "v_prediction".
        mask_loss_weight: weight of a Dice + BCE loss on the predicted clean mask (0 disables it).
        num_train_timesteps: diffusion training timesteps.
        scheduler: sampler at inference: "ddim" or "dpmsolver++".
        freeze_unet: keep the UNet frozen (full preset: SD 1.5 weights); the ControlNet always trains.
        keyword_prompt: the keyword prompt c_k that enters the UNet and ControlNet through
            cross-attention, encoded by a frozen CLIP text encoder (tiny: a 2-layer CLIPTextModel built
            from config over the project tokenizer; full: SD 1.5's text_encoder/ and tokenizer/).
    """

    space: str = "pixel"
    pixel_unshuffle: int = 4
    pretrained_path: str | None = None
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    cross_attention_dim: int = 64
    norm_num_groups: int = 8
    conditioning_embedding_out_channels: tuple[int, ...] = (32,)
    text_hidden_size: int = 64
    text_layers: int = 2
    prediction_type: str = "sample"
    mask_loss_weight: float = 1.0
    num_train_timesteps: int = 1000
    scheduler: str = "ddim"
    freeze_unet: bool = False
    keyword_prompt: str = "segmentation mask"

    def validate(self) -> None:
        if self.space not in ("pixel", "latent"):
            raise ValueError(f"decoder space must be 'pixel' or 'latent', got {self.space!r}")
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"decoder prediction_type must be epsilon, sample or v_prediction, got {self.prediction_type!r}")
        if self.scheduler not in ("ddim", "dpmsolver++"):
            raise ValueError(f"decoder scheduler must be 'ddim' or 'dpmsolver++', got {self.scheduler!r}")
        if self.space == "latent" and self.pretrained_path is None:
            raise ValueError("a latent decoder needs pretrained_path: a local Stable Diffusion directory with vae/")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"decoder block_out_channels {self.block_out_channels} must be multiples of "
                             f"norm_num_groups {self.norm_num_groups}")


PRIOR_SOURCES = ("union", "crossconv")
# Fields of experiment-only switches removed from SegICL (no shipped recipe used them), which model folders saved
# before still hold ("section.field" inside a part). A switch that was on is refused: its weights, or the decoder's
# extra inputs, need code that is gone. Registration inside the example prior needed no weights: its settings are
# ignored, and the logged line says which answers that changes.
REMOVED_SWITCHES = ("gate_reads_prior", "decoder.pixel_inputs")
REMOVED_SETTINGS = ("prior_registration_weight", "prior_registration_fusion", "prior_registration_min_examples")
# The default decoder setting of the pipeline and `segicl segment`, chosen by `segicl bench speed`'s sampler grid
# (docs: results): the fewest decoder evaluations within 0.01 Dice of the best setting that keeps a meaningful
# uncertainty (>= 3 samples, AUROC >= 0.6).
DEFAULT_STEPS, DEFAULT_SAMPLES = 1, 3
# The fastest decoder setting: one evaluation, no spread, so no uncertainty map (the web app's "fast", timed by
# `segicl bench speed`).
FAST_STEPS, FAST_SAMPLES = 1, 1


@dataclass
class CrossConvConfig:
    """The in-context module: a UniverSeg-style cross-convolution network (`segicl.incontext`).

    Attributes:
        image_size: input side in pixels (the query and examples share it).
        widths: channels at each scale, finest first; len(widths) scales, each half the side of the one before.
        negative_slope: of the LeakyReLU after every convolution.
    """

    image_size: int = 64
    widths: tuple[int, ...] = (32, 32, 32, 32)
    negative_slope: float = 0.1

    def validate(self) -> "CrossConvConfig":
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"crossconv widths must be a non-empty list of positive channel counts, got {self.widths}")
        if self.image_size % 2 ** (len(self.widths) - 1):
            raise ValueError(f"crossconv image_size {self.image_size} must be divisible by 2^(scales - 1) = "
                             f"{2 ** (len(self.widths) - 1)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CrossConvConfig":
        return _build(cls, data).validate()


@dataclass
class SegICLConfig:
    """The whole SegICL model.

    Attributes:
        preset: the preset this config came from.
        vision, llm, condition, decoder: the components.
        num_output_queries: learned queries appended to the LLM sequence; each becomes
            `condition.num_tokens // num_output_queries` condition tokens through the projector.
        max_examples: K, the most examples one sequence holds.
        max_text_tokens: instruction length cap.
        example_prior: when a query has examples, mix the LLM's condition tokens with the frozen condition
            encoder's tokens of the UNION of the example masks (a label-fusion prior), with a per-token
            weight that the LLM predicts (`ExamplePriorGate`). False is the paper's model: the examples
            reach the output only through the LLM.
        prior_source: what the example prior's mask is: "union" (the example masks' union, unaligned) or
            "crossconv" (the query mask that the in-context module `crossconv` predicts from the query and the
            examples: an aligned label fusion).
        crossconv: the in-context module's shape (used when prior_source is "crossconv").
        empty_examples_follow_prior: where a query's examples all have empty masks (the position-matched examples
            of a volume's slices beyond the structure: "not on this slice"), the condition is the example prior's
            alone (gate 1), instead of the gate's mix with the LLM's tokens, whose small errors the decoder
            renders as specks on such slices (docs: research/peers). On by default, also for model folders saved
            before the switch existed.
        examples_check_the_llm: answer each of a query's own examples (from 2 on) from the other examples, once
            with the gate's mix of the LLM and the prior and once with the prior alone, and score both against the
            example's mask (in condition-token space); where the prior alone is closer, the query's condition is the
            prior's alone (gate 1). The learned gate cannot tell a structure the LLM knows from one it never saw
            (docs: research/peers); the examples, whose answers are known, can. Inference only; costs one more pass of the
            model per example (once per volume when its slices share one example set). Off here; the shipped
            config turns it on.
    """

    preset: str = "tiny"
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    llm: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    condition: ConditionEncoderConfig = field(default_factory=ConditionEncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    num_output_queries: int = 64
    max_examples: int = 3
    max_text_tokens: int = 32
    example_prior: bool = False
    prior_source: str = "union"
    crossconv: CrossConvConfig = field(default_factory=CrossConvConfig)
    empty_examples_follow_prior: bool = True
    examples_check_the_llm: bool = False

    @property
    def tokens_per_query(self) -> int:
        return self.condition.num_tokens // self.num_output_queries

    @property
    def query_grid(self) -> int:
        return int(round(self.num_output_queries**0.5))

    def validate(self) -> "SegICLConfig":
        for part in (self.vision, self.llm, self.condition, self.decoder, self.crossconv):
            part.validate()
        if self.examples_check_the_llm and not self.example_prior:
            raise ValueError("examples_check_the_llm needs example_prior: there is no prior to follow without it")
        if self.prior_source not in PRIOR_SOURCES:
            raise ValueError(f"unknown prior_source {self.prior_source!r}; expected one of {PRIOR_SOURCES}")
        if self.prior_source == "crossconv" and self.crossconv.image_size != self.condition.mask_size:
            raise ValueError(f"crossconv image_size {self.crossconv.image_size} must equal the condition mask_size "
                             f"{self.condition.mask_size}")
        if self.condition.num_tokens % self.num_output_queries:
            raise ValueError(f"condition tokens ({self.condition.num_tokens}) must be a multiple of "
                             f"num_output_queries ({self.num_output_queries})")
        if self.query_grid**2 != self.num_output_queries or self.condition.grid % self.query_grid:
            raise ValueError(f"num_output_queries ({self.num_output_queries}) must be a square whose side divides "
                             f"the condition grid ({self.condition.grid})")
        if self.vision.open_clip_model is None and self.condition.mask_size != self.vision.image_size:
            raise ValueError(f"condition mask_size {self.condition.mask_size} must equal vision image_size "
                             f"{self.vision.image_size} for presets built from config")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegICLConfig":
        parts = {"vision": VisionTowerConfig, "llm": LanguageModelConfig, "condition": ConditionEncoderConfig,
                 "decoder": DecoderConfig, "crossconv": CrossConvConfig}
        kwargs = _without_removed_fields(data)
        for name, part in parts.items():
            kwargs[name] = _build(part, kwargs.get(name, {}))
        return _build(cls, kwargs).validate()

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path | str) -> "SegICLConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _without_removed_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config without the fields of removed switches (`REMOVED_SWITCHES`, `REMOVED_SETTINGS`), with one
    logged line naming those it ignores; a removed switch that was on is refused."""
    kwargs = {**data, "decoder": dict(data.get("decoder", {}))}
    removed = {}
    for name in (*REMOVED_SWITCHES, *REMOVED_SETTINGS):
        section, _, key = name.rpartition(".")
        part = kwargs[section] if section else kwargs
        if key in part:
            removed[name] = part.pop(key)
    on = [f"{name}={removed[name]!r}" for name in REMOVED_SWITCHES if removed.get(name)]
    if on:
        raise ValueError(f"this model was trained with {', '.join(on)}, an experiment switch that SegICL no longer "
                         "has: load it with a checkout from before the switch was removed")
    if removed:
        logger.warning(_removed_fields_line(removed))
    return kwargs


def _removed_fields_line(removed: dict[str, Any]) -> str:
    """"ignoring settings removed from SegICL: gate_reads_prior=False, ...", and what that changes."""
    line = "ignoring settings removed from SegICL: " + ", ".join(f"{name}={value!r}" for name, value in removed.items())
    if removed.get("prior_registration_weight"):
        fewest = removed.get("prior_registration_min_examples", 2)  # the default before the field existed
        line += (f"; the example prior no longer blends in registered examples, so queries with {fewest} or more "
                 "examples answer without them")
    return line


def _build(cls, values: dict[str, Any]):
    """A dataclass from a dict, refusing unknown fields and turning lists back into tuples."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)


def tiny_config() -> SegICLConfig:
    """Trains on two CPU cores: 64 px, 256 condition tokens, a 3-layer Qwen2, a pixel-space decoder, and the
    example prior (measured, docs: research/reading-the-examples: without it the tiny model does not read its
    examples)."""
    return SegICLConfig(preset="tiny", example_prior=True).validate()


def full_config(clip_checkpoint: str | None = None, llm_path: str | None = None,
                sd_path: str | None = None) -> SegICLConfig:
    """The paper's shapes: ViT-bigG-14 at 448 px (256 tokens), Qwen 7B with LoRA, SD 1.5 + ControlNet.

    The weights come from the local paths given; validation works without them.
    """
    return SegICLConfig(
        preset="full",
        vision=VisionTowerConfig(image_size=448, num_tokens=256, resampler_heads=16, open_clip_model="ViT-bigG-14",
                                 checkpoint=clip_checkpoint, freeze_backbone=True),
        llm=LanguageModelConfig(pretrained_path=llm_path or "<local Qwen-7B directory>", lora_rank=64, lora_alpha=16,
                                lora_dropout=0.05, train_base_model=False),
        condition=ConditionEncoderConfig(mask_size=512, patch_size=32, token_dim=64, hidden_dim=1024),
        decoder=DecoderConfig(space="latent", pretrained_path=sd_path or "<local stable-diffusion-v1-5 directory>",
                              conditioning_embedding_out_channels=(16, 32, 96, 256), cross_attention_dim=768,
                              block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
                              norm_num_groups=32, freeze_unet=True, prediction_type="epsilon",
                              mask_loss_weight=0.0),
        num_output_queries=256,
        max_examples=3,
        max_text_tokens=64,
    ).validate()


PRESETS = {"tiny": tiny_config, "full": full_config}


def get_preset(name: str, **paths: str | None) -> SegICLConfig:
    """A preset by name; unknown names are refused with the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name](**paths) if paths else PRESETS[name]()
