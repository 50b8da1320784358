"""Where did a variant's behaviour change? Cross-model patching of a variant (an organism, an aligned or fine-tuned
checkpoint) into its reference on items, per form, at every site, with the claims tested and corrected.

Each item's word or deed cloze prompt is read with each of its two options by both models; at every site (the
residual after each block, each block's attention and MLP contributions, each head's write) the variant's activation
replaces the reference's at every position. A site's *restored share* is how much of the variant's change of the
choice margin the site alone reproduces (``wdprobe.methods.cross_model.restored_share``), signed per item toward the
variant's own change unless a target option is given. Per site: the share with a bootstrap interval over items, and a
sign-flip test that its per-item change differs from zero; Benjamini-Hochberg across every site and form of the run.
Results are written per form as each finishes (a rerun with the same settings resumes; other settings are refused).
"""
from __future__ import annotations

import html
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from wdprobe.core.cache import atomic_write_json, atomic_write_text
from wdprobe.core.model import load_model
from wdprobe.data.prompts import cloze_prompt
from wdprobe.data.wdct import Item
from wdprobe.errors import InputError
from wdprobe.figures.crossmodel import restored_share_figure
from wdprobe.figures.page import figure_html
from wdprobe.figures.probes import png_export, write_png
from wdprobe.methods.cross_model import (
    POSITION_CLASSES,
    SITE_KINDS,
    attribute_cross_model,
    attribution_agreement,
    choice_margins,
    cross_model_patch,
    option_sequences,
    restored_share,
    sites_for,
)
from wdprobe.reports.html import CSS, notes_html
from wdprobe.scoring.stats import bootstrap_indices, paired_difference_test

FORMS = ("word", "deed")
PATCHERS = {"exact": cross_model_patch, "attribution": attribute_cross_model}
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class CrossModelSettings:
    """What a cross-model run measures; checked on resume."""

    reference: str
    variant: str
    forms: tuple[str, ...] = FORMS
    kinds: tuple[str, ...] = ("resid", "attn", "mlp", "head")
    positions: str = "all"
    item_ids: tuple[str, ...] = field(default_factory=tuple)
    toward: tuple[int, ...] | None = None  # one option per item, or None: each item's own change
    batch_size: int = 16
    method: str = "exact"  # or "attribution": every site estimated from one forward and backward per batch
    check_items: int = 0  # attribution only: also patch exactly on this many items and report the agreement

    def __post_init__(self) -> None:
        bad = [f for f in self.forms if f not in FORMS]
        if bad or not self.forms:
            raise InputError(f"forms {list(self.forms)}: choose from {list(FORMS)}")
        unknown = [k for k in self.kinds if k not in SITE_KINDS]
        if unknown or not self.kinds:
            raise InputError(f"site kinds {list(self.kinds)}: choose from {list(SITE_KINDS)}")
        if self.positions not in POSITION_CLASSES:
            raise InputError(f"positions {self.positions!r}: choose from {list(POSITION_CLASSES)}")
        if self.toward is not None and len(self.toward) != len(self.item_ids):
            raise InputError(f"{len(self.toward)} target options for {len(self.item_ids)} items")
        if self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size}: must be at least 1")
        if self.method not in PATCHERS:
            raise InputError(f"method {self.method!r}: choose from {list(PATCHERS)}")
        if self.check_items < 0 or (self.check_items and self.method == "exact"):
            raise InputError("check_items: a number of items (>= 0) to check attribution against exact patching on")


