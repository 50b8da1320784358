"""Your own word/deed items: one schema, read from a CSV or JSONL file, a pandas DataFrame or a list of dicts, with the
same validation and named errors as WDCT.

A researcher's paired prompts (stated vs revealed preferences, another say-do benchmark, their own scenarios) become
the same :class:`~wdprobe.data.wdct.Item` objects WDCT's rows do, so every stage and ``wdprobe run`` take them. The
fields (``ITEM_FIELDS``; the guide "Your own prompts" has the table): ``id``; ``domain`` (any string); ``word`` and
``deed`` (the questions without option lines); ``word_options`` and ``deed_options`` (2-4 texts each, option *i* of
the deed acting on option *i* of the word; in a CSV the columns ``word_option_A`` ... ``deed_option_D``); optional
``correct`` (a letter in canonical order) and ``template`` (the prompt around ``{question}``).

A CSV in WDCT's upstream layout (columns ``Type, id, speak, act, correct_answer``) is recognised by its header and
read as WDCT.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from wdprobe.core.cache import atomic_write_text
from wdprobe.data.wdct import LETTERS, REQUIRED_COLUMNS, Item, parse_csv_text, read_text_file
from wdprobe.errors import MissingInputError, RunMismatchError, WDCTFormatError

__all__ = ["ITEM_FIELDS", "read_items", "items_from_records", "item_record", "write_items_jsonl", "is_wdct_header",
           "items_path"]

ITEM_FIELDS = ("id", "domain", "word", "deed", "word_options", "deed_options", "correct", "template")
REQUIRED_FIELDS = ("id", "domain", "word", "deed", "word_options", "deed_options")
MAX_OPTIONS = 4


def is_wdct_header(columns: Iterable[str]) -> bool:
    """Whether a CSV header is WDCT's upstream layout."""
    return all(c in set(columns) for c in REQUIRED_COLUMNS)


def read_items(source: Any) -> list[Item]:
    """Items from a file path (``.csv``: this schema or WDCT's upstream layout; ``.jsonl``: one record a line;
    ``.json``: a list of records), a pandas DataFrame or a list of dicts; every error names the source, the line (or
    row) and the item."""
    if isinstance(source, (str, os.PathLike)):
        return _read_file(Path(source))
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # a pandas DataFrame
        return items_from_records(source.to_dict(orient="records"), source="<DataFrame>", first_line=0,
                                  unit="row")
    if isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        return items_from_records(source, source="<records>", first_line=0, unit="record")
    raise WDCTFormatError(f"items must be a file path, a pandas DataFrame or a list of dicts, not {type(source).__name__}")


