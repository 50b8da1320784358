"""Study configuration: one TOML file equivalent to the flags of ``wdprobe run``.

Every stage has its own section; a key a section does not know is an error that names the file, the
section and the nearest known key (typos in configs should not silently fall back to defaults).
The resolved configuration is saved in the run's manifest, so a run records exactly what made it.
"""
from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from wdprobe.errors import ConfigError, MissingInputError
from wdprobe.pipeline.registry import REGISTRY, item_count
from wdprobe.scoring.orders import FORMATS, ORDERS

__all__ = ["StudyConfig", "wdct_stages", "item_count", "load_config", "config_to_toml", "with_overrides"]


def wdct_stages() -> tuple[str, ...]:
    """The WDCT stages in pipeline order, read from the registry (so registered stages count too)."""
    return REGISTRY.names("wdct")


@dataclass
class ScoreSection:
    """Settings of the ``score`` stage (``[score]`` in a study file)."""

    batch_size: int = 32
    chat: str = "auto"


@dataclass
class CaptureSection:
    """Settings of the ``capture`` stage: layers, positions, storage dtype."""

    layers: str = "all"
    positions: list[str] = field(default_factory=lambda: ["last", "question_mean"])
    storage_dtype: str = "float32"
    batch_size: int = 16


@dataclass
class ProbesSection:
    """Settings of the ``probes`` stage: positions, probe kinds, folds."""

    positions: list[str] = field(default_factory=lambda: ["last", "question_mean"])
    kinds: list[str] = field(default_factory=lambda: ["logreg", "diffmean"])
    folds: int = 5
    permutations: int = 200  # label permutations behind every max-over-layers test
    # the logistic probe tunes its regularisation by an inner 3-fold CV on every fit (most of the stage's time):
    # a study of fewer items reads the difference-of-means probe alone (closed form, nothing tuned)
    logreg_min_items: int = 400


@dataclass
class PatchCrossSection:
    """Settings of cross-form patching: items, layers, conditions, and which deed orders (``auto``: both when the
    run is letter-free, so stance and letter transport separate)."""

    items: int | str = "auto"
    layers: str = "all"
    conditions: list[str] = field(default_factory=lambda: ["full", "stance", "letter", "random"])
    batch_size: int = 64
    deed_orders: str = "auto"


@dataclass
class PatchPositionalSection:
    """Settings of positional patching: forms, attribution items, exact items."""

    forms: list[str] = field(default_factory=lambda: ["deed", "word"])
    items: int | str = "auto"
    exact_items: int | str = "auto"
    screen: int = 256
    min_effect: float = 0.0
    layers: str = "all"
    batch_size: int = 64


@dataclass
class SteerSection:
    """Settings of steering: grid items, layers, alphas, validation, and the space (``auto``: content space, the
    word content direction read in both deed orders, for letter-free runs)."""

    items: int | str = "auto"
    layers: str = "all"
    alphas: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0])
    min_mass_ratio: float = 0.5
    validate: bool = True
    batch_size: int = 64
    space: str = "auto"


SECTIONS: dict[str, type] = {"score": ScoreSection, "capture": CaptureSection, "probes": ProbesSection,
                             "patch_cross": PatchCrossSection, "patch_positional": PatchPositionalSection,
                             "steer": SteerSection}


