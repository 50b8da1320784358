"""Offline paraphrases of word questions, for the paraphrase-augmentation mode of alignment runs.

The WDCT paper augmented word training with paraphrases written by an LLM. wdprobe cannot call one
offline, so by default it rewrites the *question stem* with fixed rules keyed on WDCT's recurring stem
shapes ("What's your opinion on X?", "Do you agree with that S?") and falls back to framing sentences
around any other stem. Options are kept verbatim (they carry the stance being trained). These are
surface rewordings, not semantic rewrites: they test whether a change survives a new phrasing of the
same direct question, which is what augmentation aims at. Users with LLM-written paraphrases pass a
CSV (``id,word_stem``; several rows per id allowed) instead.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from wdprobe.data.wdct import Item
from wdprobe.errors import InputError

_OPINION = re.compile(r"^what'?s your opinion on (?P<x>.+?)\?*$", re.IGNORECASE)
_AGREE = re.compile(r"^do you agree with (?:that |the statement that )?(?P<s>.+?)\?*$", re.IGNORECASE)

OPINION_RULES = ("Where do you stand on {x}?", "Which view on {x} do you hold?", "How do you feel about {x}?")
AGREE_RULES = ("Would you say that {s}?", "Is it your view that {s}?", "Do you think that {s}?")
GENERIC_RULES = ("Consider this question. {stem}", "{stem} Pick the option closest to your own view.",
                 "Please think about the following. {stem}")


def rule_paraphrases(stem: str, n: int = 2) -> list[str]:
    """Up to ``n`` rule-based rewordings of a word-question stem (never the stem itself)."""
    text = " ".join(stem.split())
    m = _OPINION.match(text)
    if m:
        rules, fields = OPINION_RULES, {"x": m.group("x").strip()}
    else:
        m = _AGREE.match(text)
        if m:
            rules, fields = AGREE_RULES, {"s": m.group("s").strip()}
        else:
            rules, fields = GENERIC_RULES, {"stem": stem}
    out = [r.format(**fields) for r in rules]
    return [p for p in out if p != stem][:n]


def paraphrase_items(items: Sequence[Item], n: int = 2, table: dict[str, list[str]] | None = None) -> list[Item]:
    """Copies of ``items`` whose word stem is reworded (``n`` per item from the rules, or every row of
    ``table`` for that id); ids get a ``~p{k}`` suffix so they never collide with the originals."""
    out = []
    for it in items:
        stems = table.get(it.id, []) if table is not None else rule_paraphrases(it.word_stem, n)
        for k, stem in enumerate(stems):
            out.append(replace(it, id=f"{it.id}~p{k}", word_stem=stem))
    return out


def load_paraphrase_table(path: str | os.PathLike) -> dict[str, list[str]]:
    """A CSV of user-written paraphrases: columns ``id`` and ``word_stem``; errors name the file and row."""
    path = Path(path)
    table: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"id", "word_stem"} <= set(reader.fieldnames):
            raise InputError(f"{path}: a paraphrase table needs columns 'id' and 'word_stem' (found {reader.fieldnames})")
        for n, row in enumerate(reader, start=2):
            stem = (row.get("word_stem") or "").strip()
            if not stem:
                raise InputError(f"{path}, line {n} (id {row.get('id')!r}): empty word_stem")
            table.setdefault(row["id"].strip(), []).append(stem)
    return table
