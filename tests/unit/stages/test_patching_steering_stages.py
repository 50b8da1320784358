"""Lens, stance directions, patching/steering summaries (hand-computed) and the run-directory stages."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import write_two_option_copies

from wdprobe.cli import main
from wdprobe.errors import InputError, RunMismatchError
from wdprobe.methods.lens import LensTrajectory, canonical_logodds
from wdprobe.methods.patching import letter_split, letter_split_tests, summarise_cross_form, summarise_letter_split
from wdprobe.methods.probes import crossfit_directions
from wdprobe.methods.steering import best_setting, summarise_steering
from wdprobe.stages.score import load_score, score_wdct


def test_canonical_logodds_follows_the_shuffle():
    # letters A, B with logits 2 and 0: option 1 is behind A in order "10", behind B in order "01"
    logits = np.array([[[2.0, 0.0]], [[2.0, 0.0]]])
    np.testing.assert_allclose(canonical_logodds(logits, ["10", "01"]), [[2.0], [-2.0]])


def test_divergence_layers_and_lens_cs_by_hand():
    items = pd.DataFrame({"id": ["a", "b", "c"], "domain": "X", "y_word": [1, 0, 1], "y_deed": [0, 1, 1],
                          "consistent": [0, 0, 1]})
    word = np.array([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    # item a: deed agrees through layer 1, disagrees from layer 2 on; item b: disagrees from the start
    deed = np.array([[1.0, 1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0], [-1.0, 1.0, 1.0, 1.0]])
    t = LensTrajectory(word, deed, items, (0, 1, 2, 3))
    d = t.divergence_layers()
    assert d[0] == 2 and d[1] == 0 and np.isnan(d[2])
    np.testing.assert_allclose(t.agreement(), [1 / 3, 2 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(t.toward_word("deed")[1], [-1, -1, -1, -1])
    inc = (items.consistent == 0).to_numpy()
    # gap word - deed toward the word answer on inconsistent items: [1, 1, 2, 2] -> half of final reached at 0
    assert t.curve_divergence_layer(inc, fraction=0.75) == 2
    s = t.summary()
    assert s["inconsistent"]["item_divergence_layer_hist"] == {0: 1, 1: 0, 2: 1, 3: 0}


def test_crossfit_directions_recover_a_planted_direction_without_leakage():
    rng = np.random.default_rng(0)
    n, d = 200, 16
    y = rng.integers(0, 2, n)
    planted = np.zeros(d)
    planted[5] = 3.0
    X = rng.standard_normal((n, 2, d))
    X[:, 1] += y[:, None] * planted
    dirs, fold_of, gaps = crossfit_directions(X, y, folds=4)
    assert dirs.shape == (4, 2, d) and set(fold_of) == {0, 1, 2, 3}
    assert np.all(np.abs(dirs[:, 1, 5]) > 0.9)  # layer 1 carries the planted axis
    assert np.all(np.abs(dirs[:, 0, 5]) < 0.6)  # layer 0 is noise
    assert np.allclose(np.linalg.norm(dirs, axis=-1), 1.0)
    assert np.all(np.abs(gaps[:, 1] - 3.0) < 0.7)
    # the direction item i is used with must not have seen item i: refit without fold 0 and compare
    tr = fold_of != 0
    diff = X[tr][y[tr] == 1].mean(0) - X[tr][y[tr] == 0].mean(0)
    np.testing.assert_allclose(dirs[0], diff / np.linalg.norm(diff, axis=-1, keepdims=True))


def test_balanced_directions_drop_a_correlated_nuisance():
    rng = np.random.default_rng(1)
    n, d = 400, 12
    y = rng.integers(0, 2, n)
    letter = np.where(rng.random(n) < 0.8, y, 1 - y)  # the letter agrees with the stance 80% of the time
    X = rng.standard_normal((n, 1, d)) * 0.5
    X[:, 0, 2] += 2.0 * y  # stance axis
    X[:, 0, 7] += 4.0 * letter  # letter axis, larger
    plain, _, _ = crossfit_directions(X, y, folds=4)
    balanced, _, _ = crossfit_directions(X, y, folds=4, balance=letter)
    assert np.all(np.abs(plain[:, 0, 7]) > 0.6)  # the plain difference of means is mostly letter
    assert np.all(np.abs(balanced[:, 0, 2]) > 0.9) and np.all(np.abs(balanced[:, 0, 7]) < 0.3)


def test_cross_form_summary_by_hand():
    items = pd.DataFrame({"consistent": [0, 0, 1], "same_letter": [1, 0, 1], "word_self": [2.0, 2.0, 2.0],
                          "deed_clean": [-1.0, -2.0, 1.0]})
    frame = pd.DataFrame({"item": [0, 1, 2, 0, 1, 2], "condition": ["clean"] * 3 + ["full"] * 3,
                          "layer": [-1, -1, -1, 5, 5, 5], "toward_word": [-1.0, -2.0, 1.0, 0.5, -1.0, -0.5],
                          "letter_mass": [0.3] * 6})
    s = summarise_cross_form(frame, items).iloc[0]
    assert s.flip_rate == 0.5  # item 0 flipped, item 1 did not
    # normalised: item 0 (0.5 + 1) / (2 + 1) = 0.5; item 1 (-1 + 2) / (2 + 2) = 0.25
    assert s.normalised_effect == pytest.approx(0.375)
    assert s.break_rate == 1.0  # the consistent item went negative
    assert s.flip_rate_same_letter == 1.0 and s.flip_rate_other_letter == 0.0
    assert s.cs_after == pytest.approx(1 / 3)  # only item 0 now gives the word answer in the deed run


def test_letter_split_by_hand():
    # item 0: the shown deed order is the same-letter one; item 1: the swapped order is
    items = pd.DataFrame({"same_letter": [1, 0]})
    rows = []
    for item, order, clean, patched in ((0, "shown", -1.0, 3.0), (0, "swapped", -1.0, -5.0),  # letter: +4 / -4
                                        (1, "shown", -2.0, 0.0), (1, "swapped", 0.0, 2.0)):  # stance: +2 in both
        rows += [{"item": item, "deed_order": order, "condition": "clean", "layer": -1, "toward_word": clean},
                 {"item": item, "deed_order": order, "condition": "full", "layer": 3, "toward_word": patched}]
    split = letter_split(pd.DataFrame(rows), items).set_index("item")
    assert split.loc[0, "letter_shift"] == 4.0 and split.loc[0, "stance_shift"] == 0.0
    assert split.loc[1, "letter_shift"] == 0.0 and split.loc[1, "stance_shift"] == 2.0
    # item 1's same-letter order is the swapped one: clean same 0.0, opposite -2.0, content -1.0 -> 1.0 after
    assert split.loc[1, "clean_same"] == 0.0 and split.loc[1, "clean_content"] == -1.0 and split.loc[1, "content"] == 1.0
    s = summarise_letter_split(split.reset_index()).iloc[0]
    assert s.stance_shift == 1.0 and s.letter_shift == 2.0 and s.content_cs_after == 0.5
    assert s.flip_rate_content == 0.5  # both content-inconsistent; item 1 flipped, item 0 (content -1 after) did not
    assert s.flip_rate_same == 1.0 and s.n_inconsistent_same == 1  # only item 0 was inconsistent in its same order
    assert s.flip_rate_opposite == 0.0 and s.n_inconsistent_opposite == 2  # -1 -> -5 and -2 -> 0 (not > 0)
    with pytest.raises(Exception, match="both deed orders"):
        letter_split(pd.DataFrame(rows[:6]), items)


def test_letter_split_tests_tell_a_letter_patch_from_a_stance_patch():
    rng = np.random.default_rng(0)
    n, layers = 60, (0, 1, 2)
    items = pd.DataFrame({"same_letter": rng.integers(0, 2, n)})
    rows = []
    for i in range(n):
        for order in ("shown", "swapped"):
            same = (order == "shown") == bool(items.same_letter[i])
            clean = rng.normal()
            rows.append({"item": i, "deed_order": order, "condition": "clean", "layer": -1, "toward_word": clean})
            for layer in layers:  # "full" carries the letter at layer 2 only; "stance" carries content at layer 1 only
                letter = 3.0 * (layer == 2) * (1 if same else -1)
                rows.append({"item": i, "deed_order": order, "condition": "full", "layer": layer,
                             "toward_word": clean + letter + rng.normal(0, 0.3)})
                rows.append({"item": i, "deed_order": order, "condition": "stance", "layer": layer,
                             "toward_word": clean + 2.0 * (layer == 1) + rng.normal(0, 0.3)})
    tests = letter_split_tests(letter_split(pd.DataFrame(rows), items), n_perm=500)
    assert tests["letter_transport_full"]["p_value"] < 0.01 and tests["letter_transport_full"]["setting"] == 2
    assert tests["stance_transport_full"]["p_value"] > 0.05
    assert tests["stance_transport_stance"]["p_value"] < 0.01 and tests["stance_transport_stance"]["setting"] == 1
    assert tests["letter_transport_stance"]["p_value"] > 0.05


def test_order_averaged_residuals_drop_a_letter_confounded_with_content():
    from wdprobe.stages.pairs import order_averaged

    rng = np.random.default_rng(3)
    n, d = 300, 10
    content = rng.integers(0, 2, n)
    rows, values, under_b = [], [], []
    for i in range(n):
        for order in ("01", "10"):
            b = order.index(str(content[i])) == 1  # the content choice sits under letter B in this order
            x = rng.standard_normal(d) * 0.3
            x[1] += 1.0 * content[i]  # content axis
            x[4] += 5.0 * b  # letter axis, larger
            rows.append({"id": f"i{i}", "form": "word", "n_options": 2, "order": order, "content_choice": content[i]})
            values.append(x[None])
            under_b.append(b)
    meta, values, under_b = pd.DataFrame(rows), np.stack(values), np.array(under_b)
    ids, X, label = order_averaged(values, meta, "word")
    assert len(ids) == n and X.shape == (n, 1, d) and (label == content).all()
    averaged, _, _ = crossfit_directions(X, label, folds=3)
    assert np.all(np.abs(averaged[:, 0, 1]) > 0.95) and np.all(np.abs(averaged[:, 0, 4]) < 0.1)
    # one order per item, chosen so that the letter goes with the content 90% of the time (as a letter habit
    # makes it in a model's shown-order answers): the plain difference of means is then mostly the letter
    agree = rng.random(n) < 0.9
    pick = np.array([2 * i + int(under_b[2 * i] != (agree[i] == bool(content[i]))) for i in range(n)])
    assert np.mean(under_b[pick] == content.astype(bool)) > 0.8
    plain, _, _ = crossfit_directions(values[pick], content, folds=3)
    assert np.all(np.abs(plain[:, 0, 4]) > 0.9)
    with pytest.raises(Exception, match="every option order"):
        order_averaged(values[::2], meta.iloc[::2].reset_index(drop=True), "word")


def test_steering_summary_and_best_setting_by_hand():
    items = pd.DataFrame({"consistent": [0, 1]})
    frame = pd.DataFrame({"item": [0, 1] * 5, "condition": ["clean"] * 2 + ["stance"] * 4 + ["random"] * 4,
                          "layer": [-1, -1] + [3] * 8, "alpha": [0, 0, 1, 1, 8, 8, 1, 1, 8, 8],
                          "toward_word": [-1, 1, 0.5, 1, 2, 2, -1, 1, 0.1, -0.2],
                          "letter_mass": [0.4, 0.4, 0.4, 0.4, 0.1, 0.1, 0.4, 0.4, 0.4, 0.4]})
    t = summarise_steering(frame, items, population_consistency=0.6)
    r = t[(t.condition == "stance") & (t.alpha == 1)].iloc[0]
    assert r.cs == 1.0 and r.flip_rate == 1.0 and r.break_rate == 0.0 and r.mass_ratio == pytest.approx(1.0)
    assert r.cs_population == pytest.approx(0.6 * 1 + 0.4 * 1)
    big = t[(t.condition == "stance") & (t.alpha == 8)].iloc[0]
    assert big.mass_ratio == pytest.approx(0.25)
    best = best_setting(t, min_mass_ratio=0.5)
    assert best["alpha"] == 1 and best["random"]["cs"] == 0.5  # alpha 8 broke the format; control beside it
    assert t.attrs["clean_cs"] == 0.5


def _scored_and_captured(tiny_lm, tmp):
    data = write_two_option_copies(tmp / "w.csv")
    run = tmp / "run"
    score_wdct(run, data=data, lm=tiny_lm, progress=False)
    assert main(["capture", "--run", str(run), "--layers", "all", "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def tiny_run(tiny_lm, tmp_path_factory):
    return _scored_and_captured(tiny_lm, tmp_path_factory.mktemp("localise"))


def test_lens_stage_final_layer_equals_the_model_answer(tiny_run):
    assert main(["lens", "--run", str(tiny_run), "--quiet"]) == 0
    traj = pd.read_csv(tiny_run / "lens" / "trajectory.csv")
    rows = {r["id"]: r for r in load_score(tiny_run).rows}
    last = traj[traj.layer == traj.layer.max()]
    for form in ("word", "deed"):
        for r in last[last.form == form].itertuples():
            item = rows[r.id]
            expected = np.log(item[f"p_{form}_1"]) - np.log(item[f"p_{form}_0"])
            assert r.logodds == pytest.approx(expected, abs=1e-3)
    summary = json.loads((tiny_run / "lens" / "summary.json").read_text())
    assert summary["consistent"]["lens_cs"][-1] == 1.0 and summary["inconsistent"]["lens_cs"][-1] == 0.0
    assert "Logit lens" in (tiny_run / "lens" / "lens.html").read_text()


def test_decision_point_by_hand(tiny_lm):
    from wdprobe.core.option_scoring import decision_point

    tok = tiny_lm.tokenizer
    d = decision_point(tok, "Which action will you take? Answer:", ["You decide to fund parks.", "You decide to fund roads."])
    assert d.shared == 4 and tok.decode(list(d.tokens)).split() == ["parks", "roads"]
    assert tok.decode(d.sequence[-4:]).split() == ["You", "decide", "to", "fund"]
    assert decision_point(tok, "Q? Answer:", ["final", "final"]) is None  # options that never part


def test_cloze_lens_last_layer_is_the_models_log_odds_at_the_decision_point(tiny_run, tiny_lm):
    from wdprobe.core.option_scoring import decision_point
    from wdprobe.stages.score import scored_cloze_prompts

    assert main(["lens", "--run", str(tiny_run), "--quiet"]) == 0
    traj = pd.read_csv(tiny_run / "lens" / "cloze-trajectory.csv")
    summary = json.loads((tiny_run / "lens" / "cloze-summary.json").read_text())
    rows = {r["id"]: r for r in load_score(tiny_run).rows}
    last = traj[traj.layer == traj.layer.max()]
    assert last.id.nunique() + len(summary["unreadable_items"]) == sum(r["n_options"] == 2 for r in rows.values())
    assert last.id.nunique() > 0
    texts = {(p.view.item.id, p.form): p for p in scored_cloze_prompts(tiny_run, tiny_lm.tokenizer)}
    for r in last.itertuples():
        p = texts[(r.id, r.form)]
        d = decision_point(tiny_lm.tokenizer, p.text, p.view.item.options(r.form))
        logits = tiny_lm.bridge(torch.tensor([d.sequence]))[0, -1]
        assert r.logodds == pytest.approx(float(logits[d.tokens[1]] - logits[d.tokens[0]]), abs=1e-3)  # option 1 over 0
    assert (tiny_run / "lens" / "lens-cloze.html").is_file()


def test_cloze_tuned_lens_is_written_beside_the_logit_lens_and_reads_the_last_layer_as_it_is(tiny_run):
    assert main(["lens", "--run", str(tiny_run), "--quiet"]) == 0
    logit = pd.read_csv(tiny_run / "lens" / "cloze-trajectory.csv")
    tuned = pd.read_csv(tiny_run / "lens" / "cloze-tuned-trajectory.csv")
    assert len(tuned) == len(logit) and tuned.id.nunique() >= 10
    key = ["id", "form", "layer"]
    both = logit.merge(tuned, on=key, suffixes=("_logit", "_tuned"))
    last = both[both.layer == both.layer.max()]
    # the last block's translator maps its residual to itself: the two lenses agree there exactly
    assert np.allclose(last.logodds_logit, last.logodds_tuned, atol=1e-4)
    assert not np.allclose(both.logodds_logit, both.logodds_tuned, atol=1e-3)  # and are fitted elsewhere
    summary = json.loads((tiny_run / "lens" / "cloze-tuned-summary.json").read_text())
    inc = summary["inconsistent"]
    if inc["n"]:
        assert inc["item_divergence_n_parting"] + inc["item_divergence_never"] == inc["n"]
    assert (tiny_run / "lens" / "lens-cloze-tuned.html").is_file()


def test_patch_and_steer_stages_write_results_and_resume(tiny_run, capsys):
    # the letter read-out (the cloze form has its own tests; both share this run, each with its own settings)
    assert main(["patch", "--run", str(tiny_run), "--instrument", "cross", "--format", "letter", "--items", "12",
                 "--quiet"]) == 0
    out = tiny_run / "patching"
    frame = pd.read_csv(out / "cross_form.csv")
    assert set(frame.condition) == {"clean", "full", "stance", "letter", "random"} and frame.id.nunique() == 12
    assert len(frame) == 12 * (1 + 4 * 2)
    head = json.loads((out / "cross_form_headline.json").read_text())
    assert head["n_items"] == 12 and 0 <= head["full"]["flip_rate"] <= 1
    # the full patch at the last layer hands the deed run the word run's output: every item gets the word
    # run's letter, so inconsistent items flip exactly when that letter labels the word answer in the deed prompt
    last = frame[(frame.condition == "full") & (frame.layer == 1)].set_index("id")
    for r in last.itertuples():
        assert (r.toward_word > 0) == bool(r.same_letter)
    assert "Cross-form patching" in (out / "cross_form.html").read_text()
    # the run was scored letter-free, so each word run was also patched into the other deed order. At the last
    # layer the full patch hands the deed run the word run's output whatever the order: the word's letter wins in
    # both, so the content reading is exactly even and the whole move is letter
    split = pd.read_csv(out / "cross_form_letter_split.csv")
    assert split.id.nunique() == 12 and set(split.condition) == {"full", "stance", "letter", "random"}
    last = split[(split.condition == "full") & (split.layer == 1)].set_index("id")
    word_self = {r["id"]: np.log(r[f"p_word_{r['word_choice']}"] / r[f"p_word_{1 - r['word_choice']}"])
                 for r in load_score(tiny_run).rows}
    for r in last.itertuples():
        assert r.same == pytest.approx(word_self[r.Index], abs=1e-3) and r.content == pytest.approx(0, abs=1e-3)
        assert r.letter_shift == pytest.approx(word_self[r.Index] - (r.clean_same - r.clean_opposite) / 2, abs=1e-3)
    assert set(head["letter_split"]["tests"]) >= {"stance_transport_full", "letter_transport_full"}
    stage = json.loads((tiny_run / "manifest.json").read_text())["stages"]["patch_cross"]
    assert stage["complete"] and stage["seconds_total"] > 0 and stage["config"]["n_items"] == 12
    # a rerun with the same settings resumes (nothing to do); different settings are refused
    assert main(["patch", "--run", str(tiny_run), "--kind", "cross", "--format", "letter", "--items", "12",
                 "--quiet"]) == 0  # --kind: the older name of --instrument
    with pytest.raises(RunMismatchError):
        from wdprobe.stages.patching import run_cross_patch

        run_cross_patch(tiny_run, n_items=10, progress=False)
    assert main(["steer", "--run", str(tiny_run), "--format", "letter", "--items", "12", "--alphas", "0,1,4",
                 "--quiet"]) == 0
    steer = pd.read_csv(tiny_run / "steering" / "steering.csv")
    clean = steer[steer.condition == "clean"].set_index("id")["toward_word"]
    zero = steer[(steer.condition == "stance") & (steer.alpha == 0)]
    for r in zero.itertuples():  # alpha = 0 is the clean run
        assert r.toward_word == pytest.approx(clean[r.id], abs=1e-4)
    assert (tiny_run / "steering" / "steering.html").is_file()
    head = json.loads((tiny_run / "steering" / "steering_headline.json").read_text())
    # the best setting is rerun on the 12 items the grid did not use, beside a random direction
    assert head["validation"]["n_items"] == 12 and set(head["validation"]) >= {"stance", "random", "cs_clean"}
    assert head["validation_skipped"] is None
    # beside it the format-keeping control and the prompting baseline, each tested against
    val = head["validation"]
    assert val["controls"] == ["random", "pair-random"] and "prompted" in val and "pair-random" in val
    assert set(val["tests"]) == {"beats_clean", "beats_random", "beats_pair_random", "prompted_beats_clean",
                                 "beats_prompted"}
    assert 0 < val["prompted"]["mass_ratio_median"] and 0 <= val["prompted"]["cs"] <= 1
    # the run is letter-free, so steering works in content space: both deed orders per item, and the clean
    # reading (mean log-odds over the two orders toward the word content choice) is the score stage's content CS
    assert head["space"] == "content" and (steer["n_orders"] == 2).all()
    content = {r["id"]: r["content_consistent"] for r in load_score(tiny_run).rows}
    for iid, lo in clean.items():
        assert int(lo > 0) == content[iid]
    assert head["clean_cs_items"] == pytest.approx(np.mean([content[i] for i in clean.index]))


def test_positional_stage_and_errors(tiny_run, capsys):
    assert main(["patch", "--run", str(tiny_run), "--kind", "positional", "--positional-items", "3",
                 "--exact-items", "2", "--min-effect", "0", "--layers", "0-1", "--quiet"]) == 0
    head = json.loads((tiny_run / "patching" / "positional-deed-headline.json").read_text())
    assert head["n_items"] == 3 and head["n_exact"] == 2 and len(head["rank_correlation_per_item"]) == 2
    frame = pd.read_csv(tiny_run / "patching" / "positional-deed.csv")
    assert set(frame.method) == {"exact", "attribution"} and {"final", "option A", "option B"} <= set(frame.segment)
    # at the embeddings (layer 0 resid_pre) only tokens that differ can matter: the option texts
    layer0 = frame[(frame.method == "exact") & (frame.layer == 0)]
    assert (layer0[~layer0.segment.isin(["option A", "option B"])]["normalised"].abs() < 1e-6).all()
    assert (layer0[layer0.segment.isin(["option A", "option B"])]["normalised"].abs() > 1e-6).any()
    # every saved exact result has its checksum; an edited one is refused on the next read, never reported
    saved = sorted((tiny_run / "patching" / "positional-deed-exact").glob("*.json"))
    assert len(saved) == 2 and all(f.with_name(f.name + ".sha256").is_file() for f in saved)
    original = saved[0].read_bytes()
    saved[0].write_bytes(original.replace(b"[", b"[0.5, ", 1))
    capsys.readouterr()
    try:
        assert main(["patch", "--run", str(tiny_run), "--kind", "positional", "--positional-items", "3",
                     "--exact-items", "2", "--min-effect", "0", "--layers", "0-1", "--quiet"]) == 2
        assert "checksum mismatch" in capsys.readouterr().err
    finally:
        saved[0].write_bytes(original)  # the shared run as it was, for the tests after this one
    # bad input through the CLI: exit 2 with a message naming the problem
    assert main(["steer", "--run", str(tiny_run), "--layers", "0,5", "--quiet"]) == 2
    assert "layer(s) [5] out of range" in capsys.readouterr().err
    assert main(["patch", "--run", str(tiny_run), "--kind", "positional", "--min-effect", "1000", "--quiet"]) == 2


def test_localisation_report_page_redraws_every_stage(tiny_lm, tmp_path):
    # a run of its own with every stage the page draws, so the test holds in any order
    tiny_run = _scored_and_captured(tiny_lm, tmp_path)
    for argv in (["lens", "--run", str(tiny_run), "--quiet"],
                 ["patch", "--run", str(tiny_run), "--kind", "cross", "--items", "12", "--quiet"],
                 ["patch", "--run", str(tiny_run), "--kind", "positional", "--form", "deed", "--positional-items", "2",
                  "--exact-items", "1", "--screen", "8", "--quiet"],
                 ["steer", "--run", str(tiny_run), "--items", "12", "--alphas", "0,1,4", "--quiet"]):
        assert main(argv) == 0
    out = tmp_path / "report"
    assert main(["report", str(tiny_run), "--out", str(out), "--localisation"]) == 0
    html = (out / "localisation.html").read_text()
    for title in ("Logit lens", "Cross-form patching", "Positional patching", "Steering deeds"):
        assert title in html
    assert html.count("<script") >= 4 and (out / "localisation" / "cross_form_summary.csv").is_file()


def test_cloze_patching_at_the_decision_points(tiny_run, tiny_lm):
    from wdprobe.core.option_scoring import last_residuals
    from wdprobe.methods.lens import lens_logits_per_row
    from wdprobe.stages.patching import run_cross_patch
    from wdprobe.stages.readouts import cloze_items

    head = run_cross_patch(tiny_run, format="cloze", n_items=12, lm=tiny_lm, progress=False,
                           restart=True)  # tiny_run is shared
    frame = pd.read_csv(tiny_run / "patching" / "cloze_cross_form.csv")
    assert head["n_items"] == 12 and set(frame.condition) == {"clean", "full", "stance", "random"}
    assert len(frame) == 12 * (1 + 3 * 2) and set(head["tests"]) >= {"restores_full", "full_beats_random"}
    # at the last layer the full patch hands the deed its word run's residual: the deed's log-odds at its decision
    # step are then the word residual read through the final norm and unembedding at the deed's decision tokens
    items = {it["id"]: it for it in cloze_items(tiny_run, tiny_lm, n_items=12)[0]}
    last = frame[(frame.condition == "full") & (frame.layer == 1)].set_index("id")
    for iid, it in items.items():
        resid = last_residuals(tiny_lm, [it["word_sequence"]], [1])
        y = it["y_word"]
        toks = np.array([[it["deed_tokens"][y], it["deed_tokens"][1 - y]]])
        logits = lens_logits_per_row(tiny_lm, resid, toks)[0, 0]
        assert last.loc[iid, "toward_word"] == pytest.approx(float(logits[0] - logits[1]), abs=1e-3)
    # clean rows are the deed's own decision step: consistency there is what the summary counts
    clean = frame[frame.condition == "clean"]
    assert head["cs_clean_decision_step"] == pytest.approx(float((clean["toward_word"] > 0).mean()))


def test_cloze_patching_of_a_small_sample_leaves_the_stance_condition_out(tiny_run, tiny_lm):
    from wdprobe.stages.patching import run_cross_patch

    head = run_cross_patch(tiny_run, format="cloze", n_items=6, folds=5, lm=tiny_lm, progress=False, restart=True)
    assert head["n_items"] == 6 and "stance" not in head and "full" in head and "stance left out" in head["notes"][0]


def cloze_steering_vectors(items, sources, *, folds, seed=0):
    """The cloze read-out's cross-fitted stance and its steering vectors, as the steering stage makes them."""
    from wdprobe.stages.readouts import DeedRuns, Reading, random_directions, readout
    from wdprobe.stages.steering import steering_vectors

    n = len(items)
    frame = pd.DataFrame({"id": [str(i) for i in range(n)], "y_word": [it["y_word"] for it in items]})
    reading = Reading(frame, DeedRuns([""] * n, np.arange(n), np.array(["shown"] * n), np.zeros(n), np.ones(n)), (),
                      sources, random=random_directions(sources.shape[1], sources.shape[2], seed))
    readout("cloze").fit_stance(reading, folds=folds, stratify=True)
    return steering_vectors(reading)


