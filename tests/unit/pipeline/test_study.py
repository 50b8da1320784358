"""`wdprobe run` (config, stage sequencing, skipping, restart), the study report and `wdprobe compare`,
on the tiny offline model."""
import copy
import json

import pandas as pd
import pytest
from tiny import write_two_option_copies

from wdprobe.cli import main
from wdprobe.errors import ConfigError, RunMismatchError
from wdprobe.pipeline.config import (
    StudyConfig,
    config_from_mapping,
    config_to_toml,
    load_config,
    with_overrides,
)
from wdprobe.pipeline.study import run_study, study_status
from wdprobe.reports.fit import WIDTHS, find_chromium, page_overflow
from wdprobe.reports.study import finding_behaviour, finding_steering, findings
from wdprobe.stages.score import load_score

# ---- configuration -----------------------------------------------------------------------------------

def test_config_round_trips_through_toml(tmp_path):
    cfg = StudyConfig(model="some/model", limit=10, domains=["EthV"])
    cfg.patch_cross.items = "all"
    cfg.steer.alphas = [0.5, 2.0]
    cfg.probes.kinds = ["diffmean"]
    path = tmp_path / "study.toml"
    path.write_text(config_to_toml(cfg))
    assert load_config(path) == cfg


def test_auto_sizes_scale_with_the_sample_and_explicit_values_stay():
    full = StudyConfig().sized()
    assert (full.patch_cross.items, full.steer.items, full.patch_positional.items, full.patch_positional.exact_items,
            full.probes.kinds, full.png) == (64, 64, 16, 4, ["logreg", "diffmean"], True)
    quick = StudyConfig(sample=100).sized()
    assert (quick.patch_cross.items, quick.steer.items, quick.patch_positional.items, quick.patch_positional.exact_items,
            quick.probes.kinds, quick.png) == (12, 12, 6, 1, ["diffmean"], False)
    tiny = StudyConfig(limit=20, sample=50).sized()  # the smaller of the two decides; floors hold
    assert (tiny.patch_cross.items, tiny.patch_positional.items, tiny.patch_positional.exact_items) == (8, 4, 1)
    big = StudyConfig(sample=900).sized()
    assert (big.patch_cross.items, big.patch_positional.exact_items, big.probes.kinds) == (64, 4, ["logreg", "diffmean"])
    mine = with_overrides(StudyConfig(sample=100), {"patch_cross.items": 40, "png": True,
                                                    "probes.kinds": ["logreg"]}).sized()
    assert (mine.patch_cross.items, mine.png, mine.probes.kinds, mine.steer.items) == (40, True, ["logreg"], 12)
    assert mine.sized() == mine  # resolving twice changes nothing


