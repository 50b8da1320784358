"""A manifest that is not what wdprobe wrote (truncated by a full disk, edited by hand, replaced by another file) is
refused by every reader with the file named and what to do: never a raw traceback, never read as an empty run."""
import json

import pytest

from wdprobe.cli import main
from wdprobe.errors import RunError
from wdprobe.pipeline.results import Run
from wdprobe.runs.rundir import RunDir, read_manifest_file

GOOD = {"created": "2026-12-07T00:00:00Z", "stages": {"score": {"config": {"seed": 0}, "complete": True}}}
BROKEN = {
    "truncated": (json.dumps(GOOD)[:40], "not valid JSON"),
    "a list": ("[1, 2]", "a JSON list"),
    "a number": ("3", "a JSON int"),
    "stages not an object": (json.dumps({"stages": [1]}), "'stages' is not an object"),
    "a stage entry not an object": (json.dumps({"stages": {"score": "done"}}), "'stages' is not an object"),
    "not UTF-8": (b"\xff\xfe{\x00", "not UTF-8"),
}


def _write(path, content) -> None:
    path.mkdir(parents=True, exist_ok=True)
    target = path / "manifest.json"
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)


@pytest.mark.parametrize("case", list(BROKEN))
def test_every_reader_refuses_a_manifest_that_is_not_a_wdprobe_manifest(case, tmp_path, capsys):
    content, words = BROKEN[case]
    run = tmp_path / "run"
    _write(run, content)
    with pytest.raises(RunError, match=words) as caught:
        read_manifest_file(run / "manifest.json")
    assert str(run / "manifest.json") in str(caught.value) and "new directory" in str(caught.value)
    with pytest.raises(RunError, match=words):
        RunDir(run).read_manifest()
    with pytest.raises(RunError, match=words):
        Run(run).finished
    assert main(["status", str(run)]) == 2
    other = tmp_path / "other"
    _write(other, json.dumps(GOOD))
    assert main(["compare", str(other), str(run), "--out", str(tmp_path / "c.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("wdprobe: error:") == 2 and "Traceback" not in err
    assert not (tmp_path / "c.html").exists()


def test_a_good_manifest_reads_back_as_written(tmp_path):
    _write(tmp_path / "run", json.dumps(GOOD))
    assert read_manifest_file(tmp_path / "run" / "manifest.json") == GOOD
    assert RunDir(tmp_path / "run").read_manifest() == GOOD
    assert RunDir(tmp_path / "none").read_manifest() == {}  # a run not started
