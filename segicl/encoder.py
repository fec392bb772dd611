"""The multimodal encoder: a causal LLM (LoRA via peft, optional 4-bit) reading the interleaved sequence

    [instruction tokens]
    per example: <example> [image tokens] <mask> [mask tokens] </example>
    <query> [query image tokens]
    <output> [M learned output queries]

and returning the last hidden states of the M output queries. Sequences with different k share a
batch by LEFT padding (the output queries are always the last M positions); positions restart at
the first real token. For a volume, the instruction + examples prefix is run once and its KV cache
reused for every slice (`encode_prefix` / `forward_with_prefix`).
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import warnings
from pathlib import Path

import torch
from torch import nn

from segicl.config import LanguageModelConfig

BOUNDARIES = ("example", "mask", "example_end", "query", "output")


@contextlib.contextmanager
def peft_quietly():
    """Around peft's model wrapping: peft 0.21 reads `is_gradient_checkpointing`, which transformers 5 deprecates in
    favour of `is_activation_checkpointing` (a FutureWarning per wrap); nothing a user could change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def build_llm(config: LanguageModelConfig, vocab_size: int):
    """AutoModelForCausalLM with LoRA on its attention projections (peft); 4-bit base for QLoRA."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if config.pretrained_path is None:
        if config.load_in_4bit:
            raise ValueError("load_in_4bit needs a saved base model (llm.pretrained_path)")
        base = Qwen2ForCausalLM(Qwen2Config(
            vocab_size=vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_kv_heads, max_position_embeddings=4096, tie_word_embeddings=True,
        ))
    else:
        path = Path(config.pretrained_path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"LLM directory {path} has no config.json (llm.pretrained_path must name a local "
                                    "transformers model folder, e.g. a Qwen 7B download)")
        kwargs = {"local_files_only": True}
        if config.load_in_4bit:
            from transformers import BitsAndBytesConfig

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ValueError("load_in_4bit needs bitsandbytes: pip install 'segicl[qlora]'")

            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                               bnb_4bit_compute_dtype=torch.float32)
            kwargs["device_map"] = "cpu" if not torch.cuda.is_available() else "auto"
        base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), bias="none")
    with peft_quietly():
        model = get_peft_model(base, lora)
    if config.train_base_model and not config.load_in_4bit:
        for name, parameter in model.named_parameters():
            if "lora_" not in name:
                parameter.requires_grad_(True)
    return model


class MultimodalEncoder(nn.Module):
    """Interleaved text + image/mask tokens -> hidden states of the M output queries."""

    def __init__(self, llm, num_output_queries: int):
        super().__init__()
        self.llm = llm
        hidden = self.hidden_size
        self.boundaries = nn.ParameterDict({name: nn.Parameter(torch.randn(hidden) * 0.02) for name in BOUNDARIES})
        self.output_queries = nn.Parameter(torch.randn(num_output_queries, hidden) * 0.02)

    @property
    def hidden_size(self) -> int:
        return int(self.llm.get_base_model().config.hidden_size)

    def decoder(self):
        """The LLM's transformer without the LM head (the head's logits are never needed)."""
        return self.llm.get_base_model().get_decoder()

    def text_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_base_model().get_input_embeddings()(ids)

    def prefix_chunks(self, text: torch.Tensor, example_images: torch.Tensor, example_masks: torch.Tensor) -> list:
        """Embeddings of one sample's instruction and examples, in order."""
        chunks = [text]
        b = self.boundaries
        for image_tokens, mask_tokens in zip(example_images, example_masks):
            chunks += [b["example"][None], image_tokens, b["mask"][None], mask_tokens, b["example_end"][None]]
        return chunks

    def suffix_chunks(self, query_tokens: torch.Tensor) -> list:
        return [self.boundaries["query"][None], query_tokens, self.boundaries["output"][None], self.output_queries]

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor, example_image_tokens: torch.Tensor,
                example_mask_tokens: torch.Tensor, example_valid: torch.Tensor,
                query_tokens: torch.Tensor) -> torch.Tensor:
        """Output-query states [B, M, H]. Examples [B, K, N, H] with `example_valid` [B, K] marking real ones."""
        text = self.text_embeddings(text_ids)
        sequences = []
        for b in range(query_tokens.shape[0]):
            valid = example_valid[b]
            chunks = self.prefix_chunks(text[b][text_mask[b].bool()], example_image_tokens[b][valid],
                                        example_mask_tokens[b][valid]) + self.suffix_chunks(query_tokens[b])
            sequences.append(torch.cat(chunks))
        embeds, attention = left_pad(sequences)
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        states = self.decoder()(inputs_embeds=embeds, attention_mask=attention, position_ids=positions).last_hidden_state
        return states[:, -self.output_queries.shape[0]:]

    @torch.no_grad()
    def encode_prefix(self, text_ids: torch.Tensor, example_image_tokens: torch.Tensor,
                      example_mask_tokens: torch.Tensor):
        """Run one instruction + its examples once: (KV cache, prefix length).

        Inputs are for ONE sample: text_ids [1, T] (no padding), example tokens [k, N, H].
        """
        from transformers import DynamicCache

        prefix = torch.cat(self.prefix_chunks(self.text_embeddings(text_ids)[0], example_image_tokens,
                                              example_mask_tokens))[None]
        cache = DynamicCache()
        positions = torch.arange(prefix.shape[1], device=prefix.device)[None]
        self.decoder()(inputs_embeds=prefix, position_ids=positions, cache=cache, use_cache=True)
        return cache, prefix.shape[1]

    @torch.no_grad()
    def forward_with_prefix(self, cache, prefix_length: int, query_tokens: torch.Tensor) -> torch.Tensor:
        """Output-query states [S, M, H] for S query images that share a cached prefix."""
        count = query_tokens.shape[0]
        suffix = torch.stack([torch.cat(self.suffix_chunks(q)) for q in query_tokens])
        batch_cache = repeated_cache(cache, count)
        positions = (prefix_length + torch.arange(suffix.shape[1], device=suffix.device))[None].expand(count, -1)
        attention = torch.ones(count, prefix_length + suffix.shape[1], dtype=torch.long, device=suffix.device)
        states = self.decoder()(inputs_embeds=suffix, attention_mask=attention, position_ids=positions,
                                cache=batch_cache, use_cache=True).last_hidden_state
        return states[:, -self.output_queries.shape[0]:]


def repeated_cache(cache, count: int):
    """A copy of a one-sample KV cache for `count` samples (the cached prefix is never changed in place)."""
    batch_cache = copy.deepcopy(cache)
    batch_cache.batch_repeat_interleave(count)
    return batch_cache


def left_pad(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [L_i, H] sequences into [B, L_max, H] padded on the left, with the attention mask."""
    length = max(s.shape[0] for s in sequences)
    hidden = sequences[0].shape[1]
    embeds = sequences[0].new_zeros(len(sequences), length, hidden)
    attention = torch.zeros(len(sequences), length, dtype=torch.long, device=sequences[0].device)
    for b, sequence in enumerate(sequences):
        embeds[b, length - sequence.shape[0]:] = sequence
        attention[b, length - sequence.shape[0]:] = 1
    return embeds, attention
