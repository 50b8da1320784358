"""PCT stages and pipeline: generation trimming, folds, persona effect, end to end, resume, CLI, shards."""
from __future__ import annotations

import json

import numpy as np
import pytest


class KeywordJudge:
    """A judge a user could plug in: 'disagree' in the text -> Disagree, else Agree."""

    name = "keyword"

    def stance_logprobs(self, propositions, texts):
        out = np.full((len(texts), 4), -5.0)
        for i, t in enumerate(texts):
            out[i, 1 if "disagree" in t.lower() else 2] = 0.0
        return out


class FixedEmbedder:
    """Sentence embeddings that depend only on length parity: enough for the pipeline to run."""

    name = "fixed"

    def encode(self, sentences):
        rng = np.random.default_rng(0)
        v = np.stack([rng.normal(size=8) + 5 * (len(s) % 2) for s in sentences])
        return v / np.linalg.norm(v, axis=1, keepdims=True)



def test_trim_generation():
    from wdprobe.studies.pct.stages import trim_generation

    assert trim_generation("\n I agree with it.\nResponse: I agree") == "I agree with it."
    assert trim_generation("Yes.\nQuestion: what") == "Yes."
    assert trim_generation("  plain  ") == "plain"


def test_item_folds_keep_groups_together():
    from wdprobe.methods.probes import item_folds

    groups = np.repeat(np.arange(7), 3)
    for tr, te in item_folds(len(groups), 5, groups):
        assert not set(groups[tr]) & set(groups[te])


def test_persona_effect_recovers_planted_shift():
    from wdprobe.studies.pct.stages import persona_effect

    rng = np.random.default_rng(1)
    d = 16
    direction = np.zeros(d)
    direction[0] = 1.0
    rows, X = [], []
    for persona, push in (("base", 0.0), ("up", 2.0), ("flat", 0.0)):
        for p in range(20):
            agree = p % 2
            x = rng.normal(scale=0.1, size=d) + direction * (2.0 * agree + push)
            rows.append({"persona": persona, "proposition": p, "instruction": 0, "choice": 3 if agree else 0,
                         "p_agree": 0.9 if agree else 0.1})
            X.append(x)
    X = np.asarray(X)[:, None, :]  # one layer
    eff = persona_effect(X, rows).set_index("persona")
    assert eff.loc["up", "shift"] == pytest.approx(1.0, abs=0.05)  # push 2.0 over an agree gap of 2.0
    assert abs(eff.loc["flat", "shift"]) < 0.05 and eff.loc["up", "p"] < 0.01


def _cfg(tmp_path, pct_dir, model_dir, **kw):
    from wdprobe.studies.pct.stages import PCTConfig

    base = dict(model=str(model_dir), data=str(pct_dir), out=str(tmp_path / "run"), closed_instructions="all",
                open_instructions="all", max_new_tokens=5, min_prompts=2, folds=2, batch_size=8)
    base.update(kw)
    return PCTConfig(**base)


def test_pipeline_end_to_end_with_plugged_judge(tmp_path, pct_dir, pct_lm):
    import pandas as pd

    from wdprobe.pipeline.pct import run_pct

    cfg = _cfg(tmp_path, pct_dir, pct_lm.path)
    run = run_pct(cfg, lm=pct_lm, judge=KeywordJudge(), embedder=FixedEmbedder(), progress=False, log=lambda m: None)
    closed = pd.read_csv(run.path / "closed.csv")
    texts = pd.read_csv(run.path / "open.csv", keep_default_na=False)
    stances = pd.read_csv(run.path / "stances.csv")
    assert len(closed) == 8 * 7 * 2 and len(texts) == 8 * 7 * 2  # propositions x personas x instructions
    assert np.allclose(closed[[f"p_{k}" for k in range(4)]].sum(axis=1), 1.0, atol=1e-3)
    assert (closed["choice"] == closed[[f"lp_{k}" for k in range(4)]].to_numpy().argmax(1)).all()
    want = np.where(texts["text"].str.lower().str.contains("disagree"), 1, 2)
    assert (stances["stance"].to_numpy() == want).all()
    agree = pd.read_csv(run.path / "agreement.csv")
    merged = closed.merge(stances, on="pair_id", suffixes=("_c", "_o"))
    assert (agree["same_side"].to_numpy() == ((merged.choice >= 2) == (merged.stance >= 2)).to_numpy()).all()
    summary = json.loads((run.path / "compass.json").read_text())
    assert summary["same_side"] == pytest.approx(agree["same_side"].mean(), abs=1e-4)
    for name in ("positions.csv", "shifts.csv", "probes.csv", "tropes.csv", "report/index.html", "report/tropes.html",
                 "report/README.md", "activations.safetensors"):
        assert (run.path / name).is_file(), name
    page = (run.path / "report" / "index.html").read_text()
    assert "Political Compass under personas" in page and "Closed vs open." in page
    # the verdicts first (one row per question), each finding's numbers one click away
    readme = (run.path / "report" / "README.md").read_text()
    assert "| question | what this run says |" in readme and "| Closed vs open |" in readme
    assert readme.index("| question |") < readme.index("1. **")
    assert page.count("<li><details><summary><b>") == page.count("</details></li>") >= 3
    # one claims ledger: every persona shift on both axes, Benjamini-Hochberg across the report; the shift table's q is
    # that report-wide q (the stage's own corrects over the shifts only), and the findings rest on it
    from scipy.stats import false_discovery_control

    ledger = pd.read_csv(run.path / "report" / "claims.csv")
    shifts = pd.read_csv(run.path / "shifts.csv")
    assert len(ledger[ledger.family == "persona shift"]) == 2 * len(shifts)
    assert np.allclose(ledger.q, false_discovery_control(ledger.p, method="bh"))
    published = json.loads((run.path / "report" / "findings.json").read_text())
    assert any(f["title"] == "Personas." for f in published)
    # a finished run is not redone (no model needed)
    again = run_pct(cfg, lm=None, judge=KeywordJudge(), embedder=FixedEmbedder(), progress=False, log=lambda m: None,
                    stages=["closed", "open", "judge", "compass"])
    assert (again.path / "closed.csv").read_text() == (run.path / "closed.csv").read_text()


