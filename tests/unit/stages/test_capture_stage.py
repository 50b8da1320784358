import numpy as np
import pytest
import torch

from wdprobe.data.prompts import normal_prompt
from wdprobe.data.wdct import load_wdct, present
from wdprobe.errors import CaptureSpecError
from wdprobe.methods.capture import (
    CaptureSpec,
    capture_batch,
    presentation_spans,
    prompt_spans,
)
from wdprobe.stages.capture import capture_wdct, load_activations
from wdprobe.stages.score import load_score, score_wdct

POSITIONS = ("last", "question_mean", "option0_last", "option1_last", "option2_last", "option3_last")


def _batch_inputs(lm, wdct_csv, seed=0):
    pres = present(load_wdct(wdct_csv), seed=seed)
    prompts, spans, n_opts = [], [], []
    for p in pres:
        for form in ("word", "deed"):
            text = normal_prompt(p, form)
            prompts.append(text)
            spans.append(presentation_spans(p, form, text))
            n_opts.append(p.item.n_options)
    return pres, prompts, spans, n_opts


def test_spec_validation_names_the_problem():
    with pytest.raises(CaptureSpecError, match=r"layer\(s\) \[5\] out of range.*0..1"):
        CaptureSpec.parse("0,5", n_layers=2)
    with pytest.raises(CaptureSpecError, match="unknown hook"):
        CaptureSpec.parse("all", 2, hooks=["resid_side"])
    with pytest.raises(CaptureSpecError, match="empty layer selection"):
        CaptureSpec.parse([], 2)
    with pytest.raises(CaptureSpecError, match="unknown position"):
        CaptureSpec.parse("all", 2, positions=["first"])
    with pytest.raises(CaptureSpecError, match="empty position"):
        CaptureSpec.parse("all", 2, positions=[])
    assert CaptureSpec.parse("0-1", 2).layers == (0, 1)
    assert CaptureSpec.parse("1", 2).hook_names() == ["blocks.1.hook_resid_post"]


def test_prompt_spans_find_canonical_options():
    from wdprobe.data.wdct import Item, Presentation

    it = Item("i", "Opinion", "Pick one?", ("alpha", "beta"), "Do one?", ("do alpha", "do beta"))
    pres = Presentation(it, (1, 0), (0, 1))
    text = normal_prompt(pres, "word")
    sp = prompt_spans(text, pres.question("word"), [("A", "beta"), ("B", "alpha")], (1, 0))
    assert text[sp.options[0][0]: sp.options[0][1]] == "alpha"
    assert text[sp.options[1][0]: sp.options[1][1]] == "beta"
    assert text[sp.question[0]: sp.question[1]] == pres.question("word")


def test_capture_equals_run_with_cache_under_left_padding(tiny_lm, wdct_csv):
    _, prompts, spans, n_opts = _batch_inputs(tiny_lm, wdct_csv)
    spec = CaptureSpec.parse("all", 2, hooks=("resid_pre", "resid_mid", "resid_post"), positions=POSITIONS)
    got = capture_batch(tiny_lm, prompts, spans, n_opts, spec)
    tok = tiny_lm.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True, return_offsets_mapping=True)
    _, cache = tiny_lm.bridge.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"],
                                              names_filter=lambda n: n in spec.hook_names())
    T = enc["input_ids"].shape[1]
    for i, p in enumerate(prompts):
        pad = T - int(enc["attention_mask"][i].sum())
        offs = enc["offset_mapping"][i].tolist()[pad:]
        q0, q1 = spans[i].question
        q_tok = [pad + t for t, (s, e) in enumerate(offs) if e > s and s < q1 and e > q0]
        for h in spec.hooks:
            for k, layer in enumerate(spec.layers):
                x = cache[f"blocks.{layer}.hook_{h}"][i]
                assert torch.equal(got[f"{h}/last"][i, k], x[-1])
                torch.testing.assert_close(got[f"{h}/question_mean"][i, k], x[q_tok].mean(0), rtol=1e-5, atol=1e-6)
                for c in range(4):
                    v = got[f"{h}/option{c}_last"][i, k]
                    if c >= n_opts[i]:
                        assert torch.count_nonzero(v) == 0
                        continue
                    end = spans[i].options[c][1] - 1
                    t = next(t for t, (s, e) in enumerate(offs) if s <= end < e)
                    assert torch.equal(v, x[pad + t])
                    # the token really is the option's last word
                    assert p[offs[t][0]: offs[t][1]] in p[spans[i].options[c][0]: spans[i].options[c][1]]


