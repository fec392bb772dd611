import pytest
import torch

from segicl.config import LanguageModelConfig
from segicl.encoder import MultimodalEncoder, build_llm, left_pad, peft_quietly


def tiny_encoder(vocab: int = 300, queries: int = 4) -> MultimodalEncoder:
    torch.manual_seed(0)
    llm = build_llm(LanguageModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                        intermediate_size=64, lora_rank=4), vocab)
    return MultimodalEncoder(llm, queries).eval()


def test_left_pad():
    embeds, attention = left_pad([torch.ones(2, 3), torch.ones(4, 3)])
    assert embeds.shape == (2, 4, 3) and attention.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert embeds[0, :2].abs().sum() == 0


def test_batched_k_mix_equals_one_by_one():
    """k = 0 and k = 3 in one padded batch give the same outputs as each sample alone."""
    encoder = tiny_encoder()
    hidden = encoder.hidden_size
    text = torch.randint(3, 300, (2, 5))
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    images, masks = torch.randn(2, 3, 6, hidden), torch.randn(2, 3, 6, hidden)
    valid = torch.tensor([[False] * 3, [True] * 3])
    query = torch.randn(2, 6, hidden)
    with torch.no_grad():
        batched = encoder(text, text_mask, images, masks, valid, query)
        alone = [encoder(text[i: i + 1], text_mask[i: i + 1], images[i: i + 1], masks[i: i + 1], valid[i: i + 1],
                         query[i: i + 1]) for i in range(2)]
    assert batched.shape == (2, 4, hidden)
    torch.testing.assert_close(batched, torch.cat(alone), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1])


def test_prefix_cache_matches_full_forward():
    encoder = tiny_encoder()
    hidden = encoder.hidden_size
    text = torch.randint(3, 300, (1, 5))
    images, masks = torch.randn(1, 2, 6, hidden), torch.randn(1, 2, 6, hidden)
    queries = torch.randn(3, 6, hidden)
    with torch.no_grad():
        cache, length = encoder.encode_prefix(text, images[0], masks[0])
        cached = encoder.forward_with_prefix(cache, length, queries)
        full = encoder(text.expand(3, -1), torch.ones(3, 5), images.expand(3, -1, -1, -1),
                       masks.expand(3, -1, -1, -1), torch.ones(3, 2, dtype=torch.bool), queries)
        again = encoder.forward_with_prefix(cache, length, queries[:1])  # the cache is not consumed
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again, cached[:1], atol=1e-5, rtol=1e-4)


def test_lora_adapter_saves_reloads_and_merges(tmp_path):
    from peft import PeftModel

    llm = tiny_encoder().llm
    with torch.no_grad():
        for name, parameter in llm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a trained adapter: B is zero at initialisation
    ids = torch.randint(3, 300, (1, 7))
    with torch.no_grad():
        adapted = llm(input_ids=ids).logits
        with llm.disable_adapter():
            assert not torch.allclose(llm(input_ids=ids).logits, adapted)
    llm.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    base = tiny_encoder().llm.unload()  # the same seed rebuilds the same base; LoRA layers removed
    with peft_quietly():
        reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    merged = reloaded.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, atol=1e-4, rtol=1e-4)
    assert not any("lora_" in name for name, _ in merged.named_parameters())


def test_pretrained_llm_directory_and_4bit(tmp_path, tokenizer):
    """The full preset's loader (a local transformers folder), and QLoRA's 4-bit base on CPU."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    base.save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    full = build_llm(LanguageModelConfig(pretrained_path=str(tmp_path / "qwen"), train_base_model=False,
                                         lora_rank=4), len(tokenizer))
    trainable = [n for n, p in full.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    quantized = build_llm(LanguageModelConfig(pretrained_path=str(tmp_path / "qwen"), load_in_4bit=True,
                                              lora_rank=4), len(tokenizer))
    assert any("4bit" in type(m).__name__ for m in quantized.modules())
    ids = torch.tensor([[5, 6, 7, 8]])
    encoder = MultimodalEncoder(quantized, 2)
    states = encoder(ids, torch.ones_like(ids), torch.zeros(1, 1, 3, 64), torch.zeros(1, 1, 3, 64),
                     torch.ones(1, 1, dtype=torch.bool), torch.randn(1, 3, 64))
    assert states.shape == (1, 2, 64) and torch.isfinite(states).all()
    states.sum().backward()  # QLoRA trains through the 4-bit base
    assert any(p.grad is not None for n, p in quantized.named_parameters() if "lora_" in n)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_llm(LanguageModelConfig(pretrained_path=str(tmp_path / "missing")), 10)


def test_4bit_without_bitsandbytes_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"load_in_4bit needs bitsandbytes: pip install 'segicl\[qlora\]'"):
        build_llm(LanguageModelConfig(pretrained_path=str(tmp_path / "qwen"), load_in_4bit=True), 100)
