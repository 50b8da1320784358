"""Findings in words that follow their tests (SCIENCE.md §9): a claim is made only when its test supports it,
and otherwise the sentence says what was measured and that it is inconclusive at this n.

Every function takes the JSON a stage saved (an :class:`~wdprobe.scoring.stats.Evidence` or a
:class:`~wdprobe.methods.decoding.LayerTest` summary), so a report words a finished run without recomputing. A test
record the report has given its report-wide ``q_value`` (:func:`wdprobe.reports.claims.with_q_values`) supports a
claim only when it survives that correction too: a stage's own test accounts for picking its best layer, the q-value
for the report's other tests. Every claim worded as an effect is recorded (:func:`asserted_claims`), so a report can
show that each rests on a ledger entry whose q supports it.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Mapping

from wdprobe.reports.claims import Q_LEVEL, UNLISTED

__all__ = ["layer_words", "interval", "p_text", "stats_text", "versus", "decodable", "verdict", "supported", "corrected_away",
           "asserted_claims", "UNLISTED"]

_ASSERTED: ContextVar[list[str] | None] = ContextVar("asserted_claims", default=None)


@contextmanager
def asserted_claims() -> Iterator[list[str]]:
    """Collect the ledger keys of every test worded as an effect inside the block."""
    claims: list[str] = []
    token = _ASSERTED.set(claims)
    try:
        yield claims
    finally:
        _ASSERTED.reset(token)


def supported(evidence: Mapping[str, Any], *, record: bool = True) -> bool:
    """Whether a test supports wording its effect as shown: significant in its stage's own test (which accounts for
    picking the best layer or setting) and, where the report gave it one, q < Q_LEVEL across the report.
    ``record=False``: a look that words nothing (the claim is not recorded)."""
    q = evidence.get("q_value")
    ok = bool(evidence.get("significant")) and (q is None or q < Q_LEVEL)
    claims = _ASSERTED.get()
    if ok and record and claims is not None:
        claims.append(evidence.get("ledger_key") or UNLISTED)
    return ok


def corrected_away(evidence: Mapping[str, Any]) -> bool:
    """Significant in its own stage, but not once the report's other tests are counted."""
    q = evidence.get("q_value")
    return bool(evidence.get("significant")) and q is not None and q >= Q_LEVEL


def layer_words(summary: Mapping[str, Any]) -> str:
    """``layer 9``, or ``layers 1 and 17 (tied)`` where several layers reach the best value."""
    tied = summary.get("tied_best_layers")
    if tied is None and summary.get("ic_by_layer"):  # an IC summary written before ties were recorded
        curve = {int(k): float(v) for k, v in summary["ic_by_layer"].items()}
        tied = [k for k, v in curve.items() if abs(v - summary["best"]) <= 1e-12]
    tied = tied or [summary["best_layer"]]
    if len(tied) == 1:
        return f"layer {tied[0]}"
    names = ", ".join(str(t) for t in tied[:-1]) + f" and {tied[-1]}"
    return f"layers {names} (tied)"


def interval(value: float, low: float, high: float, digits: int = 2) -> str:
    """``0.52 [0.38, 0.63]``: a value with its 95% interval."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def p_text(p: float) -> str:
    """A p-value as a reader wants it (three decimals, never 'p = 0.000')."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def stats_text(evidence: Mapping[str, Any]) -> str:
    """``p = 0.012, q = 0.040``: the test's own p and, where the report gave one, its q across the report."""
    q = evidence.get("q_value")
    return p_text(evidence["p_value"]) + ("" if q is None else f", q = {q:.3f}")


def verdict(evidence: Mapping[str, Any], *, record: bool = True) -> int:
    """+1 / -1 for a supported effect in that direction (:func:`supported`), 0 for inconclusive."""
    if not supported(evidence, record=record):
        return 0
    return 1 if evidence["effect"] > 0 else -1


def versus(evidence: Mapping[str, Any], *, above: str, below: str, neither: str) -> str:
    """The wording a test supports: ``above``/``below`` when significant that way, else ``neither`` followed by
    'inconclusive at n = ...'."""
    e = evidence
    stats = f"{stats_text(e)}, n = {e['n']}"
    v = verdict(e)
    if v > 0:
        return f"{above} ({stats})"
    if v < 0:
        return f"{below} ({stats})"
    if corrected_away(e):
        return (f"{neither}: inconclusive at n = {e['n']} ({p_text(e['p_value'])} in its own test, but q = "
                f"{e['q_value']:.3f} once the report's other tests are counted)")
    return f"{neither}: inconclusive at n = {e['n']} ({stats_text(e)})"


def decodable(summary: Mapping[str, Any] | None, what: str, *, layers: int | None = None, unit: str = "items") -> str:
    """Whether ``what`` is linearly decodable, from a max-over-layers decoding test."""
    if not summary:
        return f"{what}: not measured"
    s = summary
    value = interval(s["best"], s["best_low"], s["best_high"])
    metric = "AUROC" if s.get("metric") == "auroc" else "balanced accuracy"
    picked = f"the best of {layers} layers" if layers else "the best layer"
    within = ""
    if s.get("within_domain_at_best") is not None:
        within = (f"; within domains {s['within_domain_at_best']:.2f}, random labels "
                  f"{s['within_domain_control_at_best']:.2f}")
    if supported(s):
        return (f"{what} is decodable ({metric} {value} at {layer_words(s)}, random labels "
                f"{s['control_at_best']:.2f}{within}; family-wise {stats_text(s)}; first layer above the corrected "
                f"threshold {s['first_significant_layer']})")
    if corrected_away(s):
        inside = f" ({within[2:]})" if within else ""
        return (f"{what} is not shown to be decodable once the report's other tests are counted: {metric} {value} at "
                f"{layer_words(s)}{inside} beats its random-label threshold ({s['threshold']:.2f}, family-wise "
                f"{p_text(s['p_value'])}), but q = {s['q_value']:.3f} across the report: inconclusive at n = "
                f"{s['n_groups']} {unit}")
    return (f"{what} is not shown to be decodable: {picked} reaches {metric} {value} ({layer_words(s)}), within "
            f"what random labels reach when the best layer is picked (threshold {s['threshold']:.2f}, "
            f"{stats_text(s)}{within}): inconclusive at n = {s['n_groups']} {unit}")