def test_generation_resumes_after_an_interruption(tmp_path, pct_dir, pct_lm, monkeypatch):
    import wdprobe.studies.pct.stages as pct
    from wdprobe.pipeline.pct import run_pct

    cfg = _cfg(tmp_path, pct_dir, pct_lm.path, personas="base,age=18", out=str(tmp_path / "whole"))
    run_pct(cfg, lm=pct_lm, stages=["open"], progress=False, log=lambda m: None)
    whole = (tmp_path / "whole" / "open.csv").read_text()

    real = pct.generate_texts
    calls = {"n": 0}

    def dies_on_second_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pct, "generate_texts", dies_on_second_chunk)

    monkeypatch.setattr(pct, "_OPEN_CHUNK", 8)
    cut = _cfg(tmp_path, pct_dir, pct_lm.path, personas="base,age=18", out=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        run_pct(cut, lm=pct_lm, stages=["open"], progress=False, log=lambda m: None)
    assert len(list((tmp_path / "cut" / "open.parts").glob("part-*.csv"))) == 1
    monkeypatch.setattr(pct, "generate_texts", real)
    run_pct(cut, lm=pct_lm, stages=["open"], progress=False, log=lambda m: None)
    assert (tmp_path / "cut" / "open.csv").read_text() == whole


def test_cli_pct_run_status_and_errors(tmp_path, pct_dir, pct_lm, capsys):
    from wdprobe.cli import main

    out = tmp_path / "cli-run"
    args = ["pct", "run", "--model", str(pct_lm.path), "--data", str(pct_dir), "--out", str(out), "--personas", "base,age=18",
            "--closed-instructions", "0", "--open-instructions", "0", "--max-new-tokens", "4", "--stages", "closed,compass",
            "--quiet"]
    assert main(args) == 0
    assert (out / "closed.csv").is_file() and (out / "positions.csv").is_file()
    assert main(["pct", "status", "--out", str(out)]) == 0
    status = capsys.readouterr().out
    assert "closed" in status and "not run" in status
    # settings come from the run directory; a changed setting is refused with the difference named
    assert main(["pct", "compass", "--out", str(out), "--quiet"]) == 0
    before = (out / "positions.csv").stat().st_mtime_ns
    assert main(["pct", "compass", "--out", str(out), "--redo", "--quiet"]) == 0  # recomputed, not skipped
    assert (out / "positions.csv").stat().st_mtime_ns > before
    assert main(["pct", "closed", "--out", str(out), "--seed", "5", "--quiet"]) == 2
    assert "seed: 0 there vs 5 now" in capsys.readouterr().err
    assert main(["pct", "run", "--data", str(pct_dir), "--out", str(tmp_path / "bad"), "--personas", "age=99",
                 "--chat", "plain", "--quiet"]) == 2
    assert "unknown persona 'age=99'" in capsys.readouterr().err


def test_instruction_noise_by_hand():
    from wdprobe.studies.pct.stages import instruction_noise

    rows = [{"persona": per, "proposition": p, "instruction": i, "choice": c}
            for per, p, i, c in [("base", 0, 0, 0), ("base", 0, 5, 0), ("base", 1, 0, 2), ("base", 1, 5, 3),
                                 ("x", 0, 0, 1), ("x", 0, 5, 0), ("x", 1, 0, 2), ("x", 1, 5, 2)]]
    got = instruction_noise(rows)
    # between instructions: base p1 and x p0 differ -> 2 of 4; persona vs base: x differs on (0,0) and (1,5) -> 2 of 4
    assert got == {"instructions": [0, 5], "answer_changes_between_instructions": 0.5,
                   "answer_changes_persona_vs_base": 0.5}
    assert instruction_noise([r for r in rows if r["instruction"] == 0]) is None


def test_position_bias_by_hand():
    from wdprobe.studies.pct.stages import position_bias

    rows = [{"order": "2301", "choice": 2}, {"order": "0123", "choice": 0}, {"order": "3210", "choice": 1},
            {"order": "1032", "choice": 2}]
    got = position_bias(rows)
    # chosen at listed positions 0, 0, 2, 3; sides: agree/first agree, dis/dis, dis/first agree, agree/first dis
    assert got == {"chosen_listed_position_share": [0.5, 0.0, 0.25, 0.25], "same_side_as_first_listed": 0.5}


def test_sharded_closed_and_open_merge_to_the_unsharded_tables(tmp_path, pct_dir, pct_lm):
    from wdprobe.errors import MergeError
    from wdprobe.pipeline.merge import merge_run
    from wdprobe.pipeline.pct import run_pct

    quiet = dict(progress=False, log=lambda m: None)
    whole = _cfg(tmp_path, pct_dir, pct_lm.path, personas="base,age=18", out=str(tmp_path / "whole"))
    run_pct(whole, lm=pct_lm, stages=["closed", "open"], **quiet)
    cfg = _cfg(tmp_path, pct_dir, pct_lm.path, personas="base,age=18", out=str(tmp_path / "sharded"))
    for stage in ("closed", "open"):
        for i in range(3):
            run_pct(cfg, lm=pct_lm, stages=[stage], shard=f"{i}/3", **quiet)
    assert not (tmp_path / "sharded" / "closed.csv").exists()
    assert set(merge_run(tmp_path / "sharded")) == {"closed", "open"}
    for name in ("closed.csv", "open.csv"):
        assert (tmp_path / "sharded" / name).read_text() == (tmp_path / "whole" / name).read_text()
    # the merged stages count as done: the next stages run on them without redoing anything
    run = run_pct(cfg, lm=None, stages=["closed", "open"], **quiet)
    assert "merged from 3 shards" in json.dumps(run.read_manifest()["stages"]["closed"])
    # judge and capture shard the same way
    run_pct(whole, lm=pct_lm, judge=KeywordJudge(), stages=["judge", "capture"], **quiet)
    for stage in ("judge", "capture"):
        for i in range(2):
            run_pct(cfg, lm=pct_lm, judge=KeywordJudge(), stages=[stage], shard=f"{i}/2", **quiet)
    assert set(merge_run(tmp_path / "sharded")) == {"closed", "open", "judge", "capture"}
    assert (tmp_path / "sharded" / "stances.csv").read_text() == (tmp_path / "whole" / "stances.csv").read_text()
    from wdprobe.runs.rundir import RunDir
    from wdprobe.studies.pct.stages import load_pct_activations

    (a, ia), (b, ib) = load_pct_activations(RunDir(tmp_path / "whole")), load_pct_activations(RunDir(tmp_path / "sharded"))
    assert ia == ib and all(np.array_equal(a[f], b[f]) for f in ("closed", "open"))
    with pytest.raises(ValueError, match="--shard runs one of the stages closed, open, judge, capture"):
        run_pct(cfg, lm=pct_lm, stages=["probes"], shard="0/2", **quiet)
    with pytest.raises(MergeError, match="nothing to merge"):
        merge_run(tmp_path / "whole")



def test_cyclic_orders_recover_a_planted_content_preference_under_a_first_listed_habit(tmp_path, pct_dir, pct_lm,
                                                                                     monkeypatch):
    """A model that mostly picks whatever answer is listed first, on top of a planted preference for "Agree":
    the shown reading follows the listing, the cyclic (content) reading finds "Agree" on every prompt."""
    import itertools

    from wdprobe.data.pct import ANSWERS
    from wdprobe.pipeline.pct import run_pct
    from wdprobe.runs.rundir import read_csv
    from wdprobe.studies.pct import stages as pct_stages

    listings = {", ".join(ANSWERS[c] for c in order): order for order in itertools.permutations(range(4))}
    content = np.log([0.1, 0.2, 0.5, 0.2])  # canonical: strongly disagree, disagree, agree, strongly agree

    def planted(lm, prompts, options, **kw):
        out = []
        for text in prompts:
            order = next(o for listing, o in listings.items() if listing in text)
            lp = content.copy()
            lp[order[0]] += 3.0  # the first-listed answer wins by position
            out.append(lp)
        if kw.get("on_batch"):
            kw["on_batch"](len(prompts))
        return np.array(out)

    monkeypatch.setattr(pct_stages, "option_logprobs", planted)
    quiet = dict(progress=False, log=lambda m: None)
    cyclic = run_pct(_cfg(tmp_path / "c", pct_dir, None), lm=pct_lm, stages=["closed"], **quiet)
    rows = read_csv(cyclic.path / "closed.csv")
    assert all(int(r["choice"]) == 2 for r in rows)  # content: "Agree" everywhere
    assert all(int(r["shown_choice"]) == int(r["order"][0]) for r in rows)  # shown: the first listed
    assert all(int(r["n_orders"]) >= 4 for r in rows)
    shown = run_pct(_cfg(tmp_path / "s", pct_dir, None, orders="shown"), lm=pct_lm, stages=["closed"], **quiet)
    srows = read_csv(shown.path / "closed.csv")
    assert all(int(r["choice"]) == int(r["order"][0]) and int(r["n_orders"]) == 1 for r in srows)


@pytest.mark.parametrize("content_planted", [True, False])
def test_content_probes_find_the_content_layer_and_not_the_listing(tmp_path, pct_dir, pct_lm, monkeypatch,
                                                                   content_planted):
    """Planted: the closed answer's content side depends on the proposition, the model says the first-listed answer,
    and the residual carries the first-listed answer's side from layer 0 and (when planted) the content side from
    layer 2 only. Content probes (every order of a prompt under one label) must find content at layer 2, never
    from the listing alone; the position control must find the listing at layer 0."""
    import itertools

    from tiny import PCT_PROPOSITIONS

    from wdprobe.data.pct import ANSWERS
    from wdprobe.pipeline.pct import run_pct
    from wdprobe.studies.pct import stages as pct_stages

    listings = {", ".join(ANSWERS[c] for c in order): order for order in itertools.permutations(range(4))}

    def parts(text):
        order = next(o for listing, o in listings.items() if listing in text)
        prop = next(k for k, p in enumerate(PCT_PROPOSITIONS) if p in text)
        return order, prop % 2 == 0  # even propositions: the model's content leans "Agree"

    def planted_scores(lm, prompts, options, **kw):
        out = []
        for text in prompts:
            order, agree = parts(text)
            lp = np.log([0.1, 0.5, 0.2, 0.2] if not agree else [0.1, 0.2, 0.5, 0.2])
            lp[order[0]] += 3.0
            out.append(lp)
        if kw.get("on_batch"):
            kw["on_batch"](len(prompts))
        return np.array(out)

    def planted_residuals(lm, prompts, batch_size=16, on_batch=None):
        rng = np.random.default_rng(len(prompts))
        X = rng.normal(scale=0.3, size=(len(prompts), 3, 8))
        for i, text in enumerate(prompts):
            if "Agree" not in text:  # an open prompt: no listing
                continue
            order, agree = parts(text)
            X[i, :, 1] += 2.0 * (order[0] >= 2)
            if content_planted:
                X[i, 2, 0] += 2.0 * agree
        if on_batch:
            on_batch(len(prompts))
        return X.astype(np.float32)

    monkeypatch.setattr(pct_stages, "option_logprobs", planted_scores)
    monkeypatch.setattr(pct_stages, "last_token_residuals", planted_residuals)
    run = run_pct(_cfg(tmp_path, pct_dir, pct_lm.path, personas="base,age=18"), lm=pct_lm,
                  stages=["closed", "capture", "content_probes"], progress=False, log=lambda m: None)
    summary = json.loads((run.path / "probes_content.json").read_text())
    assert summary["n_rows"] > summary["n_prompts"] >= 16
    assert summary["first_listed_agrees"]["significant"] and summary["first_listed_agrees"]["first_significant_layer"] == 0
    assert summary["said"]["significant"]  # what is said follows the listing here
    if content_planted:
        assert summary["content"]["significant"] and summary["content"]["first_significant_layer"] == 2
    else:
        assert not summary["content"]["significant"]
    from wdprobe.reports.html import verdict_line
    from wdprobe.studies.pct.report import pct_findings, pct_numbers

    found = {f.title: f for f in pct_findings(pct_numbers(run.path))}
    text = found["Inside, order-free."].text
    claimed = found["Inside, order-free."].claims  # each side worded decodable is a claim on its ledger entry
    assert ("probes_content.json#content" in claimed) == content_planted and "probes_content.json#said" in claimed
    content = verdict_line(text)  # the first sentence, the verdict, is the content side's
    assert content.startswith("The order-averaged answer's side (content)")
    assert ("is decodable" in content) == content_planted
    if not content_planted:
        assert "inconclusive at n = 8 propositions" in content