def test_cloze_steering_vectors_point_toward_each_word_choice():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 10)
    sources = rng.normal(scale=1e-3, size=(20, 2, 6))
    sources[:, 0, 0] += 3.0 * y  # layer 0: the choices 3 apart along e0; layer 1: 1 apart along e1
    sources[:, 1, 1] += 1.0 * y
    items = [{"y_word": int(v)} for v in y]
    stance, controls = cloze_steering_vectors(items, sources, folds=5)
    random, pair = controls["random"], controls["pair-random"]
    sign = np.where(y == 1, 1.0, -1.0)
    np.testing.assert_allclose(np.linalg.norm(pair, axis=-1), np.linalg.norm(stance, axis=-1))
    np.testing.assert_allclose(stance[:, 0, 0], 3.0 * sign, atol=1e-2)  # alpha = 1 moves a residual by the whole gap
    np.testing.assert_allclose(stance[:, 1, 1], 1.0 * sign, atol=1e-2)
    np.testing.assert_allclose(np.linalg.norm(random, axis=-1), np.linalg.norm(stance, axis=-1))
    # the random control carries the same sign per item, so it pushes "toward" the word choice as often as the stance
    assert np.all(np.sign(random[:, 0, 0]) == np.sign(random[0, 0, 0]) * sign * sign[0])


