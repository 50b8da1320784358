"""The card of curves on edited organisms: which items an organism is studied on, the layer each instrument recovers
from a finished study (blind: it reads saved tables, never the planted block), and the card's scores.

The rules are written in ``reports/organisms/edited/card-rules.md`` before the run that applies them; the constants
below are those rules. A plant on this parent holds on some items only (a capacity check shows no single write can
move 0.9 of held-out deeds), so an organism is studied on the items where its plant holds, with control items where
nothing changed, and the card counts how often each instrument puts the divergence within one layer of the block.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest, false_discovery_control, spearmanr

from wdprobe.core.cache import atomic_write_text
from wdprobe.errors import InputError
from wdprobe.figures.card import localisation_figure
from wdprobe.figures.page import figure_html
from wdprobe.reports.html import CSS, folded, notes_html, table_html
from wdprobe.scoring.stats import wilson_interval

GATE_MIN_STUDIED = 10  # an organism is carded on at least this many studied items ...
GATE_WORD = 0.02  # ... with word answers changed on at most this share of the held-out items (per-token mean)
GATE_KEYED_HOLD = 0.9  # a per-item plant (``mlp-items``) must also hold on this share of its eligible keyed items
HIT_WITHIN = 1  # a recovered layer within this many layers of the planted block is a hit
LOCALISES_AT = 13 / 15  # hit rate an instrument needs (with a significant binomial test) to "localise"
ALPHA = 0.05
PERMUTATIONS = 10_000
EQUIVALENCE_MARGIN = 0.05  # TOST margin on the share of answers a null edit changes
INSTRUMENTS = ("logit lens", "tuned lens", "word probe on deeds", "inconsistency prediction", "cross-form patching",
               "steering")
LENS_SUMMARIES = {"logit lens": "lens/cloze-summary.json", "tuned lens": "lens/cloze-tuned-summary.json"}


@dataclass(frozen=True)
class StudiedItems:
    """Where an organism's plant holds (``studied``) and where nothing changed (``controls``), item ids."""

    studied: list[str]
    controls: list[str]
    n_eligible: int  # parent consistent and not on the planted option: the items the plant could move
    word_changes: float  # share of all items whose word answer changed (per-token mean)
    n_items: int
    deed_changes: float = float("nan")  # share of all items whose deed answer changed (per-token mean)
    min_hold_rate: float = 0.0  # the hold rate the organism must reach besides (per-item plants: GATE_KEYED_HOLD)
    why: dict[str, int] = field(default_factory=dict)  # among eligible items: deed moved (mean; mean and sum), word changed
    word_changes_by_set: dict[str, float] = field(default_factory=dict)  # per-item plants: keyed and held-out apart

    @property
    def hold_rate(self) -> float:
        return len(self.studied) / self.n_eligible if self.n_eligible else float("nan")

    @property
    def carded(self) -> bool:
        return (len(self.studied) >= GATE_MIN_STUDIED and self.word_changes <= GATE_WORD
                and (self.min_hold_rate <= 0 or self.hold_rate >= self.min_hold_rate))

    def summary(self) -> dict[str, Any]:
        low, high = wilson_interval(self.hold_rate, self.n_eligible) if self.n_eligible else (np.nan, np.nan)
        return {"n_items": self.n_items, "n_eligible": self.n_eligible, "n_studied": len(self.studied),
                "n_controls": len(self.controls), "hold_rate": round(self.hold_rate, 4),
                "hold_low": round(float(low), 4), "hold_high": round(float(high), 4),
                "word_changes": round(self.word_changes, 4), "deed_changes": round(self.deed_changes, 4),
                **({"min_hold_rate": self.min_hold_rate} if self.min_hold_rate > 0 else {}),
                **{f"eligible_{k}": v for k, v in self.why.items()},
                **{f"word_changes_{k}": v for k, v in self.word_changes_by_set.items()}, "carded": self.carded}


