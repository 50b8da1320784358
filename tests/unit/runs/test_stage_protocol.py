"""The stage protocol: one registry read by run, merge, sweep and status; a new stage is one module and
one registry line (this file's toy stage is the worked example in docs/guides/new-stage.md)."""
import json

import pytest

from wdprobe.errors import InputError
from wdprobe.pipeline.config import StudyConfig
from wdprobe.pipeline.registry import REGISTRY
from wdprobe.pipeline.study import run_study, study_status
from wdprobe.runs.stage import Stage, StageContext, StageRegistry, StageResult

# ---- the worked example: a stage that counts each form's chosen letters ----------------------------------

def count_letters(ctx: StageContext) -> StageResult:
    """A toy stage: read the scored items, write letter counts per form into the run directory."""
    from wdprobe.stages.score import load_score

    rows = load_score(ctx.run.path).rows
    counts = {form: {} for form in ("word", "deed")}
    for r in rows:
        for form in counts:
            counts[form][r[f"{form}_letter"]] = counts[form].get(r[f"{form}_letter"], 0) + 1
    (ctx.run.path / "letter_counts.json").write_text(json.dumps(counts, sort_keys=True))
    return StageResult("letter_counts", f"{len(rows)} items counted", counts)


LETTER_COUNTS = Stage("wdct", "letter_counts", count_letters, settings=lambda cfg: {"seed": cfg.seed}, unit="items",
                      needs_model=False, requires=("score",), outputs=("letter_counts.json",),
                      doc="how often each letter is chosen, per form")


@pytest.fixture()
def toy_stage():
    REGISTRY.register(LETTER_COUNTS, after="score")
    yield LETTER_COUNTS
    REGISTRY.unregister("wdct", "letter_counts")


def test_a_registered_stage_runs_in_the_pipeline_is_recorded_and_skipped_when_done(toy_stage, tiny_lm, wdct_csv, tmp_path):
    cfg = StudyConfig(model=str(tiny_lm.path), data=str(wdct_csv), out=str(tmp_path / "run"), report=str(tmp_path / "rep"),
                      stages=["score", "letter_counts"], png=False)
    logs = []
    run_study(cfg, lm=tiny_lm, progress=False, log=logs.append)
    counts = json.loads((tmp_path / "run" / "letter_counts.json").read_text())
    n = sum(counts["word"].values())
    assert n == sum(counts["deed"].values()) == 6
    done = study_status(cfg.out_dir)["done"]
    assert list(done)[-2:] == ["score", "letter_counts"]
    assert done["letter_counts"]["settings"] == {"seed": 0} and done["letter_counts"]["result"] == "6 items counted"
    run_study(cfg, lm=tiny_lm, progress=False, log=logs.append)
    assert any(m.startswith("[letter_counts] already done") for m in logs)


def test_registry_order_names_and_errors():
    reg = StageRegistry()
    noop = lambda ctx: StageResult("x", "")  # noqa: E731
    reg.register(Stage("s", "a", noop, dict))
    reg.register(Stage("s", "c", noop, dict, requires=("a",)))
    reg.register(Stage("s", "b", noop, dict), after="a")
    assert reg.names("s") == ("a", "b", "c")
    with pytest.raises(InputError, match="registered already"):
        reg.register(Stage("s", "a", noop, dict))
    with pytest.raises(InputError, match="requires"):
        reg.register(Stage("s", "d", noop, dict, requires=("zzz",)))
    with pytest.raises(InputError, match="unknown s stage 'q'"):
        reg.get("s", "q")
    with pytest.raises(InputError, match="unknown study"):
        reg.stages("nope")


def test_every_study_is_declared_once_with_what_the_tools_need():
    assert REGISTRY.names("wdct") == ("score", "capture", "probes", "lens", "patch_cross", "patch_positional", "steer",
                                      "report")
    assert REGISTRY.names("pct") == ("closed", "open", "judge", "compass", "capture", "probes", "content_probes", "tropes",
                                     "report")
    assert sorted(REGISTRY.mergeable("wdct")) == ["capture", "patch_cross", "patch_positional_deed",
                                                   "patch_positional_word", "score", "steer"]
    assert sorted(REGISTRY.mergeable("pct")) == ["capture", "closed", "judge", "open"]
    for study in REGISTRY.studies():
        for stage in REGISTRY.stages(study):
            assert stage.doc and stage.unit
            earlier = REGISTRY.names(study)[: REGISTRY.names(study).index(stage.name)]
            assert set(stage.requires) <= set(earlier), stage.key


