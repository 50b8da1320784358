#!/usr/bin/env python
"""Per-domain study: is word-deed inconsistency, and where it arises inside, the same in every WDCT domain?

    python experiments/per_domain.py --data WDCT.csv                    # full WDCT on the embedded model
    python experiments/per_domain.py --data WDCT.csv --run runs/gemma-3-270m-study   # reuse a finished study

For each domain (Opinion, NonEthV, EthV, Theory): CS and PCS; the logit-lens CS by layer and the layer
where inconsistent items' deed answers part from their word answers; difference-of-means stance probes
(word, deed, word->deed transfer) fitted within the domain. Writes a markdown table and an HTML figure.

Time: with --run pointing at a finished study, a minute; otherwise the study's scoring, capture, probes and lens
first (about 1.5 s an item on 2 CPU cores: the full WDCT about 30 minutes, --sample 40 about 2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from wdprobe.data.wdct import DOMAINS
from wdprobe.figures.probes import write_html
from wdprobe.methods.lens import trajectory_from_frame
from wdprobe.methods.probes import probe_layers
from wdprobe.pipeline.config import StudyConfig
from wdprobe.pipeline.study import run_study
from wdprobe.stages.capture import load_activations, paired_forms
from wdprobe.stages.score import load_score


def domain_lens(run: Path) -> dict[str, dict]:
    """Per domain: lens CS by layer over all items, median divergence layer of inconsistent items."""
    traj = trajectory_from_frame(pd.read_csv(run / "lens" / "trajectory.csv"))
    div = traj.divergence_layers()
    out = {}
    for d in DOMAINS:
        m = (traj.items["domain"] == d).to_numpy()
        if m.any():
            inc = m & ~traj.items["consistent"].to_numpy().astype(bool)
            out[d] = {"n_two_option": int(m.sum()), "lens_cs": traj.agreement(m),
                      "divergence_median": float(np.nanmedian(div[inc])) if inc.any() else None}
    return out


def domain_probes(run: Path, folds: int, seed: int) -> dict[str, dict]:
    """Per domain: best-layer difference-of-means probe accuracies (word, deed, word->deed)."""
    word, deed, items = paired_forms(load_activations(run, "resid_post", "last"))
    out = {}
    for d in DOMAINS:
        keep = (items["domain"] == d).to_numpy()
        k = min(folds, int(keep.sum()) // 4)
        if k < 2:
            continue
        res = probe_layers(word[keep], deed[keep], items["y_word"][keep].to_numpy(), items["y_deed"][keep].to_numpy(),
                           letter_word=items["letter_word"][keep].to_numpy(),
                           letter_deed=items["letter_deed"][keep].to_numpy(), kinds=("diffmean",), folds=k, seed=seed)
        s = res.summary()

        def best(metric):
            t = s[s.metric == metric].set_index("layer")["mean"]
            return float(t.max()), int(t.idxmax())

        word_best = best("word->word")
        letter = s[s.metric == "letter"].set_index("layer")["mean"]
        out[d] = {"folds": k, "word": word_best, "deed": best("deed->deed"), "transfer": best("word->deed"),
                  "letter_at_word_layer": float(letter.get(word_best[1], np.nan)),
                  "word_chose_A": float((items["letter_word"][keep] == 0).mean())}
    return out


def figure(lens: dict, probes: dict, model: str) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Logit-lens CS by layer", "Best-layer stance probes (diffmean)"],
                        column_widths=[0.55, 0.45])
    colours = dict(zip(DOMAINS, ["#d9480f", "#1c7ed6", "#2b8a3e", "#862e9c"]))
    for d, v in lens.items():
        fig.add_scatter(x=list(range(len(v["lens_cs"]))), y=v["lens_cs"], name=f"{d} (n={v['n_two_option']})",
                        line=dict(color=colours[d]), row=1, col=1)
    names = ["word", "letter control<br>(at word's layer)", "deed", "word->deed"]
    for d, v in probes.items():
        ys = [v["word"][0], v["letter_at_word_layer"], v["deed"][0], v["transfer"][0]]
        fig.add_bar(x=names, y=ys, name=d, marker_color=colours[d], showlegend=False, row=1, col=2)
    fig.add_hline(y=0.5, line=dict(dash="dot", color="grey"))
    fig.update_layout(template="plotly_white", barmode="group", height=460, width=1150,
                      title=f"Per-domain view — {model}<br><sup>two-option items; probe accuracy balanced, chance 0.5</sup>")
    fig.update_xaxes(title_text="layer", row=1, col=1)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="embedded default, local model directory or HF id")
    ap.add_argument("--data", default=None, help="WDCT.csv or your own items file (else $WDPROBE_WDCT, else the pinned download)")
    ap.add_argument("--run", default=None, help="an existing study run directory (its missing stages are run)")
    ap.add_argument("--sample", type=int, default=None, help="seeded sample of N items across domains")
    ap.add_argument("--seed", type=int, default=0, help="option-shuffling and sampling seed")
    ap.add_argument("--folds", type=int, default=5, help="cross-validation folds of the per-domain probes")
    ap.add_argument("--report", default="reports/per_domain", help="folder for the markdown table and the figure")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    cfg = StudyConfig(model=args.model, data=args.data, sample=args.sample, seed=args.seed,
                      stages=["score", "capture", "lens"], out=args.run)
    if args.run is None:
        cfg.out = str(Path("runs") / f"per-domain-{cfg.slug}")
        cfg.capture.positions = ["last"]
    run_study(cfg, progress=not args.quiet)
    run = cfg.out_dir
    metrics = load_score(run).metrics
    lens, probes = domain_lens(run), domain_probes(run, args.folds, args.seed)
    rows = ["| domain | items | CS | PCS | lens: deed leaves word (median layer) | probe word | letter control there "
            "| word answers = letter A | probe deed | word->deed |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for d in DOMAINS:
        if d not in metrics["per_domain"]:
            continue
        m, l, p = metrics["per_domain"][d], lens.get(d, {}), probes.get(d)
        div = l.get("divergence_median")
        pr = ([f"{p['word'][0]:.2f} (L{p['word'][1]})", f"{p['letter_at_word_layer']:.2f}", f"{p['word_chose_A']:.2f}"]
              + [f"{p[k][0]:.2f} (L{p[k][1]})" for k in ("deed", "transfer")]) if p else ["—"] * 5
        rows.append(f"| {d} | {m['n']} | {m['cs']:.3f} | {m['pcs']:.3f} | {'—' if div is None else f'{div:.0f}'} | "
                    + " | ".join(pr) + " |")
    stuck = [d for d, p in probes.items() if p["word_chose_A"] >= 0.9 or p["word_chose_A"] <= 0.1]
    caveat = ""
    if stuck:
        caveat = (f"In {', '.join(stuck)} the model gave the same letter to at least 90% of word questions, so there the "
                  "word answer is simply the option shown under that letter: a word probe can read it from which option "
                  "text comes first (presentation order), and a high word-probe accuracy is not evidence of a stance.\n\n")
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# Per-domain view of {cfg.model}\n\nRun directory `{run}`; {metrics['n_items']} items. Probe columns: best "
            "balanced accuracy over layers (layer in brackets), difference of means, folds over items within the "
            "domain; *letter control there*: a probe for the letter the model chose, at the word probe's best layer "
            "(a word probe is only evidence of a stance where it beats this). Lens and probes use two-option items only.\n\n"
            + "\n".join(rows) + "\n\n" + caveat + "![per domain](per_domain.png)\n")
    (out / "README.md").write_text(text)
    fig = figure(lens, probes, cfg.model)
    write_html([fig], out / "per_domain.html", heading=f"wdprobe per-domain view: {cfg.model}")
    from wdprobe.figures.probes import write_png

    write_png(fig, out / "per_domain.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
