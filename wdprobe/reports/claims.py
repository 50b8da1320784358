"""Every test a report runs, in one ledger, corrected together.

A study report rests on dozens of tests (probes per position and analysis, readings against chance, cross-form and
steering tests, internal consistency); each stage corrects for its own choice of the best layer, but nothing corrected
across the report, so a finding at p = 0.0498 read as significant beside 60 other tests. The ledger collects every
test record the run's result files hold (any object with a ``p_value``), applies Benjamini-Hochberg across all of
them (scipy's ``false_discovery_control``), and states the Monte-Carlo error of permutation p-values where the number
of permutations is recorded. The report then says which tests survive correction and which do not.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from wdprobe.core.cache import atomic_write_text
from wdprobe.errors import IntegrityError
from wdprobe.reports.html import verdict_line
from wdprobe.runs.rundir import checked_result_text

__all__ = ["Claim", "collect_claims", "claims_ledger", "RESULT_FILES", "Q_LEVEL", "test_records", "ledger_key",
           "with_q_values", "q_by_key", "Finding", "UNLISTED", "unsupported_claims", "publish_findings"]

Q_LEVEL = 0.05
UNLISTED = "(no ledger entry)"  # what a claim resting on a test the report's ledger does not hold is recorded as
# the run's result files that hold tests (relative globs); copies of them elsewhere (the manifest's headlines) are
# not read twice
RESULT_FILES = ("metrics.json", "probes/*headline.json", "probes/content-*.json", "probes/cloze-*.json",
                "patching/*headline.json",
                "steering/*headline.json")
EFFECT_KEYS = ("effect", "best", "value", "statistic", "observed", "mean")


@dataclass
class Finding:
    """One numbered finding: a short claim and the numbers behind it (plain text, no markup)."""

    title: str
    text: str
    numbers: dict[str, Any] = field(default_factory=dict)
    claims: list[str] = field(default_factory=list)  # ledger keys of the tests its wording asserts as effects


@dataclass(frozen=True)
class Claim:
    """One test of a report: where it is recorded (``source`` file, ``test`` path inside it), its effect and p-value,
    and, for permutation tests, the number of permutations and the Monte-Carlo standard error of p."""

    source: str
    test: str
    effect: float | None
    p: float
    n_permutations: int | None
    mc_error: float | None


def test_records(obj: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object holding a numeric ``p_value`` under ``obj`` (a test record), with its path."""
    if isinstance(obj, dict):
        if isinstance(obj.get("p_value"), (int, float)) and not isinstance(obj.get("p_value"), bool):
            yield path, obj
            return
        for key, value in obj.items():
            yield from test_records(value, f"{path}/{key}" if path else str(key))
    elif isinstance(obj, list):
        for k, value in enumerate(obj):
            yield from test_records(value, f"{path}[{k}]")


def collect_claims(run_dir: str | Path) -> list[Claim]:
    """The tests recorded in a run's result files (:data:`RESULT_FILES`), in file order."""
    run = Path(run_dir)
    claims: list[Claim] = []
    seen: set[Path] = set()
    for pattern in RESULT_FILES:
        for f in sorted(run.glob(pattern)):
            if f in seen:
                continue
            seen.add(f)
            try:
                data = json.loads(checked_result_text(run, f))  # verified against its stage's recorded sha256
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise IntegrityError(f"{f}: unreadable result file ({exc}); rerun the stage that wrote it") from None
            for path, rec in test_records(data):
                p = float(rec["p_value"])
                if not math.isfinite(p) or not 0 <= p <= 1:
                    raise IntegrityError(f"{f}: test {path} has p = {rec['p_value']!r}, not a probability")
                effect = next((float(rec[k]) for k in EFFECT_KEYS
                               if isinstance(rec.get(k), (int, float)) and not isinstance(rec.get(k), bool)), None)
                n_perm = rec.get("n_permutations")
                n_perm = int(n_perm) if isinstance(n_perm, (int, float)) and n_perm else None
                mc = math.sqrt(p * (1 - p) / n_perm) if n_perm else None
                claims.append(Claim(str(f.relative_to(run)), path, effect, p, n_perm, mc))
    return claims


def claims_ledger(run_dir: str | Path) -> pd.DataFrame:
    """The run's tests as a table with Benjamini-Hochberg q-values across all of them, and whether each survives
    (``q < Q_LEVEL``); ``fragile`` marks a test whose p lies within two Monte-Carlo errors of 0.05 (more
    permutations could move it across)."""
    claims = collect_claims(run_dir)
    frame = pd.DataFrame([asdict(c) for c in claims],
                         columns=["source", "test", "effect", "p", "n_permutations", "mc_error"])
    frame["q"] = false_discovery_control(frame["p"].to_numpy(float), method="bh") if len(frame) else []
    frame["p_below_0.05"] = frame["p"] < 0.05
    frame["survives"] = frame["q"] < Q_LEVEL
    frame["fragile"] = frame["mc_error"].notna() & ((frame["p"] - 0.05).abs() < 2 * frame["mc_error"].fillna(np.inf))
    return frame


def ledger_key(source: str, test: str) -> str:
    """One test's name across the report: its result file and its path inside it."""
    return f"{source}#{test}"


def q_by_key(ledger: pd.DataFrame) -> dict[str, float]:
    """Each ledger test's report-wide q-value, keyed by :func:`ledger_key`."""
    return {ledger_key(r.source, r.test): float(r.q) for r in ledger.itertuples()}


def with_q_values(data: Any, source: str, ledger: pd.DataFrame) -> Any:
    """``data`` (a result file's JSON, read from ``source``) with each test record given its report-wide
    ``q_value`` and its ``ledger_key``, so the wording can follow the correction across the report. A record the
    ledger does not hold gets neither (and no finding may assert it)."""
    q = q_by_key(ledger)
    for path, rec in test_records(data):
        key = ledger_key(source, path)
        if key in q:
            rec["q_value"], rec["ledger_key"] = q[key], key
    return data


def unsupported_claims(found: list[Finding], ledger: pd.DataFrame) -> list[str]:
    """Every claim a finding words as an effect that the report's ledger does not support: a test the ledger does
    not hold, or one whose q-value is not below ``Q_LEVEL``. A sound report returns none."""
    q = q_by_key(ledger)
    problems = []
    for f in found:
        for key in f.claims:
            if key == UNLISTED or key not in q:
                problems.append(f"{f.title!r} asserts a test the claims ledger does not hold ({key})")
            elif q[key] >= Q_LEVEL:
                problems.append(f"{f.title!r} asserts {key}, whose q = {q[key]:.3f} is not below {Q_LEVEL}")
    return problems


def publish_findings(out: Path, found: list[Finding], ledger: pd.DataFrame, culprit: str) -> None:
    """Write ``findings.json`` (each finding's title, verdict and the ledger keys it asserts), refusing with an
    :class:`IntegrityError` naming ``culprit`` when a finding words an effect its correction does not support."""
    problems = unsupported_claims(found, ledger)
    if problems:  # the wording gate failed: never publish a claim its correction does not support
        raise IntegrityError(f"{culprit}: the findings word claims the report's tests do not support: "
                             + "; ".join(problems))
    atomic_write_text(Path(out) / "findings.json", json.dumps(
        [{"title": f.title, "verdict": verdict_line(f.text), "claims": f.claims} for f in found], indent=2) + "\n")