def test_cloze_steering_adds_its_vector_at_the_deed_decision_point(tiny_run, tiny_lm):
    from wdprobe.core.forward import encode_prompts
    from wdprobe.core.option_scoring import last_residuals
    from wdprobe.methods.lens import lens_logits_per_row
    from wdprobe.stages.readouts import cloze_items
    from wdprobe.stages.steering import run_steering

    items = cloze_items(tiny_run, tiny_lm, n_items=None)[0]
    counts = np.bincount([it["y_word"] for it in items], minlength=2)
    with pytest.raises(InputError, match=f"first option in {counts[0]} and the second in {counts[1]}"):
        cloze_steering_vectors(items, np.zeros((len(items), 2, 4)), folds=counts.min() + 1)
    lopsided = run_steering(tiny_run, format="cloze", n_items=None, folds=counts.min() + 1, lm=tiny_lm, progress=False,
                                  restart=True)  # a lopsided sample: the stage says why it steered nothing
    assert lopsided["best"] is None and f"first option in {counts[0]}" in lopsided["skipped"]
    head = run_steering(tiny_run, format="cloze", n_items=None, folds=2, alphas=[1.0, 4.0], lm=tiny_lm, progress=False,
                              restart=True)
    frame = pd.read_csv(tiny_run / "steering" / "cloze_steering.csv")
    assert head["n_items"] == len(items) and len(frame) == len(items) * (1 + 3 * 2 * 2)
    # every item was in the grid: the headline says why the best cell was not validated
    assert head["best"] is not None and head["validation"] is None
    assert head["validation_skipped"].startswith("0 items outside the grid")
    assert set(frame.condition) == {"clean", "stance", "random", "pair-random"}
    # at the last layer the steered deed log-odds are the deed's own decision-point residual plus alpha x the
    # item's vector, read through the final norm and the unembedding at the deed's two decision tokens
    sources = last_residuals(tiny_lm, [it["word_sequence"] for it in items], [0, 1])
    stance, _ = cloze_steering_vectors(items, sources, folds=2)
    for k, it in enumerate(items):
        seq = encode_prompts(tiny_lm.tokenizer, [it["deed_text"]], "cpu")["input_ids"][0].tolist()
        resid = last_residuals(tiny_lm, [seq], [1])
        y = it["y_word"]
        toks = np.array([[it["deed_tokens"][y], it["deed_tokens"][1 - y]]])
        rows = frame[frame.id == it["id"]]
        for cond, vec in (("clean", 0.0), ("stance", 4.0 * stance[k, 1])):
            logits = lens_logits_per_row(tiny_lm, resid + vec, toks)[0, 0]
            sel = rows[(rows.condition == cond) & (rows.layer == (1 if cond == "stance" else -1))]
            if cond == "stance":
                sel = sel[sel.alpha == 4.0]
            assert float(sel["toward_word"].iloc[0]) == pytest.approx(float(logits[0] - logits[1]), abs=1e-3)
    summary = pd.read_csv(tiny_run / "steering" / "cloze_steering_summary.csv")
    assert {"cs_balanced", "option_mass", "mass_ratio"} <= set(summary.columns)
    assert head["clean_cs_items"] == pytest.approx(float((frame[frame.condition == "clean"]["toward_word"] > 0).mean()))
    if head["best"] is not None:  # picked by balanced CS among cells that keep the options' tokens likely
        kept = summary[(summary.condition == "stance") & (summary.mass_ratio >= 0.5)]
        assert head["best"]["cs_balanced"] == pytest.approx(kept["cs_balanced"].max())


