import json
import logging
import re

import pytest

from segicl.config import SegICLConfig, full_config, get_preset, tiny_config


def test_presets_validate_without_weights():
    tiny = get_preset("tiny")
    assert tiny.condition.num_tokens == 256 and tiny.tokens_per_query == 4
    full = full_config()
    assert full.vision.open_clip_model == "ViT-bigG-14" and full.vision.image_size == 448
    assert full.vision.num_tokens == 256 and full.condition.num_tokens == 256
    assert full.decoder.space == "latent" and full.decoder.freeze_unet
    assert full.llm.train_base_model is False


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config()
    config.save(tmp_path / "c.json")
    assert SegICLConfig.load(tmp_path / "c.json") == config
    assert SegICLConfig.from_dict(json.loads(json.dumps(full_config().to_dict()))) == full_config()


def test_unknown_preset_and_fields_refused():
    with pytest.raises(ValueError, match="unknown preset 'huge'; known presets: \\['full', 'tiny'\\]"):
        get_preset("huge")
    data = tiny_config().to_dict()
    data["decoder"]["colour"] = "red"
    with pytest.raises(ValueError, match="unknown DecoderConfig fields: \\['colour'\\]"):
        SegICLConfig.from_dict(data)


@pytest.mark.parametrize("section, field, value, message", [
    ("decoder", "prediction_type", "x0", "prediction_type"),
    ("decoder", "space", "latent", "needs pretrained_path"),
    ("condition", "patch_size", 5, "not a multiple of patch_size"),
    ("vision", "patch_size", 7, "not a multiple of patch_size"),
    ("llm", "num_kv_heads", 3, "not divisible by num_kv_heads"),
])
def test_invalid_configs_refused(section, field, value, message):
    config = tiny_config()
    setattr(getattr(config, section), field, value)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_output_queries_must_tile_the_condition_grid():
    config = tiny_config()
    config.num_output_queries = 48
    with pytest.raises(ValueError, match="num_output_queries"):
        config.validate()


def test_a_config_saved_before_the_empty_examples_switch_loads_with_it_on(tmp_path):
    data = tiny_config().to_dict()
    del data["empty_examples_follow_prior"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert SegICLConfig.load(tmp_path / "old.json").empty_examples_follow_prior


def test_the_examples_check_needs_the_example_prior():
    config = tiny_config()
    config.example_prior, config.examples_check_the_llm = False, True
    with pytest.raises(ValueError, match="examples_check_the_llm needs example_prior"):
        config.validate()


def test_removed_settings_that_were_off_are_ignored_with_one_line_naming_them(caplog):
    data = tiny_config().to_dict()
    data.update(gate_reads_prior=False, prior_registration_weight=0.0, prior_registration_fusion="staple")
    data["decoder"]["pixel_inputs"] = []
    with caplog.at_level(logging.WARNING, logger="segicl"):
        assert SegICLConfig.from_dict(data) == tiny_config()
    assert [record.getMessage() for record in caplog.records] == [
        "ignoring settings removed from SegICL: gate_reads_prior=False, decoder.pixel_inputs=[], "
        "prior_registration_weight=0.0, prior_registration_fusion='staple'"]
    caplog.clear()
    SegICLConfig.from_dict(tiny_config().to_dict())
    assert caplog.records == []  # a current config loads silently


def test_ignored_registration_says_which_queries_answer_differently(caplog):
    data = {**tiny_config().to_dict(), "prior_registration_weight": 0.5}  # saved before min_examples existed: 2
    with caplog.at_level(logging.WARNING, logger="segicl"):
        SegICLConfig.from_dict(data)
    assert caplog.records[0].getMessage().endswith(
        "; the example prior no longer blends in registered examples, so queries with 2 or more examples answer "
        "without them")


@pytest.mark.parametrize("section, field, value", [
    (None, "gate_reads_prior", True),
    ("decoder", "pixel_inputs", ["prior", "image"]),
])
def test_a_config_trained_with_a_removed_switch_on_is_refused(section, field, value):
    data = tiny_config().to_dict()
    (data[section] if section else data)[field] = value
    name = f"{section}.{field}" if section else field
    with pytest.raises(ValueError, match="^" + re.escape(f"this model was trained with {name}={value!r}, an experiment")):
        SegICLConfig.from_dict(data)
