"""SegICLModel: all the components together, with save_pretrained / from_pretrained (safetensors)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from safetensors.torch import save_file
from torch import nn

from segicl_data.model_folders import MODEL_CONFIGS, WEIGHTS_NAME, check_model_folder, load_weights, reading_config
from segicl.condition import ConditionEncoder
from segicl.config import SegICLConfig
from segicl.decoder import MaskDecoder
from segicl.encoder import MultimodalEncoder, build_llm
from segicl.incontext import CrossConvNet
from segicl.vision import VisionTower

CONFIG_NAME = MODEL_CONFIGS["SegICL"]


def to_condition_order(per_query: torch.Tensor, query_grid: int, block: int) -> torch.Tensor:
    """[B, M, block*block*C] values per output query -> [B, grid*grid, C] in the condition grid's row order:
    output query i sits on a sqrt(M) x sqrt(M) grid and covers the block x block tokens under it."""
    return rearrange(per_query, "b (qh qw) (bh bw c) -> b (qh bh qw bw) c", qh=query_grid, bh=block, bw=block)


@dataclass
class ExampleContext:
    """An instruction and its examples encoded once (`SegICLModel.encode_context`).

    Attributes:
        cache: the LLM's KV cache of the instruction + examples prefix (never changed in place).
        length: the prefix length in tokens.
        example_images, example_masks: the examples [k, 1, H, W], for the example prior of each query.
        prior_beats_llm: the example prior alone predicts the examples (each from the others) better than the gate's
            mix with the LLM (`SegICLConfig.examples_check_the_llm`): every query takes the prior's condition alone.
    """

    cache: Any
    length: int
    example_images: torch.Tensor
    example_masks: torch.Tensor
    prior_beats_llm: bool = False


@contextlib.contextmanager
def _timed(timings: dict | None, key: str):
    """Add the seconds the block takes to timings[key] (nothing when timings is None)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


class Projector(nn.Module):
    """LLM output-query states [B, M, H] -> condition tokens [B, grid*grid, D] in the condition grid's order.

    Output query i sits on a sqrt(M) x sqrt(M) grid and emits the block of condition tokens under it.
    """

    def __init__(self, hidden: int, config: SegICLConfig):
        super().__init__()
        self.query_grid = config.query_grid
        self.block = config.condition.grid // config.query_grid
        self.token_dim = config.condition.token_dim
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, self.block**2 * self.token_dim))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return to_condition_order(self.mlp(states), self.query_grid, self.block)


class ExamplePriorGate(nn.Module):
    """LLM output-query states [B, M, H] -> weight in (0, 1) [B, grid*grid, 1] per condition token, in the
    Projector's token order: how much that token follows the examples' fused mask instead of the LLM."""

    def __init__(self, hidden: int, config: SegICLConfig):
        super().__init__()
        self.query_grid = config.query_grid
        self.block = config.condition.grid // config.query_grid
        self.linear = nn.Linear(hidden, self.block**2)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(to_condition_order(self.linear(states), self.query_grid, self.block))


