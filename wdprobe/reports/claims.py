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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from wdprobe.errors import IntegrityError
from wdprobe.runs.rundir import checked_result_text

__all__ = ["Claim", "collect_claims", "claims_ledger", "RESULT_FILES", "Q_LEVEL", "test_records", "ledger_key",
           "with_q_values"]

Q_LEVEL = 0.05
# the run's result files that hold tests (relative globs); copies of them elsewhere (the manifest's headlines) are
# not read twice
RESULT_FILES = ("metrics.json", "probes/*headline.json", "probes/content-*.json", "probes/cloze-*.json",
                "patching/*headline.json",
                "steering/*headline.json")
EFFECT_KEYS = ("effect", "best", "value", "statistic", "observed", "mean")


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


def with_q_values(data: Any, source: str, ledger: pd.DataFrame) -> Any:
    """``data`` (a result file's JSON, read from ``source``) with each test record given its report-wide
    ``q_value`` and its ``ledger_key``, so the wording can follow the correction across the report. A record the
    ledger does not hold gets neither (and no finding may assert it)."""
    q = {ledger_key(r.source, r.test): float(r.q) for r in ledger.itertuples()}
    for path, rec in test_records(data):
        key = ledger_key(source, path)
        if key in q:
            rec["q_value"], rec["ledger_key"] = q[key], key
    return data
