import pytest
import torch

from segicl.model import SegICLModel

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
        tokens = tiny_model.predict_condition_tokens(**episode_batch(tiny_model, k))
    assert tokens.shape == (2, 256, 16) and torch.isfinite(tokens).all()


def test_examples_change_the_prediction(tiny_model):
    batch = episode_batch(tiny_model, 3)
    with torch.no_grad():
        with_examples = tiny_model.predict_condition_tokens(**batch)
        batch["example_masks"] = torch.flip(batch["example_masks"], dims=[-1])
        flipped = tiny_model.predict_condition_tokens(**batch)
    assert not torch.allclose(with_examples, flipped)


def test_save_and_load_are_bit_identical(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    loaded = SegICLModel.from_pretrained(tmp_path / "model")
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    batch = episode_batch(tiny_model, 3)
    with torch.no_grad():
        first = tiny_model.predict_condition_tokens(**batch)
        second = loaded.predict_condition_tokens(**batch)
    assert torch.equal(first, second)
    masks_a = tiny_model.decoder.sample(first, 2, 2, torch.Generator().manual_seed(3))
    masks_b = loaded.decoder.sample(second, 2, 2, torch.Generator().manual_seed(3))
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
