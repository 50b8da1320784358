"""Every script in experiments/ is executable, explains every flag in --help and states its time."""
from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.py"))


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_executable_documented_and_timed(script, monkeypatch):
    assert os.access(script, os.X_OK) and script.read_text().startswith("#!/usr/bin/env python")
    spec = importlib.util.spec_from_file_location(f"experiment_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "time" in (module.__doc__ or "").lower(), f"{script.name}: the docstring states no time estimate"

    def capture(self, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as parsed:
        module.main([])
    parser = parsed.value.parser
    undocumented = [a.option_strings or a.dest for a in parser._actions
                    if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not undocumented, f"{script.name}: flags without help: {undocumented}"
    assert parser.description and "python experiments/" in parser.description  # --help shows how to run it