def test_config_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('model = "m"\n[steer]\nalpha = [1, 2]\n')
    with pytest.raises(ConfigError, match=r"bad.toml \[steer\]: unknown key 'alpha' \(did you mean 'alphas'\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        config_from_mapping({"modle": "x"})
    with pytest.raises(ConfigError, match=r"\[capture\] positions: expected a list"):
        config_from_mapping({"capture": {"positions": "last"}})
    with pytest.raises(ConfigError, match="unknown stage"):
        config_from_mapping({"stages": ["score", "probe"]})
    with pytest.raises(ConfigError, match="patch_cross.items must be a positive number, 'all' or 'auto'"):
        config_from_mapping({"patch_cross": {"items": "most"}})
    path.write_text("model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_flags_override_the_file():
    cfg = config_from_mapping({"model": "a", "seed": 3, "steer": {"items": 10}})
    cfg2 = with_overrides(cfg, {"model": "b", "seed": None, "steer.items": 20, "limit": 5})
    assert (cfg2.model, cfg2.seed, cfg2.steer.items, cfg2.limit) == ("b", 3, 20, 5)
    assert cfg2.out_dir.as_posix() == "runs/b" and StudyConfig(model="/x/y/Model-7B/").slug == "Model-7B"


# ---- findings wording follows the numbers ------------------------------------------------------------

def _metrics(cs, agree_per_item):
    """Metrics with a shown reading whose chance test comes from per-item agreement (planted)."""
    import numpy as np

    from wdprobe.scoring.stats import chance_agreement_test

    word = np.arange(len(agree_per_item)) % 2
    deed = np.where(np.asarray(agree_per_item) == 1, word, 1 - word)
    test = chance_agreement_test(word, deed, n_perm=500).to_json()
    iv = {"value": cs, "low": cs - 0.05, "high": cs + 0.05, "n": len(word)}
    return {"metrics": {"n_items": len(word), "cs_micro": cs, "cs_macro": cs, "pcs_micro": 0.96,
                        "word_letter_mass_mean": 0.5, "deed_letter_mass_mean": 0.5,
                        "readings": {"shown": {"cs": {"micro": iv}, "vs_chance": test}}}}


def test_behaviour_finding_is_worded_from_its_test():
    agree = [1] * 90 + [0] * 10  # deeds copy words on 90 of 100 items: far beyond random pairing
    assert "above the" in finding_behaviour(_metrics(0.90, agree)).text
    coin = [1, 0] * 50  # agreement 0.5, what random pairing gives
    text = finding_behaviour(_metrics(0.50, coin)).text
    assert "not distinguishable" in text and "inconclusive at n = 100" in text and "above the" not in text
    # nearest models in the paper's table by macro CS (Llama-3-70B-Instruct 0.73, GPT-4-Turbo 0.76)
    assert "nearest Llama-3-70B-Instruct (0.73)" in finding_behaviour(_metrics(0.74, agree)).text


def test_steering_is_called_a_restoration_only_if_its_held_out_tests_say_so():
    import numpy as np

    from wdprobe.scoring.stats import paired_difference_test

    def numbers(gain_items, beat_random_items, n=90):
        gains = np.zeros(n)
        gains[:gain_items] = 1.0  # items moved to consistency by steering (vs clean)
        beats = np.zeros(n)
        beats[:beat_random_items] = 1.0
        tests = {"beats_clean": paired_difference_test(gains, n_perm=500).to_json(),
                 "beats_random": paired_difference_test(beats, n_perm=500).to_json()}
        best = {"layer": 3, "alpha": 4.0, "cs": 0.8, "random": {"cs": 0.5}}
        return {"steer": {"n_items": 50, "clean_cs_items": 0.5, "best": best,
                          "validation": {"n_items": n, "cs_clean": 0.5, "stance": {"cs": 0.5 + gains.mean()},
                                         "random": {"cs": 0.5}, "tests": tests}}}

    assert finding_steering(numbers(20, 20)).numbers["restored"] is True
    assert finding_steering(numbers(2, 2)).numbers["restored"] is False  # within noise of clean
    assert finding_steering(numbers(20, 1)).numbers["restored"] is False  # a random direction does as well
    text = finding_steering(numbers(2, 2)).text
    assert "Not a validated restoration" in text and "inconclusive at n = 90" in text
    assert "breaks the answer format" not in text
    broken = numbers(2, 2)
    broken["steer"]["validation"]["random"]["mass_ratio"] = 1e-9  # the control lost the letters altogether
    broken["steer"]["validation"]["stance"]["mass_ratio"] = 0.7
    text = finding_steering(broken).text
    assert "isotropic random direction keeps 1e-09 of the clean letter mass" in text
    assert "breaks the answer format, so beating it says little" in text
    assert "steered 0.7 (ratio of means)" in text  # a run without per-item ratios says which ratio it shows


def test_steering_restoration_must_beat_every_control_it_ran():
    import numpy as np

    from wdprobe.scoring.stats import paired_difference_test

    def numbers(beat_pair_items, n=90):
        moved = np.zeros(n)
        moved[:20] = 1.0
        beats_pair = np.zeros(n)
        beats_pair[:beat_pair_items] = 1.0
        tests = {"beats_clean": paired_difference_test(moved, n_perm=500).to_json(),
                 "beats_random": paired_difference_test(moved, n_perm=500).to_json(),
                 "beats_pair_random": paired_difference_test(beats_pair, n_perm=500).to_json()}
        cell = {"cs_clean": 0.5, "mass_ratio": 0.9, "mass_ratio_median": 0.8}
        return {"steer": {"n_items": 50, "clean_cs_items": 0.5,
                          "best": {"layer": 3, "alpha": 4.0, "cs": 0.8, "random": {"cs": 0.5},
                                   "pair-random": {"cs": 0.55}},
                          "validation": {"n_items": n, "cs_clean": 0.5, "controls": ["random", "pair-random"],
                                         "stance": {**cell, "cs": 0.72}, "random": {**cell, "cs": 0.5, "mass_ratio": 0.01,
                                                                                    "mass_ratio_median": 0.004},
                                         "pair-random": {**cell, "cs": 0.7}, "tests": tests}}}

    kept = finding_steering(numbers(20))
    assert kept.numbers["restored"] is True
    assert "prompting baseline" not in kept.text  # a run without it says nothing of it
    told = numbers(20)
    told["steer"]["validation"]["prompted"] = {"cs": 0.9, "mass_ratio": 1.0}
    told["steer"]["validation"]["tests"]["prompted_beats_clean"] = told["steer"]["validation"]["tests"]["beats_clean"]
    told["steer"]["validation"]["tests"]["beats_prompted"] = paired_difference_test(-np.r_[np.ones(30), np.zeros(60)],
                                                                                    n_perm=500).to_json()
    text = finding_steering(told).text
    assert "the prompting baseline) gives CS 0.900: prompting beats clean" in text
    assert "prompting does better than steering" in text
    assert finding_steering(told).numbers["restored"] is True  # prompting is a comparison, not a control
    assert "equal norm — 0.55" in kept.text  # the grid's control cells, both named
    assert "isotropic random direction 0.004, format-keeping control 0.8" in kept.text
    assert "(median over items): steered 0.8," in kept.text
    assert "isotropic random direction keeps 0.01 of the clean letter mass" in kept.text
    # beating the isotropic direction (which broke the format) is not enough when the format-keeping control does as well
    assert finding_steering(numbers(0)).numbers["restored"] is False
    assert "Not a validated restoration" in finding_steering(numbers(0)).text


# ---- the pipeline on the tiny model --------------------------------------------------------------------

def _small(cfg: StudyConfig) -> StudyConfig:
    cfg.probes.kinds = ["diffmean"]
    cfg.probes.folds = 3
    cfg.patch_cross.items = 12
    cfg.patch_positional.items = 2
    cfg.patch_positional.exact_items = 1
    cfg.patch_positional.layers = "0-1"
    cfg.patch_positional.forms = ["deed"]
    cfg.steer.items = 12
    cfg.steer.alphas = [1.0, 4.0]
    return cfg


@pytest.fixture(scope="module")
def study(tiny_model_dir, tiny_lm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    data = write_two_option_copies(tmp / "w.csv")
    cfg = _small(StudyConfig(model=str(tiny_model_dir), data=str(data), out=str(tmp / "run"), report=str(tmp / "report")))
    messages = []
    page = run_study(cfg, progress=False, lm=tiny_lm, log=messages.append)
    return cfg, page, messages


def test_run_study_runs_every_stage_and_reports(study):
    cfg, page, messages = study
    done = study_status(cfg.out_dir)["done"]
    assert list(done) == ["score", "capture", "probes", "lens", "patch_cross", "patch_positional", "steer", "report"]
    assert all(v["seconds"] >= 0 and v["cpu_seconds"] >= 0 for v in done.values())
    assert study_status(cfg.out_dir)["config"]["patch_cross"]["items"] == 12  # the configuration is in the manifest
    for rel in ("items.csv", "capture", "probes/resid_post-last.csv", "lens/trajectory.csv", "patching/cross_form.csv",
                "patching/positional-deed.csv", "steering/steering.csv", "probes/content-ic.json",
                "patching/cross_form_letter_split.csv", "probes/cloze-last.csv", "probes/cloze-ic.json",
                "patching/cloze_cross_form.csv"):
        assert (cfg.out_dir / rel).exists(), rel
    assert page == cfg.report_dir / "index.html"
    html = page.read_text()
    m = load_score(cfg.out_dir).metrics
    # the page opens with the findings, built from this run's own numbers, then figures, then the manifest
    order = [html.index(f"id='{a}'") for a in ("findings", "figures", "timing", "manifest")]
    assert order == sorted(order)
    cs = m["readings"]["shown"]["cs"]["micro"]
    assert f"CS over {m['n_items']} items" in html and f"{cs['value']:.3f} [{cs['low']:.3f}, {cs['high']:.3f}]" in html
    assert "CPU s" in html and ">total<" in html  # the timing table, with CPU time where it was recorded
    # plotly.js is shared: one copy beside the page, loaded by a relative script tag (works offline), not inlined
    from wdprobe.figures.page import PLOTLY_FILE
    assert html.count(f"<script src='{PLOTLY_FILE}'") == 1 and (cfg.report_dir / PLOTLY_FILE).stat().st_size > 1e6
    assert len(html.encode()) < 1_000_000 and "Plotly.newPlot" in html
    order = [html.index(f"id='{a}'") for a in ("findings", "figures", "tables")]  # figures before the folded tables
    assert order == sorted(order) and "<details class='table'>" in html
    for f in findings(cfg.out_dir):
        assert f.title in (cfg.report_dir / "README.md").read_text()
    assert (cfg.report_dir / "scores.md").is_file() and (cfg.report_dir / "tables" / "cross_form_headline.json").is_file()
    text = (cfg.report_dir / "README.md").read_text()  # the letter-free analyses are worded from their tests
    assert "IC(l)" in text and "What the word run's residual carries into the deed" in text
    assert "In the cloze form (no options shown, no letters), the word choice" in text
    assert "read where the options part), patching the word run's residual at its decision point" in text
    # every test of the report in one ledger, corrected across the report, on the page, in the README and as a table
    import pandas as pd

    from wdprobe.reports.claims import claims_ledger

    ledger = pd.read_csv(cfg.report_dir / "claims.csv")
    assert len(ledger) >= 20 and (ledger["q"] >= ledger["p"] - 1e-12).all()
    assert ledger[["source", "test"]].duplicated().sum() == 0
    assert {"metrics.json", "probes/content-summary.json", "patching/cross_form_headline.json"} <= set(ledger["source"])
    assert len(claims_ledger(cfg.out_dir)) == len(ledger)
    sentence = f"This report runs {len(ledger)} tests; {int((ledger['p'] < 0.05).sum())} have p < 0.05"
    assert sentence in text and sentence.replace("<", "&lt;") in html and "id='claims'" in html
    assert "Every test in this report" in html
    # the verdicts come first, one line per finding, each finding's numbers one click away
    assert html.count("<li><details><summary><b>") == len(findings(cfg.out_dir))
    # every claim a finding words as an effect rests on a ledger entry whose q supports it, and is published with it
    import json

    from wdprobe.reports.claims import unsupported_claims

    found = findings(cfg.out_dir)
    assert unsupported_claims(found, claims_ledger(cfg.out_dir)) == []
    written = json.loads((cfg.report_dir / "findings.json").read_text())
    assert [(f["title"], f["claims"]) for f in written] == [(f.title, f.claims) for f in found]
    assert found[1].text.startswith("Decodable after correction across the report: ")  # the verdict comes first
    assert "| question | what this run says |" in text


def test_a_cloze_only_study_runs_to_its_report(tiny_model_dir, tiny_lm, tmp_path):
    data = write_two_option_copies(tmp_path / "w.csv")
    cfg = _small(StudyConfig(model=str(tiny_model_dir), data=str(data), out=str(tmp_path / "run"),
                             report=str(tmp_path / "report"), format="cloze"))
    messages = []
    page = run_study(cfg, progress=False, lm=tiny_lm, log=messages.append)
    assert list(study_status(cfg.out_dir)["done"])[-1] == "report" and page.is_file()
    for rel in ("probes/cloze-last.csv", "lens/cloze-trajectory.csv", "patching/cloze_cross_form.csv",
                "steering/cloze_steering_headline.json"):
        assert (cfg.out_dir / rel).exists(), rel
    for rel in ("patching/cross_form.csv", "steering/steering_headline.json"):  # no letters: nothing read by letter
        assert not (cfg.out_dir / rel).exists(), rel
    from wdprobe.reports.compare import run_curves  # a comparison draws a cloze-only run's own curves
    curves = run_curves(cfg.out_dir, "cloze")
    assert curves.lens_cs is not None and curves.probe_word is not None and curves.cross_flip is not None
    assert len(curves.lens_cs) == len(curves.probe_word) == 2
    assert any("positional patching reads answers by letter" in m for m in messages)
    text = (cfg.report_dir / "README.md").read_text()
    assert "In the cloze form (no options shown, no letters)" in text and "In the cloze form (" in text
    assert "Steering in the cloze form" in text or "the word run's cloze stance direction added" in text


def test_second_run_skips_finished_stages_without_loading_the_model(study, monkeypatch):
    cfg, _, _ = study

    def refuse(*a, **k):
        raise AssertionError("the model should not be loaded when every stage is done")

    monkeypatch.setattr("wdprobe.pipeline.study.load_model", refuse)
    messages = []
    run_study(cfg, progress=False, log=messages.append)
    assert sum("already done" in m for m in messages) == 7 and "[report]" in messages[-1]


def test_changed_settings_are_refused_and_restart_redoes_the_stage(study, tiny_lm):
    cfg, _, _ = study
    before = pd.read_csv(cfg.out_dir / "steering" / "steering_summary.csv")
    cfg2 = copy.deepcopy(cfg)
    cfg2.steer.alphas = [2.0]
    with pytest.raises(RunMismatchError, match="'steer' run with other settings"):
        run_study(cfg2, progress=False, lm=tiny_lm, log=lambda m: None)
    with pytest.raises(ValueError, match="--restart works for"):
        run_study(cfg2, progress=False, lm=tiny_lm, restart=["score"])
    run_study(cfg2, progress=False, lm=tiny_lm, restart=["steer"], log=lambda m: None)
    after = pd.read_csv(cfg.out_dir / "steering" / "steering_summary.csv")
    assert set(after.alpha) == {2.0} and set(before.alpha) == {1.0, 4.0}
    # restoring the first settings for the other tests of this module
    run_study(cfg, progress=False, lm=tiny_lm, restart=["steer"], log=lambda m: None)


def test_cli_run_with_a_config_file_and_flags(tiny_model_dir, tmp_path, capsys):
    data = write_two_option_copies(tmp_path / "w.csv")
    cfg = _small(StudyConfig(model=str(tiny_model_dir)))
    (tmp_path / "s.toml").write_text(config_to_toml(cfg))
    out = tmp_path / "run"
    args = ["run", "--config", str(tmp_path / "s.toml"), "--data", str(data), "--out", str(out), "--limit", "10",
            "--stages", "score,capture,lens,report", "--report", str(tmp_path / "rep"), "--quiet"]
    assert main(args + ["--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "limit = 10" in printed and 'stages = ["score", "capture", "lens", "report"]' in printed
    assert main(args) == 0
    assert list(study_status(out)["done"]) == ["load_model", "score", "capture", "lens", "report"]
    assert load_score(out).metrics["n_items"] == 10
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "lens" in status and "patch_cross" in status and "not run" in status
    assert status.splitlines()[0].split() == ["stage", "wall", "time", "finished", "(UTC)", "result"]  # headers
    assert main(["status", str(tmp_path)]) == 2
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "Where does the deed answer leave the word stance?" in html and "Do word and deed share" not in html
    (tmp_path / "typo.toml").write_text("[steer]\nitem = 3\n")
    assert main(["run", "--config", str(tmp_path / "typo.toml"), "--quiet"]) == 2
    assert "unknown key 'item'" in capsys.readouterr().err


# ---- compare -------------------------------------------------------------------------------------------

def test_compare_puts_each_runs_numbers_side_by_side(study, tiny_lm, tmp_path, capsys):
    cfg, _, _ = study
    other = copy.deepcopy(cfg)
    other.seed, other.out, other.stages = 1, str(tmp_path / "seed1"), ["score", "capture", "lens", "patch_cross"]
    run_study(other, progress=False, lm=tiny_lm, log=lambda m: None)
    page = tmp_path / "cmp" / "compare.html"
    assert main(["compare", str(cfg.out_dir), str(other.out_dir), "--out", str(page), "--labels", "seed0,seed1"]) == 0
    table = pd.read_csv(page.with_suffix(".csv"), index_col="metric")
    for label, run in (("seed0", cfg.out_dir), ("seed1", other.out_dir)):
        m = json.loads((run / "metrics.json").read_text())
        assert float(table.loc["CS micro", label]) == pytest.approx(m["cs_micro"])
    assert pd.isna(table.loc["steer: held-out CS", "seed1"])  # the second run has no steering stage
    m = json.loads((cfg.out_dir / "metrics.json").read_text())
    for reading in ("shown", "content"):  # every reading with its interval, from the run's metrics
        lo, v, hi = (float(table.loc[f"CS {reading}{sfx}", "seed0"]) for sfx in (" (low)", "", " (high)"))
        assert lo <= v <= hi and v == pytest.approx(m["readings"][reading]["cs"]["micro"]["value"])
    html = page.read_text()
    assert "seed0" in html and "seed1" in html and "Layer curves" in html and "CS content [95%]" in html
    # the page says what differs: the seed, and nothing about the model or the items (the same ones)
    assert "What differs between the runs" in html and "<b>option-shuffling seed: seed0 0; seed1 1</b>" in html
    assert "items scored: the same" in html and "<b>model:" not in html
    from wdprobe.reports.compare import run_differences

    fewer = copy.deepcopy(cfg)
    fewer.out, fewer.sample, fewer.stages = str(tmp_path / "fewer"), 6, ["score"]
    run_study(fewer, progress=False, lm=tiny_lm, log=lambda m: None)
    differs, _ = run_differences([cfg.out_dir, fewer.out_dir], ["all", "six"])
    assert any(d.startswith("items scored: all") and "not over the same items" in d for d in differs)
    assert any(d.startswith("item selection") for d in differs)
    from wdprobe.reports.compare import run_curves

    curves = run_curves(cfg.out_dir, "seed0")
    for curve in (curves.lens_cs, curves.cross_flip, curves.probe_word):
        assert curve is not None and ((curve["low"] <= curve["value"] + 1e-12) & (curve["value"] <= curve["high"] + 1e-12)).all()
    assert main(["compare", str(cfg.out_dir), str(other.out_dir), "--labels", "one"]) == 2
    assert "1 labels for 2 runs" in capsys.readouterr().err
    assert main(["compare", str(cfg.out_dir), str(tmp_path)]) == 2
    assert "not a scored run directory" in capsys.readouterr().err
    from wdprobe.reports.study import write_study_report

    with pytest.raises(FileNotFoundError, match="holds no finished scoring run"):
        write_study_report(tmp_path / "empty", tmp_path / "rep")


def test_png_export_can_be_switched_on_and_off(tmp_path):
    import plotly.graph_objects as go

    from wdprobe.figures.probes import png_export, write_png

    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    with png_export(False):
        assert write_png(fig, tmp_path / "off.png") is None and not (tmp_path / "off.png").exists()
    pytest.importorskip("kaleido")
    with png_export(True):
        path = write_png(fig, tmp_path / "on.png")
    if path is None:
        pytest.skip("kaleido is installed but found no browser to render with")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(find_chromium() is None, reason="needs a Chromium binary (apt-get install chromium)")
def test_the_study_page_fits_a_laptop_and_a_desktop_window(study):
    """Every figure of the page drawn inside a 1,280 and a 1,920 px window, no title or legend cut at its edge."""
    _, page, _ = study
    for width in WIDTHS:
        layout = page_overflow(page, width)
        assert layout.fits, (width, layout.scroll_width, layout.elements)


def test_no_figure_writes_a_label_on_its_data(study):
    """Reference lines (chance, clean CS, baselines) are named in the legend: the only annotations left are the
    panels' titles, placed in the figure's margins (paper coordinates), never at a data coordinate."""
    from wdprobe.reports.study import study_figures

    cfg, _, _ = study
    figs = study_figures(cfg.out_dir)
    assert len(figs) >= 5
    for _, name, fig in figs:
        on_data = [a.text for a in fig.layout.annotations if a.yref != "paper" or a.xref != "paper"]
        assert not on_data, (name, on_data)
    legends = {t.name for _, _, fig in figs for t in fig.data if t.name}
    assert any(n.startswith("chance CS") for n in legends)