def _interval(moved: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = bootstrap_indices(shift.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = moved[:, idx].sum(2) / shift[idx].sum(1)[None]
    return np.nanpercentile(boots, 2.5, axis=1), np.nanpercentile(boots, 97.5, axis=1)


def measure_form(reference, variant, items: Sequence[Item], form: str, settings: CrossModelSettings,
                 progress: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, dict]:
    """One form: the per-site table and the variant's change on these items."""
    seqs, starts = option_sequences(reference, [cloze_prompt(it, form) for it in items], [it.options(form) for it in items])
    sites = sites_for(reference, settings.kinds)
    if settings.method == "exact":
        res = cross_model_patch(reference, variant, seqs, starts, sites, positions=settings.positions,
                                batch_size=settings.batch_size, progress=progress)
    else:
        res = attribute_cross_model(reference, variant, seqs, starts, sites, positions=settings.positions,
                                    batch_size=settings.batch_size)
    rows: dict[str, dict] = {s.label: {"form": form, "site": s.label, "kind": s.kind, "block": s.layer,
                                       "unit": s.unit, "identical": bool(res.identical[k])}
                             for k, s in enumerate(res.sites)}
    change = {}
    for scoring in ("mean", "sum"):
        if settings.toward is None:  # each item's own change: the sign of the variant-minus-reference margin
            raw = restored_share(res, scoring)[2]
            sign = np.where(raw >= 0, 1.0, -1.0)
        else:
            sign = np.where(np.asarray(settings.toward) == 0, 1.0, -1.0)
        share, moved, shift = restored_share(res, scoring, toward=sign)
        low, high = _interval(moved, shift)
        for k, s in enumerate(res.sites):
            test = paired_difference_test(moved[k]) if not res.identical[k] else None
            rows[s.label].update({f"restored_{scoring}": float(share[k]), f"low_{scoring}": float(low[k]),
                                  f"high_{scoring}": float(high[k]),
                                  f"p_{scoring}": 1.0 if test is None else float(test.p_value)})
        total = paired_difference_test(shift)
        change[scoring] = {"mean": float(shift.mean()), "low": total.low, "high": total.high, "p": total.p_value,
                           "n_items": int(shift.size), "per_item": [float(v) for v in shift]}  # for equivalence tests
    if settings.check_items:  # attribution against exact patching on the first items, per site, summed margins
        n = 2 * min(settings.check_items, len(items))
        exact = cross_model_patch(reference, variant, seqs[:n], starts[:n], sites, positions=settings.positions,
                                  batch_size=settings.batch_size)
        approx = attribute_cross_model(reference, variant, seqs[:n], starts[:n], sites, positions=settings.positions,
                                       batch_size=settings.batch_size)
        effect = lambda r: (choice_margins(r.patched, r.n_tokens, "mean")  # noqa: E731
                            - choice_margins(r.target_clean, r.n_tokens, "mean")[None]).sum(1)
        change["check"] = {"n_items": n // 2, **attribution_agreement(effect(exact), effect(approx), top=5)}
    return pd.DataFrame(list(rows.values())), change


def run_cross_model(out: str | Path, reference, variant, items: Sequence[Item], settings: CrossModelSettings, *,
                    log: Callable[[str], None] = print) -> pd.DataFrame:
    """Measure every form of ``settings`` into ``out`` (``sites.csv`` with q-values across the run, ``summary.json``),
    resuming forms already measured with the same settings."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if [it.id for it in items] != list(settings.item_ids):
        raise InputError("the items given are not the items the settings name (item_ids)")
    bad = [it.id for it in items if it.n_options != 2]
    if bad:
        raise InputError(f"items {bad[:3]}{' ...' if len(bad) > 3 else ''}: cross-model patching reads two-option items")
    saved = out / SETTINGS_FILE
    # the weights' revisions too: a variant rebuilt at the same path (training is not bit-reproducible across machines)
    # must not resume into parts measured on the earlier build
    mine = {**json.loads(json.dumps(asdict(settings))), "reference_revision": getattr(reference, "revision", None),
            "variant_revision": getattr(variant, "revision", None)}
    if saved.is_file():
        before = json.loads(saved.read_text())
        changed = sorted(k for k in set(before) | set(mine) if before.get(k) != mine.get(k))
        if changed:
            raise InputError(f"{out} holds a cross-model run with other settings or models ({', '.join(changed)} "
                             "differ): choose another --out, or delete it to start over")
    atomic_write_json(saved, mine)
    frames, changes = [], {}
    for form in settings.forms:
        part, part_change = out / f"{form}-sites.csv", out / f"{form}-change.json"
        if part.is_file() and part_change.is_file():
            frames.append(pd.read_csv(part))
            changes[form] = json.loads(part_change.read_text())
            log(f"{form}: measured already")
            continue
        started = time.perf_counter()
        frame, change = measure_form(reference, variant, items, form, settings)
        frame.to_csv(part.with_suffix(".tmp"), index=False)
        part.with_suffix(".tmp").replace(part)
        change["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_json(part_change, change)
        frames.append(frame)
        changes[form] = change
        log(f"{form}: {len(frame)} sites in {change['seconds']:.0f} s")
    table = pd.concat(frames, ignore_index=True)
    for scoring in ("mean", "sum"):
        table[f"q_{scoring}"] = false_discovery_control(table[f"p_{scoring}"].to_numpy(float), method="bh")
    table.to_csv(out / "sites.csv", index=False)
    atomic_write_json(out / "summary.json", {"reference": settings.reference, "variant": settings.variant,
                                             "n_items": len(items), "positions": settings.positions,
                                             "toward": None if settings.toward is None else "given",
                                             "method": settings.method,
                                             "change": changes, "n_tests": int(len(table) * 2)})
    return table


def first_block_restoring(table: pd.DataFrame, form: str, at_least: float = 0.5, scoring: str = "mean") -> int | None:
    """The first block whose residual alone restores at least ``at_least`` of the variant's change (None: none)."""
    part = table[(table["form"] == form) & (table["kind"] == "resid")].sort_values("block")
    hit = part[part[f"restored_{scoring}"] >= at_least]
    return None if hit.empty else int(hit["block"].iloc[0])


def reading(table: pd.DataFrame, summary: dict, *, top: int = 5, alpha: float = 0.05) -> list[str]:
    """The findings, worded from the tests: per form, the variant's change, where the residual first carries it, and
    the components whose share differs from zero after correction (largest first)."""
    lines = []
    for form, by_scoring in summary["change"].items():
        ch = by_scoring["mean"]
        m, p = ch["mean"], ch["p"]
        changed = "changes" if p < alpha else "does not detectably change (not an equivalence: inconclusive at " \
                                              f"n = {ch['n_items']})"
        lines.append(f"- **{form}**: the variant {changed} the choice margin toward "
                     f"{'its own choices' if summary.get('toward') is None else 'the target option'}: "
                     f"{m:.3f} nats per token [{ch['low']:.3f}, {ch['high']:.3f}], p = {p:.3g}, n = {ch['n_items']}.")
        check = by_scoring.get("check")
        if check:
            lines.append(f"  - attribution against exact patching on {check['n_items']} items: Spearman "
                         f"{check['spearman']:.2f} over sites, {check['top_k_agreement']:.0%} of exact patching's top "
                         f"{check['top_k']} sites also in attribution's")
        if p >= alpha:
            continue
        block = first_block_restoring(table, form)
        lines.append(f"  - the residual first carries at least half of it after block {block}" if block is not None
                     else "  - no block's residual alone carries half of it")
        comps = table[(table["form"] == form) & (table["kind"] != "resid") & (table["q_mean"] < alpha)]
        comps = comps.sort_values("restored_mean", ascending=False).head(top)
        if comps.empty:
            lines.append("  - no single attention, MLP or head site carries a share different from zero (q >= 0.05)")
        else:
            parts = [f"{r.site} {r.restored_mean:.2f} [{r.low_mean:.2f}, {r.high_mean:.2f}] (q = {r.q_mean:.2g})"
                     for r in comps.itertuples()]
            lines.append("  - components that alone carry a share (q < 0.05 across all sites and forms), largest first: "
                         + "; ".join(parts))
    return lines


def write_readme(out: str | Path, table: pd.DataFrame, summary: dict, figure_names: Sequence[str]) -> Path:
    """The run's README: what was compared, the findings, the files."""
    out = Path(out)
    method = "attribution (first-order estimates)" if summary.get("method") == "attribution" else "exact patching"
    text = [f"# Cross-model patching: {summary['variant']} into {summary['reference']}", "", f"Method: {method}.", "",
            f"{summary['n_items']} items; the variant's activation at each site replaces the reference's at "
            f"{summary['positions']} positions; restored share = the share of the variant's change of the choice margin "
            "(per-token mean; the sum in `sites.csv`) that the site alone reproduces, with a 95% bootstrap interval over "
            f"items. {summary['n_tests']} tests (every site, form and scoring), Benjamini-Hochberg across them.", "",
            "## Findings", "", *reading(table, summary), "", "## Files", "",
            "- `sites.csv`: one row per form and site (restored share, interval, p, q, by the mean and the sum)",
            "- `summary.json`: the variant's change per form with its interval and test",
            *[f"- `{n}`" for n in figure_names]]
    path = out / "README.md"
    atomic_write_text(path, "\n".join(text) + "\n")
    return path


def cross_model_study(out: str | Path, reference: str, variant: str, items: Sequence[Item], *,
                      forms: Sequence[str] = FORMS, kinds: Sequence[str] = ("resid", "attn", "mlp", "head"),
                      positions: str = "all", toward: Sequence[int] | None = None, batch_size: int = 16,
                      method: str = "exact", check_items: int = 0,
                      dtype: str = "float32", device: str | None = None, png: bool = True,
                      log: Callable[[str], None] = print) -> Path:
    """Load both models, measure (resuming), draw and write the README; returns the README's path."""
    settings = CrossModelSettings(reference=reference, variant=variant, forms=tuple(forms), kinds=tuple(kinds),
                                  positions=positions, item_ids=tuple(it.id for it in items),
                                  toward=None if toward is None else tuple(int(t) for t in toward),
                                  batch_size=batch_size, method=method, check_items=check_items)
    ref = load_model(reference, dtype=dtype, device=device)
    var = load_model(variant, dtype=dtype, device=device)
    table = run_cross_model(out, ref, var, items, settings, log=log)
    summary = json.loads((Path(out) / "summary.json").read_text())
    fig = restored_share_figure(table, title=f"Where {Path(variant).name} differs from {Path(reference).name}<br><sup>"
                                             "share of the variant's change of the choice margin each site alone "
                                             "restores (per-token mean); dots: q < 0.05</sup>",
                                change_p={f: c["mean"]["p"] for f, c in summary["change"].items()})
    names = ["index.html"]
    with png_export(png):
        if write_png(fig, Path(out) / "sites.png"):
            names.append("sites.png")
    readme = write_readme(out, table, summary, names)
    findings = "\n".join(reading(table, summary))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>wdprobe cross-model patching</title>"
            f"<style>{CSS}</style></head><body><h1>Cross-model patching</h1>"
            f"<p class='sub'>{html.escape(Path(variant).name)} patched into {html.escape(Path(reference).name)}, "
            f"{summary['n_items']} items</p>{notes_html(findings)}{figure_html([fig], Path(out) / 'index.html')}"
            "</body></html>")
    atomic_write_text(Path(out) / "index.html", page)
    return readme