class SegICLModel(nn.Module):
    """Vision tower + multimodal encoder + projector (stage 2) and condition encoder + decoder (stage 1)."""

    def __init__(self, config: SegICLConfig, tokenizer, vision: VisionTower, encoder: MultimodalEncoder,
                 projector: Projector, condition_encoder: ConditionEncoder, decoder: MaskDecoder):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.vision = vision
        self.encoder = encoder
        self.projector = projector
        self.condition_encoder = condition_encoder
        self.decoder = decoder
        self.example_gate = ExamplePriorGate(encoder.hidden_size, config) if config.example_prior else None
        self.incontext = CrossConvNet(config.crossconv) if config.prior_source == "crossconv" else None
        # Checking the LLM on the examples is an inference-time setting (it costs an LLM pass per example): the
        # training stages switch it off; the config they save keeps it.
        self.use_inference_only_settings = True
        self._checking_examples = False

    def add_example_prior(self) -> None:
        """Switch the example prior on for a model trained without it (its gate starts at 0.5 everywhere)."""
        if self.example_gate is None:
            self.config.example_prior = True
            self.example_gate = ExamplePriorGate(self.encoder.hidden_size, self.config)

    def use_crossconv_prior(self, network: CrossConvNet) -> None:
        """Make a trained in-context module the source of the example prior (instead of the union of the examples);
        the gate stays, to be retrained in stage 2."""
        if network.config.image_size != self.config.condition.mask_size:
            raise ValueError(f"the CrossConv network reads {network.config.image_size} px images, the model "
                             f"{self.config.condition.mask_size} px")
        self.add_example_prior()
        self.config.prior_source, self.config.crossconv = "crossconv", network.config
        self.incontext = network

    @classmethod
    def from_config(cls, config: SegICLConfig, tokenizer) -> "SegICLModel":
        """Build every component (random weights, or pretrained ones from the config's local paths)."""
        config.validate()
        llm = build_llm(config.llm, len(tokenizer))
        encoder = MultimodalEncoder(llm, config.num_output_queries)
        hidden = encoder.hidden_size
        return cls(config, tokenizer, VisionTower(config.vision, hidden), encoder, Projector(hidden, config),
                   ConditionEncoder(config.condition), MaskDecoder.from_config(config.decoder, config.condition,
                                                                               tokenizer))

    def tokenize(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(instructions, padding=True, truncation=True, max_length=self.config.max_text_tokens,
                                 return_tensors="pt")
        return encoded.input_ids, encoded.attention_mask

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, ..., C, H, W] images or masks -> [B, ..., N, H_llm] vision tokens."""
        lead = images.shape[:-3]
        if images.numel() == 0:
            return images.new_zeros(*lead, self.config.vision.num_tokens, self.encoder.hidden_size)
        tokens = self.vision(images.reshape(-1, *images.shape[-3:]))
        return tokens.reshape(*lead, *tokens.shape[-2:])

    @torch.no_grad()
    def encode_context(self, text_ids: torch.Tensor, example_images: torch.Tensor, example_masks: torch.Tensor,
                       timings: dict | None = None) -> ExampleContext:
        """One instruction (text_ids [1, T], no padding) and its k examples ([k, 1, H, W] each) run through the LLM
        once, for `condition_tokens` to reuse for every query that shares them (the slices of a volume)."""
        with _timed(timings, "vision_s"):
            image_tokens, mask_tokens = self.image_tokens(example_images), self.image_tokens(example_masks)
        with _timed(timings, "llm_s"):
            cache, length = self.encoder.encode_prefix(text_ids, image_tokens, mask_tokens)
            valid = torch.ones(1, example_masks.shape[0], dtype=torch.bool, device=example_masks.device)
            beats = self._prior_beats_llm(text_ids, torch.ones_like(text_ids), example_images[None],
                                          example_masks[None], valid)
        return ExampleContext(cache, length, example_images, example_masks, bool(beats is not None and beats[0]))

    def condition_tokens(self, text_ids: torch.Tensor, text_mask: torch.Tensor, example_images: torch.Tensor,
                         example_masks: torch.Tensor, example_valid: torch.Tensor, query_image: torch.Tensor,
                         context: ExampleContext | None = None, timings: dict | None = None,
                         prior_map: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's condition for a batch of queries [B, 1, H, W]: condition tokens [B, grid*grid, D]. The ONE
        path from instruction, examples and query to the decoder, for training, evaluation, the pipeline and the
        benchmarks.

        Each sample has its own instruction (text_ids/text_mask [B, T]) and up to K examples ([B, K, 1, H, W],
        `example_valid` [B, K] marking the real ones; K = 0 or all-invalid: no examples). With `context` (from
        `encode_context`, shared by every sample of the batch) the LLM runs only the query part on the cached
        prefix; without it, the whole sequence of every sample. `timings` adds the vision and LLM seconds.
        `prior_map`: the example prior's probability map of exactly these inputs, when the caller has it already
        (`example_prior_probability`; uncached path only), so that it is not computed twice."""
        if context is not None:
            return self._condition_on_context(context, query_image, timings)
        if example_valid.shape[1] == 0:  # the encoder's batch layout needs one slot: an invalid one
            example_images = example_masks = query_image.new_zeros(query_image.shape[0], 1, *query_image.shape[1:])
            example_valid = torch.zeros(query_image.shape[0], 1, dtype=torch.bool, device=query_image.device)
        batch, max_k = example_valid.shape
        with _timed(timings, "vision_s"):
            shape = (batch, max_k, self.config.vision.num_tokens, self.encoder.hidden_size)
            example_image_tokens, example_mask_tokens = query_image.new_zeros(shape), query_image.new_zeros(shape)
            if example_valid.any():
                example_image_tokens[example_valid] = self.image_tokens(example_images[example_valid])
                example_mask_tokens[example_valid] = self.image_tokens(example_masks[example_valid])
            query_tokens = self.image_tokens(query_image)
            if prior_map is None and self.example_gate is not None:
                prior_map = self.example_prior_probability(example_images, example_masks, example_valid, query_image)
        with _timed(timings, "llm_s"):
            states = self.encoder(text_ids, text_mask, example_image_tokens, example_mask_tokens, example_valid,
                                  query_tokens)
            follow = self._follow_prior(text_ids, text_mask, example_images, example_masks, example_valid)
            return self.condition_from_states(states, self.prior_tokens(prior_map), example_valid.any(dim=1), follow)

    def _condition_on_context(self, context: ExampleContext, query_image: torch.Tensor,
                              timings: dict | None) -> torch.Tensor:
        """`condition_tokens` for queries that share one encoded instruction and example set: the LLM runs only the
        query part on the cached prefix."""
        with _timed(timings, "vision_s"):
            query_tokens = self.image_tokens(query_image)
            batch, k = query_image.shape[0], context.example_masks.shape[0]
            valid = torch.ones(batch, k, dtype=torch.bool, device=query_image.device)
            prior_map = None
            if k and self.example_gate is not None:
                prior_map = self.example_prior_probability(context.example_images.expand(batch, -1, -1, -1, -1),
                                                           context.example_masks.expand(batch, -1, -1, -1, -1),
                                                           valid, query_image)
        with _timed(timings, "llm_s"):
            states = self.encoder.forward_with_prefix(context.cache, context.length, query_tokens)
            follow = self._examples_all_empty(context.example_masks.expand(batch, -1, -1, -1, -1), valid)
            if context.prior_beats_llm:
                follow = torch.ones(batch, dtype=torch.bool, device=query_image.device)
            return self.condition_from_states(states, self.prior_tokens(prior_map), follow_prior=follow)

    @torch.no_grad()
    def prior_tokens(self, prior_map: torch.Tensor | None) -> torch.Tensor | None:
        """The condition encoder's tokens of the example prior's binary mask (its probability > 0.5)."""
        return None if prior_map is None else self.condition_encoder((prior_map > 0.5).to(prior_map.dtype))

    @torch.no_grad()
    def example_prior_mask(self, example_images: torch.Tensor, example_masks: torch.Tensor,
                           example_valid: torch.Tensor, query_image: torch.Tensor) -> torch.Tensor:
        """The example prior's binary mask [B, 1, H, W]: the union of each sample's valid example masks, or
        (prior_source "crossconv") the in-context module's prediction for the query; empty where a sample has no
        example."""
        probability = self.example_prior_probability(example_images, example_masks, example_valid, query_image)
        return (probability > 0.5).to(query_image.dtype)

    @torch.no_grad()
    def example_prior_probability(self, example_images: torch.Tensor, example_masks: torch.Tensor,
                                  example_valid: torch.Tensor, query_image: torch.Tensor) -> torch.Tensor:
        """The example prior's probability map [B, 1, H, W] (the union is binary; the in-context module's map is its
        sigmoid), zero where a sample has no example."""
        prior = query_image.new_zeros(query_image.shape[0], *query_image.shape[1:])
        has_examples = example_valid.any(dim=1)
        if example_masks.shape[1] == 0 or not has_examples.any():
            return prior
        if self.incontext is None:
            valid = example_valid[..., None, None, None].to(example_masks.dtype)
            prior = (example_masks * valid).amax(dim=1)
        else:
            self.incontext.eval()
            prior[has_examples] = self.incontext.probabilities(query_image[has_examples], example_images[has_examples],
                                                               example_masks[has_examples],
                                                               example_valid[has_examples])
        return prior

    def _follow_prior(self, text_ids: torch.Tensor, text_mask: torch.Tensor, example_images: torch.Tensor,
                      example_masks: torch.Tensor, example_valid: torch.Tensor) -> torch.Tensor | None:
        """[B] True where the condition is the example prior's alone: every example empty, or the prior beating the
        mix on the examples (`_prior_beats_llm`); None when neither rule is on."""
        rules = [flags for flags in (self._examples_all_empty(example_masks, example_valid),
                                     self._prior_beats_llm(text_ids, text_mask, example_images, example_masks,
                                                           example_valid)) if flags is not None]
        return None if not rules else torch.stack(rules).any(dim=0)

    @torch.no_grad()
    def _prior_beats_llm(self, text_ids: torch.Tensor, text_mask: torch.Tensor, example_images: torch.Tensor,
                         example_masks: torch.Tensor, example_valid: torch.Tensor) -> torch.Tensor | None:
        """[B] True where, scored on the sample's own examples (`SegICLConfig.examples_check_the_llm`, from 2 valid
        examples on, each answered from the others), the example prior alone is closer to the examples' masks than
        the gate's mix of the LLM and the prior, in condition-token space (mean squared error, as stage 2 regresses);
        None when the check is off."""
        if not (self.config.examples_check_the_llm and self.example_gate is not None
                and self.use_inference_only_settings) or self._checking_examples:
            return None
        beats = torch.zeros(example_valid.shape[0], dtype=torch.bool, device=example_valid.device)
        for index in torch.nonzero(example_valid.sum(dim=1) >= 2)[:, 0]:
            valid = example_valid[index]
            mix_error, prior_error = self._errors_on_examples(text_ids[index:index + 1], text_mask[index:index + 1],
                                                              example_images[index][valid],
                                                              example_masks[index][valid])
            beats[index] = prior_error < mix_error
        return beats

    def _errors_on_examples(self, text_ids: torch.Tensor, text_mask: torch.Tensor, images: torch.Tensor,
                            masks: torch.Tensor) -> tuple[float, float]:
        """Token errors on n examples ([n, 1, H, W]), each answered from the other n - 1 under one instruction
        ([1, T]): of the gate's mix of the LLM and the prior, and of the example prior alone."""
        count = images.shape[0]
        target = self.condition_encoder(masks)
        others = ~torch.eye(count, dtype=torch.bool, device=images.device)
        shared = (images[None].expand(count, -1, -1, -1, -1), masks[None].expand(count, -1, -1, -1, -1))
        prior_map = self.example_prior_probability(*shared, others, images)
        self._checking_examples = True  # the answers below must not run the check again
        try:
            mixed = self.condition_tokens(text_ids.expand(count, -1), text_mask.expand(count, -1), *shared, others,
                                          images, prior_map=prior_map)
        finally:
            self._checking_examples = False
        left_out = self.prior_tokens(prior_map)
        return (mixed - target).pow(2).mean().item(), (left_out - target).pow(2).mean().item()

    def _examples_all_empty(self, example_masks: torch.Tensor, example_valid: torch.Tensor) -> torch.Tensor | None:
        """[B] True where a sample has examples and every one of their masks is empty (position-matched examples
        saying "not on this slice"), when `SegICLConfig.empty_examples_follow_prior` is on; else None."""
        if not self.config.empty_examples_follow_prior:
            return None
        shown = (example_masks.flatten(2).amax(dim=2) > 0) & example_valid
        return example_valid.any(dim=1) & ~shown.any(dim=1)

    def condition_from_states(self, states: torch.Tensor, prior: torch.Tensor | None = None,
                              has_examples: torch.Tensor | None = None,
                              follow_prior: torch.Tensor | None = None) -> torch.Tensor:
        """Condition tokens from the output-query states: the projection, mixed with the example prior's tokens
        `prior` (per-token gate) for the samples that have examples. `has_examples` [B] defaults to "prior given"
        where `prior` is not None; pass it when some samples of a batch have k = 0. Where `follow_prior` [B] is True
        the gate is 1: the condition is the prior's alone."""
        projected = self.projector(states)
        if prior is None or self.example_gate is None:
            return projected
        gate = self.example_gate(states)
        if follow_prior is not None:
            gate = torch.where(follow_prior[:, None, None], torch.ones_like(gate), gate)
        if has_examples is not None:
            gate = gate * has_examples.to(gate.dtype)[:, None, None]
        return projected + gate * (prior - projected)

    # ------------------------------------------------------------------ persistence
    def _excluded_prefixes(self) -> tuple[str, ...]:
        """Weights that are reloaded from the user's local pretrained paths instead of being saved."""
        excluded = []
        if self.config.vision.checkpoint and self.config.vision.freeze_backbone:
            excluded.append("vision.backbone.")
        if self.config.decoder.pretrained_path:
            excluded += ["decoder.codec.", "decoder.text_encoder."]
            if self.config.decoder.freeze_unet:
                excluded.append("decoder.unet.")
        return tuple(excluded)

    def persistent_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to restore the model on top of what from_config rebuilds (LoRA, not a 7B base)."""
        excluded = self._excluded_prefixes()
        base_llm_frozen = self.config.llm.pretrained_path is not None and not self.config.llm.train_base_model
        state = {}
        for name, tensor in self.state_dict().items():
            if name.startswith(excluded):
                continue
            if base_llm_frozen and name.startswith("encoder.llm.") and "lora_" not in name:
                continue
            state[name] = tensor.detach().cpu().contiguous()
        return state

    def save_pretrained(self, folder: Path | str) -> Path:
        """config + tokenizer + model.safetensors (+ the LoRA adapter in peft's own format)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / CONFIG_NAME)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.encoder.llm.save_pretrained(folder / "llm_adapter")
        state = self.persistent_state_dict()
        # Tied weights (embeddings / LM head) share storage: save one copy, restored by tying on load.
        save_file(_untie(state), folder / WEIGHTS_NAME)
        return folder

    @classmethod
    def from_pretrained(cls, folder: Path | str) -> "SegICLModel":
        from segicl.tokenizer import load_tokenizer

        folder = Path(folder)
        check_model_folder(folder, "SegICL")
        tokenizer = load_tokenizer(folder / "tokenizer")
        with reading_config(folder / CONFIG_NAME):
            model = cls.from_config(SegICLConfig.load(folder / CONFIG_NAME), tokenizer)
        result = load_weights(model, folder / WEIGHTS_NAME)
        if result.unexpected_keys:
            raise ValueError(f"{folder / WEIGHTS_NAME} has unexpected weights, e.g. {result.unexpected_keys[:3]}")
        expected = set(model.persistent_state_dict())
        missing = [k for k in result.missing_keys if k in expected and not _is_tied_copy(k)]
        if missing:
            raise ValueError(f"{folder / WEIGHTS_NAME} lacks weights, e.g. {missing[:3]}")
        return model.eval()


def _is_tied_copy(name: str) -> bool:
    return name.endswith("lm_head.weight")


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the LM head copy of tied embeddings (safetensors refuses shared storage)."""
    return {k: v for k, v in state.items() if not _is_tied_copy(k)}