def test_steering_finding_reads_the_cloze_form_alone():
    from wdprobe.reports.study import finding_steering

    test = {"effect": 0.01, "low": -0.05, "high": 0.07, "p_value": 0.6, "n": 80, "significant": False}
    head = {"n_items": 40, "best": {"layer": 3, "alpha": 2.0, "flip_rate": 0.4, "break_rate": 0.2, "cs": 0.6,
                                    "min_mass_ratio": 0.5, "random": {"flip_rate": 0.1, "break_rate": 0.1}},
            "validation": {"n_items": 80, "cs_clean": 0.55, "stance": {"cs": 0.56, "mass_ratio": 0.9},
                           "random": {"cs": 0.55, "mass_ratio": 0.95},
                           "tests": {"beats_clean": test, "beats_random": test}}}
    f = finding_steering({"steer": None, "cloze_steer": head})
    assert "cloze form" in f.text and "Not a validated restoration" in f.text and f.numbers["restored"] is False
    assert finding_steering({"steer": None, "cloze_steer": None}) is None


def test_best_setting_falls_back_to_cs_when_a_sample_has_no_inconsistent_item():
    table = pd.DataFrame([{"condition": c, "layer": l, "alpha": 1.0, "cs": cs, "cs_balanced": np.nan, "mass_ratio": 1.0}
                          for c, l, cs in (("stance", 0, 0.7), ("stance", 1, 0.9), ("random", 0, 0.5), ("random", 1, 0.6))])
    best = best_setting(table, key="cs_balanced")
    assert best["layer"] == 1 and best["selected_by"] == "cs" and best["random"]["cs"] == 0.6


