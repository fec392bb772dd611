import numpy as np
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


def prior_tokens(model, example_images, example_masks, example_valid, query_image) -> torch.Tensor:
    """The condition encoder's tokens of the example prior's mask: what the gate mixes in."""
    return model.prior_tokens(model.example_prior_probability(example_images, example_masks, example_valid,
                                                              query_image))


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
        before = model.condition_tokens(**batch)
        model.add_example_prior()
        after = model.condition_tokens(**batch)
    assert model.config.example_prior and model.example_gate is not None
    torch.testing.assert_close(after[1], before[1])
    assert not torch.allclose(after[0], before[0])


@pytest.fixture(scope="module")
def crossconv_model(tokenizer):
    from segicl.config import CrossConvConfig, tiny_config
    from segicl.incontext import CrossConvNet

    torch.manual_seed(1)
    model = SegICLModel.from_config(tiny_config(), tokenizer).eval()
    model.use_crossconv_prior(CrossConvNet(CrossConvConfig(widths=(8, 8, 8, 8))).eval())
    return model


def test_crossconv_prior_is_the_in_context_modules_mask(crossconv_model):
    model = crossconv_model
    batch = mixed_k_batch(model)
    predicted = model.incontext.predict(batch["query_image"][:1], batch["example_images"][:1, :2],
                                        batch["example_masks"][:1, :2], batch["example_valid"][:1, :2])
    with torch.no_grad():
        prior = model.example_prior_mask(batch["example_images"], batch["example_masks"], batch["example_valid"],
                                         batch["query_image"])
        assert torch.equal(prior[0], predicted[0]) and not prior[1].any()  # k = 0: the empty mask
        model.example_gate.linear.bias.fill_(30.0)
        try:
            tokens = model.condition_tokens(**batch)
        finally:
            model.example_gate.linear.bias.zero_()
    torch.testing.assert_close(tokens[0], model.condition_encoder(predicted)[0], atol=1e-5, rtol=0)


def test_crossconv_prior_cached_path_equals_the_whole_sequence(crossconv_model):
    model = crossconv_model
    batch = episode_batch(model, 3, batch=1)
    queries = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        context = model.encode_context(batch["text_ids"], batch["example_images"][0], batch["example_masks"][0])
        cached = model.condition_tokens(None, None, None, None, None, queries, context)
        whole = torch.cat([model.condition_tokens(**{**batch, "query_image": q[None]}) for q in queries])
    torch.testing.assert_close(cached, whole, atol=1e-4, rtol=1e-4)


def test_crossconv_prior_saves_and_reloads_bit_identically(crossconv_model, tmp_path):
    folder = crossconv_model.save_pretrained(tmp_path / "model")
    loaded = SegICLModel.from_pretrained(folder)
    assert loaded.config.prior_source == "crossconv" and loaded.config.crossconv.widths == (8, 8, 8, 8)
    batch = mixed_k_batch(crossconv_model)
    with torch.no_grad():
        assert torch.equal(crossconv_model.condition_tokens(**batch), loaded.condition_tokens(**batch))


def test_crossconv_prior_of_another_size_is_refused(tokenizer, crossconv_model):
    from segicl.config import CrossConvConfig
    from segicl.incontext import CrossConvNet

    with pytest.raises(ValueError, match="reads 32 px images"):
        crossconv_model.use_crossconv_prior(CrossConvNet(CrossConvConfig(image_size=32, widths=(4, 4))))


# What a model folder saved before the experiment switches left SegICL holds for them (the shipped weights' values).
LEGACY_FIELDS = {"gate_reads_prior": False, "prior_registration_weight": 0.5, "prior_registration_fusion": "staple",
                 "prior_registration_min_examples": 4}
LEGACY_DECODER_FIELDS = {"pixel_inputs": []}


