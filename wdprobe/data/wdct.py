"""WDCT items: parsing the benchmark file, validating it, subsets and seeded option shuffling.

Every item is kept in *canonical* option order (word option i corresponds to deed option i, as in
the upstream file). Shuffling produces a :class:`Presentation` that remembers, for each form, which
canonical option each displayed letter shows, so every later stage can map letters back to stances.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from wdprobe.data.download import WDCT, fetch
from wdprobe.errors import InputError, MissingInputError, WDCTFormatError

DOMAINS = ("Opinion", "NonEthV", "EthV", "Theory")
FORMS = ("word", "deed")
LETTERS = "ABCDEFGH"
REQUIRED_COLUMNS = ("Type", "id", "speak", "act", "correct_answer")
_OPTION_LINE = re.compile(r"^([A-H])\.\s?(.*)$")




@dataclass(frozen=True)
class Item:
    """One word/deed pair with options in canonical order."""

    id: str
    domain: str
    word_stem: str
    word_options: tuple[str, ...]
    deed_stem: str
    deed_options: tuple[str, ...]
    correct: int | None = None  # canonical index of the known correct option (EthV, Theory)
    template: str | None = None  # the prompt around the question (``{question}``); None: the paper's prompt

    @property
    def n_options(self) -> int:
        return len(self.word_options)

    def stem(self, form: str) -> str:
        return self.word_stem if form == "word" else self.deed_stem

    def options(self, form: str) -> tuple[str, ...]:
        return self.word_options if form == "word" else self.deed_options


@dataclass(frozen=True)
class Presentation:
    """An item as shown to the model: per form, ``order[j]`` is the canonical option behind letter j."""

    item: Item
    word_order: tuple[int, ...]
    deed_order: tuple[int, ...]

    def order(self, form: str) -> tuple[int, ...]:
        return self.word_order if form == "word" else self.deed_order

    def letters(self) -> str:
        return LETTERS[: self.item.n_options]

    def question(self, form: str) -> str:
        """The question text with options relabelled in presented order (paper's format)."""
        opts = self.item.options(form)
        lines = [self.item.stem(form)]
        for j, canon in enumerate(self.order(form)):
            lines.append(f"{LETTERS[j]}. {opts[canon]}")
        return "\n".join(lines)

    def letter_of(self, form: str, canonical: int) -> str:
        return LETTERS[self.order(form).index(canonical)]

    def canonical_of(self, form: str, letter: str) -> int:
        return self.order(form)[LETTERS.index(letter)]


def split_question(text: str, *, item_id: str, form: str, source: str) -> tuple[str, tuple[str, ...]]:
    """Split a question into its stem and its trailing ``A. ...``/``B. ...`` option lines.

    Options are the maximal run of trailing lines labelled A, B, C, ... in order; trailing
    whitespace and newlines are ignored and option text is stripped.
    """
    lines = text.rstrip().split("\n")
    options: list[str] = []
    i = len(lines) - 1
    while i >= 0:
        m = _OPTION_LINE.match(lines[i].strip())
        if not m:
            break
        options.append(m.group(1) + "\x00" + m.group(2).strip())
        i -= 1
    options.reverse()
    letters = "".join(o.split("\x00")[0] for o in options)
    # Keep only the run that starts at A (a stem line could itself look like "B. ...").
    start = letters.rfind("A")
    if start < 0:
        raise WDCTFormatError(f"{source}: item {item_id!r} ({form}): no option lines 'A. ...' at the end")
    options = options[start:]
    letters = letters[start:]
    if letters != LETTERS[: len(letters)]:
        raise WDCTFormatError(f"{source}: item {item_id!r} ({form}): option letters {letters!r} are not A, B, ... in order")
    if len(options) < 2:
        raise WDCTFormatError(f"{source}: item {item_id!r} ({form}): only one option; an item needs 2-4")
    if len(options) > 4:
        raise WDCTFormatError(f"{source}: item {item_id!r} ({form}): {len(options)} options; at most 4 are supported")
    stem_lines = lines[: i + 1 + start]
    stem = "\n".join(stem_lines).strip()
    if not stem:
        raise WDCTFormatError(f"{source}: item {item_id!r} ({form}): empty question text before the options")
    texts = tuple(o.split("\x00", 1)[1] for o in options)
    for j, t in enumerate(texts):
        if not t:
            raise WDCTFormatError(f"{source}: item {item_id!r} ({form}): option {LETTERS[j]} is empty")
    return stem, texts


def parse_rows(rows: Iterable[dict[str, str]], source: str = "<rows>") -> list[Item]:
    """Validate and parse WDCT rows (dicts with the upstream columns) into items."""
    items: list[Item] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        item_id = (row.get("id") or "").strip()
        if not item_id:
            raise WDCTFormatError(f"{source}: line {n}: empty id")
        if item_id in seen:
            raise WDCTFormatError(f"{source}: item {item_id!r}: duplicate id")
        seen.add(item_id)
        domain = (row.get("Type") or "").strip()
        if domain not in DOMAINS:
            raise WDCTFormatError(f"{source}: item {item_id!r}: unknown domain {domain!r} (expected one of {DOMAINS})")
        parsed = {}
        for form, col in (("word", "speak"), ("deed", "act")):
            text = row.get(col) or ""
            if not text.strip():
                raise WDCTFormatError(f"{source}: item {item_id!r}: empty {form} question (column {col!r})")
            parsed[form] = split_question(text, item_id=item_id, form=form, source=source)
        kw, kd = len(parsed["word"][1]), len(parsed["deed"][1])
        if kw != kd:
            raise WDCTFormatError(f"{source}: item {item_id!r}: word question has {kw} options but deed question has {kd}")
        answer = (row.get("correct_answer") or "").strip()
        correct = None
        if answer:
            if answer not in LETTERS[:kw]:
                raise WDCTFormatError(f"{source}: item {item_id!r}: correct_answer {answer!r} is not one of its options")
            correct = LETTERS.index(answer)
        items.append(Item(item_id, domain, parsed["word"][0], parsed["word"][1], parsed["deed"][0], parsed["deed"][1], correct))
    if not items:
        raise WDCTFormatError(f"{source}: no items")
    return items


def load_wdct(path: str | os.PathLike) -> list[Item]:
    """Read and validate a WDCT CSV file (upstream column layout)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"WDCT file not found: {path}")
    return parse_csv_text(read_text_file(path), source=str(path))


def read_text_file(path: Path) -> str:
    """A data file's text: UTF-8 (a byte-order mark is dropped), line endings normalised to ``\\n``.

    Windows (CRLF) and old Mac (CR) line endings inside quoted fields would otherwise stay in the
    questions as a stray ``\\r`` and change what the model reads; NUL bytes and undecodable bytes are
    refused with their line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise WDCTFormatError(f"{path}: line {line}: not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start}); "
                              "save the file as UTF-8") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise WDCTFormatError(f"{path}: line {line}: a NUL byte; the file is binary or corrupt")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_csv_text(text: str, source: str = "<text>") -> list[Item]:
    """Parse WDCT CSV text, naming the line of any CSV error (unterminated quote, stray field, huge field)."""
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise WDCTFormatError(f"{source}: missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)} "
                                  f"(the header has {reader.fieldnames})")
        return parse_rows(_checked_rows(reader, source), source=source)
    except csv.Error as exc:
        raise WDCTFormatError(f"{source}: line {reader.line_num}: {exc} (an unterminated quote runs to the end of "
                              "the file; a field over the size limit usually is one)") from None


def _checked_rows(reader: csv.DictReader, source: str) -> Iterable[dict[str, str]]:
    for row in reader:
        if None in row:  # more fields than the header names
            raise WDCTFormatError(f"{source}: line {reader.line_num}: item {row.get('id', '?')!r}: "
                                  f"{len(reader.fieldnames or []) + len(row[None])} fields, the header has "
                                  f"{len(reader.fieldnames or [])}")
        yield row


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (recorded so a run knows exactly which data it read)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def domains_of(rows: Iterable) -> list[str]:
    """The domains of items (or of item rows with a ``domain`` key): WDCT's four in their usual order first, any
    other domain after them in order of first appearance."""
    seen: list[str] = []
    for r in rows:
        d = r.domain if isinstance(r, Item) else r["domain"]
        if d not in seen:
            seen.append(d)
    return [d for d in DOMAINS if d in seen] + [d for d in seen if d not in DOMAINS]


# ---- subsets -----------------------------------------------------------------------------------

SUBSETS = {"WDCT": DOMAINS, "WDCT_NE": ("Opinion", "NonEthV")}


def select(items: Sequence[Item], *, domains: Sequence[str] | None = None, subset: str | None = None,
           sample: int | None = None, seed: int = 0, limit: int | None = None) -> list[Item]:
    """Filter items by domain or named subset (WDCT, WDCT_NE), then take a seeded sample or the first ``limit``.

    The sample is drawn with its own seeded generator, so the same (seed, size) gives the same items.
    """
    wanted: set[str] | None = None
    if subset is not None:
        if subset not in SUBSETS:
            raise InputError(f"unknown subset {subset!r}; choose one of {sorted(SUBSETS)}")
        wanted = set(SUBSETS[subset])
    if domains:
        present_domains = domains_of(items)
        bad = [d for d in domains if d not in present_domains]
        if bad:
            raise InputError(f"unknown domain(s) {bad}; the items' domains are {present_domains}")
        wanted = set(domains) if wanted is None else wanted & set(domains)
    out = [it for it in items if wanted is None or it.domain in wanted]
    for name, value in (("sample", sample), ("limit", limit)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InputError(f"--{name} must be a positive number of items, not {value!r}")
    if not out:
        raise InputError(f"no items match domains={list(domains) if domains else None} subset={subset!r}")
    if sample is not None:
        if sample > len(out):
            raise InputError(f"sample of {sample} requested but only {len(out)} items match")
        rng = random.Random(f"sample:{seed}")
        keep = set(rng.sample(range(len(out)), sample))
        out = [it for i, it in enumerate(out) if i in keep]
    if limit is not None:
        out = out[:limit]
    return out


def listed_rows(table: str | os.PathLike, *, set_name: str | None = None) -> list[dict[str, str]]:
    """The rows of an id table (a CSV with an ``id`` column, e.g. an alignment run's ``split.csv``), in order;
    ``set_name`` keeps only the rows whose ``set`` column says so (``train``, ``held_out``)."""
    path = Path(table)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the id table ({exc})") from None
    if not rows or "id" not in rows[0]:
        raise InputError(f"{path}: needs an 'id' column (one item id a row)")
    for k, row in enumerate(rows):
        row["_line"] = str(k + 2)
    if set_name is not None:
        if "set" not in rows[0]:
            raise InputError(f"{path}: has no 'set' column to keep {set_name!r} rows from")
        sets = sorted({r["set"] for r in rows})
        rows = [r for r in rows if r["set"] == set_name]
        if not rows:
            raise InputError(f"{path}: no row in set {set_name!r}; its sets are {sets}")
    return rows


def items_listed(items: Sequence[Item], table: str | os.PathLike, *, set_name: str | None = None) -> list[Item]:
    """The items whose ids a table lists (:func:`listed_rows`), in the table's order. An id the items do not hold
    is refused by name: a selection that silently lost items would read another set."""
    rows = listed_rows(table, set_name=set_name)
    by_id = {it.id: it for it in items}
    missing = [r for r in rows if r["id"] not in by_id]
    if missing:
        raise InputError(f"{table}, line {missing[0]['_line']}: item {missing[0]['id']!r} is not among the items read"
                         + (f" ({len(missing)} ids missing in all)" if len(missing) > 1 else ""))
    return [by_id[r["id"]] for r in rows]


def listed_targets(items: Sequence[Item], table: str | os.PathLike, *, set_name: str | None = None) -> list[int]:
    """Each listed item's ``target`` column (an option index, 0 or 1 in the item's own option order: an alignment
    run's flip target), in the order of :func:`items_listed`."""
    rows = listed_rows(table, set_name=set_name)
    if "target" not in rows[0]:
        raise InputError(f"{table}: has no 'target' column to read each item's target option from")
    n_options = {it.id: it.n_options for it in items}
    out = []
    for r in rows:
        try:
            target = int(r["target"])
        except ValueError:
            target = -1
        if not 0 <= target < n_options.get(r["id"], 2):
            raise InputError(f"{table}, line {r['_line']}: item {r['id']!r} has target {r['target']!r}, not an option "
                             "index of the item")
        out.append(target)
    return out


# ---- shuffling ---------------------------------------------------------------------------------

def _permutation(seed: int, item_id: str, form: str, k: int) -> tuple[int, ...]:
    # Seeded per (seed, item, form): independent across forms and stable under subsetting/reordering.
    rng = random.Random(f"{seed}:{item_id}:{form}")
    perm = list(range(k))
    rng.shuffle(perm)
    return tuple(perm)


def present(items: Sequence[Item], seed: int | None = 0) -> list[Presentation]:
    """Shuffle options independently per form and per item; ``seed=None`` keeps canonical order."""
    out = []
    for it in items:
        k = it.n_options
        if seed is None:
            out.append(Presentation(it, tuple(range(k)), tuple(range(k))))
        else:
            out.append(Presentation(it, _permutation(seed, it.id, "word", k), _permutation(seed, it.id, "deed", k)))
    return out


def resolve_wdct_path(path: str | os.PathLike | None = None) -> Path:
    """The WDCT file to use: the given path, else ``$WDPROBE_WDCT``, else the pinned upstream download."""

    if path:
        return Path(path)
    env = os.environ.get(WDCT.env_var)
    if env:
        return Path(env)
    return fetch(WDCT)