def test_status_reads_the_registry(toy_stage, tiny_lm, wdct_csv, tmp_path, capsys):
    from wdprobe.cli import main

    cfg = StudyConfig(model=str(tiny_lm.path), data=str(wdct_csv), out=str(tmp_path / "run"), stages=["score"], png=False)
    run_study(cfg, lm=tiny_lm, progress=False, log=lambda m: None)
    assert main(["status", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_stage = {line.split()[0]: line for line in lines}
    assert "items" in by_stage["score"] and "not run" in by_stage["letter_counts"] and "not run" in by_stage["report"]


def test_status_shows_a_stage_another_process_is_running(tiny_lm, wdct_csv, tmp_path, capsys):
    import subprocess
    import sys
    import time

    from wdprobe.cli import main
    from wdprobe.runs.rundir import RunDir

    run = tmp_path / "run"
    RunDir(run).check_or_start("score", {"seed": 0})
    RunDir(run).unlock()
    holder = subprocess.Popen([sys.executable, "-c", f"from wdprobe.runs.rundir import RunDir; import time; "
                               f"RunDir({str(run)!r}).lock(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["status", str(run)]) == 0
        out = capsys.readouterr().out
        assert "running (pid" in out.splitlines()[1] and "not run" in out  # line 0: the column headers
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert main(["status", str(run)]) == 0
    assert "partial" in capsys.readouterr().out.splitlines()[1]


def test_status_shows_a_stage_that_has_recorded_nothing_yet_as_running(tmp_path, capsys):
    import subprocess
    import sys

    from wdprobe.cli import main
    from wdprobe.runs.rundir import RunDir

    run = tmp_path / "run"
    RunDir(run).check_or_start("score", {"seed": 0})  # a manifest, and score partial
    RunDir(run).unlock()
    holder = subprocess.Popen([sys.executable, "-c", f"from wdprobe.runs.rundir import RunDir; import time; "
                               f"r = RunDir({str(run)!r}); r.lock(); r.announce('capture'); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["status", str(run)]) == 0
        lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
        assert "running (pid" in lines["capture"] and "stage" not in lines["capture"]  # the model may still be loading
        assert "partial" in lines["score"] and "not run" in lines["probes"]
    finally:
        holder.kill()
        holder.wait()


def test_the_resume_skeleton_loses_at_most_the_chunk_in_flight(tmp_path):
    from wdprobe.runs.rundir import RunDir
    from wdprobe.runs.shards import Shard
    from wdprobe.runs.stage import save_in_parts, saved_ids, work_left

    run = RunDir(tmp_path / "run")
    run.check_or_start("toy", {"k": 1})
    units = [f"u{i}" for i in range(7)]
    calls = []

    def compute(chunk, fail_on=None):
        calls.append(list(chunk))
        if fail_on in chunk:
            raise KeyboardInterrupt
        return [{"id": u, "value": len(u) * 10} for u in chunk]

    with pytest.raises(KeyboardInterrupt):
        save_in_parts(run, "toy", units, chunk_size=3, columns=["id", "value"], compute=lambda c: compute(c, "u4"))
    assert saved_ids(run, "toy") == {"u0", "u1", "u2"}  # the first chunk was saved before the crash
    todo = work_left(units, saved_ids(run, "toy"), key=str)
    assert todo == ["u3", "u4", "u5", "u6"]
    new = save_in_parts(run, "toy", todo, chunk_size=3, columns=["id", "value"], compute=compute)
    assert [r["id"] for r in new] == todo and sorted(r["id"] for r in run.read_parts("toy")) == units
    half = Shard(0, 2)
    assert work_left(units, set(), key=str, shard=half) == [u for u in units if half.holds(u)]