def test_a_model_that_says_one_letter_everywhere_is_patched_without_a_letter_direction(tiny_run, tmp_path, monkeypatch):
    """A planted letter habit (every word answer the same letter) leaves no letter direction to estimate: the letter
    condition is left out and recorded as skipped, instead of the stage failing."""
    import shutil

    import wdprobe.stages.pairs as pairs_module
    from wdprobe.runs.rundir import RunDir
    from wdprobe.stages.patching import run_cross_patch

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("patching", "steering", "*.lock"))
    real = pairs_module.paired_forms

    def one_letter(acts):
        word, deed, items = real(acts)
        items = items.copy()
        items["letter_word"] = 0
        return word, deed, items

    monkeypatch.setattr(pairs_module, "paired_forms", one_letter)
    run_cross_patch(run, n_items=8, progress=False, restart=True)  # the copied run may hold another test's patch
    frame = pd.read_csv(run / "patching" / "cross_form.csv")
    assert set(frame.condition) == {"clean", "full", "stance", "random"}
    skipped = RunDir(run).stage_entry("patch_cross")["skipped_conditions"]
    assert "same letter" in skipped["letter"]


def test_positional_screen_reads_the_scored_swapped_order(tiny_run, tiny_lm):
    from wdprobe.data.prompts import normal_prompt, wrap
    from wdprobe.methods.interventions import Row, run_interventions
    from wdprobe.methods.patching import swap_counterfactual
    from wdprobe.stages.pairs import load_pairs
    from wdprobe.stages.patching import scored_swap_effect

    pairs = load_pairs(tiny_run, tiny_lm.tokenizer)
    pres = pairs.presentations
    clean = [wrap(normal_prompt(p, "deed"), tiny_lm.tokenizer, False) for p in pres]
    cf = [wrap(normal_prompt(swap_counterfactual(p, "deed"), "deed"), tiny_lm.tokenizer, False) for p in pres]
    lp = run_interventions(tiny_lm, clean + cf, [Row(i) for i in range(2 * len(pres))], pairs.token_ids[:2])
    lo = lp[:, 0] - lp[:, 1]
    forward = np.abs(lo[: len(pres)] - lo[len(pres):])
    np.testing.assert_allclose(scored_swap_effect(tiny_run, "deed", pres), forward, atol=1e-5)
    assert scored_swap_effect(tiny_run / "nowhere", "deed", pres) is None


