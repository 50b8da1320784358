"""The cross-model card's figure: recovered against planted block, honest about what was not detected."""
import numpy as np
import pandas as pd

from wdprobe.figures.crossmodel import recovered_block_figure


def _frame():
    rows = [("override-L4-s0", "override", 4, 0, 4, True), ("override-L4-s1", "override", 4, 1, 5, True),
            ("strength-3-L12-s0", "strength-3", 12, 0, 12, True), ("null-gate-L12-s0", "null-gate", 12, 0, 12, False),
            ("head-override-L8-s0", "head-override", 8, 0, None, False), ("override-L9-s0", "override", 9, 0, 9, False)]
    frame = pd.DataFrame(rows, columns=["name", "family", "layer", "seed", "recovered_block", "detected"])
    frame["scored"] = [True, True, True, True, True, False]  # the last had too few items: not drawn
    frame["shift_q"] = 0.01
    return frame


def test_undetected_organisms_sit_on_the_none_row_and_every_family_is_drawn():
    fig = recovered_block_figure(_frame(), 18, title="t")
    points = {name: (x, y) for tr in fig.data if tr.mode == "markers"
              for name, x, y in zip(np.asarray(tr.customdata)[:, 0], tr.x, tr.y)}
    assert set(points) == {"override-L4-s0", "override-L4-s1", "strength-3-L12-s0", "null-gate-L12-s0",
                           "head-override-L8-s0"}
    assert points["override-L4-s1"][1] == 5 and points["strength-3-L12-s0"][1] == 12  # drawn where recovered
    # a shift not detected localises nothing: drawn on the "none" row, even where the rule put a block (12)
    assert points["null-gate-L12-s0"][1] == points["head-override-L8-s0"][1] == -2
    # organisms planted at one block sit side by side, none hiding another
    assert points["override-L4-s0"][0] != points["override-L4-s1"][0]
    assert points["strength-3-L12-s0"][0] != points["null-gate-L12-s0"][0]
    names = {tr.name for tr in fig.data}
    assert "strength sweep" in names and "gate never opens (null-gate) (not detected)" in names


def test_a_form_whose_change_is_not_detected_is_drawn_faded_and_said_so():
    import pandas as pd

    from wdprobe.figures.crossmodel import restored_share_figure

    rows = [{"form": form, "site": f"L{b}.{kind}", "kind": kind, "block": b, "unit": None, "identical": False,
             "restored_mean": 0.5, "low_mean": 0.1, "high_mean": 0.9, "q_mean": 0.01}
            for form in ("word", "deed") for b in range(3) for kind in ("resid", "mlp")]
    fig = restored_share_figure(pd.DataFrame(rows), title="t", change_p={"word": 0.001, "deed": 0.52})
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["word prompts", "deed prompts — change not detected (p = 0.52): shares not interpretable"]
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert [h.opacity for h in heatmaps] == [1.0, 0.3]
    plain = restored_share_figure(pd.DataFrame(rows), title="t")  # without the change's tests: drawn as before
    assert [a.text for a in plain.layout.annotations] == ["word prompts", "deed prompts"]
