"""The score stage in every order and format, on a model with a planted letter prior and a planted content
preference: the content and cloze readings recover the content and ignore the prior; the shown reading does not."""
import csv
import re

import numpy as np
import pytest

from wdprobe.data.wdct import load_wdct
from wdprobe.errors import InputError
from wdprobe.stages import score as score_stage
from wdprobe.stages.capture import capture_wdct
from wdprobe.stages.score import load_score, score_wdct

OPTION = re.compile(r"^([A-D])\. (.*)$", re.MULTILINE)


def planted(items, prior):
    """Stand-ins for the two model reads: letter j gets prior[j] * content(option under j); a cloze option gets
    the log of its content weight as its total log-likelihood. Content: option 0 of every item is preferred in
    words, the last option in deeds."""
    options = {}
    for it in items:
        for form in ("word", "deed"):
            k = it.n_options
            weights = np.full(k, 0.4 / (k - 1))
            weights[0 if form == "word" else k - 1] = 0.6
            for text, w in zip(it.options(form), weights):
                options[text] = w

    def next_token_logprobs(lm, prompts, token_ids, **kw):
        out = np.full((len(prompts), len(token_ids)), -30.0)
        for i, p in enumerate(prompts):
            shown = OPTION.findall(p)
            for j, (_, text) in enumerate(shown):
                out[i, j] = np.log(prior[len(shown)][j] * options[text])
        if kw.get("on_batch"):
            kw["on_batch"](len(prompts))
        return out

    def continuation_logprobs(lm, prompts, continuations, **kw):
        if kw.get("on_batch"):
            kw["on_batch"](len(prompts))
        return np.log([options[c] for c in continuations]), np.ones(len(continuations), dtype=np.int64)

    return next_token_logprobs, continuation_logprobs


PRIORS = {"flat": {k: [1 / k] * k for k in (2, 3, 4)},
          "first": {2: [0.9, 0.1], 3: [0.8, 0.15, 0.05], 4: [0.7, 0.1, 0.1, 0.1]}}


@pytest.fixture()
def planted_run(monkeypatch, tmp_path, wdct_csv, tiny_lm):
    items = load_wdct(wdct_csv)

    def run(prior: str, **kw):
        ntl, cl = planted(items, PRIORS[prior])
        monkeypatch.setattr(score_stage, "next_token_logprobs", ntl)
        monkeypatch.setattr(score_stage, "continuation_logprobs", cl)
        return score_wdct(tmp_path / f"{prior}-{kw.get('orders')}-{kw.get('format')}", data=wdct_csv,
                          lm=tiny_lm, progress=False, **kw)
    return run


def test_content_and_cloze_recover_the_planted_content_whatever_the_letter_prior(planted_run):
    flat, first = planted_run("flat"), planted_run("first")
    for res in (flat, first):
        for r in res.rows:
            k = r["n_options"]
            assert (r["word_content_choice"], r["deed_content_choice"]) == (0, k - 1)
            assert (r["word_cloze_choice"], r["deed_cloze_choice"]) == (0, k - 1)
            assert r["content_consistent"] == 0 and r["cloze_consistent"] == 0
    for a, b in zip(flat.rows, first.rows):
        for col in [c for c in a if c.startswith("pc_")]:
            assert a[col] == pytest.approx(b[col]) if a[col] != "" else b[col] == ""
    # the shown reading is fooled: with a strong first-letter prior both forms say "A", so its CS is the
    # share of items whose two shuffles put the same option first
    assert all(r["word_letter"] == "A" and r["deed_letter"] == "A" for r in first.rows)
    assert first.metrics["readings"]["content"]["cs"]["micro"]["value"] == 0.0
    assert first.metrics["readings"]["order_mean"]["cs"]["micro"]["value"] > 0.0
    assert flat.metrics["readings"]["order_mean"]["cs"]["micro"]["value"] == 0.0


def test_one_prompt_row_per_item_form_and_order(planted_run):
    res = planted_run("first", orders="all")
    k = {r["id"]: r["n_options"] for r in res.rows}
    fact = {2: 2, 3: 6, 4: 24}
    letter = [r for r in res.prompt_rows if r["format"] == "letter"]
    assert len(letter) == sum(2 * fact[n] for n in k.values())  # 'all' contains the shown order
    assert len([r for r in res.prompt_rows if r["format"] == "cloze"]) == 2 * len(k)
    for (i, f), n in {(r["id"], r["form"]): 0 for r in letter}.items():
        mine = [r for r in letter if (r["id"], r["form"]) == (i, f)]
        assert sum(int(r["shown"]) for r in mine) == 1 and len({r["order"] for r in mine}) == fact[k[i]]
    with open(res.run_dir / "prompts.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(res.prompt_rows)
    assert load_score(res.run_dir).prompt_rows == res.prompt_rows


def test_shown_letter_run_measures_only_the_paper_reading(planted_run):
    res = planted_run("first", orders="shown", format="letter")
    assert set(res.metrics["readings"]) == {"shown"}
    assert len(res.prompt_rows) == 2 * len(res.rows)
    assert res.metrics["readings"]["shown"]["cs"]["micro"]["value"] == res.metrics["cs_micro"]


def test_a_cloze_only_run_has_no_letters_and_letter_stages_refuse_it(planted_run, tiny_lm):
    from wdprobe.errors import CaptureSpecError
    from wdprobe.stages.capture import load_activations
    from wdprobe.stages.patching import run_cross_patch

    res = planted_run("first", format="cloze")
    assert all(r["word_letter"] == "" and r["word_choice"] == r["word_cloze_choice"] for r in res.rows)
    assert set(res.metrics["readings"]) == {"shown", "cloze", "cloze_sum"}
    capture_wdct(res.run_dir, lm=tiny_lm, positions=("last",), progress=False)  # the cloze prompts alone
    assert len(load_activations(res.run_dir, format="cloze").meta) == 2 * len(res.rows)
    with pytest.raises(CaptureSpecError, match="captured no letter prompts"):
        load_activations(res.run_dir, orders="all")
    with pytest.raises(InputError, match="cloze format only"):  # interventions read answers by letter
        run_cross_patch(res.run_dir, lm=tiny_lm, progress=False)


def test_the_cot_setting_refuses_letter_free_measurement(tmp_path, wdct_csv, tiny_lm):
    with pytest.raises(InputError, match="cot setting"):
        score_wdct(tmp_path / "r", data=wdct_csv, lm=tiny_lm, setting="cot", orders="cyclic", progress=False)
    with pytest.raises(InputError, match="orders must be one of"):
        score_wdct(tmp_path / "r", data=wdct_csv, lm=tiny_lm, orders="some", progress=False)


def test_finished_runs_read_back_as_frames_in_one_call(planted_run, tmp_path):
    from wdprobe import load_items, load_prompts
    from wdprobe.errors import StageNotFinishedError

    res = planted_run("first")
    items, prompts = load_items(res.run_dir), load_prompts(res.run_dir)
    assert list(items["id"]) == [r["id"] for r in res.rows] and "content_consistent" in items
    assert len(prompts) == len(res.prompt_rows) and set(prompts["format"]) == {"letter", "cloze"}
    assert (prompts.groupby(["id", "form", "format"]).size() >= 1).all()
    (res.run_dir / "prompts.csv").unlink()
    with pytest.raises(StageNotFinishedError, match="no prompts.csv"):
        load_prompts(res.run_dir)