# ---- the worked example of docs/guides/new-variant.md: a new read-out is one class and one registry line ----------

def swapped_order_readout():
    """Letters read in the deed prompt's *other* option order only: one class over the letter read-out."""
    from wdprobe.stages.readouts import DeedRuns, LetterReadout

    class SwappedOrderReadout(LetterReadout):
        """The option letters of the deed prompt with its two options exchanged."""

        name = "swapped"
        prefix = "swapped_"
        stages = {"patch": "patch_swapped", "steer": "steer_swapped", "steer_validate": "steer_swapped_validate"}
        shardable = False

        def reading(self, run, lm, **kwargs):
            reading = super().reading(run, lm, **kwargs)
            pairs = reading.extra["pairs"]
            n = len(pairs)
            # the other order exchanges the two options' letters: the word's choice sits under the other letter
            reading.runs = DeedRuns(list(pairs.swapped_deed_prompts), np.arange(n), np.array(["shown"] * n),
                                    pairs.away, pairs.toward)
            return reading

    return SwappedOrderReadout()


def test_a_new_readout_is_one_class_and_one_registry_line(tiny_run, tiny_lm, monkeypatch, tmp_path):
    import shutil

    from wdprobe.runs.rundir import RunDir
    from wdprobe.stages import readouts
    from wdprobe.stages.patching import run_cross_patch

    tiny_run = shutil.copytree(tiny_run, tmp_path / "run")  # its own copy: the shared run keeps its settings
    monkeypatch.setitem(readouts.READOUTS, "swapped", swapped_order_readout())  # the one registry line
    assert [ro.name for ro in readouts.readouts_for("swapped")] == ["swapped"]
    conditions = ["full", "stance", "random"]
    head = run_cross_patch(tiny_run, format="swapped", n_items=12, layers=[0, 1], conditions=conditions,
                           deed_orders="shown", lm=tiny_lm, progress=False, restart=True)
    assert head["n_items"] == 12 and (tiny_run / "patching" / "swapped_cross_form_summary.csv").is_file()
    # the same patches as the letter read-out makes on the swapped order when it runs both deed orders
    run_cross_patch(tiny_run, n_items=12, layers=[0, 1], conditions=conditions, deed_orders="cyclic", lm=tiny_lm,
                    progress=False, restart=True)
    run = RunDir(tiny_run)
    letters = pd.DataFrame(run.read_parts("patch_cross"))
    letters = letters[letters.deed_order == "swapped"].drop(columns="deed_order")
    mine = pd.DataFrame(run.read_parts("patch_swapped")).drop(columns="deed_order")
    key = ["id", "condition", "layer"]
    both = mine.merge(letters, on=key, suffixes=("", "_letter"))
    assert len(both) == len(mine) == 12 * (1 + len(conditions) * 2)
    np.testing.assert_allclose(both["toward_word"].astype(float), both["toward_word_letter"].astype(float), atol=1e-4)
    np.testing.assert_allclose(both["letter_mass"].astype(float), both["letter_mass_letter"].astype(float), atol=1e-6)
    # swapping the letters flips which letter the word's choice has: clean log-odds are not those of the shown order
    shown = pd.read_csv(tiny_run / "patching" / "cross_form.csv")
    clean = both[both.condition == "clean"].set_index("id")["toward_word"].astype(float)
    assert not np.allclose(clean.sort_index(), shown[shown.condition == "clean"].set_index("id")["toward_word"].sort_index())


