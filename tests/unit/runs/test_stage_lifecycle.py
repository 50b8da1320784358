"""One stage lifecycle: stage functions report what they finished, the runner marks the stage done once (settings,
timing and result beside the function's own fields); a function called from a script with no runner records itself."""
import json

import pytest

from wdprobe.pipeline.runner import run_timed
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import Stage, StageContext, StageResult, finish_stage


def _counting(monkeypatch) -> list[str]:
    marked: list[str] = []
    real = RunDir.mark_done

    def mark_done(self, stage, **fields):
        marked.append(stage)
        return real(self, stage, **fields)

    monkeypatch.setattr(RunDir, "mark_done", mark_done)
    return marked


def _work(ctx: StageContext) -> StageResult:
    """A stage function as the WDCT ones are written: it finishes its own stage and a sub-stage of its own."""
    finish_stage(ctx.run, "toy", headline={"answer": 42}, n_items=3)
    finish_stage(ctx.run, "toy_validate", result={"held_out": 1})
    return StageResult("toy", "42 found")


TOY = Stage("wdct", "toy", _work, settings=lambda cfg: {"seed": 0}, needs_model=False)


def test_the_runner_marks_a_stage_done_once_with_the_functions_fields(tmp_path, monkeypatch):
    marked = _counting(monkeypatch)
    run = RunDir(tmp_path / "run")
    result, seconds, cpu = run_timed(TOY, StageContext(run, None, model=lambda: None), {"seed": 0})
    assert marked.count("toy") == 1 and marked.count("toy_validate") == 1  # the sub-stage has no runner: it marks itself
    entry = run.stage_entry("toy")
    assert entry["complete"] and entry["headline"] == {"answer": 42} and entry["n_items"] == 3  # the function's fields
    assert entry["settings"] == {"seed": 0} and entry["result"] == "42 found" and "cpu_seconds" in entry  # the runner's
    assert run.is_done("toy_validate") and result.summary == "42 found"


def test_a_stage_function_called_alone_records_itself(tmp_path, monkeypatch):
    marked = _counting(monkeypatch)
    run = RunDir(tmp_path / "run")
    _work(StageContext(run, None, model=lambda: None))
    assert marked == ["toy", "toy_validate"] and run.stage_entry("toy")["headline"] == {"answer": 42}
    assert "settings" not in run.stage_entry("toy")  # no runner: nothing but what the function reported


def test_a_failing_stage_is_not_marked_and_leaves_no_runner_scope(tmp_path):
    def broken(ctx):
        finish_stage(ctx.run, "toy", n_items=1)
        raise RuntimeError("half way")

    run = RunDir(tmp_path / "run")
    with pytest.raises(RuntimeError, match="half way"):
        run_timed(Stage("wdct", "toy", broken, settings=lambda cfg: {}), StageContext(run, None, model=lambda: None), {})
    assert not run.is_done("toy")
    finish_stage(run, "toy", n_items=2)  # the runner's scope ended with the failure: a later call records itself
    assert json.loads(run.manifest_path.read_text())["stages"]["toy"]["n_items"] == 2