@dataclass
class StudyConfig:
    """Everything ``wdprobe run`` needs; defaults give the embedded model on the full WDCT."""

    model: str = "gemma-3-270m"
    data: str | None = None
    out: str | None = None
    report: str | None = None
    notes: str | None = None  # markdown file: the study's written reading (index.html, README.md)
    score_notes: str | None = None  # markdown file: the reading of the scores (scores.md)
    seed: int = 0
    orders: str = "cyclic"  # option orders every question is asked in: shown (paper), cyclic, all
    format: str = "both"  # answer format: letter, cloze, or both
    limit: int | None = None
    sample: int | None = None
    domains: list[str] | None = None
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    stages: list[str] = field(default_factory=lambda: list(wdct_stages()))
    png: bool | str = "auto"  # static PNGs beside the HTML figures (about 4 s each on CPU); auto: full runs only
    score: ScoreSection = field(default_factory=ScoreSection)
    capture: CaptureSection = field(default_factory=CaptureSection)
    probes: ProbesSection = field(default_factory=ProbesSection)
    patch_cross: PatchCrossSection = field(default_factory=PatchCrossSection)
    patch_positional: PatchPositionalSection = field(default_factory=PatchPositionalSection)
    steer: SteerSection = field(default_factory=SteerSection)

    @property
    def slug(self) -> str:
        """A folder name for the model: the last path part of a directory or Hugging Face id."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.model.rstrip("/")).name) or "model"

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.slug

    @property
    def report_dir(self) -> Path:
        """Where the report goes: ``report`` if given, else ``report/`` inside the run directory (a run never
        writes into the committed ``reports/`` unless asked)."""
        return Path(self.report) if self.report else self.out_dir / "report"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def n_items_hint(self) -> int | None:
        """How many items the study selects when ``sample`` or ``limit`` says so (None: the whole item set)."""
        given = [v for v in (self.sample, self.limit) if v is not None]
        return min(given) if given else None

    def sized(self) -> "StudyConfig":
        """The configuration with every ``"auto"`` resolved for the study's size, so every stage scales with the
        sample. On the whole item set (no ``sample``/``limit``): 64 items for cross-form patching and the steering
        grid, 16 attribution and 4 exact positional items per form, both probe kinds, PNGs. On a sample of n items:
        n // 8 items (at least 8, at most 64) for patching and steering, n // 16 (4..16) attribution and n // 100
        (1..4) exact positional items, the logistic probe only from ``probes.logreg_min_items`` items, no PNGs
        (each costs ~4 s of CPU whatever the sample). Explicit values are kept."""
        n = self.n_items_hint

        def scaled(value: int | str, full: int, divisor: int, low: int) -> int | str:
            if value != "auto":
                return value
            return full if n is None else max(low, min(full, n // divisor))

        kinds = list(self.probes.kinds)
        if n is not None and n < self.probes.logreg_min_items and "diffmean" in kinds and "logreg" in kinds:
            kinds.remove("logreg")
        return replace(
            self, png=(n is None) if self.png == "auto" else self.png,
            patch_cross=replace(self.patch_cross, items=scaled(self.patch_cross.items, 64, 8, 8)),
            steer=replace(self.steer, items=scaled(self.steer.items, 64, 8, 8)),
            patch_positional=replace(self.patch_positional, items=scaled(self.patch_positional.items, 16, 16, 4),
                                     exact_items=scaled(self.patch_positional.exact_items, 4, 100, 1)),
            probes=replace(self.probes, kinds=kinds))

    def validate(self) -> "StudyConfig":
        bad = [s for s in self.stages if s not in wdct_stages()]
        if bad:
            raise ConfigError(f"unknown stage(s) {bad}: choose from {list(wdct_stages())}")
        for name, value in (("patch_cross.items", self.patch_cross.items), ("steer.items", self.steer.items)):
            if not (value in ("all", "auto") or (isinstance(value, int) and value > 0)):
                raise ConfigError(f"{name} must be a positive number, 'all' or 'auto', not {value!r}")
        for name, value in (("patch_positional.items", self.patch_positional.items),
                            ("patch_positional.exact_items", self.patch_positional.exact_items)):
            if not (value == "auto" or (isinstance(value, int) and value >= 0)):
                raise ConfigError(f"{name} must be a number or 'auto', not {value!r}")
        if self.png not in (True, False, "auto"):
            raise ConfigError(f"png must be true, false or 'auto', not {self.png!r}")
        for name in ("limit", "sample"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{name} must be a positive number, not {v!r}")
        for name, allowed in (("orders", ORDERS), ("format", FORMATS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, not {getattr(self, name)!r}")
        if self.steer.space not in ("auto", "shown", "content"):
            raise ConfigError(f"steer.space must be 'auto', 'shown' or 'content', not {self.steer.space!r}")
        if self.patch_cross.deed_orders not in ("auto", "shown", "both"):
            raise ConfigError(f"patch_cross.deed_orders must be 'auto', 'shown' or 'both', not {self.patch_cross.deed_orders!r}")
        return self


def _check_keys(given: Mapping[str, Any], known: list[str], where: str) -> None:
    for key in given:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _typed(value: Any, default: Any, where: str) -> Any:
    """Light type check against the default: catches a string where a list or number belongs."""
    if default is None or value is None or default == "auto":
        return value
    if isinstance(default, bool) != isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(default, list) and not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, list) and default and isinstance(default[0], float):
        return [float(v) for v in value]
    return value


def config_from_mapping(data: Mapping[str, Any], source: str = "<config>") -> StudyConfig:
    """A :class:`StudyConfig` from parsed TOML (or any nested mapping), with named errors."""
    top = [f.name for f in fields(StudyConfig)]
    _check_keys(data, top, source)
    base = StudyConfig()
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: [{key}] must be a table")
            cls = SECTIONS[key]
            names = [f.name for f in fields(cls)]
            _check_keys(value, names, f"{source} [{key}]")
            default = cls()
            kwargs[key] = cls(**{k: _typed(v, getattr(default, k), f"{source} [{key}] {k}") for k, v in value.items()})
        else:
            kwargs[key] = _typed(value, getattr(base, key), f"{source}: {key}")
    return StudyConfig(**kwargs).validate()


def load_config(path: str | Path) -> StudyConfig:
    """Read a TOML study file; errors name the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingInputError(f"study config {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from_mapping(data, str(path))


def with_overrides(cfg: StudyConfig, overrides: Mapping[str, Any]) -> StudyConfig:
    """Flags given on the command line win over the file; keys are 'name' or 'section.name'."""
    data = cfg.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        (data[section] if section else data)[name] = value
    return config_from_mapping(data, "command line")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_to_toml(cfg: StudyConfig) -> str:
    """The configuration as a TOML file ``load_config`` reads back (unset keys are left out)."""
    data = cfg.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if k not in SECTIONS and v is not None]
    for name in SECTIONS:
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in data[name].items() if v is not None]
    return "\n".join(lines) + "\n"
