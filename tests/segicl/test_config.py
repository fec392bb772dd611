import json

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
    del data["empty_examples_follow_prior"], data["gate_reads_prior"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    loaded = SegICLConfig.load(tmp_path / "old.json")
    assert loaded.empty_examples_follow_prior and not loaded.gate_reads_prior


@pytest.mark.parametrize("changes, message", [
    ({"prior_registration_weight": 1.5}, "prior_registration_weight must be in \\[0, 1\\], got 1.5"),
    ({"prior_registration_weight": 0.5, "example_prior": False}, "prior_registration_weight needs example_prior"),
    ({"prior_registration_min_examples": 0}, "prior_registration_min_examples must be >= 1, got 0"),
    ({"prior_registration_fusion": "mean"}, "unknown prior_registration_fusion .mean."),
    ({"examples_check_the_llm": True, "example_prior": False}, "examples_check_the_llm needs example_prior"),
])
def test_registered_example_settings_are_checked(changes, message):
    config = tiny_config()
    for name, value in changes.items():
        setattr(config, name, value)
    with pytest.raises(ValueError, match=message):
        config.validate()