def test_a_folder_saved_with_removed_settings_loads_bit_identically_with_one_logged_line(crossconv_model, tmp_path,
                                                                                          caplog):
    import json
    import logging

    folder = crossconv_model.save_pretrained(tmp_path / "legacy")
    saved = json.loads((folder / "segicl_config.json").read_text())
    saved.update(LEGACY_FIELDS)
    saved["decoder"].update(LEGACY_DECODER_FIELDS)
    (folder / "segicl_config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="segicl"):
        loaded = SegICLModel.from_pretrained(folder)
    lines = [record.getMessage() for record in caplog.records if record.name == "segicl"]
    assert len(lines) == 1 and lines[0].startswith("ignoring settings removed from SegICL: ")
    assert all(name in lines[0] for name in [*LEGACY_FIELDS, "decoder.pixel_inputs"])
    assert loaded.config == crossconv_model.config
    for name, value in crossconv_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    batch = episode_batch(crossconv_model, 3)
    with torch.no_grad():
        assert torch.equal(loaded.condition_tokens(**batch), crossconv_model.condition_tokens(**batch))


def test_queries_whose_examples_are_all_empty_follow_the_prior_alone(crossconv_model):
    model = crossconv_model
    batch = episode_batch(model, 3, batch=3)
    batch["example_masks"][0] = 0  # every example says "not on this slice"
    batch["example_masks"][1, 1:] = 0  # one example shows the structure
    batch["example_valid"][2] = False  # k = 0
    assert model.config.empty_examples_follow_prior  # the default
    with torch.no_grad():
        followed = model.condition_tokens(**batch)
        prior = prior_tokens(model, batch["example_images"], batch["example_masks"], batch["example_valid"],
                             batch["query_image"])
        model.config.empty_examples_follow_prior = False
        try:
            mixed = model.condition_tokens(**batch)
        finally:
            model.config.empty_examples_follow_prior = True
    torch.testing.assert_close(followed[0], prior[0])
    assert not torch.allclose(mixed[0], prior[0], atol=1e-3)  # the switch is what changed it
    assert torch.equal(followed[1:], mixed[1:])


def test_empty_examples_follow_the_prior_on_the_cached_path_too(crossconv_model):
    model = crossconv_model
    batch = episode_batch(model, 3, batch=1)
    batch["example_masks"].zero_()
    queries = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        context = model.encode_context(batch["text_ids"], batch["example_images"][0], batch["example_masks"][0])
        cached = model.condition_tokens(None, None, None, None, None, queries, context)
        whole = torch.cat([model.condition_tokens(**{**batch, "query_image": q[None]}) for q in queries])
        prior = prior_tokens(model, batch["example_images"].expand(2, -1, -1, -1, -1),
                             batch["example_masks"].expand(2, -1, -1, -1, -1),
                             batch["example_valid"].expand(2, -1), queries)
    torch.testing.assert_close(cached, whole, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached, prior, atol=1e-5, rtol=0)


def test_examples_check_the_llm_follows_the_prior_where_it_predicts_the_examples_better(crossconv_model,
                                                                                        monkeypatch):
    model = crossconv_model
    batch = episode_batch(model, 3, batch=2)
    batch["example_masks"][:, :, :, 20:40, 20:40] = 1.0  # every example shows the structure
    with torch.no_grad():
        mixed = model.condition_tokens(**batch)
        prior = prior_tokens(model, batch["example_images"], batch["example_masks"], batch["example_valid"],
                             batch["query_image"])
        mix_error, prior_error = model._errors_on_examples(batch["text_ids"][:1], batch["text_mask"][:1],
                                                           batch["example_images"][0], batch["example_masks"][0])
    assert np.isfinite([mix_error, prior_error]).all() and min(mix_error, prior_error) > 0
    answers = iter([(1.0, 0.5), (0.5, 1.0)])  # sample 0: the prior is closer; sample 1: the mix is
    monkeypatch.setattr(model, "_errors_on_examples", lambda *args: next(answers))
    model.config.examples_check_the_llm = True
    try:
        with torch.no_grad():
            checked = model.condition_tokens(**batch)
        model.use_inference_only_settings = False  # as the training stages run it: no check
        with torch.no_grad():
            training = model.condition_tokens(**batch)
    finally:
        model.config.examples_check_the_llm, model.use_inference_only_settings = False, True
    torch.testing.assert_close(checked[0], prior[0])
    assert not torch.allclose(mixed[0], prior[0], atol=1e-3)
    assert torch.equal(checked[1], mixed[1]) and torch.equal(training, mixed)


def test_examples_check_the_llm_once_per_context_on_the_cached_path(crossconv_model, monkeypatch):
    model = crossconv_model
    batch = episode_batch(model, 3, batch=1)
    batch["example_masks"][:, :, :, 20:40, 20:40] = 1.0
    queries = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(8))
    calls = []

    def prior_closer(*args):
        calls.append(args)
        return 1.0, 0.5

    monkeypatch.setattr(model, "_errors_on_examples", prior_closer)
    model.config.examples_check_the_llm = True
    try:
        with torch.no_grad():
            context = model.encode_context(batch["text_ids"], batch["example_images"][0], batch["example_masks"][0])
            cached = model.condition_tokens(None, None, None, None, None, queries, context)
            prior = prior_tokens(model, batch["example_images"].expand(2, -1, -1, -1, -1),
                                 batch["example_masks"].expand(2, -1, -1, -1, -1),
                                 batch["example_valid"].expand(2, -1), queries)
    finally:
        model.config.examples_check_the_llm = False
    assert context.prior_beats_llm and len(calls) == 1
    torch.testing.assert_close(cached, prior, atol=1e-5, rtol=0)


def test_the_examples_check_computes_each_left_out_prior_once_and_scores_what_the_model_answers(crossconv_model,
                                                                                               monkeypatch):
    model = crossconv_model
    batch = episode_batch(model, 3, batch=1)
    batch["example_masks"][:, :, :, 20:40, 20:40] = 1.0
    images, masks = batch["example_images"][0], batch["example_masks"][0]
    others = ~torch.eye(3, dtype=torch.bool)
    shared = (images[None].expand(3, -1, -1, -1, -1), masks[None].expand(3, -1, -1, -1, -1))
    with torch.no_grad():
        target = model.condition_encoder(masks)
        mixed = model.condition_tokens(batch["text_ids"][:1].expand(3, -1), batch["text_mask"][:1].expand(3, -1),
                                       *shared, others, images)
        prior = prior_tokens(model, *shared, others, images)
    calls = []
    compute = model.example_prior_probability
    monkeypatch.setattr(model, "example_prior_probability", lambda *args: calls.append(1) or compute(*args))
    with torch.no_grad():
        mix_error, prior_error = model._errors_on_examples(batch["text_ids"][:1], batch["text_mask"][:1], images, masks)
    assert len(calls) == 1
    assert mix_error == pytest.approx((mixed - target).pow(2).mean().item(), rel=1e-6)
    assert prior_error == pytest.approx((prior - target).pow(2).mean().item(), rel=1e-6)
