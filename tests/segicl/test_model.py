import pytest
import torch

from segicl.model import SegICLModel
from segicl.pipeline import sample_masks

from .conftest import random_masks


def episode_batch(model, k: int, batch: int = 2):
    generator = torch.Generator().manual_seed(k)
    ids, mask = model.tokenize(["Segment the white matter in this T1-weighted MRI slice."] * batch)
    return dict(text_ids=ids, text_mask=mask, example_images=torch.rand(batch, max(k, 1), 1, 64, 64, generator=generator),
                example_masks=random_masks(batch * max(k, 1)).view(batch, max(k, 1), 1, 64, 64),
                example_valid=torch.full((batch, max(k, 1)), k > 0), query_image=torch.rand(batch, 1, 64, 64,
                                                                                           generator=generator))


@pytest.mark.parametrize("k", [0, 3])
def test_condition_tokens_shape(tiny_model, k):
    with torch.no_grad():
        tokens = tiny_model.condition_tokens(**episode_batch(tiny_model, k))
    assert tokens.shape == (2, 256, 16) and torch.isfinite(tokens).all()


def test_examples_change_the_prediction(tiny_model):
    batch = episode_batch(tiny_model, 3)
    with torch.no_grad():
        with_examples = tiny_model.condition_tokens(**batch)
        batch["example_masks"] = torch.flip(batch["example_masks"], dims=[-1])
        flipped = tiny_model.condition_tokens(**batch)
    assert not torch.allclose(with_examples, flipped)


def test_save_and_load_are_bit_identical(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    loaded = SegICLModel.from_pretrained(tmp_path / "model")
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    batch = episode_batch(tiny_model, 3)
    with torch.no_grad():
        first = tiny_model.condition_tokens(**batch)
        second = loaded.condition_tokens(**batch)
    assert torch.equal(first, second)
    masks_a = sample_masks(tiny_model.decoder, first, 2, 2, torch.Generator().manual_seed(3))
    masks_b = sample_masks(loaded.decoder, second, 2, 2, torch.Generator().manual_seed(3))
    assert torch.equal(masks_a, masks_b)
    assert (tmp_path / "model" / "llm_adapter" / "adapter_config.json").exists()


def test_load_refuses_missing_and_foreign_weights(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    with pytest.raises(FileNotFoundError, match="no SegICL model"):
        SegICLModel.from_pretrained(tmp_path / "nothing")
    folder = tiny_model.save_pretrained(tmp_path / "model")
    state = load_file(folder / "model.safetensors")
    state["projector.extra.weight"] = torch.zeros(1)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match="unexpected weights"):
        SegICLModel.from_pretrained(folder)
    del state["projector.extra.weight"], state["projector.mlp.0.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match="lacks weights"):
        SegICLModel.from_pretrained(folder)


def mixed_k_batch(model):
    """Sample 0 has k = 2 (its third slot invalid, holding a different mask), sample 1 has k = 0."""
    batch = episode_batch(model, 3)
    batch["example_valid"] = torch.tensor([[True, True, False], [False, False, False]])
    return batch


def test_example_prior_follows_the_gate(tiny_model):
    batch = mixed_k_batch(tiny_model)
    gate = tiny_model.example_gate.linear
    union = batch["example_masks"][0, :2].amax(dim=0, keepdim=True)
    with torch.no_grad():
        states = tiny_model.encoder(batch["text_ids"], batch["text_mask"],
                                    tiny_model.image_tokens(batch["example_images"]),
                                    tiny_model.image_tokens(batch["example_masks"]), batch["example_valid"],
                                    tiny_model.image_tokens(batch["query_image"]))
        projected = tiny_model.projector(states)
        try:
            for bias, expected_first in ((30.0, tiny_model.condition_encoder(union)[0]), (-30.0, projected[0])):
                gate.bias.fill_(bias)
                tokens = tiny_model.condition_tokens(**batch)
                torch.testing.assert_close(tokens[0], expected_first, atol=1e-5, rtol=0)
                torch.testing.assert_close(tokens[1], projected[1])  # k = 0: the prior never enters
            gate.bias.zero_()
            halfway = tiny_model.condition_tokens(**batch)[0]
            torch.testing.assert_close(halfway, 0.5 * (projected[0] + tiny_model.condition_encoder(union)[0]))
        finally:
            gate.bias.zero_()


def test_example_prior_can_be_switched_off_and_added(tokenizer):
    from segicl.config import tiny_config

    config = tiny_config()
    config.example_prior = False
    model = SegICLModel.from_config(config, tokenizer).eval()
    assert model.example_gate is None
    batch = mixed_k_batch(model)
    with torch.no_grad():
        assert model.example_prior_tokens(batch["example_masks"], batch["example_valid"]) is None
        before = model.condition_tokens(**batch)
        model.add_example_prior()
        after = model.condition_tokens(**batch)
    assert model.config.example_prior and model.example_gate is not None
    torch.testing.assert_close(after[1], before[1])
    assert not torch.allclose(after[0], before[0])