def _read_file(path: Path) -> list[Item]:
    if not path.is_file():
        raise MissingInputError(f"items file not found: {path}")
    text = read_text_file(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header = next(csv.reader(io.StringIO(text)), [])
        if is_wdct_header(header):
            return parse_csv_text(text, source=str(path))
        return _csv_items(text, str(path))
    if suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WDCTFormatError(f"{path}: line {n}: not JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise WDCTFormatError(f"{path}: line {n}: a JSON {type(rec).__name__}, not an object")
            records.append((n, rec))
        return _validated(records, str(path), unit="line")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WDCTFormatError(f"{path}: line {exc.lineno}: not JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise WDCTFormatError(f"{path}: a JSON file of items holds a list of objects, not a {type(data).__name__}")
        return items_from_records(data, source=str(path), first_line=0, unit="record")
    raise WDCTFormatError(f"{path}: unknown item file type {suffix!r}; use .csv, .jsonl or .json")


def _csv_items(text: str, source: str) -> list[Item]:
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    fields = reader.fieldnames or []
    missing = [f for f in ("id", "domain", "word", "deed", "word_option_A", "word_option_B", "deed_option_A",
                           "deed_option_B") if f not in fields]
    if missing:
        raise WDCTFormatError(f"{source}: missing column(s) {missing}; an items CSV has id, domain, word, deed, "
                              f"word_option_A.., deed_option_A.. (and optionally correct, template), or WDCT's "
                              f"upstream columns {list(REQUIRED_COLUMNS)} (the header has {fields})")
    unknown = [f for f in fields if f not in CSV_COLUMNS]
    if unknown:  # a misspelt 'correct' would leave every item without an answer; a word_option_E would be dropped
        raise WDCTFormatError(f"{source}: unknown column(s) {unknown}{nearest(unknown[0], CSV_COLUMNS)}; an items CSV "
                              f"has {list(CSV_COLUMNS)}")
    records = []
    try:
        for row in reader:
            if None in row:
                raise WDCTFormatError(f"{source}: line {reader.line_num}: item {row.get('id', '?')!r}: more fields "
                                      "than the header names")
            rec: dict[str, Any] = {k: row.get(k) for k in ("id", "domain", "word", "deed", "correct", "template")}
            for form in ("word", "deed"):
                rec[f"{form}_options"] = [row[c] for c in (f"{form}_option_{L}" for L in LETTERS[:MAX_OPTIONS])
                                          if (row.get(c) or "").strip()]
            records.append((reader.line_num, rec))
    except csv.Error as exc:
        raise WDCTFormatError(f"{source}: line {reader.line_num}: {exc}") from None
    return _validated(records, source, unit="line")


def items_from_records(records: Iterable[Mapping[str, Any]], *, source: str = "<records>", first_line: int = 0,
                       unit: str = "record") -> list[Item]:
    """Validate records (dicts with the schema's fields) into items; ``unit`` and ``first_line`` word the errors."""
    return _validated([(first_line + i, r) for i, r in enumerate(records)], source, unit=unit)


CSV_COLUMNS = ("id", "domain", "word", "deed", "correct", "template") + tuple(
    f"{form}_option_{L}" for form in ("word", "deed") for L in LETTERS[:MAX_OPTIONS])
OPTION_LINE = re.compile(r"^\s*[A-Z][.)]\s", re.MULTILINE)  # how a prompt shows an option: "B. text"


def nearest(name: str, known: Sequence[str]) -> str:
    """`` (did you mean 'correct'?)`` for a misspelt field or column name, else nothing."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _text(value: Any, at: str = "", field: str = "") -> str:
    """A text field as written: None or NaN (an empty DataFrame cell) is empty; a list, number or boolean is refused
    rather than turned into a string (an id may be a whole number)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if field == "id" and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise WDCTFormatError(f"{at}: {field or 'a field'} is a {type(value).__name__} ({str(value)[:40]!r}), not "
                              "text")
    return value.strip()


def _validated(records: Sequence[tuple[int, Mapping[str, Any]]], source: str, *, unit: str) -> list[Item]:
    items: list[Item] = []
    seen: set[str] = set()
    for where, rec in records:
        at = f"{source}: {unit} {where}"
        if not isinstance(rec, Mapping):
            raise WDCTFormatError(f"{at}: a {type(rec).__name__}, not a mapping of fields")
        unknown = sorted(set(rec) - set(ITEM_FIELDS))
        if unknown:
            raise WDCTFormatError(f"{at}: unknown field(s) {unknown}{nearest(str(unknown[0]), ITEM_FIELDS)}; the fields "
                                  f"are {list(ITEM_FIELDS)}")
        item_id = _text(rec.get("id"), at, "id")
        if not item_id:
            raise WDCTFormatError(f"{at}: empty id")
        at = f"{at}: item {item_id!r}"
        if item_id in seen:
            raise WDCTFormatError(f"{at}: duplicate id")
        seen.add(item_id)
        for field in REQUIRED_FIELDS:
            if field not in rec:
                raise WDCTFormatError(f"{at}: no {field!r} field")
        domain = _text(rec["domain"], at, "domain")
        if not domain:
            raise WDCTFormatError(f"{at}: empty domain")
        stems, options = {}, {}
        for form in ("word", "deed"):
            stems[form] = _text(rec[form], at, form)
            if not stems[form]:
                raise WDCTFormatError(f"{at}: empty {form} question")
            if OPTION_LINE.search(stems[form]):
                raise WDCTFormatError(f"{at}: the {form} question has a line that reads as an option line "
                                      f"({OPTION_LINE.search(stems[form]).group(0).strip()!r} ...); give options in "
                                      f"{form}_options, not in the question")
            opts = rec[f"{form}_options"]
            if isinstance(opts, str):
                raise WDCTFormatError(f"{at}: {form}_options is one string; give a list of 2-{MAX_OPTIONS} option texts")
            if opts is not None and not isinstance(opts, (list, tuple)):
                raise WDCTFormatError(f"{at}: {form}_options is a {type(opts).__name__}; give a list of "
                                      f"2-{MAX_OPTIONS} option texts")
            texts = tuple(_text(o, at, f"{form} option {LETTERS[j] if j < len(LETTERS) else j}")
                          for j, o in enumerate(opts or []))
            broken = [LETTERS[j] for j, t in enumerate(texts[:MAX_OPTIONS]) if "\n" in t]
            if broken:
                raise WDCTFormatError(f"{at}: {form} option(s) {broken} span more than one line; a prompt would show "
                                      "them as more than one option line")
            if not 2 <= len(texts) <= MAX_OPTIONS:
                raise WDCTFormatError(f"{at}: {len(texts)} {form} options; an item needs 2-{MAX_OPTIONS}")
            empty = [LETTERS[j] for j, t in enumerate(texts) if not t]
            if empty:
                raise WDCTFormatError(f"{at}: {form} option(s) {empty} are empty")
            if len(set(texts)) < len(texts):
                raise WDCTFormatError(f"{at}: two {form} options have the same text")
            options[form] = texts
        k = len(options["word"])
        if len(options["deed"]) != k:
            raise WDCTFormatError(f"{at}: {k} word options but {len(options['deed'])} deed options; option i of the "
                                  "deed acts on option i of the word")
        answer = _text(rec.get("correct"), at, "correct").upper()
        if answer and answer not in LETTERS[:k]:
            raise WDCTFormatError(f"{at}: correct {answer!r} is not one of its option letters {list(LETTERS[:k])}")
        template = _text(rec.get("template"), at, "template") or None
        if template is not None:
            try:
                filled = template.format(question="Q")
            except (KeyError, IndexError, ValueError) as exc:
                raise WDCTFormatError(f"{at}: template has a placeholder other than {{question}} ({exc!r}); write "
                                      "literal braces as {{ and }}") from None
            if "{question}" not in template or filled == template:
                raise WDCTFormatError(f"{at}: template must contain {{question}}")
        items.append(Item(item_id, domain, stems["word"], options["word"], stems["deed"], options["deed"],
                          LETTERS.index(answer) if answer else None, template))
    if not items:
        raise WDCTFormatError(f"{source}: no items")
    return items


def item_record(item: Item) -> dict[str, Any]:
    """An item as one record of the schema (what ``read_items`` reads back to an equal item)."""
    rec: dict[str, Any] = {"id": item.id, "domain": item.domain, "word": item.word_stem, "deed": item.deed_stem,
                           "word_options": list(item.word_options), "deed_options": list(item.deed_options)}
    if item.correct is not None:
        rec["correct"] = LETTERS[item.correct]
    if item.template is not None:
        rec["template"] = item.template
    return rec


def write_items_jsonl(items: Sequence[Item]) -> str:
    """The items as JSONL text (a run directory keeps in-memory items this way, so later stages reread them)."""
    return "".join(json.dumps(item_record(it), ensure_ascii=False) + "\n" for it in items)


def items_path(data: Any, keep_at: str | os.PathLike) -> Path | None:
    """Where a stage reads ``data`` from: ``None`` for a path or nothing (the caller resolves it); in-memory items (a
    DataFrame or records) are validated and written, as JSONL, to ``keep_at`` (inside the run directory), so later
    stages and resumed runs reread exactly them and the run records their digest."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return None
    items = read_items(data)
    dest = Path(keep_at)
    dest.parent.mkdir(parents=True, exist_ok=True)
    text = write_items_jsonl(items)
    if dest.is_file() and dest.read_text(encoding="utf-8") != text:  # one run, one item set
        raise RunMismatchError(f"{dest}: this run directory already holds other in-memory items (the ones it was "
                              "started with); give those same items to resume it, or a new run directory for these")
    if not dest.is_file():
        atomic_write_text(dest, text)
    return dest
