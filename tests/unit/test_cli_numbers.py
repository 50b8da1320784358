"""Numbers given on the command line are checked by argparse before anything runs: a flag below its least value is
refused with the flag's name and exit code 2, never a traceback from scikit-learn or numpy deep inside a stage. The
library functions behind those flags refuse the same values with an InputError before touching the run."""
import pytest

from wdprobe.cli import at_least, build_parser
from wdprobe.errors import InputError
from wdprobe.methods.probes import check_folds, item_folds

REFUSED = [
    (["probe", "--run", "r", "--folds", "1"], "--folds"),
    (["probe", "--run", "r", "--folds", "0"], "--folds"),
    (["patch", "--run", "r", "--batch-size", "0"], "--batch-size"),
    (["patch", "--run", "r", "--instrument", "positional", "--exact-items", "-1"], "--exact-items"),
    (["patch", "--run", "r", "--positional-items", "0"], "--positional-items"),
    (["steer", "--run", "r", "--batch-size", "0"], "--batch-size"),
    (["capture", "--run", "r", "--batch-size", "0"], "--batch-size"),
    (["score", "--out", "r", "--sample", "0"], "--sample"),
    (["score", "--out", "r", "--limit", "-3"], "--limit"),
    (["score", "--out", "r", "--batch-size", "x"], "--batch-size"),
    (["cross-patch", "--reference", "a", "--variant", "b", "--batch-size", "0"], "--batch-size"),
]


@pytest.mark.parametrize("argv,flag", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_a_number_below_its_flags_least_value_is_refused_by_name(argv, flag, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err


def test_the_least_value_itself_is_taken():
    args = build_parser().parse_args(["probe", "--run", "r", "--folds", "2"])
    assert args.folds == 2
    args = build_parser().parse_args(["patch", "--run", "r", "--exact-items", "0"])
    assert args.exact_items == 0
    assert at_least(3)("3") == 3


@pytest.mark.parametrize("folds", [1, 0, -2, 2.5, True])
def test_folds_that_cannot_split_are_refused_in_the_library_too(folds):
    with pytest.raises(InputError, match="at least 2 folds"):
        check_folds(folds)
    with pytest.raises(InputError, match="at least 2 folds"):
        item_folds(10, folds)


def test_stages_refuse_bad_counts_before_reading_the_run(tmp_path):
    from wdprobe.stages.patching import run_positional_patch
    from wdprobe.stages.probes import run_probes

    missing = tmp_path / "no-such-run"  # the count is refused first: the run is never opened
    with pytest.raises(InputError, match="at least 2 folds"):
        run_probes(missing, folds=1)
    with pytest.raises(InputError, match="--exact-items -1"):
        run_positional_patch(missing, n_exact=-1)
    with pytest.raises(InputError, match="--positional-items 0"):
        run_positional_patch(missing, n_items=0)
    assert not missing.exists()


def test_every_flag_of_every_command_says_what_it_does():
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    silent = {name: [a.option_strings[0] for a in parser._actions
                     if a.option_strings and not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
              for name, parser in sub.choices.items()}
    assert not {k: v for k, v in silent.items() if v}


def test_every_command_shows_an_example_that_parses(capsys):
    """Each command's --help ends with a working example: the example parses with the command's own parser."""
    import shlex

    from wdprobe.cli import EXAMPLES, commands

    parser = build_parser()
    assert set(commands(parser)) == set(EXAMPLES)
    for name, example in EXAMPLES.items():
        words = shlex.split(example)
        assert words[0] == "wdprobe" and " ".join(words[1:1 + len(name.split())]) == name, example
        args = parser.parse_args(words[1:])  # a bad flag would exit 2 here
        assert callable(getattr(args, "func", None)), name
        assert commands(parser)[name].format_help().rstrip().endswith(example)
