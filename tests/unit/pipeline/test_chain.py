"""Chained results: every stage records what the stages it requires handed on (their fingerprints) and is refused,
with what changed, when one of them was redone since; nothing downstream reads a mix of two scorings."""
import json

from tiny import write_two_option_copies

from wdprobe.cli import main
from wdprobe.pipeline.registry import REGISTRY
from wdprobe.pipeline.runner import stage_fingerprint
from wdprobe.runs.rundir import RunDir


def _redo_score_by_hand(run, model, data, seed):
    """What a user following 'delete the stage and rerun' does: the score stage's files and entry gone, rescored."""
    for name in ("items.csv", "prompts.csv", "metrics.json"):
        (run / name).unlink()
    for f in (run / "score.parts").iterdir():
        f.unlink()
    (run / "score.parts").rmdir()
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["stages"]["score"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert main(["score", "--model", str(model), "--data", str(data), "--out", str(run), "--seed", str(seed),
                 "--quiet"]) == 0


def test_a_stage_made_from_an_earlier_scoring_is_refused_downstream(tiny_model_dir, tmp_path, capsys):
    data = write_two_option_copies(tmp_path / "w.csv")
    run = tmp_path / "run"
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(run), "--quiet"]) == 0
    assert main(["capture", "--run", str(run), "--layers", "0-1", "--quiet"]) == 0
    score = REGISTRY.get("wdct", "score")
    first = stage_fingerprint(RunDir(run), score)
    assert RunDir(run).stage_entry("capture")["inputs"] == {"score": first}
    # the same command again reproduces the same scoring: the same fingerprint, capture still usable
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(run), "--quiet"]) == 0
    assert stage_fingerprint(RunDir(run), score) == first
    assert main(["probe", "--run", str(run), "--folds", "2", "--kinds", "diffmean", "--quiet"]) == 0
    capsys.readouterr()

    _redo_score_by_hand(run, tiny_model_dir, data, seed=1)  # other option orders: another scoring
    assert stage_fingerprint(RunDir(run), score) != first
    for argv in (["probe", "--run", str(run), "--folds", "2", "--kinds", "diffmean", "--quiet"],
                 ["capture", "--run", str(run), "--layers", "0-1", "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "the saved work of 'capture' was made from 'score' as it was before it was redone" in err, err
        assert "Traceback" not in err


def test_a_stage_never_run_records_its_inputs_and_unfinished_inputs_are_none(tiny_model_dir, tmp_path):
    data = write_two_option_copies(tmp_path / "w.csv")
    run = tmp_path / "run"
    assert stage_fingerprint(RunDir(run), REGISTRY.get("wdct", "score")) is None
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(run), "--quiet"]) == 0
    assert RunDir(run).stage_entry("score")["inputs"] == {}  # score requires nothing


def test_a_result_edited_after_its_stage_finished_is_refused_by_every_reader(tiny_model_dir, tmp_path):
    import pytest

    from wdprobe.errors import IntegrityError
    from wdprobe.pipeline.results import Run
    from wdprobe.reports.claims import collect_claims

    data = write_two_option_copies(tmp_path / "w.csv")
    run = tmp_path / "run"
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(run), "--quiet"]) == 0
    assert main(["capture", "--run", str(run), "--layers", "0-1", "--quiet"]) == 0
    assert main(["probe", "--run", str(run), "--folds", "2", "--kinds", "diffmean", "--quiet"]) == 0
    outputs = RunDir(run).stage_entry("probes")["outputs"]
    headline = "probes/resid_post-last-headline.json"
    assert headline in outputs and "items.csv" in RunDir(run).stage_entry("score")["outputs"]
    before = Run(run).probes["resid_post-last-headline"]
    assert len(collect_claims(run)) > 0
    text = (run / headline).read_text()
    (run / headline).write_text(text.replace('"p_value": 0', '"p_value": 1', 1) if '"p_value": 0' in text else text + " ")
    with pytest.raises(IntegrityError, match="changed since stage 'probes' wrote it"):
        Run(run).probes["resid_post-last-headline"]
    with pytest.raises(IntegrityError, match="resid_post-last-headline.json: changed since"):
        collect_claims(run)
    from wdprobe.reports.study import study_numbers

    with pytest.raises(IntegrityError, match="changed since stage 'probes'"):  # the report reads it checked too
        study_numbers(run)
    (run / headline).write_text(text)  # restored: read again, equal to what the stage wrote
    assert Run(run).probes["resid_post-last-headline"] == before


def test_a_study_without_items_at_hand_stops_before_the_model_loads(monkeypatch, tmp_path):
    import pytest

    import wdprobe.data.wdct as wdct
    import wdprobe.pipeline.study as study
    from wdprobe.errors import DataUnavailableError
    from wdprobe.pipeline.config import StudyConfig

    def offline(pinned):
        raise DataUnavailableError("Could not download WDCT.csv (no network)")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the items were found missing")

    monkeypatch.delenv("WDPROBE_WDCT", raising=False)
    monkeypatch.setattr(wdct, "fetch", offline)
    monkeypatch.setattr(study, "_LazyModel", no_model)
    with pytest.raises(DataUnavailableError, match="no network"):
        study.run_study(StudyConfig(out=str(tmp_path / "run")), progress=False)


def test_the_hint_to_finish_scoring_names_the_runs_model_and_items(tiny_model_dir, tmp_path, capsys):
    import shlex

    from wdprobe.runs.stage import score_command

    data = write_two_option_copies(tmp_path / "w.csv")
    run = tmp_path / "run"
    assert main(["score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(run), "--seed", "3",
                 "--quiet"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["score"]["complete"] = False  # as if killed before it finished
    (run / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["capture", "--run", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    hint = score_command(RunDir(run))
    assert hint in err and f"--model {shlex.quote(str(tiny_model_dir))}" in hint and "--seed 3" in hint
    assert f"--data {shlex.quote(str(data))}" in hint
    # pasted as it is, the hint finishes the run (same settings, so no refusal)
    assert main(shlex.split(hint)[1:] + ["--quiet"]) == 0
    assert RunDir(run).is_done("score")
