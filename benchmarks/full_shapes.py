"""`segicl bench full-shapes`: the full preset's per-slice cost, measured with random weights at the paper's shapes.

On the tiny preset the example cache makes a k = 3 volume a few times faster at the default decoder setting, less at
many decoder evaluations, where the diffusion decoder's time dominates (`segicl bench speed`). This command measures
where the time goes at the paper's shapes: a ViT-bigG-14 at 448 px, Qwen-7B (hidden 4096, 32 layers), and SD 1.5's
UNet + ControlNet + VAE at 512 px, each built from config with random weights (no download; timing does not depend
on the weights). It times, for one slice at batch 1:
- the vision tower on one image (the query; an uncached slice also encodes its k example images and k masks);
- the LLM over the whole sequence (no cache), over the prefix alone (once per volume with the cache), and over
  the query suffix on the cached prefix, at k = 0 and 3;
- one denoiser evaluation (ControlNet + UNet) and one VAE decode.

Where the whole model does not fit or would take too long (the CPU), only `--vision-layers` of the ViT's 48 and
`--llm-layers` of the LLM's 32 identical blocks are built; forward hooks time those blocks, and each part's time
is (time outside the blocks) + (blocks timed) x (all blocks / blocks built). The volume figures are composed from
these parts (64 slices): they are a projection from measured parts, not a timed volume, and the output says so.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from segicl.config import LanguageModelConfig, SegICLConfig, VisionTowerConfig, full_config
from segicl.decoder import MaskDecoder, VAECodec
from segicl.encoder import MultimodalEncoder, build_llm, repeated_cache
from segicl.vision import VisionTower, build_backbone

VIT_BIGG_14 = {"patch_size": 14, "width": 1664, "layers": 48, "heads": 16, "mlp_ratio": 8192 / 1664}
QWEN_7B = {"hidden_size": 4096, "num_layers": 32, "num_heads": 32, "num_kv_heads": 32, "intermediate_size": 11008}
TEXT_TOKENS = 32  # instruction length used for the timing (the preset allows up to 64)
DECODER_SETTINGS = ((50, 5), (10, 5), (10, 1), (5, 1), (1, 1))  # (steps, samples) the volume projection lists
clock = time.perf_counter  # the timer of every measurement here (tests replace it with a scripted one)


@dataclasses.dataclass
class FullShapeOptions:
    """What to build and how to time it.

    Attributes:
        vision_layers: ViT blocks built and timed (of 48); 0 builds all.
        llm_layers: LLM blocks built and timed (of 32); 0 builds all.
        device: "cpu" or "cuda".
        dtype: "float32" or "bfloat16" (bf16 is ~34x slower than fp32 on CPUs without AMX: ../shared/STACK.md).
        repeats: timed runs per part after one warm-up; the median is kept.
        slices: volume length of the projection.
    """

    vision_layers: int = 2
    llm_layers: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 3
    slices: int = 64

    def validate(self) -> "FullShapeOptions":
        if not 0 <= self.vision_layers <= VIT_BIGG_14["layers"]:
            raise ValueError(f"--vision-layers must be in 0..{VIT_BIGG_14['layers']}, got {self.vision_layers}")
        if not 0 <= self.llm_layers <= QWEN_7B["num_layers"]:
            raise ValueError(f"--llm-layers must be in 0..{QWEN_7B['num_layers']}, got {self.llm_layers}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"--dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.repeats < 1 or self.slices < 1:
            raise ValueError(f"--repeats and --slices must be >= 1, got {self.repeats} and {self.slices}")
        return self


class BlockTimer:
    """Forward hooks on a list of identical blocks: the seconds spent inside them during one call."""

    def __init__(self, blocks, synchronize):
        self.inside = 0.0
        self._synchronize = synchronize
        self._handles = []
        for block in blocks:
            self._handles.append(block.register_forward_pre_hook(self._enter))
            self._handles.append(block.register_forward_hook(self._leave))

    def _enter(self, *_):
        self._synchronize()
        self._started = clock()

    def _leave(self, *_):
        self._synchronize()
        self.inside += clock() - self._started

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def scaled_seconds(total: float, inside_blocks: float, built: int, full: int) -> float:
    """A part's time with all `full` blocks, from one call that ran `built` of them: the time outside the blocks
    plus the blocks' time scaled by full / built."""
    if built < 1 or full < built:
        raise ValueError(f"need 1 <= built <= full, got built={built}, full={full}")
    return total - inside_blocks + inside_blocks * full / built