def test_capture_batched_equals_single_prompt(tiny_lm, wdct_csv):
    _, prompts, spans, n_opts = _batch_inputs(tiny_lm, wdct_csv)
    spec = CaptureSpec.parse("0,1", 2, positions=POSITIONS)
    batched = capture_batch(tiny_lm, prompts, spans, n_opts, spec)
    for i in range(len(prompts)):
        single = capture_batch(tiny_lm, [prompts[i]], [spans[i]], [n_opts[i]], spec)
        for name, t in single.items():
            torch.testing.assert_close(batched[name][i], t[0], rtol=1e-4, atol=1e-4)


def test_early_stop_gives_same_activations(tiny_lm, wdct_csv):
    _, prompts, spans, n_opts = _batch_inputs(tiny_lm, wdct_csv)
    a = capture_batch(tiny_lm, prompts, spans, n_opts, CaptureSpec.parse("0", 2, positions=("last",)))  # stops after block 0
    b = capture_batch(tiny_lm, prompts, spans, n_opts, CaptureSpec.parse("0,1", 2, positions=("last",)))
    assert torch.equal(a["resid_post/last"][:, 0], b["resid_post/last"][:, 0])


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_capture_stage_resume_gives_identical_arrays(tiny_lm, wdct_csv, tmp_path, storage):
    run = tmp_path / "run"
    score_wdct(run, data=wdct_csv, lm=tiny_lm, progress=False)
    capture_wdct(run, lm=tiny_lm, positions=POSITIONS, storage_dtype=storage, chunk_prompts=4, progress=False)
    full = {p: load_activations(run, position=p, orders="all") for p in POSITIONS}
    n_prompts = len([r for r in load_score(run).prompt_rows if r["format"] == "letter"])  # every order of the run
    assert full["last"].array.shape == (n_prompts, 2, 64) and n_prompts > 12
    assert list(full["last"].meta["prompt_index"]) == list(range(n_prompts))
    shown = load_activations(run, position="last")  # the paper's one seeded order per (item, form)
    assert shown.array.shape == (12, 2, 64) and (shown.meta["shown"] == 1).all()
    assert set(full["last"].meta["form"]) == {"word", "deed"}
    # interrupt: drop the last part (and its shard) and capture again
    parts = sorted((run / "capture.parts").glob("part-*.csv"))
    parts[-1].unlink()
    capture_wdct(run, lm=tiny_lm, positions=POSITIONS, storage_dtype=storage, chunk_prompts=4, progress=False)
    for p in POSITIONS:
        again = load_activations(run, position=p, orders="all")
        np.testing.assert_array_equal(again.array, full[p].array)
    word, meta = shown.form("word")
    assert word.shape == (6, 2, 64) and (meta["form"] == "word").all()
    with pytest.raises(CaptureSpecError, match="not resid_mid/last"):
        load_activations(run, hook="resid_mid")


def test_capture_reads_the_cloze_prompts_as_scored(tiny_lm, wdct_csv, tmp_path):
    from wdprobe.data.prompts import cloze_prompt
    from wdprobe.stages.content_probes import acts_format

    run = tmp_path / "run"
    score_wdct(run, data=wdct_csv, lm=tiny_lm, progress=False)  # cyclic orders, letter and cloze formats
    capture_wdct(run, lm=tiny_lm, positions=("last", "question_mean"), progress=False)
    cloze = load_activations(run, position="last", format="cloze")
    rows = {r["id"]: r for r in load_score(run).rows}
    assert len(cloze.meta) == 2 * len(rows) and acts_format(cloze) == "cloze" and (cloze.meta["order"].fillna("") == "").all()
    letter = load_activations(run, position="last", orders="all")
    assert acts_format(letter) == "letter" and (letter.meta["format"] == "letter").all()  # formats never mix
    items = {it.id: it for it in load_wdct(wdct_csv)}
    tok = tiny_lm.tokenizer
    for k, m in cloze.meta.iterrows():
        assert int(m["content_choice"]) == rows[m["id"]][f"{m['form']}_cloze_choice"] == m["choice"]
        assert m["consistent"] == rows[m["id"]]["cloze_consistent"]
        # the captured last position is the answer position of the cloze prompt itself, run alone
        text = cloze_prompt(items[m["id"]], m["form"])
        _, cache = tiny_lm.bridge.run_with_cache(tok(text, return_tensors="pt")["input_ids"],
                                                  names_filter=lambda n: n == "blocks.1.hook_resid_post")
        torch.testing.assert_close(torch.as_tensor(cloze.array[k, 1]), cache["blocks.1.hook_resid_post"][0, -1],
                                   rtol=1e-4, atol=1e-4)
    q = load_activations(run, position="question_mean", format="cloze")
    assert np.isfinite(q.array).all() and np.abs(q.array).sum() > 0


