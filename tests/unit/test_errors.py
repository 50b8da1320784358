"""One error hierarchy: the CLI turns every WdprobeError into exit 2 and a message; other errors are bugs."""
import pytest

import wdprobe.errors as errors
from wdprobe.cli import main


def test_every_error_class_derives_from_wdprobe_error():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.WdprobeError), name


def test_errors_keep_the_builtin_they_refine():
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.MissingInputError, FileNotFoundError)
    assert issubclass(errors.RunMismatchError, RuntimeError)


def test_cli_maps_wdprobe_errors_to_exit_2(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cli_lets_a_bug_show_its_traceback(monkeypatch, tmp_path):
    import wdprobe.cli as cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_status", broken)
    with pytest.raises(ZeroDivisionError):
        main(["status", str(tmp_path)])
