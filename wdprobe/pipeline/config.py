"""Study configuration: one TOML file equivalent to the flags of ``wdprobe run`` (declared with
:mod:`wdprobe.core.options`: each option's values, default and help are said once, for files and flags).

Every stage has its own section; a key a section does not know is an error that names the file, the
section and the nearest known key (typos in configs should not silently fall back to defaults).
The resolved configuration is saved in the run's manifest, so a run records exactly what made it.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

from wdprobe.core.options import Options, count_or, option, positive_int, with_values
from wdprobe.errors import ConfigError, MissingInputError
from wdprobe.methods.decoding import PERMUTATIONS
from wdprobe.methods.patching import CROSS_CONDITIONS
from wdprobe.methods.probes import PROBE_KINDS
from wdprobe.methods.steering import DEFAULT_CONTROLS, MIN_MASS_RATIO, STEERING_CONTROLS
from wdprobe.pipeline.registry import REGISTRY, item_count
from wdprobe.scoring.formats import FORMATS
from wdprobe.scoring.orders import ORDERS
from wdprobe.stages.pairs import SPACES
from wdprobe.stages.readouts import DEED_ORDERS, ORDER_ALIASES
from wdprobe.stages.steering import DEFAULT_ALPHAS

__all__ = ["StudyConfig", "wdct_stages", "item_count", "load_config", "config_to_toml", "with_overrides"]


def wdct_stages() -> tuple[str, ...]:
    """The WDCT stages in pipeline order, read from the registry (so registered stages count too)."""
    return REGISTRY.names("wdct")


def known_stages(names: list[str]) -> bool:
    """Every name a registered WDCT stage (checked when asked, so stages registered later count)."""
    bad = [s for s in names if s not in wdct_stages()]
    if bad:
        raise ConfigError(f"unknown stage(s) {bad}: choose from {list(wdct_stages())}")
    return True


@dataclass
class ScoreSection(Options):
    """Settings of the ``score`` stage (``[score]`` in a study file)."""

    section_name: ClassVar[str] = "score"
    batch_size: int = option(32, check=positive_int, expect="a positive number", help="most prompts per forward")
    chat: str = option("auto", choices=("auto", "plain", "chat"),
                       help="wrap prompts in the chat template (auto: instruction-tuned model names only)")


@dataclass
class CaptureSection(Options):
    """Settings of the ``capture`` stage: layers, positions, storage dtype."""

    section_name: ClassVar[str] = "capture"
    layers: str = option("all", help="'all', '0,4,8' or '2-10'")
    positions: list[str] = option(["last", "question_mean"],
                                  help="comma list of last, question_mean, option0_last..option3_last")
    storage_dtype: str = option("float32", choices=("float32", "float16", "bfloat16"))
    batch_size: int = option(16, check=positive_int, expect="a positive number")


@dataclass
class ProbesSection(Options):
    """Settings of the ``probes`` stage: positions, probe kinds, folds."""

    section_name: ClassVar[str] = "probes"
    positions: list[str] = option(["last", "question_mean"], help="captured positions to probe")
    kinds: list[str] = option(["logreg", "diffmean"], check=lambda v: all(k in PROBE_KINDS for k in v),
                              expect=f"a list of registered probe kinds ({', '.join(PROBE_KINDS)})")
    folds: int = option(5, check=lambda v: isinstance(v, int) and v >= 2, expect="a number of folds >= 2")
    permutations: int = option(PERMUTATIONS, check=positive_int, expect="a positive number",
                               help="label permutations behind every max-over-layers test")
    # the logistic probe tunes its regularisation by an inner 3-fold CV on every fit (most of the stage's time):
    # a study of fewer items reads the difference-of-means probe alone (closed form, nothing tuned)
    logreg_min_items: int = option(400, check=lambda v: isinstance(v, int) and v >= 0, expect="a number >= 0")


ITEMS = count_or("all", "auto")
ITEMS_HELP = "number of two-option items (half inconsistent), 'all' or 'auto' (scaled to the sample)"


@dataclass
class PatchCrossSection(Options):
    """Settings of cross-form patching: items, layers, conditions, and which deed orders (``auto``: both when the
    run is letter-free, so stance and letter transport separate)."""

    section_name: ClassVar[str] = "patch_cross"
    items: int | str = option("auto", check=ITEMS, expect="a positive number, 'all' or 'auto'", help=ITEMS_HELP)
    layers: str = option("all", help="'all', '0,4,8' or '2-10'")
    conditions: list[str] = option(list(CROSS_CONDITIONS), choices=CROSS_CONDITIONS,
                                   help="full (the whole residual), or only its component along the word-stance, "
                                        "answer-letter (letters only) or a random direction")
    batch_size: int = option(64, check=positive_int, expect="a positive number",
                             help="most rows per forward (on CPU also capped at ~1.5k tokens)")
    deed_orders: str = option("auto", choices=DEED_ORDERS, aliases=ORDER_ALIASES,
                              help="patch into the shown deed order only, or into every (cyclic) order so the patch's "
                                   "effect splits into stance and letter transport (auto: cyclic for runs scored "
                                   "letter-free; 'both' is read as cyclic)")


@dataclass
class PatchPositionalSection(Options):
    """Settings of positional patching: forms, attribution items, exact items."""

    section_name: ClassVar[str] = "patch_positional"
    forms: list[str] = option(["deed", "word"], choices=("deed", "word"), help="which forms' prompts")
    items: int | str = option("auto", check=count_or("auto", zero=True), expect="a number or 'auto'",
                              help="items for attribution patching")
    exact_items: int | str = option("auto", check=count_or("auto", zero=True), expect="a number or 'auto'",
                                    help="of those, items also patched exactly")
    screen: int = option(256, check=positive_int, expect="a positive number",
                         help="aligned items screened (seeded sample); the strongest content effects are kept")
    min_effect: float = option(0.0, help="keep items whose log-odds move at least this much when options are swapped")
    layers: str = option("all", help="'all', '0,4,8' or '2-10'")
    batch_size: int = option(64, check=positive_int, expect="a positive number")


@dataclass
class SteerSection(Options):
    """Settings of steering: grid items, layers, alphas, validation, and the space (``auto``: content space, the
    word content direction read in both deed orders, for letter-free runs)."""

    section_name: ClassVar[str] = "steer"
    items: int | str = option("auto", check=ITEMS, expect="a positive number, 'all' or 'auto'", help=ITEMS_HELP)
    layers: str = option("all", help="'all', '0,4,8' or '2-10'")
    alphas: list[float] = option(list(DEFAULT_ALPHAS),
                                 help="in units of the word-answer mean difference at the layer")
    min_mass_ratio: float = option(MIN_MASS_RATIO, help="a setting keeps the answer format if its mass (letters, or the options' "
                                             "decision tokens) stays above this share of clean")
    validate: bool = option(True, help="rerun the best setting on the items the grid did not use")
    controls: list[str] = option(list(DEFAULT_CONTROLS), choices=tuple(STEERING_CONTROLS),
                                 help="control directions of equal norm run beside the stance at every cell: random "
                                      "(isotropic; may break the answer format), pair-random (the difference of two "
                                      "other same-answer items' residuals; keeps the format)")
    prompting: bool = option(True, help="validation also runs the prompting baseline: each deed prompt preceded by the "
                                        "model's own word answer and an instruction to act on it")
    batch_size: int = option(64, check=positive_int, expect="a positive number")
    space: str = option("auto", choices=SPACES,
                        help="letters: shown (the letter-balanced word-stance direction, shown deed order) or content "
                             "(the word content direction, every deed order, content CS); auto: content for runs "
                             "scored letter-free")


SECTIONS: dict[str, type] = {"score": ScoreSection, "capture": CaptureSection, "probes": ProbesSection,
                             "patch_cross": PatchCrossSection, "patch_positional": PatchPositionalSection,
                             "steer": SteerSection}


@dataclass
class StudyConfig(Options):
    """Everything ``wdprobe run`` needs; defaults give the embedded model on the full WDCT."""

    model: str = option("gemma-3-270m", help="embedded 'gemma-3-270m' (default), a local HF directory or a Hugging Face id")
    data: str | None = option(None, help="items: WDCT.csv, or your own items (.csv / .jsonl / .json in the item schema, "
                                         "docs/guides/own-data.md); else $WDPROBE_WDCT, else the pinned WDCT download")
    out: str | None = option(None, help="run directory (default runs/<model>); re-running resumes and skips finished "
                                        "stages")
    report: str | None = option(None, help="report folder (default: report/ inside the run directory): index.html, "
                                           "README.md, scores.md, figures")
    notes: str | None = option(None, help="markdown file with a written reading, added to the report")
    score_notes: str | None = option(None, cli=False, help="markdown file: the reading of the scores (scores.md)")
    seed: int = option(0, help="option shuffling and every sampled subset")
    orders: str = option("cyclic", choices=ORDERS,
                         help="option orders each question is asked in: shown (the paper's one seeded order), cyclic "
                              "(every option under every letter: k prompts) or all (k! prompts)")
    format: str = option("both", choices=FORMATS,
                         help="answer by letter, score option texts as continuations of a prompt without option lines "
                              "(cloze: no letter at all), or both")
    limit: int | None = option(None, check=positive_int, expect="a positive number", help="first N items (a quick look)")
    sample: int | None = option(None, check=positive_int, expect="a positive number",
                                help="seeded random sample of N items")
    domains: list[str] | None = option(None, flag="--domain", cli=False,
                                       help="keep only these domains (any domain of the items)")
    dtype: str = option("float32", choices=("float32", "bfloat16", "float16"),
                        help="weights' dtype (float32 for committed numbers: bf16 flips near-tied choices at 270M)")
    device: str | None = option(None, help="torch device (default: where the model loads, CPU here)")
    device_map: str | None = option(None, help="for models larger than one device: auto, balanced, or a JSON "
                                               "module->device map")
    stages: list[str] = option(factory=lambda: list(wdct_stages()), cli=False, check=lambda v: known_stages(v))
    png: bool | str = option("auto", choices=(True, False, "auto"), cli=False,
                             help="static PNGs beside the HTML figures (about 4 s each on CPU); auto: full runs only")
    score: ScoreSection = option(factory=ScoreSection)
    capture: CaptureSection = option(factory=CaptureSection)
    probes: ProbesSection = option(factory=ProbesSection)
    patch_cross: PatchCrossSection = option(factory=PatchCrossSection)
    patch_positional: PatchPositionalSection = option(factory=PatchPositionalSection)
    steer: SteerSection = option(factory=SteerSection)

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


def config_from_mapping(data: Mapping[str, Any], source: str = "<config>") -> StudyConfig:
    """A :class:`StudyConfig` from parsed TOML (or any nested mapping), with named errors."""
    return StudyConfig.from_mapping(data, source)


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
    return with_values(cfg, overrides)


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