def test_capturing_again_adds_the_cloze_prompts_to_a_letter_capture(tiny_lm, wdct_csv, tmp_path, monkeypatch):
    from wdprobe.stages.score import PROMPT_REBUILDERS

    run = tmp_path / "run"
    score_wdct(run, data=wdct_csv, lm=tiny_lm, progress=False)
    with monkeypatch.context() as m:  # a capture made before cloze prompts were captured
        m.setitem(PROMPT_REBUILDERS, "cloze", lambda *a, **k: [])
        capture_wdct(run, lm=tiny_lm, positions=("last",), progress=False)
    letter = load_activations(run, orders="all")
    with pytest.raises(CaptureSpecError, match="captured no cloze prompts"):
        load_activations(run, format="cloze")
    capture_wdct(run, lm=tiny_lm, positions=("last",), progress=False)  # resumes: only the cloze prompts are new
    again = load_activations(run, orders="all")
    np.testing.assert_array_equal(again.array, letter.array)
    assert len(load_activations(run, format="cloze").meta) == 2 * len(load_score(run).rows)


def test_scoring_with_a_capture_spec_gives_the_capture_a_separate_pass_gives(tiny_lm_wide, wdct_csv, tmp_path,
                                                                                       monkeypatch):
    tiny_lm = tiny_lm_wide
    import wdprobe.stages.capture as capture_stage
    from wdprobe.stages.stash import STASH

    spec = CaptureSpec.parse("all", tiny_lm.n_layers, positions=POSITIONS)
    apart, fused = tmp_path / "apart", tmp_path / "fused"
    score_wdct(apart, data=wdct_csv, lm=tiny_lm, progress=False)
    capture_wdct(apart, lm=tiny_lm, positions=POSITIONS, chunk_prompts=4, progress=False)
    score_wdct(fused, data=wdct_csv, lm=tiny_lm, progress=False, capture=spec)
    assert (fused / STASH).is_dir()
    # the fused capture runs no forward of its own: every prompt comes from the scoring pass
    with monkeypatch.context() as m:
        m.setattr(capture_stage, "capture_batch", lambda *a, **k: pytest.fail("the capture ran a forward"))
        capture_wdct(fused, lm=tiny_lm, positions=POSITIONS, chunk_prompts=4, progress=False)
    assert not (fused / STASH).exists()
    a_rows, b_rows = load_score(apart).rows, load_score(fused).rows
    assert [(r["id"], r["word_choice"], r["deed_choice"], r["word_cloze_choice"]) for r in a_rows] == \
        [(r["id"], r["word_choice"], r["deed_choice"], r["word_cloze_choice"]) for r in b_rows]
    np.testing.assert_allclose([r["pcs"] for r in b_rows], [r["pcs"] for r in a_rows], atol=1e-5)
    for fmt, orders in (("letter", "all"), ("cloze", "shown")):
        for position in POSITIONS if fmt == "letter" else ("last", "question_mean"):
            a = load_activations(apart, position=position, orders=orders, format=fmt)
            b = load_activations(fused, position=position, orders=orders, format=fmt)
            assert a.meta.drop(columns=["shard", "row"]).equals(b.meta.drop(columns=["shard", "row"]))
            np.testing.assert_allclose(b.array, a.array, rtol=1e-4, atol=1e-4, err_msg=f"{fmt} {position}")


def test_a_stash_for_another_spec_is_not_used(tiny_lm, wdct_csv, tmp_path):
    run = tmp_path / "run"
    score_wdct(run, data=wdct_csv, lm=tiny_lm, progress=False,
               capture=CaptureSpec.parse("0", tiny_lm.n_layers, positions=("last",)))
    capture_wdct(run, lm=tiny_lm, layers="all", positions=("last",), progress=False)  # computes its own
    acts = load_activations(run, position="last", orders="all")
    assert acts.array.shape[1] == tiny_lm.n_layers and np.abs(acts.array[:, 1]).sum() > 0
    assert not (run / "capture.pending").exists()
