"""Findings in words that follow their tests (SCIENCE.md §9): a claim is made only when its test supports it,
and otherwise the sentence says what was measured and that it is inconclusive at this n.

Every function takes the JSON a stage saved (an :class:`~wdprobe.scoring.stats.Evidence` or a
:class:`~wdprobe.methods.decoding.LayerTest` summary), so a report words a finished run without recomputing.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["interval", "p_text", "versus", "decodable", "verdict"]


def interval(value: float, low: float, high: float, digits: int = 2) -> str:
    """``0.52 [0.38, 0.63]``: a value with its 95% interval."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def p_text(p: float) -> str:
    """A p-value as a reader wants it (three decimals, never 'p = 0.000')."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict(evidence: Mapping[str, Any]) -> int:
    """+1 / -1 for a significant effect in that direction, 0 for inconclusive."""
    if not evidence.get("significant"):
        return 0
    return 1 if evidence["effect"] > 0 else -1


def versus(evidence: Mapping[str, Any], *, above: str, below: str, neither: str) -> str:
    """The wording a test supports: ``above``/``below`` when significant that way, else ``neither`` followed by
    'inconclusive at n = ...'."""
    e = evidence
    stats = f"{p_text(e['p_value'])}, n = {e['n']}"
    v = verdict(e)
    if v > 0:
        return f"{above} ({stats})"
    if v < 0:
        return f"{below} ({stats})"
    return f"{neither}: inconclusive at n = {e['n']} ({p_text(e['p_value'])})"


def decodable(summary: Mapping[str, Any] | None, what: str, *, layers: int | None = None, unit: str = "items") -> str:
    """Whether ``what`` is linearly decodable, from a max-over-layers decoding test."""
    if not summary:
        return f"{what}: not measured"
    s = summary
    value = interval(s["best"], s["best_low"], s["best_high"])
    metric = "AUROC" if s.get("metric") == "auroc" else "balanced accuracy"
    picked = f"the best of {layers} layers" if layers else "the best layer"
    if s["significant"]:
        return (f"{what} is decodable ({metric} {value} at layer {s['best_layer']}, random labels "
                f"{s['control_at_best']:.2f}; family-wise {p_text(s['p_value'])}; first layer above the corrected "
                f"threshold {s['first_significant_layer']})")
    return (f"{what} is not shown to be decodable: {picked} reaches {metric} {value} (layer {s['best_layer']}), within "
            f"what random labels reach when the best layer is picked (threshold {s['threshold']:.2f}, "
            f"{p_text(s['p_value'])}): inconclusive at n = {s['n_groups']} {unit}")