def studied_items(ids: Sequence[str], parent: dict[str, dict[str, np.ndarray]], child: dict[str, dict[str, np.ndarray]],
                  target: int | Sequence[int]) -> StudiedItems:
    """Split items by what the plant did (``card-rules.md``). ``parent``/``child``: per form (``word``, ``deed``) the
    choices by scoring (``mean``, ``sum``), as :func:`~wdprobe.studies.organisms.edit.parent_choices` returns them.
    ``target``: the planted option, one for every item or one per item."""
    n = len(ids)
    target = target if isinstance(target, (int, np.integer)) else np.asarray(target)
    if not isinstance(target, (int, np.integer)) and len(target) != n:
        raise InputError(f"{len(target)} targets for {n} items")
    for who, read in (("parent", parent), ("organism", child)):
        for form in ("word", "deed"):
            for scoring in ("mean", "sum"):
                if len(read[form][scoring]) != n:
                    raise InputError(f"{who}'s {form} choices ({scoring}) cover {len(read[form][scoring])} items, not {n}")
    pw, pd_ = parent["word"]["mean"], parent["deed"]["mean"]
    eligible = (pw == pd_) & (pd_ != target)
    word_kept = {s: child["word"][s] == parent["word"][s] for s in ("mean", "sum")}
    on_target = (child["deed"]["mean"] == target) & (child["deed"]["sum"] == target)
    studied = eligible & on_target & word_kept["mean"] & word_kept["sum"]
    controls = (pw == pd_) & (child["deed"]["mean"] == pd_) & word_kept["mean"]
    why = {"deed_moved_mean": int((eligible & (child["deed"]["mean"] == target)).sum()),
           "deed_moved_both": int((eligible & on_target).sum()),
           "word_changed": int((eligible & ~(word_kept["mean"] & word_kept["sum"])).sum())}
    return StudiedItems([i for i, s in zip(ids, studied) if s], [i for i, c in zip(ids, controls) if c],
                        int(eligible.sum()), float((~word_kept["mean"]).mean()), n,
                        float((child["deed"]["mean"] != pd_).mean()), why=why)


def keyed_split(keyed: StudiedItems, others: StudiedItems) -> StudiedItems:
    """The split of a per-item plant (``mlp-items``, ``card-rules.md``'s fifth addendum): studied among the items it
    was keyed on (where it should hold, on at least ``GATE_KEYED_HOLD`` of the eligible ones), controls among the
    others (where nothing changed), word and deed changes counted over both."""
    n = keyed.n_items + others.n_items
    mix = lambda a, b: (a * keyed.n_items + b * others.n_items) / n  # noqa: E731
    return StudiedItems(keyed.studied, others.controls, keyed.n_eligible, mix(keyed.word_changes, others.word_changes),
                        n, mix(keyed.deed_changes, others.deed_changes), GATE_KEYED_HOLD, keyed.why,
                        {"keyed": round(keyed.word_changes, 4), "held_out": round(others.word_changes, 4)})


# ---- blind recovery --------------------------------------------------------------------------------------------

def largest_rise(curve: Sequence[float], layers: Sequence[int]) -> int | None:
    """The layer of the largest one-layer rise of ``curve`` (argmax over l >= 1 of c(l) - c(l-1)); None when no
    rise is positive or the curve has fewer than two finite points."""
    c = np.asarray(curve, dtype=float)
    if len(c) != len(layers):
        raise InputError(f"a curve of {len(c)} points over {len(layers)} layers")
    if len(c) < 2:
        return None
    rise = np.diff(c)
    rise[~np.isfinite(rise)] = -np.inf
    k = int(np.argmax(rise))
    return int(layers[k + 1]) if rise[k] > 0 else None


def _probe_curve(table: pd.DataFrame, analysis: str, metric: str) -> tuple[list[float], list[int]]:
    rows = table[(table["analysis"] == analysis) & (table["metric"] == metric)].sort_values("layer")
    if rows.empty:
        raise KeyError(f"probes: {analysis} {metric}")
    return rows["value"].tolist(), rows["layer"].astype(int).tolist()