def test_single_stage_commands_go_through_the_runner(tiny_run, tmp_path):
    """`wdprobe lens` / `wdprobe probe` are recorded as `wdprobe run` records a stage: settings, wall and CPU time."""
    import shutil

    from wdprobe.runs.rundir import RunDir

    tiny_run = shutil.copytree(tiny_run, tmp_path / "run")  # its own copy: the shared run keeps its settings
    assert main(["probe", "--run", str(tiny_run), "--folds", "2", "--kinds", "diffmean", "--quiet"]) == 0
    assert main(["lens", "--run", str(tiny_run), "--quiet"]) == 0
    run = RunDir(tiny_run)
    for stage, flag in (("probes", ("folds", 2)), ("lens", None)):
        entry = run.stage_entry(stage)
        assert entry["complete"] and "cpu_seconds" in entry and entry["result"], stage
        if flag:
            assert entry["settings"][flag[0]] == flag[1]
    assert run.stage_entry("lens")["headline"]  # the stage function's own fields joined the runner's record


def test_lens_and_probe_commands_take_the_format(tiny_run, tmp_path, capsys):
    """`--format` on every instrument command: the lens reads the asked format only, and a format the run was not
    scored in is refused by name."""
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    shutil.rmtree(run / "lens", ignore_errors=True)
    assert main(["lens", "--run", str(run), "--format", "cloze", "--quiet"]) == 0
    assert (run / "lens" / "cloze-summary.json").is_file() and not (run / "lens" / "summary.json").exists()
    assert "cloze: " in capsys.readouterr().out
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["score"]["config"]["format"] = "letter"  # as if scored by letter only
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert main(["probe", "--run", str(run), "--format", "cloze", "--quiet"]) == 2
    assert "scored in the letter format, not ['cloze']" in capsys.readouterr().err


