"""Declared settings: one place says which values an option takes, its default and its help, for TOML and flags alike.

Every study's configuration (WDCT sections, PCT, alignment and its training) is a dataclass deriving from
:class:`Options` whose fields are made with :func:`option`. From that one declaration:

* :meth:`Options.from_mapping` reads a parsed TOML table (or any mapping): unknown keys are refused with the nearest
  known key, values are type-checked against the declaration (a string where a list belongs, a boolean where a
  number belongs), nested sections are read as their own :class:`Options`;
* :meth:`Options.add_flags` adds one ``--kebab-name`` flag per field to an argparse parser, with the field's choices,
  type and help, and a ``None`` default so that only the flags given override a file or a saved run;
* :meth:`Options.flag_values` reads those flags back; :meth:`Options.validate_options` checks every declared choice and
  check (run on construction), so a bad value is refused wherever it came from, with the option's name.

This is scikit-learn's declarative ``_parameter_constraints`` idea, for configurations.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

from wdprobe.errors import ConfigError

T = TypeVar("T", bound="Options")
Check = Callable[[Any], bool]


def option(default: Any = dataclasses.MISSING, *, choices: Sequence[Any] | None = None, help: str = "",
           check: Check | None = None, expect: str = "", flag: str | Sequence[str] | None = None, cli: bool = True,
           factory: Callable[[], Any] | None = None, parse: Callable[[str], Any] | None = None,
           aliases: Mapping[Any, Any] | None = None) -> Any:
    """A declared field: its default (``factory`` for lists), the values it takes (``choices``, or ``check`` with the
    words ``expect`` for the error; a check may also raise its own :class:`ConfigError`), its ``help``, and its flag (``--kebab-name`` unless ``flag`` names it, or several
    names; ``parse`` reads the flag's text; ``cli=False``: settable from files and Python only; ``aliases``: older
    names of values, read as the value they became)."""
    meta = {"choices": tuple(choices) if choices is not None else None, "help": help, "check": check,
            "expect": expect, "flag": flag, "cli": cli, "parse": parse, "aliases": dict(aliases or {})}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, list):
        value = list(default)
        return dataclasses.field(default_factory=lambda: list(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def positive_int(value: Any) -> bool:
    """A positive whole number (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def count_or(*words: str, zero: bool = False) -> Check:
    """A check: a positive number (or >= 0 with ``zero``), or one of ``words`` (``"all"``, ``"auto"``)."""
    def check(value: Any) -> bool:
        if value in words:
            return True
        return isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if zero else value > 0)
    return check


