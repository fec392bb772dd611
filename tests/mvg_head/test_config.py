import pytest

from mvg_head.config import MVGConfig, full_config, get_preset, tiny_config


def test_a_config_saves_and_loads_unchanged(tmp_path):
    config = tiny_config()
    config.save(tmp_path / "mvg_config.json")
    assert MVGConfig.load(tmp_path / "mvg_config.json") == config


def test_presets_by_name_and_an_unknown_one_refused():
    assert get_preset("tiny") == tiny_config()
    assert get_preset("full").width == full_config().width == 1024
    with pytest.raises(ValueError, match="unknown MVG preset 'huge'; known presets: "):
        get_preset("huge")


def test_unknown_fields_in_a_saved_config_are_refused(tmp_path):
    (tmp_path / "mvg_config.json").write_text('{"colour_depth": 3}')
    with pytest.raises(ValueError, match=r"unknown MVGConfig fields: \['colour_depth'\]"):
        MVGConfig.load(tmp_path / "mvg_config.json")
