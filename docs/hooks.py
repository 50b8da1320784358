"""MkDocs hook: write every command's ``--help`` into the CLI reference, so it cannot drift from the code."""
from __future__ import annotations

import argparse

MARKER = "<!-- cli-reference -->"


def _subparsers(parser: argparse.ArgumentParser, prefix: str):
    for action in parser._actions:  # argparse offers no public walk over subcommands
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subparsers(sub, f"{prefix} {name}")


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    from wdprobe.cli import build_parser

    parts = []
    for name, sub in _subparsers(build_parser(), "wdprobe"):
        sub.prog = name
        parts.append(f"### `{name}`\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    return markdown.replace(MARKER, "\n".join(parts))