def test_prompting_baseline_prompts_say_the_word_answer_and_end_as_the_deed_prompt(tiny_run, tiny_lm):
    """Both read-outs build the prompted deed prompt from the scored one: the item's word question and the model's own
    word answer first, then the unchanged deed prompt (so the same tokens are read at its end)."""
    from wdprobe.data.items import read_items
    from wdprobe.data.prompts import word_reminder
    from wdprobe.runs.rundir import RunDir
    from wdprobe.runs.stage import scored_entry
    from wdprobe.stages.readouts import readout

    run = RunDir(tiny_run)
    for name in ("letter", "cloze"):
        ro = readout(name)
        settings = ro.settings(run, space="auto") if name == "letter" else ro.settings(run)
        reading = ro.reading(run, tiny_lm, n_items=6, seed=0, layers=[0], folds=2, settings=settings)
        told = ro.prompted_prompts(run, tiny_lm, reading)
        assert len(told) == len(reading.runs)
        by_id = {it.id: it for it in read_items(scored_entry(run)["data"]["path"])}
        for k, text in enumerate(told):
            i = int(reading.runs.item[k])
            item = by_id[reading.ids[i]]
            reminder = word_reminder(item, int(reading.items["y_word"].iloc[i]))
            assert text == reminder + reading.runs.prompts[k], (name, k)  # plain prompts: the reminder, then the prompt
            assert item.word_options[int(reading.items["y_word"].iloc[i])] in reminder


def test_batch_size_below_one_is_refused_before_anything_runs(tiny_run, capsys):
    before = json.loads((tiny_run / "manifest.json").read_text())["stages"]
    for argv in (["steer", "--run", str(tiny_run), "--batch-size", "0", "--restart", "--quiet"],
                 ["patch", "--run", str(tiny_run), "--instrument", "cross", "--batch-size", "0", "--restart", "--quiet"],
                 ["patch", "--run", str(tiny_run), "--instrument", "positional", "--batch-size", "-1", "--quiet"]):
        with pytest.raises(SystemExit) as exited:  # argparse refuses the number, naming the flag
            main(argv)
        assert exited.value.code == 2, argv
        err = capsys.readouterr().err
        assert "argument --batch-size" in err and "at least 1 expected" in err, err
    assert json.loads((tiny_run / "manifest.json").read_text())["stages"] == before  # --restart deleted nothing
    from wdprobe.stages.patching import run_positional_patch
    from wdprobe.stages.steering import run_steering

    for call in (lambda: run_steering(tiny_run, batch_size=0, restart=True),  # the library refuses the same
                 lambda: run_positional_patch(tiny_run, batch_size=-1)):
        with pytest.raises(InputError, match="must be at least 1"):
            call()
    assert json.loads((tiny_run / "manifest.json").read_text())["stages"] == before


def test_a_restart_of_one_forms_steering_leaves_the_other_forms_results_and_record_alone(tiny_lm, tmp_path):
    run = _scored_and_captured(tiny_lm, tmp_path)
    base = ["steer", "--run", str(run), "--items", "12", "--alphas", "0,1,4", "--no-validate", "--quiet"]
    assert main(base) == 0
    cloze = sorted(p.name for p in (run / "steering").glob("cloze_steering*"))
    letter = sorted(p.name for p in (run / "steering").glob("steering*"))
    assert cloze and letter
    before = (run / "steering" / "cloze_steering_headline.json").read_bytes()
    assert main(base + ["--restart", "--format", "letter"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["steer_cloze"]["complete"] and manifest["stages"]["steer"]["complete"]
    assert sorted(p.name for p in (run / "steering").glob("cloze_steering*")) == cloze  # untouched
    assert (run / "steering" / "cloze_steering_headline.json").read_bytes() == before
    assert sorted(p.name for p in (run / "steering").glob("steering*")) == letter  # redone in full
