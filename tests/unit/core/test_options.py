"""Declared options: one declaration gives files, flags and checks the same values, defaults and errors."""
import argparse
from dataclasses import dataclass
from typing import ClassVar

import pytest

from wdprobe.cli import main
from wdprobe.core.options import Options, count_or, option, positive_int, with_values
from wdprobe.errors import ConfigError


@dataclass
class Inner(Options):
    """A section."""

    section_name: ClassVar[str] = "inner"
    items: int | str = option("auto", check=count_or("all", "auto"), expect="a positive number, 'all' or 'auto'")
    alphas: list[float] = option([1.0, 2.0], help="strengths")
    validate: bool = option(True)


@dataclass
class Outer(Options):
    """A configuration with a section."""

    mode: str = option("fast", choices=("fast", "slow"), help="how")
    seed: int = option(0)
    batch_size: int = option(8, check=positive_int, expect="a positive number")
    secret: str | None = option(None, cli=False)
    inner: Inner = option(factory=Inner)


def test_a_mapping_is_read_typed_and_checked_against_the_declaration():
    cfg = Outer.from_mapping({"mode": "slow", "inner": {"alphas": [1, 4], "items": 3}}, "x.toml")
    assert cfg.mode == "slow" and cfg.inner.alphas == [1.0, 4.0] and cfg.inner.items == 3
    assert cfg.to_dict() == {"mode": "slow", "seed": 0, "batch_size": 8, "secret": None,
                             "inner": {"items": 3, "alphas": [1.0, 4.0], "validate": True}}
    with pytest.raises(ConfigError, match=r"x.toml: unknown key 'mod' \(did you mean 'mode'\?\)"):
        Outer.from_mapping({"mod": "slow"}, "x.toml")
    with pytest.raises(ConfigError, match=r"x.toml \[inner\]: unknown key 'alpha'"):
        Outer.from_mapping({"inner": {"alpha": [1]}}, "x.toml")
    with pytest.raises(ConfigError, match=r"mode must be one of \['fast', 'slow'\], not 'medium'"):
        Outer.from_mapping({"mode": "medium"})
    with pytest.raises(ConfigError, match="inner.items must be a positive number, 'all' or 'auto', not 'most'"):
        Outer.from_mapping({"inner": {"items": "most"}})
    with pytest.raises(ConfigError, match="batch_size: expected a whole number, got 'eight'"):
        Outer.from_mapping({"batch_size": "eight"})
    with pytest.raises(ConfigError, match="validate: expected true/false"):
        Outer.from_mapping({"inner": {"validate": 1}})
    with pytest.raises(ConfigError, match="batch_size must be a positive number, not 0"):
        Outer(batch_size=0)  # Python construction is checked the same way


def test_flags_come_from_the_same_declaration_and_only_given_flags_override():
    parser = argparse.ArgumentParser()
    Outer.add_flags(parser)
    Inner.add_flags(parser, prefix="inner")
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings]
    assert "--mode" in flags and "--batch-size" in flags and "--inner-alphas" in flags and "--secret" not in flags
    args = parser.parse_args(["--mode", "slow", "--inner-alphas", "0.5,8", "--no-inner-validate", "--inner-items", "all"])
    assert Outer.flag_values(args) == {"mode": "slow"}  # seed and batch_size not given: nothing to override
    assert Inner.flag_values(args, prefix="inner") == {"alphas": [0.5, 8.0], "validate": False, "items": "all"}
    cfg = with_values(Outer(seed=3), {**Outer.flag_values(args),
                                      **{f"inner.{k}": v for k, v in Inner.flag_values(args, prefix="inner").items()}})
    assert (cfg.mode, cfg.seed, cfg.inner.alphas, cfg.inner.validate) == ("slow", 3, [0.5, 8.0], False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "medium"])  # choices are the declared ones
    assert "how (default: fast)" in parser.format_help()


def test_every_study_key_is_a_run_flag(capsys):
    assert main(["run", "--probes-folds", "3", "--steer-alphas", "1,2", "--no-steer-validate", "--print-config"]) == 0
    toml = capsys.readouterr().out
    assert "folds = 3" in toml and "alphas = [1.0, 2.0]" in toml and "validate = false" in toml
    assert main(["run", "--probes-folds", "1", "--print-config"]) == 2
    assert "probes.folds must be a number of folds >= 2, not 1" in capsys.readouterr().err


def test_one_vocabulary_of_orders_with_the_older_names_read_as_the_new():
    from wdprobe.pipeline.config import StudyConfig
    from wdprobe.studies.align.stages import AlignConfig

    assert AlignConfig(orders="both").orders == "cyclic"  # align's 'both' was every order of a two-option item
    cfg = StudyConfig.from_mapping({"patch_cross": {"deed_orders": "both"}})
    assert cfg.patch_cross.deed_orders == "cyclic"
    with pytest.raises(ConfigError, match="orders must be one of"):
        AlignConfig(orders="every")