_KIND_WORDS = {list: "a list", tuple: "a list", bool: "true/false", int: "a whole number", float: "a number",
               str: "a text"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _args(tp: Any) -> tuple[Any, ...]:
    return tuple(a for a in typing.get_args(tp) if a is not type(None))


def _is_options(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Options)


def _nearest(key: str, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(known)}"


class Options:
    """Base of every declared configuration (a dataclass whose fields are :func:`option`)."""

    section_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate_options()

    # ---- reading and checking ---------------------------------------------------------------------------
    @classmethod
    def option_fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls: type[T], data: Mapping[str, Any], source: str = "<config>") -> T:
        """The configuration from a nested mapping, with errors naming ``source``, the section and the key."""
        hints = _hints(cls)
        known = [f.name for f in cls.option_fields()]
        where = f"{source} [{cls.section_name}]" if cls.section_name else source
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"{where}: unknown key {key!r}{_nearest(key, known)}")
            tp = hints[key]
            if _is_options(tp):
                if isinstance(value, tp):
                    kwargs[key] = value
                    continue
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{source}: [{key}] must be a table")
                kwargs[key] = tp.from_mapping(value, source)
            else:
                kwargs[key] = cls._typed(key, tp, value, where)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @staticmethod
    def _typed(name: str, tp: Any, value: Any, where: str) -> Any:
        """``value`` checked against the field's type: numbers, booleans, lists and tuples (ints widen to floats)."""
        if value is None:
            return None
        kinds = _args(tp) if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else (tp,)
        for kind in kinds:
            origin = typing.get_origin(kind) or kind
            if origin is Any:
                return value
            if origin in (list, tuple) and isinstance(value, (list, tuple)):
                inner = typing.get_args(kind)[:1]
                items = [float(v) if inner == (float,) and isinstance(v, int) and not isinstance(v, bool) else v
                         for v in value]
                return origin(items)
            if origin is bool and isinstance(value, bool):
                return value
            if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if origin is int and isinstance(value, int) and not isinstance(value, bool):
                return value
            if origin is str and isinstance(value, (str, os.PathLike)):
                return str(value) if isinstance(value, os.PathLike) else value
            if typing.get_origin(kind) is typing.Literal and value in typing.get_args(kind):
                return value
        names = " or ".join(_KIND_WORDS.get(typing.get_origin(k) or k, str(k)) for k in kinds)
        raise ConfigError(f"{where} {name}: expected {names}, got {value!r}")

    def validate_options(self: T) -> T:
        """Check every declared choice and check; the error names the option and what it takes."""
        prefix = f"{self.section_name}." if self.section_name else ""
        for f in self.option_fields():
            value = getattr(self, f.name)
            if isinstance(value, Options):
                value.validate_options()
                continue
            meta = f.metadata
            aliases = meta.get("aliases") or {}
            if aliases and isinstance(value, str) and value in aliases:  # an older name of a value: what it became
                value = meta["aliases"][value]
                object.__setattr__(self, f.name, value)
            choices, check = meta.get("choices"), meta.get("check")
            values = value if isinstance(value, (list, tuple)) and choices is not None else [value]
            if choices is not None and value is not None and any(v not in choices for v in values):
                raise ConfigError(f"{prefix}{f.name} must be one of {list(choices)}, not {value!r}")
            if check is not None and value is not None and not check(value):
                raise ConfigError(f"{prefix}{f.name} must be {meta.get('expect') or 'valid'}, not {value!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (sections as tables, tuples as lists): what the manifest and TOML files hold."""
        def plain(v: Any) -> Any:
            if isinstance(v, Options):
                return v.to_dict()
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, list):
                return [plain(x) for x in v]
            return v
        return {f.name: plain(getattr(self, f.name)) for f in self.option_fields()}

    # ---- flags -------------------------------------------------------------------------------------------
    @classmethod
    def flag_names(cls, f: dataclasses.Field) -> list[str]:
        """The field's flag names (the first is the one help shows)."""
        flag = f.metadata.get("flag")
        if flag is None:
            return ["--" + f.name.replace("_", "-")]
        return [flag] if isinstance(flag, str) else list(flag)

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, skip: Sequence[str] = (),
                  prefix: str = "") -> None:
        """One flag per declared field (sections and ``cli=False`` fields left out); a flag not given leaves no value
        (so that only the flags given override a file or a saved run); the help ends with the declared default."""
        hints = _hints(cls)
        for f in cls.option_fields():
            tp = hints[f.name]
            if f.name in skip or not f.metadata.get("cli", True) or _is_options(tp):
                continue
            kinds = _args(tp) if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else (tp,)
            origin = typing.get_origin(kinds[0]) or kinds[0]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            shown = default if not isinstance(default, (list, tuple)) else ",".join(map(str, default))
            text = (f.metadata.get("help") or "") + ("" if default is None else f" (default: {shown})")
            names = [f"--{prefix}-{n[2:]}" if prefix else n for n in cls.flag_names(f)]
            dest = f"{prefix.replace('-', '_')}__{f.name}" if prefix else f.name
            kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text.strip(), "dest": dest}
            if origin is bool:
                parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
                continue
            if f.metadata.get("parse") is not None:
                kwargs["type"] = f.metadata["parse"]
            elif origin in (list, tuple):
                inner = (typing.get_args(kinds[0]) or (str,))[0]
                kwargs["type"] = _comma_list(float if inner is float else int if inner is int else str)
            elif len(kinds) > 1 and int in kinds and str in kinds:
                kwargs["type"] = _int_or_word
            elif origin in (int, float):
                kwargs["type"] = origin
            choices = f.metadata.get("choices")
            if choices is not None and origin not in (list, tuple):
                kwargs["choices"] = list(choices) + list(f.metadata.get("aliases") or {})
            else:
                kwargs["metavar"] = f.name.upper()
            parser.add_argument(*names, **kwargs)

    @classmethod
    def flag_values(cls, args: argparse.Namespace, *, prefix: str = "") -> dict[str, Any]:
        """The declared fields whose flags were given."""
        out = {}
        for f in cls.option_fields():
            dest = f"{prefix.replace('-', '_')}__{f.name}" if prefix else f.name
            if hasattr(args, dest):
                out[f.name] = getattr(args, dest)
        return out


def _comma_list(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot read {text!r} as a comma list of {kind.__name__}") from None
    parse.__name__ = f"comma list of {kind.__name__}"
    return parse


def count_or_all(value: int | str) -> int | None:
    """A number of items as files and flags say it: a number, or ``all`` (None: every item)."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"a number of items must be a number or 'all', not {value!r}") from None


def _int_or_word(text: str) -> int | str:
    """A number, or a word such as ``all`` / ``auto``."""
    return int(text) if text.lstrip("-").isdigit() else text


def with_values(cfg: T, values: Mapping[str, Any], source: str = "command line") -> T:
    """``cfg`` with ``values`` (``name`` or ``section.name`` keys) put in, read and validated as a file would be."""
    data = cfg.to_dict()
    for key, value in values.items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        (data[section] if section else data)[name] = value
    return type(cfg).from_mapping(data, source)
