"""SegICLPipeline: instruction + examples + a 2-D slice or a 3-D volume -> probability, mask, uncertainty.

For a volume, the instruction and examples are encoded ONCE (cached vision tokens and the LLM's
prefix KV cache); the slices then go through the LLM and the decoder in batches, and all samples of
a batch are decoded together.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from segicl_data.imageio import check_finite, check_not_constant
from segicl_data.preprocess import as_binary_mask, normalize_intensity, resample
from segicl.config import DEFAULT_SAMPLES, DEFAULT_STEPS
from segicl.decoder import MaskDecoder, inference_scheduler
from segicl.model import SegICLModel
from segicl.volume import ImageInput, Settings, VolumeSegmentation, as_medical_image, segment
from segicl_weights import SEGICL_TINY


@torch.no_grad()
def sample_masks(decoder: MaskDecoder, tokens: torch.Tensor, num_steps: int = 10, num_samples: int = 1,
                 generator: torch.Generator | None = None, scheduler: str | None = None) -> torch.Tensor:
    """The denoising loop: condition tokens [B, M, D] -> mask probabilities [B, num_samples, 1, S, S], every sample of
    every input in one batch. `scheduler` overrides the decoder's inference scheduler (DDIM or DPM-Solver++)."""
    if num_steps < 1 or num_samples < 1:
        raise ValueError(f"num_steps and num_samples must be >= 1, got {num_steps} and {num_samples}")
    batch = tokens.shape[0]
    control = decoder.control_map(tokens).repeat_interleave(num_samples, dim=0)
    sampler = inference_scheduler(decoder.config, decoder.scheduler, scheduler)
    sampler.set_timesteps(num_steps, device=tokens.device)
    shape = (batch * num_samples, *decoder.codec.latent_shape(decoder.condition.mask_size))
    latent = torch.randn(shape, generator=generator, device=tokens.device) * sampler.init_noise_sigma
    states = decoder.keyword_states(latent.shape[0])
    for timestep in sampler.timesteps:
        model_input = sampler.scale_model_input(latent, timestep)
        output = decoder.predict(model_input, timestep.expand(latent.shape[0]), control, states)
        latent = sampler.step(output, timestep, latent).prev_sample
    probabilities = torch.sigmoid(decoder.codec.decode_logits(latent))
    return probabilities.view(batch, num_samples, 1, *probabilities.shape[-2:])


@dataclass
class SegmentationOutput:
    """What a pipeline call returns; arrays have the query's shape.

    Attributes:
        probabilities: mean foreground probability over the samples, float32 in [0, 1].
        mask: probabilities > threshold, uint8 {0, 1}.
        uncertainty: per-pixel standard deviation of the samples' probabilities.
        timings: seconds spent in the vision tower, the LLM and the decoder, and the slice count.
    """

    probabilities: np.ndarray
    mask: np.ndarray
    uncertainty: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def _as_float_array(value, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(array)).sum())} NaN or infinite values")
    return array


def _fingerprint(tensor: torch.Tensor) -> str:
    """A digest of a tensor's shape and values (the key of a kept context)."""
    array = tensor.detach().cpu().numpy()
    return f"{array.shape}:{hashlib.sha1(array.tobytes()).hexdigest()}"


def check_example(image: np.ndarray, mask: np.ndarray, index: int, allow_empty: bool = False) -> None:
    """Refuse an example whose image and mask disagree, or whose (binary) mask is not 2-D, or empty (unless
    `allow_empty`)."""
    if image.ndim != 2:
        raise ValueError(f"example {index}: image must be a 2-D slice, got shape {image.shape}")
    if mask.shape != image.shape:
        raise ValueError(f"example {index}: mask shape {mask.shape} does not match image shape {image.shape}")
    if not allow_empty and not mask.any():
        raise ValueError(f"example {index}: mask is empty (an example must show the structure)")


