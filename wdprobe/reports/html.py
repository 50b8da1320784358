"""Shared HTML for every report page: one stylesheet, tables, and inline markdown (bold, italics, code, links).
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

CSS = ("body{font-family:system-ui,sans-serif;max-width:1360px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
       "h1{margin-bottom:0}.sub{color:#666;margin-top:.3em}ol.findings li{margin:.6em 0}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
       "th:first-child,td:first-child{text-align:left}table.text td,table.text th{text-align:left;vertical-align:top}pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:12px}"
       "nav a{margin-right:1em}.num{font-variant-numeric:tabular-nums}.fig{overflow-x:auto;margin:1em 0}"
       "details.table{margin:.4em 0}details.table>summary{cursor:pointer;font-weight:600}"
       ".banner{background:#fff4e6;border-left:4px solid #d9480f;padding:.6em 1em}")


def folded(title: str, body: str) -> str:
    """A table (or any block) folded under its title: pages open with findings and figures, tables on demand."""
    return f"<details class='table'><summary>{html.escape(title)}</summary>{body}</details>"


def table_html(header: list[str], rows: list[list[Any]], *, text: bool = False) -> str:
    """An HTML table from a header and rows (values escaped); numbers align right, ``text`` tables (sentences in
    their cells) left and top."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{'text' if text else 'num'}'><tr>{head}</tr>{body}</table>"


def inline_markdown(text: str) -> str:
    """Bold, italics, code and links of a notes paragraph as HTML (the notes are short markdown; nothing more is needed)."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])", r"<i>\1</i>", out)
    out = re.sub(r"`(.+?)`", r"<code>\1</code>", out)
    # link text holds no bracket: "[0.72, 1.00]; [`x`](y)" links only "`x`", not the interval before it
    return re.sub(r"\[([^\[\]]+?)\]\(([^()\s]+?)\)", r"<a href='\2'>\1</a>", out)


def notes_html(notes: str) -> str:
    """A written reading (short markdown) as HTML: blank-line separated paragraphs, and bullet lists (lines that
    start with ``- ``, continued by indented lines) as ``<ul>``; inline markdown inside both. Heading blocks
    (``#``) are left out: the page has its own headings."""
    out = []
    for block in (b.strip("\n") for b in notes.split("\n\n")):
        if not block.strip() or block.lstrip().startswith("#"):
            continue
        lines = block.split("\n")
        if lines[0].lstrip().startswith("- "):
            items: list[str] = []
            for line in lines:
                if line.lstrip().startswith("- "):
                    items.append(line.lstrip()[2:].strip())
                elif items:
                    items[-1] += " " + line.strip()
            out.append("<ul>" + "".join(f"<li>{inline_markdown(i)}</li>" for i in items) + "</ul>")
        else:
            out.append(f"<p>{inline_markdown(block.strip())}</p>")
    return "".join(out)


def verdict_line(text: str, limit: int = 320) -> str:
    """A finding's first sentence (its verdict): up to the first full stop that ends a sentence (not a decimal
    point, nor an abbreviation: s.d., e.g., i.e., vs., cf.), shortened with an ellipsis past ``limit`` characters."""
    m = re.search(r"(?<![0-9])(?<!\bs\.d)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)(?<!\bcf)[.](?=\s|$)", text)
    first = text[: m.end()] if m else text
    return first if len(first) <= limit else first[: limit - 1].rsplit(" ", 1)[0] + " …"


def verdict_table_markdown(found: list[tuple[str, str]]) -> list[str]:
    """The findings' verdicts as a markdown table, one row per question (title, first sentence): what a reader
    wants before the numbers."""
    if not found:
        return []
    return (["| question | what this run says |", "|---|---|"]
            + [f"| {title.rstrip('.')} | {verdict_line(text).replace('|', '/')} |" for title, text in found] + [""])


def findings_html(found: list[tuple[str, str]], *, markdown: bool = False) -> str:
    """The findings as a numbered list of verdicts, each finding's full text one click away (``<details>``);
    ``markdown``: the texts hold inline markdown (bold, code) to render."""
    render = inline_markdown if markdown else html.escape
    items = [f"<li><details><summary><b>{html.escape(title)}</b> {render(verdict_line(text))}</summary>"
             f"{render(text)}</details></li>" for title, text in found]
    return "<ol class='findings'>" + "".join(items) + "</ol>"


LEAD_FILE = "lead.md"  # in a report folder: a note read before the findings, kept across regenerations


def lead_note(folder: Path) -> str | None:
    """A report folder's ``lead.md``, the note its authors want read first (e.g. that a later reading supersedes
    this one); None when there is none. The report writers show it under the title and never overwrite it."""
    path = Path(folder) / LEAD_FILE
    text = path.read_text().strip() if path.is_file() else ""
    return text or None


def lead_markdown(note: str | None) -> list[str]:
    """The lead note as a markdown block quote (with the blank line after it); nothing without a note."""
    if not note:
        return []
    return ["> " + line if line.strip() else ">" for line in note.splitlines()] + [""]


def lead_html(note: str | None) -> str:
    """The lead note as a banner under the page's title; empty without a note."""
    return f"<div class='banner'>{notes_html(note)}</div>" if note else ""