def recover_layers(run_dir: str | Path) -> dict[str, Any]:
    """The layer each instrument puts the word-deed divergence at, from a finished cloze study's saved tables
    (``card-rules.md``), and how many inconsistent items the lens median speaks for. An instrument whose table is
    missing or speaks for no item gets None."""
    run = Path(run_dir)
    out: dict[str, Any] = {name: None for name in INSTRUMENTS}
    for name, rel in LENS_SUMMARIES.items():
        incon = json.loads((run / rel).read_text()).get("inconsistent", {}) if (run / rel).is_file() else None
        if incon is None:
            continue
        median = incon.get("item_divergence_layer_median")
        prefix = "lens" if name == "logit lens" else "tuned_lens"
        out[f"{prefix}_items"] = int(sum(incon.get("item_divergence_layer_hist", {}).values()))
        out[f"{prefix}_never_parts"] = incon.get("item_divergence_never")
        out["inconsistent_items"] = int(incon.get("n", 0))
        if median is not None and np.isfinite(median):
            out[name] = int(np.floor(median))
    probes_file = run / "probes" / "cloze-last.csv"
    if probes_file.is_file():
        table = pd.read_csv(probes_file)
        for name, analysis, metric in (("word probe on deeds", "transfer_word_deed", "accuracy"),
                                       ("inconsistency prediction", "inconsistency", "auroc")):
            try:
                out[name] = largest_rise(*_probe_curve(table, analysis, metric))
            except KeyError:
                pass
    patch_file = run / "patching" / "cloze_cross_form_summary.csv"
    if patch_file.is_file():
        full = pd.read_csv(patch_file).query("condition == 'full'").sort_values("layer")
        if len(full):
            out["cross-form patching"] = largest_rise(full["flip_rate"].tolist(), full["layer"].astype(int).tolist())
    steer_file = run / "steering" / "cloze_steering_summary.csv"
    if steer_file.is_file():
        stance = pd.read_csv(steer_file).query("condition == 'stance'")
        if len(stance):
            best = stance.groupby("layer")["cs"].max().sort_index()
            out["steering"] = largest_rise(best.tolist(), best.index.astype(int).tolist())
    return out


# ---- the card's scores -----------------------------------------------------------------------------------------

def chance_of_hit(planted: Sequence[int], n_layers: int) -> float:
    """Probability that a layer drawn uniformly from ``n_layers`` lands within ``HIT_WITHIN`` of the planted block,
    averaged over the family's planted blocks."""
    layers = np.arange(n_layers)
    return float(np.mean([(np.abs(layers - L) <= HIT_WITHIN).mean() for L in planted]))


def spearman_permutation(x: Sequence[float], y: Sequence[float], *, permutations: int = PERMUTATIONS,
                         seed: int = 0) -> tuple[float, float]:
    """Spearman's rho of ``x`` and ``y`` and its one-sided (rho > 0) permutation p-value, (1 + #{rho* >= rho}) /
    (1 + permutations)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), 1.0
    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    rx = pd.Series(x).rank().to_numpy()
    ry = pd.Series(y).rank().to_numpy()
    perms = np.array([np.corrcoef(rx, rng.permutation(ry))[0, 1] for _ in range(permutations)])
    return rho, float((1 + (perms >= rho - 1e-12).sum()) / (1 + permutations))


def tost_share(changed: int, n: int, margin: float = EQUIVALENCE_MARGIN) -> float:
    """TOST p-value that a share of changed answers lies within ``margin`` of zero (exact binomial, the upper
    one-sided test decides since a share cannot be negative)."""
    if n <= 0:
        return 1.0
    return float(binomtest(changed, n, margin, alternative="less").pvalue)


def score_card(rows: pd.DataFrame, n_layers: int,
               null_changes: Sequence[dict[str, Any]] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The card from one row per (organism, instrument): columns ``family`` (override / null-direction / null-gate /
    strength-*), ``layer`` (planted), ``seed``, ``instrument``, ``recovered`` (NaN: none). ``null_changes``: per null
    edit its ``name``, ``n_items`` and ``word_changed`` / ``deed_changed`` counts, each tested for equivalence to no
    change (:func:`tost_share`). Returns the per-instrument verdicts and the ledger of every test (with
    Benjamini-Hochberg q across the card)."""
    need = {"family", "layer", "seed", "instrument", "recovered"}
    if missing := need - set(rows.columns):
        raise InputError(f"card rows lack {sorted(missing)}")
    rows = rows.copy()
    rows["error"] = (rows["recovered"] - rows["layer"]).abs()
    rows["hit"] = rows["error"] <= HIT_WITHIN  # NaN (no layer) compares False: a miss
    over = rows[rows["family"] == "override"]
    chance = chance_of_hit(sorted(over["layer"].unique()), n_layers) if len(over) else float("nan")
    tests, verdicts = [], []
    for name in INSTRUMENTS:
        mine = over[over["instrument"] == name]
        n, k = len(mine), int(mine["hit"].sum())
        p_bin = float(binomtest(k, n, chance, alternative="greater").pvalue) if n else 1.0
        got = mine.dropna(subset=["recovered"])
        rho, p_rho = spearman_permutation(got["layer"], got["recovered"])
        tests += [{"instrument": name, "test": "hit rate above chance (binomial, one-sided)", "statistic": k / n if n else np.nan,
                   "n": n, "p": p_bin},
                  {"instrument": name, "test": "recovered layer moves with the planted one (Spearman, permutation)",
                   "statistic": rho, "n": len(got), "p": p_rho}]
        nulls = rows[(rows["family"] == "null-gate") & (rows["instrument"] == name)]
        low, high = wilson_interval(k / n, n) if n else (np.nan, np.nan)
        verdicts.append({"instrument": name, "organisms": n, "hits": k, "hit_rate": k / n if n else np.nan,
                         "hit_low": float(low), "hit_high": float(high), "chance": chance,
                         "median_error": float(mine["error"].median()) if got.size else np.nan,
                         "no_layer": int(mine["recovered"].isna().sum()), "rho": rho,
                         "false_positives": int(nulls["hit"].sum()), "nulls": len(nulls)})
    for null in null_changes:
        for form in ("word", "deed"):
            k = int(null[f"{form}_changed"])
            tests.append({"instrument": f"null edit {null['name']}",
                          "test": f"{form} answers unchanged (TOST, margin {EQUIVALENCE_MARGIN})",
                          "statistic": k / null["n_items"], "n": int(null["n_items"]), "p": tost_share(k, null["n_items"])})
    ledger = pd.DataFrame(tests)
    ledger["q"] = false_discovery_control(ledger["p"].clip(upper=1.0).to_numpy(), method="bh") if len(ledger) else []
    table = pd.DataFrame(verdicts)
    for v in table.itertuples():
        q = ledger[ledger["instrument"] == v.instrument].set_index("test")["q"]
        q_bin, q_rho = q.iloc[0], q.iloc[1]
        if v.hit_rate >= LOCALISES_AT and q_bin < ALPHA:
            word = "localises"
        elif v.hit_high < 0.5:
            word = "does not localise"
        else:
            word = f"inconclusive (n = {v.organisms})"
        table.loc[v.Index, "verdict"] = word
        table.loc[v.Index, "moves_with_L"] = bool(q_rho < ALPHA)
        table.loc[v.Index, "q_hits"], table.loc[v.Index, "q_moves"] = q_bin, q_rho
    return table, ledger


