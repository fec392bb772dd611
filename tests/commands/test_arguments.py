from argparse import Namespace

import pytest

from segicl_commands.arguments import apply_config_flags, check_at_least, check_out_dir, exit_code


def test_a_refused_input_is_one_line_and_exit_code_2(capsys):
    def refuse() -> int:
        raise ValueError("--steps must be >= 1, got 0")

    assert exit_code(refuse, "segicl demo") == 2
    assert capsys.readouterr().err == "segicl demo: error: --steps must be >= 1, got 0\n"
    assert exit_code(lambda: 0, "segicl demo") == 0


def test_flag_minimums_name_the_flag():
    check_at_least(Namespace(episodes=1), episodes=1)
    with pytest.raises(ValueError, match="--min-area must be >= 1, got 0"):
        check_at_least(Namespace(min_area=0), min_area=1)


def test_a_file_as_output_folder_is_refused(tmp_path):
    check_out_dir(tmp_path / "new")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out-dir .*file exists and is not a folder"):
        check_out_dir(tmp_path / "file")


def test_config_flags_are_validated_together_and_refused_naming_only_the_flags_given():
    from types import SimpleNamespace

    from segicl.config import SegICLConfig

    model = SimpleNamespace(config=SegICLConfig())  # no example prior
    with pytest.raises(ValueError, match=r"^--check: examples_check_the_llm needs example_prior"):
        apply_config_flags(model, [("--check", "examples_check_the_llm", True), ("--k", "max_examples", None)])
    assert not model.config.examples_check_the_llm
    model.config.examples_check_the_llm = True  # invalid already, no flag given: the config's own message alone
    with pytest.raises(ValueError, match=r"^examples_check_the_llm needs example_prior"):
        apply_config_flags(model, [("--check", "examples_check_the_llm", None)])
    model.config.examples_check_the_llm, model.config.example_prior = False, True
    apply_config_flags(model, [("--check", "examples_check_the_llm", True), ("--k", "max_examples", 5)])
    assert model.config.examples_check_the_llm and model.config.max_examples == 5