class SegICLPipeline:
    """Segment with a trained SegICLModel.

    `segment` takes a file, a read image or an array (a 2-D slice or a 3-D volume) with an instruction and examples
    (files, arrays or a dataset's bank) and answers in the input's geometry; calling the pipeline segments display
    slices already in memory ([H, W] or [S, H, W]).

        pipeline = SegICLPipeline.from_pretrained()  # the shipped tiny weights
        result = pipeline.segment("scan.nii.gz", text="Segment the thalamus",
                                  examples=[("example.nii.gz", "example_mask.nii.gz")])
        result.save("mask.nii.gz")
    """

    # Encoded instruction + example sets kept for reuse (`_context`): a folder's cases that share a prompt encode it
    # once. Each holds the LLM's prefix cache (kilobytes for the tiny preset).
    CONTEXTS_KEPT = 8

    def __init__(self, model: SegICLModel, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self._contexts: dict[tuple, object] = {}

    @property
    def size(self) -> int:
        return self.model.config.condition.mask_size

    def save_pretrained(self, folder: Path | str) -> Path:
        return self.model.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, folder: Path | str | None = None, device: str | torch.device = "cpu") -> "SegICLPipeline":
        """A saved model folder; None: the shipped tiny weights (installed with the package)."""
        return cls(SegICLModel.from_pretrained(SEGICL_TINY if folder is None else folder), device)

    def segment(self, image: ImageInput, text: str | None = None, examples=(), *, settings: Settings | None = None,
                **prompt) -> VolumeSegmentation:
        """The volume-level API (`segicl.volume.segment`): the mask or label map, probabilities and uncertainty on the
        input's own grid. `prompt`: example_label, examples_from, label, labels, k, axis, crop, progress, callback.
        An image with NaN/inf voxels is refused naming its file."""
        image = as_medical_image(image)
        check_finite(image)
        return segment(self, image, text, examples, settings=settings, **prompt)

    def _resize(self, slices: np.ndarray, nearest: bool) -> torch.Tensor:
        """[S, H, W] -> [S, 1, size, size] on the model's device."""
        return torch.from_numpy(resample(slices, (self.size, self.size), nearest=nearest))[:, None].to(self.device)

    def prepare_examples(self, examples, normalization: str, allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated, normalised, resized example images and masks [k, 1, size, size]; `allow_empty` accepts masks
        without the structure (position-matched examples saying "not on this slice")."""
        images, masks = [], []
        for index, (image, mask) in enumerate(examples):
            image = _as_float_array(image, f"example {index} image")
            mask = as_binary_mask(_as_float_array(mask, f"example {index} mask"), f"example {index}: mask")
            check_example(image, mask, index, allow_empty)
            images.append(normalize_intensity(image, normalization))
            masks.append(mask)
        if not images:
            empty = torch.zeros(0, 1, self.size, self.size, device=self.device)
            return empty, empty.clone()
        resized_masks = (self._resize(np.stack(masks), nearest=False) > 0.5).float()
        return self._resize(np.stack(images), nearest=False).clamp(0, 1), resized_masks

    @torch.no_grad()
    def __call__(self, image, text: str, examples=(), num_samples: int = DEFAULT_SAMPLES, num_steps: int = DEFAULT_STEPS,
                 batch_size: int = 16, use_cache: bool = True, normalization: str = "percentile",
                 threshold: float = 0.5, seed: int = 0, scheduler: str | None = None,
                 progress: bool = False, slice_examples=None, callback=None) -> SegmentationOutput:
        """Segment a 2-D slice [H, W] or a volume of slices [S, H, W] (slices along the first axis).

        `examples` (image, mask) pairs serve every slice. `slice_examples` instead gives each slice its own list
        (position-matched examples: `segicl_data.bank.ExampleBank`, or slices of 3-D example volumes), images already in
        [0, 1]; their masks may be empty ("not on this slice": a slice whose examples are all empty takes the
        example prior's answer alone, `SegICLConfig.empty_examples_follow_prior`), and they run without the prefix
        cache.
        `callback(stage, done, total)`, if given, is called after every batch of the LLM pass (stage "condition")
        and of the decoder pass ("decode"), `done` of `total` batches; an exception it raises stops the call (a
        progress bar's cancel button)."""
        query = _as_float_array(image, "query image")
        if query.ndim not in (2, 3):
            raise ValueError(f"query image must be 2-D [H, W] or 3-D [S, H, W], got {query.ndim}-D shape {query.shape}")
        if not text or not text.strip():
            raise ValueError("the instruction text is empty")
        if len(examples) > self.model.config.max_examples:
            raise ValueError(f"at most {self.model.config.max_examples} examples, got {len(examples)}")
        if num_samples < 1 or num_steps < 1:
            raise ValueError(f"num_samples and num_steps must be >= 1, got {num_samples} and {num_steps}")
        volume = query[None] if query.ndim == 2 else query
        normalized = normalize_intensity(volume, normalization)
        timings = {"vision_s": 0.0, "llm_s": 0.0, "decoder_s": 0.0, "slices": int(volume.shape[0])}
        per_slice = self._slice_examples(slice_examples, examples, volume.shape[0])
        example_images, example_masks = self.prepare_examples(examples, normalization)
        # A blank query has nothing to segment: the model would draw its examples' shape on it.
        check_not_constant(volume, "the query image")
        text_ids, _ = self.model.tokenize([text])
        text_ids = text_ids.to(self.device)
        use_cache = use_cache and per_slice is None
        context = self._context(text_ids, example_images, example_masks, timings) if use_cache else None
        # Two passes: every slice's condition tokens first (small: [S, tokens, channels]), then the decoder. The LLM
        # then runs its batches back to back on the cached prefix instead of between decoder runs that evict it.
        conditions = []
        for first in range(0, volume.shape[0], batch_size):
            chunk = self._resize(normalized[first: first + batch_size], nearest=False).clamp(0, 1)
            if per_slice is None:
                shared = self._shared_context(text_ids, example_images, example_masks, len(chunk))
            else:
                shared = self._own_examples(text_ids, per_slice[first: first + batch_size])
            conditions.append(self.model.condition_tokens(*shared, chunk, context, timings))
            if callback is not None:
                callback("condition", len(conditions), -(-volume.shape[0] // batch_size))
        generator = torch.Generator(device=self.device).manual_seed(seed)
        means, spreads = [], []
        for condition in tqdm(conditions, desc="slices", unit="batch", disable=None if progress else True):
            start = time.perf_counter()
            samples = sample_masks(self.model.decoder, condition, num_steps, num_samples, generator, scheduler)
            timings["decoder_s"] += time.perf_counter() - start
            means.append(samples.mean(dim=1)[:, 0])
            spreads.append(samples.std(dim=1, unbiased=False)[:, 0])
            if callback is not None:
                callback("decode", len(means), len(conditions))
        probabilities = self._to_input_grid(torch.cat(means), volume.shape[1:])
        uncertainty = self._to_input_grid(torch.cat(spreads), volume.shape[1:])
        if query.ndim == 2:
            probabilities, uncertainty = probabilities[0], uncertainty[0]
        mask = (probabilities > threshold).astype(np.uint8)
        return SegmentationOutput(probabilities, mask, uncertainty, timings)

    def _context(self, text_ids: torch.Tensor, example_images: torch.Tensor, example_masks: torch.Tensor,
                 timings: dict) -> object:
        """The instruction and examples encoded once (`SegICLModel.encode_context`) and kept: a later call with the
        same instruction, examples and model settings reuses it (the context is never changed in place)."""
        key = (tuple(text_ids.flatten().tolist()), _fingerprint(example_images), _fingerprint(example_masks),
               json.dumps(self.model.config.to_dict(), sort_keys=True))
        if key not in self._contexts:
            if len(self._contexts) >= self.CONTEXTS_KEPT:
                self._contexts.pop(next(iter(self._contexts)))
            self._contexts[key] = self.model.encode_context(text_ids, example_images, example_masks, timings)
        return self._contexts[key]

    def _slice_examples(self, slice_examples, examples, slices: int) -> list | None:
        """Each slice's prepared examples ([k, 1, size, size] images and masks), or None without `slice_examples`."""
        if slice_examples is None:
            return None
        if len(examples):
            raise ValueError("give either examples shared by every slice or slice_examples, not both")
        if len(slice_examples) != slices:
            raise ValueError(f"slice_examples has {len(slice_examples)} entries for {slices} slice(s)")
        counts = {len(pairs) for pairs in slice_examples}
        if len(counts) != 1 or counts.pop() > self.model.config.max_examples:
            raise ValueError(f"every slice needs the same number of examples, at most {self.model.config.max_examples}")
        return [self.prepare_examples(pairs, "none", allow_empty=True) for pairs in slice_examples]

    def _own_examples(self, text_ids: torch.Tensor, prepared: list) -> tuple[torch.Tensor, ...]:
        """The one instruction with each slice's own examples, as the batch layout of `_shared_context`."""
        ids = text_ids.expand(len(prepared), -1)
        images = torch.stack([images for images, _ in prepared])
        masks = torch.stack([masks for _, masks in prepared])
        valid = torch.ones(images.shape[:2], dtype=torch.bool, device=self.device)
        return ids, torch.ones_like(ids), images, masks, valid

    def _shared_context(self, text_ids: torch.Tensor, example_images: torch.Tensor, example_masks: torch.Tensor,
                        count: int) -> tuple[torch.Tensor, ...]:
        """The one instruction and example set as a batch of `count` samples (views, no copies):
        text_ids, text_mask, example images, example masks, example validity."""
        ids = text_ids.expand(count, -1)
        valid = torch.ones(count, example_images.shape[0], dtype=torch.bool, device=self.device)
        return (ids, torch.ones_like(ids), example_images.expand(count, *example_images.shape),
                example_masks.expand(count, *example_masks.shape), valid)

    def _to_input_grid(self, maps: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        """[S, size, size] model-grid maps -> [S, H, W] on the query's grid."""
        maps = maps[:, None]
        if tuple(shape) != (self.size, self.size):
            maps = F.interpolate(maps, size=tuple(shape), mode="bilinear", align_corners=False)
        return maps[:, 0].clamp(0, 1).cpu().numpy().astype(np.float32)
