"""Every number a committed report's findings quote is backed by a table committed beside it.

A finding is worded from the run's tables; if a number in the findings cannot be found (at the precision
it is quoted) in any CSV or JSON of the report folder, the report is not reproducible from what is
committed (as happened when two alignment runs of one form overwrote each other's tables)."""
import csv
import json
import re
from pathlib import Path

import pytest

REPORTS = Path(__file__).resolve().parents[3] / "reports"
NUMBER = re.compile(r"(?<![\w.\-/])(-?\d+(?:,\d{3})*(?:\.\d+)?)(%?)(?![\w\-/])")


def findings(readme: Path) -> str:
    text = readme.read_text()
    match = re.search(r"^## Findings\n(.*?)(?=^## )", text, flags=re.S | re.M)
    return match.group(1) if match else ""


def quoted_numbers(text: str) -> list[tuple[str, float, int, bool]]:
    text = re.sub(r"\[[^\]]*\]\([^)]*\)", "", text)  # links
    text = re.sub(r"`[^`]*`", "", text)  # code
    text = re.sub(r"p < 0\.001", "", text)  # a bound on a p-value, not a quoted measurement
    text = re.sub(r"(q < |below )0\.05\b", "", text)  # the significance level, not a measurement
    out = []
    for m in NUMBER.finditer(text):
        raw, pct = m.group(1).replace(",", ""), m.group(2) == "%"
        decimals = len(raw.split(".")[1]) if "." in raw else 0
        out.append((m.group(0), float(raw), decimals, pct))
    return out


def table_values(folder: Path) -> list[float]:
    values: list[float] = []

    def walk(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            values.append(float(obj))
        elif isinstance(obj, str):
            try:
                values.append(float(obj))
            except ValueError:
                pass

    for path in folder.rglob("*"):
        if path.suffix == ".json":
            walk(json.loads(path.read_text()))
        elif path.suffix == ".csv":
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
            for row in rows:
                walk(row)
            values.append(float(len(rows) - 1))  # a count of a table's rows ("the report's 42 tests") is backed by it
    return values


def backed(x: float, decimals: int, pct: bool, values: list[float]) -> bool:
    candidates = [x / 100, x] if pct else [x]
    for target in candidates:
        d = decimals + (2 if pct and target != x else 0)
        if any(round(v, d) == round(target, d) for v in values):
            return True
        if decimals == 0 and any(abs(v - target) < 0.5 for v in values):  # counts and layer numbers
            return True
    return False


@pytest.mark.parametrize("readme", sorted(REPORTS.rglob("README.md")), ids=lambda p: str(p.relative_to(REPORTS)))
def test_findings_quote_only_committed_numbers(readme):
    text = findings(readme)
    if not text:
        pytest.skip("no findings section")
    values = table_values(readme.parent)
    missing = [q for q, x, d, pct in quoted_numbers(text) if not backed(x, d, pct, values)]
    assert not missing, f"{readme}: findings quote numbers no committed table holds: {missing}"


def test_the_check_catches_a_number_no_table_holds(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"cs": 0.4831, "n": 1225}))
    assert backed(0.483, 3, False, table_values(tmp_path)) and backed(1225, 0, False, table_values(tmp_path))
    assert not backed(0.77, 2, False, table_values(tmp_path))
    assert backed(48.3, 1, True, table_values(tmp_path))


def unsupported(folder: Path) -> list[str]:
    """The claims a committed report's findings word as effects (``findings.json``) that its ledger
    (``claims.csv``) does not support: a test it does not hold, or one with q >= 0.05."""
    q = {f"{r['source']}#{r['test']}": float(r["q"]) for r in csv.DictReader(open(folder / "claims.csv", newline=""))}
    return [f"{f['title']}: {key}" for f in json.loads((folder / "findings.json").read_text()) for key in f["claims"]
            if key not in q or q[key] >= 0.05]


@pytest.mark.parametrize("folder", sorted(p.parent for p in REPORTS.rglob("findings.json")),
                         ids=lambda p: str(p.relative_to(REPORTS)))
def test_every_worded_claim_rests_on_a_ledger_entry_whose_q_supports_it(folder):
    assert not unsupported(folder), f"{folder}: findings worded from tests that do not survive correction"


def test_the_claims_check_catches_an_unsupported_claim(tmp_path):
    (tmp_path / "claims.csv").write_text("source,test,q\nmetrics.json,readings/shown/vs_chance,0.01\n"
                                         "probes/content-summary.json,last/decide_deed,0.053\n")
    findings_file = tmp_path / "findings.json"
    findings_file.write_text(json.dumps([{"title": "a", "claims": ["metrics.json#readings/shown/vs_chance"]}]))
    assert unsupported(tmp_path) == []
    findings_file.write_text(json.dumps([{"title": "b", "claims": ["probes/content-summary.json#last/decide_deed",
                                                                   "patching/x.json#t"]}]))
    assert unsupported(tmp_path) == ["b: probes/content-summary.json#last/decide_deed", "b: patching/x.json#t"]


LOCAL_REF = re.compile(r"""<(?:script|img|link)\b[^>]*?\b(?:src|href)=['"]([^'"#?]+)['"]""")


def local_references(page: Path) -> list[str]:
    """The files a page loads from beside it (scripts, images, style sheets), not links to elsewhere."""
    return [ref for ref in LOCAL_REF.findall(page.read_text()) if "://" not in ref and not ref.startswith("data:")]


@pytest.mark.parametrize("page", sorted(REPORTS.rglob("*.html")), ids=lambda p: str(p.relative_to(REPORTS)))
def test_every_file_a_committed_page_loads_is_committed_beside_it(page):
    # a page re-rendered elsewhere and copied back once pointed at a plotly.js one folder off: every figure blank
    missing = [ref for ref in local_references(page) if not (page.parent / ref).is_file()]
    assert not missing, f"{page.relative_to(REPORTS)} loads files that are not there: {missing}"


def test_the_reference_check_catches_a_missing_script(tmp_path):
    page = tmp_path / "index.html"
    page.write_text("<script src='../plotly-7.1.0.min.js' charset='utf-8'></script><a href='gone.html'>x</a>")
    assert local_references(page) == ["../plotly-7.1.0.min.js"]
    assert not (page.parent / local_references(page)[0]).is_file()
