"""Typed configs: unknown keys and bad values give errors that name them; recipes validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycodegen.config import PrepareConfig, RecipeConfig, TrainConfig, load_recipe, parse_config
from pycodegen.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_validates(recipe: Path) -> None:
    assert isinstance(load_recipe(recipe), RecipeConfig)


def test_unknown_nested_key_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nprepare:\n  taks: instruction\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert str(path) in msg and "unknown key 'prepare.taks'" in msg and "task" in msg.split("valid keys:")[1]


def test_unknown_stage_lists_stages(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nprepair: {}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'prepair'; valid keys: .*prepare"):
        load_recipe(path)


def test_bad_value_names_field_and_choices() -> None:
    with pytest.raises(ConfigError, match="task: Input should be 'docstring-to-body'"):
        parse_config(PrepareConfig, {"task": "lm"})
    with pytest.raises(ConfigError, match="window: Input should be greater than or equal to 8"):
        parse_config(PrepareConfig, {"window": 2})


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a recipe is a mapping"):
        load_recipe(bad)


def test_config_choices_are_the_registries() -> None:
    """A config's Literal choices and the registry that implements them name the same things: a format,
    benchmark or prompt mode added to one but not the other fails here."""
    import typing

    from pycodegen.benchmarks import BENCHMARKS
    from pycodegen.config import Benchmark, Format, PromptMode
    from pycodegen.data.formats import FORMATS
    from pycodegen.generate.decoding import PROMPT_MODES
    from pycodegen.models.registry import FAMILIES

    # "python-tree" is the source-tree reader (data/python_tree.py); the rest are dataset-file formats
    assert set(typing.get_args(Format)) == {"auto", "python-tree", *FORMATS}
    assert set(typing.get_args(Benchmark)) == set(BENCHMARKS)
    assert set(typing.get_args(PromptMode)) == set(PROMPT_MODES)
    families = parse_config(TrainConfig, {"family": "char-rnn"}).model_fields["family"].description or ""
    assert all(name in families for name in FAMILIES), "the --family help lists every family"


def test_beam_search_only_for_the_families_that_have_it() -> None:
    from pycodegen.models.registry import FAMILIES

    beam = {name for name, family in FAMILIES.items() if family.beam_search}
    assert beam == {"seq2seq", "hf-seq2seq"}
    for name in FAMILIES:
        if name in beam:
            assert parse_config(TrainConfig, {"family": name, "eval_beams": 3}).eval_beams == 3
        else:
            with pytest.raises(ConfigError, match="beam search is for the encoder-decoders"):
                parse_config(TrainConfig, {"family": name, "eval_beams": 3})