def time_part(call, blocks, built: int, full: int, options: FullShapeOptions) -> float:
    """Median scaled seconds of `call()` over the repeats, after one warm-up."""
    synchronize = torch.cuda.synchronize if options.device == "cuda" else (lambda: None)
    call()
    results = []
    for _ in range(options.repeats):
        timer = BlockTimer(blocks, synchronize)
        synchronize()
        started = clock()
        call()
        synchronize()
        total = clock() - started
        timer.remove()
        results.append(scaled_seconds(total, timer.inside, built, full))
    return float(np.median(results))


def full_shape_configs(options: FullShapeOptions) -> tuple[SegICLConfig, VisionTowerConfig, LanguageModelConfig]:
    """The full preset, with its ViT and LLM given by their shapes (and the numbers of blocks to build)."""
    config = full_config()
    vision = dataclasses.replace(config.vision, open_clip_model=None, checkpoint=None,
                                 **{**VIT_BIGG_14, "layers": options.vision_layers or VIT_BIGG_14["layers"]})
    llm = dataclasses.replace(config.llm, pretrained_path=None,
                              **{**QWEN_7B, "num_layers": options.llm_layers or QWEN_7B["num_layers"]})
    return config, vision, llm


def build_decoder(config: SegICLConfig) -> MaskDecoder:
    """SD 1.5's architecture (UNet2DConditionModel's defaults with 768-wide cross-attention, its VAE and CLIP
    text encoder) with random weights, and the preset's ControlNet."""
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, max_position_embeddings=77, projection_dim=768))
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_channels=config.condition.token_dim,
        conditioning_embedding_out_channels=config.decoder.conditioning_embedding_out_channels)
    return MaskDecoder(config.decoder, config.condition, unet, controlnet, VAECodec(vae), text,
                       torch.ones(1, 77, dtype=torch.long))


def measure_vision(config: VisionTowerConfig, hidden: int, options: FullShapeOptions, dtype) -> dict:
    tower = VisionTower(config, hidden, build_backbone(config)).to(options.device, dtype).eval()
    image = torch.rand(1, 1, 448, 448, device=options.device, dtype=dtype)
    with torch.no_grad():
        seconds = time_part(lambda: tower(image), tower.backbone.transformer.resblocks, config.layers,
                            VIT_BIGG_14["layers"], options)
    return {"vision_s_per_image": seconds}


def measure_llm(config: LanguageModelConfig, num_tokens: int, num_queries: int, options: FullShapeOptions,
                dtype) -> dict:
    """Whole-sequence, prefix and cached-suffix seconds at k = 0 and 3, one slice."""
    encoder = MultimodalEncoder(build_llm(config, vocab_size=1024), num_queries).to(options.device, dtype).eval()
    blocks, built = encoder.decoder().layers, config.num_layers
    hidden = encoder.hidden_size

    def tokens(*shape):
        return torch.randn(*shape, num_tokens, hidden, device=options.device, dtype=dtype)

    text = torch.randint(3, 1024, (1, TEXT_TOKENS), device=options.device)
    text_mask = torch.ones_like(text)
    query = tokens(1)
    result = {}
    with torch.no_grad():
        for k in (0, 3):
            images, masks = tokens(1, k), tokens(1, k)
            valid = torch.ones(1, k, dtype=torch.bool, device=options.device)
            result[f"llm_uncached_s_k{k}"] = time_part(
                lambda: encoder(text, text_mask, images, masks, valid, query), blocks, built, QWEN_7B["num_layers"],
                options)
            result[f"llm_prefix_s_k{k}"] = time_part(lambda: encoder.encode_prefix(text, images[0], masks[0]),
                                                     blocks, built, QWEN_7B["num_layers"], options)
            cache, length = encoder.encode_prefix(text, images[0], masks[0])
            suffix = time_part(lambda: encoder.forward_with_prefix(cache, length, query), blocks, built,
                               QWEN_7B["num_layers"], options)
            # forward_with_prefix copies the prefix KV of every block, outside the hooked blocks: scale that too
            copy_per_built = time_part(lambda: repeated_cache(cache, 1), [], 1, 1, options)
            result[f"llm_cached_s_k{k}"] = suffix + copy_per_built * (QWEN_7B["num_layers"] / built - 1)
            result[f"sequence_tokens_k{k}"] = TEXT_TOKENS + k * (2 * num_tokens + 3) + num_tokens + 2 + num_queries
    return result