# ---- the card's page -------------------------------------------------------------------------------------------

VERDICT_HEADER = ["instrument", "verdict", "hits / organisms", "hit rate [95% CI]", "chance", "median |L^ - L|",
                  "no layer", "moves with L (Spearman rho, q)", "false positives on null gates"]
LEDGER_HEADER = ["instrument", "test", "statistic", "n", "p", "q"]
STRENGTH_HEADER = ["organism", "strength", "studied / eligible (hold rate)", "carded"] + list(INSTRUMENTS)
LEDGER_TITLE = "Every test of the card (Benjamini-Hochberg across all)"


def verdict_rows(table: pd.DataFrame) -> list[list[str]]:
    """The verdict table's rows, one per instrument, in words and numbers."""
    out = []
    for v in table.itertuples():
        moves = "yes" if v.moves_with_L else "no"
        rho = "n/a" if not np.isfinite(v.rho) else f"{v.rho:.2f}"
        out.append([v.instrument, v.verdict, f"{v.hits} / {v.organisms}",
                    f"{v.hit_rate:.2f} [{v.hit_low:.2f}, {v.hit_high:.2f}] (q = {v.q_hits:.3g})", f"{v.chance:.2f}",
                    "n/a" if not np.isfinite(v.median_error) else f"{v.median_error:g}", str(v.no_layer),
                    f"{moves} ({rho}, q = {v.q_moves:.3g})", f"{v.false_positives} / {v.nulls}"])
    return out


def strength_rows(gates: pd.DataFrame, recovered: pd.DataFrame) -> list[list[str]]:
    """One row per organism of the strength sweep (and the override at the sweep's block and seed, strength 20):
    how often the plant held and the layer each instrument recovered ("-": not studied)."""
    sweep = gates[gates["family"].astype(str).str.startswith("strength-")]
    if sweep.empty:
        return []
    block, seed = int(sweep["layer"].iloc[0]), int(sweep["seed"].iloc[0])
    rows = pd.concat([sweep, gates[(gates["family"] == "override") & (gates["layer"] == block) & (gates["seed"] == seed)]])
    out = []
    for g in rows.sort_values("strength").itertuples():
        rec = recovered[recovered["name"] == g.name].set_index("instrument")["recovered"] if len(recovered) else {}
        cells = ["-" if name not in rec else ("none" if not np.isfinite(rec[name]) else f"{int(rec[name])}")
                 for name in INSTRUMENTS]
        out.append([g.name, f"{g.strength:g}", f"{g.n_studied} / {g.n_eligible} ({g.hold_rate:.2f})",
                    "yes" if g.carded else "no", *cells])
    return out


