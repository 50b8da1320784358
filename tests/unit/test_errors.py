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


def test_cli_turns_a_full_disk_into_a_message_and_lets_other_os_errors_show(monkeypatch, tmp_path, capsys):
    import errno

    import wdprobe.cli as cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "part-00003.csv"))

    monkeypatch.setattr(cli, "cmd_status", full)
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "part-00003.csv" in err and "free some disk space" in err

    def other(args):
        raise OSError(errno.EIO, "Input/output error")  # not a fault the user can fix from here: a traceback

    monkeypatch.setattr(cli, "cmd_status", other)
    with pytest.raises(OSError):
        main(["status", str(tmp_path)])


def test_an_item_id_too_long_for_a_file_name_is_refused_by_name():
    from wdprobe.errors import UnsafePathError
    from wdprobe.runs.rundir import safe_name

    assert safe_name("q" * 200) == "q" * 200
    with pytest.raises(UnsafePathError, match="shorten the item's id"):
        safe_name("q" * 201)
    with pytest.raises(UnsafePathError, match="bytes"):
        safe_name("é" * 40)  # 6 bytes each once percent-encoded: 240