def measure_decoder(config: SegICLConfig, options: FullShapeOptions, dtype) -> dict:
    decoder = build_decoder(config).to(options.device, dtype).eval()
    condition = torch.randn(1, config.condition.num_tokens, config.condition.token_dim, device=options.device,
                            dtype=dtype)
    latent = torch.randn(1, *decoder.codec.latent_shape(config.condition.mask_size), device=options.device,
                         dtype=dtype)
    timestep = torch.tensor([500], device=options.device)
    with torch.no_grad():
        control, states = decoder.control_map(condition), decoder.keyword_states(1)
        evaluation = time_part(lambda: decoder.predict(latent, timestep, control, states), [], 1, 1, options)
        decode = time_part(lambda: decoder.codec.decode_logits(latent), [], 1, 1, options)
    return {"denoiser_s_per_evaluation": evaluation, "vae_decode_s": decode}


def per_slice_seconds(parts: dict, k: int, steps: int, samples: int, slices: int) -> dict:
    """One slice's seconds without and with the example cache (the cached prefix and example tokens spread over
    the volume's slices)."""
    decoder = steps * samples * parts["denoiser_s_per_evaluation"] + samples * parts["vae_decode_s"]
    vision = parts["vision_s_per_image"]
    uncached = (1 + 2 * k) * vision + parts[f"llm_uncached_s_k{k}"] + decoder
    cached = vision + parts[f"llm_cached_s_k{k}"] + decoder + (2 * k * vision + parts[f"llm_prefix_s_k{k}"]) / slices
    return {"uncached": uncached, "cached": cached, "decoder": decoder}


def projection(parts: dict, slices: int) -> dict:
    rows = {}
    for steps, samples in DECODER_SETTINGS:
        k3 = per_slice_seconds(parts, 3, steps, samples, slices)
        rows[f"{steps}x{samples}"] = {
            "volume_s_uncached_k3": round(k3["uncached"] * slices, 2), "volume_s_cached_k3": round(k3["cached"] * slices, 2),
            "volume_uncached_over_cached_k3": round(k3["uncached"] / k3["cached"], 3),
            "decoder_share_cached_k3": round(k3["decoder"] / k3["cached"], 3)}
    return rows


def run_full_shapes(options: FullShapeOptions, out_dir: Path, log=print) -> dict:
    options.validate()
    dtype = getattr(torch, options.dtype)
    config, vision, llm = full_shape_configs(options)
    started = time.perf_counter()
    parts = {}
    for name, measure in (("vision tower", lambda: measure_vision(vision, QWEN_7B["hidden_size"], options, dtype)),
                          ("LLM", lambda: measure_llm(llm, config.vision.num_tokens, config.num_output_queries,
                                                      options, dtype)),
                          ("decoder", lambda: measure_decoder(config, options, dtype))):
        log(f"timing the {name} ({options.repeats} runs + a warm-up) ...")
        parts.update(measure())
        log(f"  {time.perf_counter() - started:.0f} s so far")
    device = torch.cuda.get_device_name() if options.device == "cuda" else "CPU"
    result = {
        "parts": {key: round(value, 6) if isinstance(value, float) else value for key, value in parts.items()},
        "device": device,
        "llm_cached_k3_over_k0": round(parts["llm_cached_s_k3"] / parts["llm_cached_s_k0"], 3),
        "projection": projection(parts, options.slices),
        "setting": (f"Random weights at the full preset's shapes (ViT-bigG-14 at 448 px, Qwen-7B shape, SD 1.5 UNet + "
                    f"ControlNet + VAE at 512 px), {options.dtype} on {device}, batch 1, "
                    f"{torch.get_num_threads()} threads; ViT {options.vision_layers or 48} of 48 blocks and LLM "
                    f"{options.llm_layers or 32} of 32 blocks built and timed, scaled to all; median of "
                    f"{options.repeats} runs per part. Volumes ({options.slices} slices, k=3) are PROJECTED from "
                    f"these parts, not timed. Total {time.perf_counter() - started:.0f} s."),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "full_shapes.json").write_text(json.dumps(result, indent=1))
    return result