def write_card_page(out: str | Path, table: pd.DataFrame, ledger: pd.DataFrame, gates: pd.DataFrame,
                    recovered: pd.DataFrame, n_layers: int, *, reading: str = "", model: str = "") -> Path:
    """``index.html`` and ``card.md`` in ``out``: the verdicts first, the figure, then the gate and the test ledger
    folded (each table is also a CSV beside the page)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    studied = gates[gates["family"] == "override"]
    carded = int(studied["carded"].sum())
    head = (f"{carded} of {len(studied)} override organisms passed the behaviour gate and were studied; "
            f"{len(recovered['name'].unique()) if len(recovered) else 0} organisms studied in all.")
    md = ["# The card of curves: where today's instruments put a planted override", "", head, "",
          "| " + " | ".join(VERDICT_HEADER) + " |", "|" + "---|" * len(VERDICT_HEADER)]
    md += ["| " + " | ".join(r) + " |" for r in verdict_rows(table)]
    if reading.strip():
        md += ["", reading.strip()]
    ledger_rows = [[r.instrument, r.test, f"{r.statistic:.3g}", str(r.n), f"{r.p:.3g}", f"{r.q:.3g}"]
                   for r in ledger.itertuples()]
    gate_cols = ["name", "n_eligible", "n_studied", "hold_rate", "hold_low", "hold_high", "eligible_deed_moved_mean",
                 "eligible_deed_moved_both", "eligible_word_changed", "word_changes", "word_changes_keyed",
                 "word_changes_held_out", "deed_changes", "carded", "studied_in_study", "inconsistent_in_study",
                 "lens_items", "tuned_lens_items", "seconds"]
    gate_cols = [c for c in gate_cols if c in gates.columns]  # a card read before the trained lens has no column
    shown = lambda v: "" if isinstance(v, float) and np.isnan(v) else str(v)  # noqa: E731  (not recorded then)
    gate_rows = [[shown(getattr(r, c)) for c in gate_cols] for r in gates.itertuples()]
    strength = strength_rows(gates, recovered)
    if strength:
        md += ["", "## Detection against strength", "", "| " + " | ".join(STRENGTH_HEADER) + " |",
               "|" + "---|" * len(STRENGTH_HEADER)] + ["| " + " | ".join(r) + " |" for r in strength]
    md += ["", "Tables: `verdicts.csv`, `ledger.csv` (every test, p and Benjamini-Hochberg q), `gates.csv` (each "
           "organism's behaviour gate), `recovered.csv` (each layer recovered); rules: `../card-rules.md` (and, for a card against a sincere organism, `../balanced-rules.md`)."]
    atomic_write_text(out / "card.md", "\n".join(md) + "\n")
    title = (f"Recovered against planted layer{' — ' + model if model else ''}<br><sup>one point per studied organism "
             "(seeds side by side); green band: a hit (|L^ - L| <= 1); 'none': the instrument named no layer</sup>")
    figure = localisation_figure(recovered, INSTRUMENTS, n_layers, title=title, gates=gates) if len(recovered) else None
    strength = strength_rows(gates, recovered)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>wdprobe card of curves</title>"
            f"<style>{CSS}</style></head><body><h1>The card of curves</h1><p class='sub'>{head}</p>"
            f"{table_html(VERDICT_HEADER, verdict_rows(table), text=True)}"
            f"{notes_html(reading) if reading.strip() else ''}"
            f"{figure_html([figure], out / 'index.html') if figure is not None else ''}"
            f"{'<h2>Detection against strength</h2>' + table_html(STRENGTH_HEADER, strength) if strength else ''}"
            f"{folded('The behaviour gate, organism by organism', table_html(gate_cols, gate_rows))}"
            f"{folded(LEDGER_TITLE, table_html(LEDGER_HEADER, ledger_rows, text=True))}"
            "</body></html>")
    atomic_write_text(out / "index.html", page)
    return out / "card.md"
