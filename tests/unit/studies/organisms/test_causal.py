"""The stance check on a tiny random Gemma-3: a shift of zero reads the model unchanged, a small shift along the plant
direction raises the aimed option's margin (its first-order effect, the gradient's sign), the hook leaves no trace,
and bad aims or directions are refused by name."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import alignment_vocabulary_text, build_tiny_model_dir, organism_items, write_wdct_csv

from wdprobe.core.model import load_model
from wdprobe.data.items import read_items
from wdprobe.errors import InputError
from wdprobe.studies.organisms.causal import added_after_block, option_logprobs, stance_shifts
from wdprobe.studies.organisms.edit import plant_directions


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("causal")
    model_dir = build_tiny_model_dir(d / "model", seed=5, n_layers=4, initializer_range=0.3,
                                     extra_text=alignment_vocabulary_text(12) + " support oppose block")
    items = read_items(write_wdct_csv(d / "items.csv", organism_items(12)))
    return load_model(str(model_dir)), items


def _margin(lm, items, form, aims):
    total, n_tok = option_logprobs(lm, items, form)
    mean = total / n_tok
    rows = np.arange(len(items))
    return float((mean[rows, aims] - mean[rows, 1 - np.asarray(aims)]).sum())


def test_a_small_shift_along_the_plant_direction_raises_the_aimed_margin_in_both_forms(model):
    lm, items = model
    aims = [1 - it.correct for it in items]  # against the correct option
    with torch.enable_grad():
        direction = plant_directions(lm, items, [1], aims, forms=("word", "deed"))[1]
    for form in ("word", "deed"):
        before = _margin(lm, items, form, aims)
        with added_after_block(lm.hf_model, 1, 1e-2 * direction):
            up = _margin(lm, items, form, aims)
        with added_after_block(lm.hf_model, 1, -1e-2 * direction):
            down = _margin(lm, items, form, aims)
        assert down < before < up, form
        assert _margin(lm, items, form, aims) == pytest.approx(before, abs=1e-9)  # the hook is gone


def test_batched_right_padded_scores_are_each_sequence_scored_alone(model):
    from wdprobe.data.prompts import cloze_prompt
    from wdprobe.studies.organisms.edit import with_continuation

    lm, items = model
    total, n_tok = option_logprobs(lm, items[:5], "deed", batch_size=3)
    vector = torch.linspace(-1, 1, lm.d_model)
    with added_after_block(lm.hf_model, 1, vector):
        shifted, _ = option_logprobs(lm, items[:5], "deed", batch_size=3)
    for n, it in enumerate(items[:5]):
        prompt = cloze_prompt(it, "deed")
        start = len(lm.tokenizer(prompt)["input_ids"])
        for j, option in enumerate(it.options("deed")):
            ids = with_continuation(lm.tokenizer, prompt, option)
            for got, add in ((total, None), (shifted, vector)):
                with added_after_block(lm.hf_model, 1, add), torch.no_grad():
                    logp = torch.log_softmax(lm.hf_model(input_ids=ids).logits[0, start - 1:-1].float(), -1)
                alone = float(logp.gather(1, ids[0, start:, None]).sum())
                assert got[n, j] == pytest.approx(alone, abs=1e-4)
            assert n_tok[n, j] == ids.shape[1] - start


def test_the_hook_is_removed_when_the_body_fails(model):
    lm, items = model
    before = option_logprobs(lm, items[:2], "deed")[0]
    with pytest.raises(RuntimeError):
        with added_after_block(lm.hf_model, 2, torch.full((lm.d_model,), 50.0)):
            raise RuntimeError("stop")
    assert np.array_equal(option_logprobs(lm, items[:2], "deed")[0], before)


def test_rows_read_the_unshifted_model_first_and_a_zero_shift_changes_nothing(model):
    lm, items = model
    aims = [1 - it.correct for it in items]
    rows = stance_shifts(lm, items, aims, {"zero": torch.ones(lm.d_model)}, 1, [0.0, 0.5], scale=1.0)
    assert [(r["direction"], r["multiple"], r["form"]) for r in rows] == [
        ("none", 0.0, "word"), ("none", 0.0, "deed"), ("zero", 0.0, "word"), ("zero", 0.0, "deed"),
        ("zero", 0.5, "word"), ("zero", 0.5, "deed")]
    for clean, zero in ((rows[0], rows[2]), (rows[1], rows[3])):
        assert zero["on_aim_mean"] == clean["on_aim_mean"] and zero["on_aim_sum"] == clean["on_aim_sum"]
        assert zero["option_mass_ratio_median"] == pytest.approx(1.0)
        assert zero["moved_mean"] == 0.0 or np.isnan(zero["moved_mean"])
    shifted = rows[4]
    assert shifted["shift_norm"] == 0.5 and shifted["option_mass_ratio_median"] != pytest.approx(1.0)


def test_bad_aims_and_directions_are_refused_by_name(model):
    lm, items = model
    with pytest.raises(InputError, match="3 aims for 12 items"):
        stance_shifts(lm, items, [0, 1, 0], {}, 1, [1.0])
    with pytest.raises(InputError, match="0 or 1"):
        stance_shifts(lm, items, [2] * len(items), {}, 1, [1.0])
    with pytest.raises(InputError, match="direction 'short'"):
        stance_shifts(lm, items, [0] * len(items), {"short": torch.ones(3)}, 1, [1.0])


def _row(direction, layer, multiple, form, on_aim, moved_mean, moved_sum=None, mass=1.0, n=40):
    return {"direction": direction, "layer": layer, "multiple": multiple, "form": form, "n_items": n,
            "on_aim_mean": on_aim, "on_aim_sum": on_aim, "moved_mean": moved_mean,
            "moved_sum": moved_mean if moved_sum is None else moved_sum, "option_mass_ratio_median": mass}


def test_the_causal_rule_needs_both_scorings_kept_options_and_a_margin_over_random():
    from wdprobe.studies.organisms.causal import causal_verdict

    base = [_row("none", 4, 0.0, f, 0.0, np.nan) for f in ("word", "deed")]
    rows = base + [
        # word: moves 0.8 of 40 (Wilson lower 0.65) against random 0.1 (upper 0.23): causal
        _row("against stance", 4, 0.25, "word", 0.8, 0.8), _row("random", 4, 0.25, "word", 0.1, 0.1),
        # deed: moves 0.8 by the mean but 0.4 by the sum; at 0.5 both move but the options' mass collapses
        _row("against stance", 4, 0.25, "deed", 0.8, 0.8, moved_sum=0.4), _row("random", 4, 0.25, "deed", 0.1, 0.1),
        _row("against stance", 4, 0.5, "deed", 0.9, 0.9, mass=0.2), _row("random", 4, 0.5, "deed", 0.1, 0.1)]
    got = causal_verdict(rows)
    assert got["word"]["causal"] and [c["multiple"] for c in got["word"]["passing"]] == [0.25]
    assert got["word"]["passing"][0]["n_on_stance"] == 40
    assert not got["deed"]["causal"] and got["deed"]["best"]["multiple"] == 0.5
    # a random direction that moves as much leaves no margin
    rows[3] = _row("random", 4, 0.25, "word", 0.7, 0.7)
    assert not causal_verdict(rows)["word"]["causal"]


def test_plant_directions_leave_the_weights_without_gradients_and_trainable(model):
    lm, items = model
    with torch.enable_grad():
        plant_directions(lm, items[:2], [1], 1)
    params = list(lm.hf_model.parameters())
    assert all(p.grad is None for p in params)  # no backward into the weights
    assert all(p.requires_grad for p in params)  # as they were
