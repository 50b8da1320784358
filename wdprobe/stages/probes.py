"""The probe stage: captured activations of a run -> tidy probe results, summary CSV and HTML plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from wdprobe.core.cache import atomic_write_text
from wdprobe.figures import probes as plots
from wdprobe.methods.decoding import PERMUTATIONS, decode_layers
from wdprobe.methods.probes import check_folds, probe_layers
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import scored_entry
from wdprobe.stages.capture import load_activations, paired_forms

STAGE = "probe"


def run_probes(run_dir: str | Path, *, hook: str = "resid_post", position: str = "last",
               kinds: Sequence[str] = ("logreg", "diffmean"), folds: int = 5, seed: int = 0,
               domains: bool = True, progress: bool = True, n_perm: int = PERMUTATIONS) -> dict:
    """Probe every captured layer; write ``probes/{hook}-{position}.{csv,html}`` and a summary JSON."""
    check_folds(folds)  # before anything is read or written
    run = RunDir(run_dir)
    acts = load_activations(run.path, hook=hook, position=position)
    word, deed, items = paired_forms(acts)
    layers = list(acts.layers)
    res = probe_layers(word, deed, items["y_word"], items["y_deed"], letter_word=items["letter_word"],
                       letter_deed=items["letter_deed"], layers=layers, kinds=kinds, folds=folds, seed=seed,
                       progress=progress)
    out = run.path / "probes"
    out.mkdir(exist_ok=True)
    stem = f"{hook}-{position}"
    frame = res.to_frame()
    atomic_write_text(out / f"{stem}.csv", frame.to_csv(index=False))
    summary = res.summary()
    atomic_write_text(out / f"{stem}-summary.csv", summary.to_csv(index=False))
    model = scored_entry(run)["config"]["model"]
    where = f"{model}, {hook} at the {position.replace('_', ' ')} position, {len(items)} two-option items"
    figs = [plots.accuracy_figure(summary, res.cs, f"Stance probes by layer<br><sup>{where}</sup>"),
            plots.ic_figure(summary, f"Internal consistency IC(l) vs behavioural CS<br><sup>{where}</sup>"),
            plots.cosine_figure(summary, f"Word vs deed stance directions<br><sup>{where}</sup>")]
    dom = {}
    if domains:
        for d in sorted(items["domain"].unique()):
            keep = (items["domain"] == d).to_numpy()
            if keep.sum() < 5 * folds:
                continue
            r = probe_layers(word[keep], deed[keep], items["y_word"][keep], items["y_deed"][keep],
                             letter_word=items["letter_word"][keep], letter_deed=items["letter_deed"][keep],
                             layers=layers, kinds=("diffmean",), folds=folds, seed=seed)
            dom[d] = (r.summary(), r.cs)
        if dom:
            figs.append(plots.domain_figure(dom, f"Per domain (difference-of-means probes) — {model}, {hook}/{position}"))
    graded = (items["correct"].astype(str) != "").to_numpy()
    correctness = None
    if graded.sum() >= 5 * folds:
        # Is the model's answer right? Items with a known answer (EthV, Theory). Difference-of-means only.
        corr = items["correct"][graded].astype(int).to_numpy()
        yw = (items["y_word"][graded].to_numpy() == corr).astype(int)
        yd = (items["y_deed"][graded].to_numpy() == corr).astype(int)
        correctness = probe_layers(word[graded], deed[graded], yw, yd, letter_word=items["letter_word"][graded],
                                   letter_deed=items["letter_deed"][graded], layers=layers, kinds=("diffmean",),
                                   folds=folds, seed=seed)
        cframe = correctness.to_frame()
        atomic_write_text(out / f"{stem}-correctness.csv", cframe.to_csv(index=False))
        figs.append(plots.accuracy_figure(correctness.summary(), None,
                                          f"Correctness probes: is the answer right? (EthV + Theory, {int(graded.sum())} items)"
                                          f"<br><sup>label = the model's choice equals the known answer; word accuracy "
                                          f"{yw.mean():.2f}, deed accuracy {yd.mean():.2f}</sup>"))
    plots.write_html(figs, out / f"{stem}.html", heading=f"wdprobe probes: {where}")
    pngs = [plots.write_png(f, out / f"{stem}-{i}.png") for i, f in enumerate(figs)]
    headline = headline_numbers(summary, res.cs)
    if correctness is not None:
        csum = correctness.summary()
        cw = csum[(csum.metric == "word->word")].set_index("layer")["mean"]
        cd = csum[(csum.metric == "deed->deed")].set_index("layer")["mean"]
        headline["correctness_diffmean"] = {"word_best": float(cw.max()), "word_best_layer": int(cw.idxmax()),
                                            "deed_best": float(cd.max()), "deed_best_layer": int(cd.idxmax())}
    headline["tests"] = stance_tests(word, deed, items, layers, folds=folds, n_perm=n_perm, seed=seed)
    atomic_write_text(out / f"{stem}-headline.json", json.dumps(headline, indent=2) + "\n")
    run.update_stage(STAGE, **{stem: {"folds": folds, "kinds": list(kinds), "n_items": len(items),
                                      "png": [str(p) for p in pngs if p], "headline": headline}})
    return headline


def stance_tests(word: np.ndarray, deed: np.ndarray, items, layers: Sequence[int], *, folds: int = 5, n_perm: int = PERMUTATIONS,
                 seed: int = 0) -> dict[str, dict]:
    """The claims the probe finding words, each with the max-over-layers permutation test (difference-of-means
    probes, one prompt per item and form, folds by item): the word answer, the deed answer, the word probe read
    on deeds, and the letter said (the control a stance reading must beat). Labels are permuted within a domain,
    so a reading the domain alone explains is not called decodable."""
    ids = items["id"].to_numpy()
    yw, yd = items["y_word"].to_numpy().astype(int), items["y_deed"].to_numpy().astype(int)
    lw = items["letter_word"].to_numpy().astype(int)
    cases = {"word->word": (word, yw, {}), "deed->deed": (deed, yd, {}),
             "word->deed": (word, yw, {"test_X": deed, "test_y": yd, "test_groups": ids}), "letter": (word, lw, {})}
    out = {}
    for name, (X, y, kw) in cases.items():
        if min(np.bincount(y, minlength=2)) < folds or (kw and len(np.unique(kw["test_y"])) < 2):
            continue  # too few of a class to give every fold both
        out[name] = decode_layers(X, y, ids, layers=tuple(layers), folds=folds, n_perm=n_perm, seed=seed,
                                  strata=items["domain"].astype(str).to_numpy(), **kw).summary()
    return out


def headline_numbers(summary, cs: float) -> dict:
    """Best layers and values a reader wants first, per probe kind."""
    out: dict = {"cs": cs}
    for kind in sorted(set(summary["probe"])):
        s = summary[summary.probe == kind]

        def at(metric):
            t = s[s.metric == metric].set_index("layer")["mean"]
            return t

        ww, dd, wd, ic, icc, let, rnd = (at(m) for m in ("word->word", "deed->deed", "word->deed", "ic", "ic_chance",
                                                        "letter", "random"))
        best = int(ww.idxmax())
        out[kind] = {"best_word_layer": best, "word->word": float(ww.max()), "deed->deed_best": float(dd.max()),
                     "deed->deed_best_layer": int(dd.idxmax()), "word->deed_at_best_word_layer": float(wd.get(best, np.nan)),
                     "word->deed_best": float(wd.max()), "letter_at_best_word_layer": float(let.get(best, np.nan)),
                     "letter_best": float(let.max()) if len(let) else None,
                     "random_mean": float(rnd.mean()), "ic_max": float(ic.max()), "ic_max_layer": int(ic.idxmax()),
                     "ic_chance_at_ic_max": float(icc.get(int(ic.idxmax()), np.nan)),
                     "ic_random_at_ic_max": float(at("ic_random").get(int(ic.idxmax()), np.nan)),
                     "layers_ic_above_cs_and_chance": [int(l) for l, v in ic.items()
                                                       if v > cs + 0.05 and v > icc.get(l, 1.0) + 0.05]}
    return out
