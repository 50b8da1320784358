"""Read-outs: what an intervention instrument reads, in one answer format, declared once.

An instrument (cross-form patching, steering, and the next ones) is an *intervention* read through a
*read-out*. The intervention says what is changed (the full residual, its component along a direction, an
added vector); the read-out says everything about reading the answer: which two-option items of the run are
read and which deed prompts run (one per item, or both option orders), the decision position, the target
tokens (the letters, or the options' first differing tokens at the decision point), the word's choice each
deed is moved toward, the word residuals a patch takes and the stance directions it projects on, how an
item's consistency is defined, which answer-format mass says the model still answers, and how the
instrument's rows are summarised and named on disk.

Every instrument module is written once against :class:`Readout`; a new answer format is one subclass here and
one line in :data:`READOUTS` (see ``docs/guides/new-variant.md``). No stage branches on the format: the
pipeline asks :func:`readouts_for` which read-outs a run's ``format`` setting covers.

* :class:`LetterReadout` — the option letters after ``Answer:``; the deed prompt in the shown order or in both
  orders (``orders="cyclic"``: the stance splits from the letter, and content space averages the orders); the
  target is the letter of the word's answer; consistency is the scored one (paper or content reading).
* :class:`ClozeReadout` — no letters: each form is read where its two options part (the prompt plus the tokens
  both options share, :func:`wdprobe.core.option_scoring.decision_point`); the target is the word's choice's
  first differing token; an item is consistent at that step when its clean deed log-odds point to the word's
  choice.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from wdprobe.core.cache import atomic_write_text
from wdprobe.core.forward import encode_prompts
from wdprobe.core.option_scoring import decision_point, last_residuals
from wdprobe.data.prompts import cloze_prompt, normal_prompt, word_reminder, wrap
from wdprobe.errors import InputError, InterventionError
from wdprobe.figures import localisation as localise_plots
from wdprobe.figures import probes as plots
from wdprobe.methods.interventions import Row, run_interventions
from wdprobe.methods.patching import (
    CROSS_CONDITIONS,
    cross_form_headline,
    cross_form_tests,
    letter_split,
    letter_split_tests,
    summarise_cloze_patch,
    summarise_cross_form,
    summarise_letter_split,
)
from wdprobe.methods.probes import crossfit_directions
from wdprobe.methods.steering import MIN_MASS_RATIO
from wdprobe.runs.rundir import RunDir
from wdprobe.runs.stage import scored_entry
from wdprobe.stages.capture import load_activations
from wdprobe.stages.content_probes import run_content_probes
from wdprobe.stages.lens_readings import (
    TUNED_MIN_ITEMS,
    cloze_trajectories,
    content_trajectory,
    trajectory_from_activations,
    write_trajectory,
)
from wdprobe.stages.pairs import (
    DeedRuns,
    choose_items,
    content_directions,
    deed_runs,
    load_pairs,
    stance_directions,
    target_space,
)
from wdprobe.stages.probes import run_probes
from wdprobe.stages.score import load_score, scored_cloze_prompts

DEED_ORDERS = ("auto", "shown", "cyclic")  # which deed option orders a letter read-out runs (the study's vocabulary)
ORDER_ALIASES = {"both": "cyclic"}  # the name earlier releases gave every order of a two-option item
RANDOM_SEED_OFFSET = 7919  # the random control direction's seed, offset from the run's (kept from the first release)


@dataclass
class Reading:
    """A sample of two-option items as one read-out reads it: ``items`` (a frame indexed 0..n-1 with at least id,
    domain, consistent, y_word), the deed ``runs`` an instrument intervenes on (each with the token columns of the
    word's choice and of the other option in ``token_ids``), the word ``sources`` (``[n_items, n_layers, d]``, the
    residuals a patch takes), unit ``stance`` and ``letter`` directions per item and layer (cross-fitted; None where
    they cannot be estimated), their mean-difference lengths ``gap``, a ``random`` unit direction per layer, the
    ids ``left_out`` (unreadable), and ``notes`` for the headline."""

    items: Any
    runs: DeedRuns
    token_ids: tuple[int, ...]
    sources: np.ndarray | None = None
    stance: np.ndarray | None = None
    letter: np.ndarray | None = None
    gap: np.ndarray | None = None
    random: np.ndarray | None = None
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        return list(self.items["id"])


def _divergence_words(summary: Mapping[str, Any], prefix: str) -> str:
    """Where a lens reading's inconsistent items part (its median), for the stage's status line."""
    if "inconsistent" not in summary:
        return ""
    inc = summary["inconsistent"]
    med = inc.get("item_divergence_layer_median")
    if not inc.get("n"):
        return f"{prefix}no inconsistent items"
    if med is None:
        return f"{prefix}no inconsistent item's readings part"
    return (f"{prefix}inconsistent items part at layer {med:.0f} (median of {inc.get('item_divergence_n_parting', inc['n'])} "
            f"of {inc['n']}; the rest never part)")


def decodable_from(layer: int | None) -> str:
    """The status line's wording of a first significant layer (none: no layer passed the corrected test)."""
    return f"decodable from layer {layer}" if layer is not None else "not decodable at any layer (corrected test)"


def random_directions(n_layers: int, width: int, seed: int) -> np.ndarray:
    """The seeded random unit direction per layer that every instrument's random control uses."""
    rng = np.random.default_rng(seed + RANDOM_SEED_OFFSET)
    rand = rng.standard_normal((n_layers, width))
    return rand / np.linalg.norm(rand, axis=-1, keepdims=True)


def read_interventions(lm, reading: Reading, idx: Sequence[int],
                       rows_for: Callable[[np.ndarray], tuple[list[Row], list[dict[str, Any]]]],
                       columns: Sequence[str], *, batch_size: int = 64,
                       progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """An instrument's interventions on every deed run of the reading's items ``idx``, read through the reading: the
    instrument says what is changed (``rows_for(items)``: its rows and their keys, one block per deed run, for the
    runs' item indices ``items``); the reading says which prompts run and how the answer is read. One record per row:
    the row's keys (condition, layer, ...), the item id and deed order, the log-odds of the word's choice over the
    other option and the answer-format mass, in ``columns``."""
    wanted = set(idx)
    runs = reading.runs
    rows_of = [k for k in range(len(runs)) if runs.item[k] in wanted]
    rows, keys = rows_for(runs.item[rows_of])
    lp = run_interventions(lm, [runs.prompts[k] for k in rows_of], rows, reading.token_ids, batch_size=batch_size,
                           progress=progress)
    run_of_row = np.array([rows_of[key["item"]] for key in keys], dtype=int)
    toward, mass = read_runs(lp, runs, run_of_row)
    ids = reading.ids
    out = []
    for r, key in enumerate(keys):
        k = run_of_row[r]
        rec = {**key, "id": ids[runs.item[k]], "deed_order": runs.order[k], "toward_word": float(toward[r]),
               "letter_mass": float(mass[r]), "option_mass": float(mass[r])}
        out.append({c: rec[c] for c in columns})
    return out


def read_runs(lp: np.ndarray, runs: DeedRuns, run_of_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per intervention row (on deed run ``run_of_row[r]``): the log-odds of the word's choice over the other option,
    and the probability of the two (the answer-format mass: the letters, or the options' decision tokens)."""
    r = np.arange(len(run_of_row))
    toward, away = lp[r, runs.toward[run_of_row]], lp[r, runs.away[run_of_row]]
    return toward - away, np.exp(toward) + np.exp(away)


INSTRUMENT_FILES = {"patch": ("patching", "cross_form"), "steer": ("steering", "steering")}  # folder, file stem


class Readout(ABC):
    """One answer format's way of reading an instrument (see the module docstring). Subclasses declare their names
    and implement :meth:`reading`, :meth:`consistency` and the per-instrument summaries."""

    name: ClassVar[str]
    prefix: ClassVar[str]  # output file prefix under patching/ and steering/
    mass: ClassVar[str]  # the answer-format mass column
    position: ClassVar[str]  # where interventions sit, in words (settings and headlines)
    conditions: ClassVar[tuple[str, ...]]  # cross-form patching conditions it supports
    stages: ClassVar[Mapping[str, str]]  # instrument -> the manifest stage name its parts are saved under
    part_columns: ClassVar[Mapping[str, tuple[str, ...]]]  # instrument -> the columns of its saved parts
    shardable: ClassVar[bool] = False
    letters: ClassVar[bool] = False  # whether answers are read by letter (positional patching needs them)
    selects_by: ClassVar[str]  # the steering cell ranking when the run gives no population CS

    def stage(self, instrument: str) -> str:
        """The manifest stage an instrument saves under with this read-out."""
        return self.stages[instrument]

    def outputs(self, folder: str, stem: str) -> str:
        """The glob of an instrument's outputs (``folder/prefix+stem*``): what a restart deletes."""
        return f"{folder}/{self.prefix}{stem}*"

    def result_file(self, instrument: str, kind: str = "headline") -> str:
        """Where an instrument's result of ``kind`` lies in the run directory, for this read-out: ``table`` (one
        row per item and setting), ``summary`` (by layer and setting) or ``headline`` (the JSON every report reads).
        The one place these names are made: the instruments write there and the reports read there."""
        folder, stem = INSTRUMENT_FILES[instrument]
        suffix = {"table": ".csv", "summary": "_summary.csv", "headline": "_headline.json"}[kind]
        return f"{folder}/{self.prefix}{stem}{suffix}"

    def scored_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The rows of a run's ``prompts.csv`` scored in this answer format."""
        return [r for r in rows if r["format"] == self.name]

    def check_conditions(self, conditions: Sequence[str]) -> list[str]:
        """The patching conditions, refused by name when this read-out has no such condition."""
        bad = [c for c in conditions if c not in self.conditions]
        if bad:
            raise InterventionError(f"unknown {self.name} patching condition(s) {bad}: choose from {list(self.conditions)}")
        return list(conditions)

    @abstractmethod
    def settings(self, run: RunDir, *, orders: str | None = None, space: str | None = None) -> dict[str, Any]:
        """What an instrument's result depends on beyond its own parameters (recorded and checked on resume):
        the position, and where this read-out has them, the deed ``orders`` patching runs or the ``space`` steering
        reads (each resolved from ``auto`` against the run; left out when not given)."""

    @abstractmethod
    def reading(self, run: RunDir, lm, *, n_items: int | None, seed: int, layers: Sequence[int], folds: int,
                settings: Mapping[str, Any], exclude: Sequence[str] = ()) -> Reading:
        """The sample (a seeded, half-inconsistent one of ``n_items``; every readable item but ``exclude`` when
        ``n_items`` is None), its deed runs, word sources and directions at ``layers``."""

    @abstractmethod
    def consistency(self, frame, reading: Reading):
        """The item table the summaries join on (index = item position; ``consistent`` per item)."""

    @abstractmethod
    def population_cs(self, run: RunDir, settings: Mapping[str, Any]) -> float | None:
        """The whole run's CS in this reading (steering's population CS), or None where none is defined."""

    def fit_stance(self, reading: Reading, *, folds: int, stratify: bool = False) -> None:
        """Fill the reading's cross-fitted stance directions where :meth:`reading` left them out; an InputError when
        the sample cannot be cross-fitted (the instrument then says why). Nothing to do by default."""

    @abstractmethod
    def prompted_prompts(self, run: RunDir, lm, reading: Reading) -> list[str]:
        """Each deed run's prompt preceded by :func:`~wdprobe.data.prompts.word_reminder` (the item's word question,
        the model's own word answer, an instruction to act on it), built as the run was scored (chat template
        included), ending where the unprompted run ends so the same tokens are read: the prompting baseline."""

    # ---- logit lens
    @abstractmethod
    def lens(self, run: RunDir, lm, out: Path, model: str) -> tuple[dict[str, Any], dict[str, Any], list]:
        """Write this format's lens readings under ``out`` (``lens/``); return their summary, headline part and PNGs."""

    @abstractmethod
    def lens_status(self, summary: Mapping[str, Any]) -> str:
        """The lens stage's status words for this format, from the stage's summary."""

    # ---- probes
    @abstractmethod
    def probe(self, run_dir: Path, *, positions: Sequence[str], kinds: Sequence[str], folds: int, n_perm: int, seed: int,
              orders: str, hook: str = "resid_post", progress: bool = True) -> tuple[dict[str, Any], list[str]]:
        """The probes stage in this format: headlines by name and the status lines."""

    # ---- cross-form patching
    @abstractmethod
    def patch_results(self, out: Path, rows: Sequence[Mapping[str, Any]], reading: Reading, *, seed: int,
                      model: str) -> tuple[dict[str, Any], list]:
        """Summarise the saved patching rows: write the per-item and summary tables under ``out``; return the
        headline (numbers and tests) and the figures (none: no page)."""

    @abstractmethod
    def patch_status(self, head: Mapping[str, Any]) -> str:
        """The patching stage's one-line status from its headline."""

    # ---- steering
    steer_settings: ClassVar[tuple[str, ...]] = ()  # steering parameters this read-out records among its settings

    def steering_table(self, frame, items):
        """The per-item steering table written to disk."""
        return frame

    @abstractmethod
    def steering_headline(self, reading: Reading, items, table, settings: Mapping[str, Any], *, layers: Sequence[int],
                          population: float | None, best: Mapping[str, Any] | None,
                          validation: Mapping[str, Any] | None, skipped: str | None) -> dict[str, Any]:
        """The steering headline: the sample (``items``: its consistency table), the clean reading (``table``: the
        summary), the best cell and its validation."""

    @abstractmethod
    def steering_where(self, model: str, reading: Reading, settings: Mapping[str, Any], head: Mapping[str, Any]) -> str:
        """The figures' subtitle: the model, the sample and the units."""

    def steering_figure_options(self, head: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of :func:`wdprobe.figures.localisation.steering_figures` for this read-out."""
        return {}

    def steering_heading(self, model: str) -> str:
        """The steering page's heading."""
        return f"wdprobe steering: {model}"

    @abstractmethod
    def redraw_patch(self, run_dir: Path, summary, head: Mapping[str, Any], model: str) -> list[tuple[str, Any]]:
        """The cross-form patching figures redrawn from the saved tables, as ``(name, figure)``."""

    @abstractmethod
    def redraw_steer(self, table, head: Mapping[str, Any], model: str) -> list[tuple[str, Any]]:
        """The steering figures redrawn from the saved summary, as ``(name, figure)``."""

    def steer_status(self, head: Mapping[str, Any]) -> str:
        """The steering stage's one-line status from its headline."""
        best = head.get("best")
        if not best:
            return self.status_prefix + self.no_setting
        text = f"best layer {best['layer']}, alpha {best['alpha']:g}: CS {best['cs']:.2f} on the grid"
        val = head.get("validation")
        if val:
            text += f"; held out {val['stance']['cs']:.2f} vs clean {val['cs_clean']:.2f}"
        return self.status_prefix + text

    status_prefix: ClassVar[str] = ""
    no_setting: ClassVar[str] = "no setting kept the answer format"


# ---- letters -----------------------------------------------------------------------------------------

class LetterReadout(Readout):
    """The option letters (see the module docstring)."""

    name = "letter"
    prefix = ""
    mass = "letter_mass"
    position = "last"
    conditions = CROSS_CONDITIONS
    stages = {"patch": "patch_cross", "steer": "steer", "steer_validate": "steer_validate"}
    part_columns = {"patch": ("id", "deed_order", "condition", "layer", "toward_word", "letter_mass"),
                    "steer": ("id", "deed_order", "condition", "layer", "alpha", "toward_word", "letter_mass")}
    shardable = True
    letters = True
    selects_by = "cs_balanced"

    def settings(self, run: RunDir, *, orders: str | None = None, space: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"position": self.position}
        if orders is not None:
            orders = ORDER_ALIASES.get(orders, orders)
            if orders not in DEED_ORDERS:
                raise InterventionError(f"unknown deed_orders {orders!r}: choose from {list(DEED_ORDERS)}")
            letter_free = scored_entry(run)["config"].get("orders", "shown") != "shown"
            out["deed_orders"] = orders if orders != "auto" else ("cyclic" if letter_free else "shown")
        if space is not None:
            out["space"] = target_space(run.path, space)
        return out

    def reading(self, run: RunDir, lm, *, n_items: int | None, seed: int, layers: Sequence[int], folds: int,
                settings: Mapping[str, Any], exclude: Sequence[str] = ()) -> Reading:
        space = settings.get("space", "shown")
        pairs = load_pairs(run.path, lm.tokenizer, n_items=n_items, seed=seed, space=space)
        if exclude:
            seen = set(exclude)
            pairs = pairs.subset([i for i, iid in enumerate(pairs.items["id"]) if iid not in seen])
            if not len(pairs):
                raise InputError("every readable item was in the grid")
        find = content_directions if space == "content" else stance_directions
        dirs = find(run.path, pairs, layers, folds=folds, seed=seed)
        runs = deed_runs(pairs, "content" if space == "content" or settings.get("deed_orders") == "cyclic" else "shown")
        return Reading(pairs.items, runs, pairs.token_ids, dirs.word_sources, dirs.stance, dirs.letter, dirs.gap,
                       dirs.random, extra={"pairs": pairs, "deed_norm": dirs.deed_norm})

    def prompted_prompts(self, run: RunDir, lm, reading: Reading) -> list[str]:
        pairs, chat = reading.extra["pairs"], scored_entry(run)["config"]["chat_template"]
        out = []
        for k in range(len(reading.runs)):
            i = int(reading.runs.item[k])
            pres = pairs.presentations[i]
            if reading.runs.order[k] == "swapped":
                pres = replace(pres, deed_order=tuple(reversed(pres.deed_order)))
            if wrap(normal_prompt(pres, "deed"), lm.tokenizer, chat) != reading.runs.prompts[k]:
                raise InterventionError(f"item {reading.ids[i]}: the deed prompt rebuilt for the prompting baseline is "
                                        "not the prompt the run scored")
            reminder = word_reminder(pres.item, int(reading.items["y_word"].iloc[i]))
            out.append(wrap(reminder + normal_prompt(pres, "deed"), lm.tokenizer, chat))
        return out

    def consistency(self, frame, reading: Reading):
        return reading.items

    def population_cs(self, run: RunDir, settings: Mapping[str, Any]) -> float | None:
        import json

        metrics = json.loads((run.path / "metrics.json").read_text())
        if settings.get("space") == "content":
            return metrics["readings"]["content"]["cs"]["micro"]["value"]
        return metrics["cs_micro"]

    def patch_results(self, out: Path, rows: Sequence[Mapping[str, Any]], reading: Reading, *, seed: int,
                      model: str) -> tuple[dict[str, Any], list]:
        import pandas as pd

        items = reading.items
        every = pd.DataFrame(rows)
        every["layer"] = every["layer"].astype(int)
        for c in ("toward_word", "letter_mass"):
            every[c] = every[c].astype(float)
        every["item"] = every["id"].map({iid: k for k, iid in enumerate(items["id"])})
        frame = every[every["deed_order"] == "shown"].drop(columns="deed_order").reset_index(drop=True)
        summary = summarise_cross_form(frame, items)
        summary.attrs["cs_clean"] = float(items["consistent"].mean())
        atomic_write_text(out.parent / self.result_file("patch", "table"),
                          frame.merge(items[["id", "domain", "consistent", "same_letter"]], on="id").to_csv(index=False))
        atomic_write_text(out.parent / self.result_file("patch", "summary"), summary.to_csv(index=False))
        head = cross_form_headline(summary, items)
        head["tests"] = cross_form_tests(frame, items, seed=seed)
        where = f"{model}, {len(items)} two-option items ({int((items.consistent == 0).sum())} inconsistent)"
        figs = localise_plots.cross_form_figures(summary, where)
        if (every["deed_order"] == "swapped").any():
            head["letter_split"] = write_letter_split(out, every, items, seed=seed, stem=f"{self.prefix}cross_form")
            figs.append(localise_plots.letter_split_figure(pd.read_csv(out / f"{self.prefix}cross_form_letter_split_summary.csv"),
                                                           f"{model}, {len(items)} two-option items, both deed orders"))
        return head, figs

    def steering_headline(self, reading: Reading, items, table, settings: Mapping[str, Any], *, layers: Sequence[int],
                          population: float | None, best: Mapping[str, Any] | None,
                          validation: Mapping[str, Any] | None, skipped: str | None) -> dict[str, Any]:
        return {"space": settings["space"], "n_items": len(reading), "n_inconsistent": int((items.consistent == 0).sum()),
                "clean_cs_items": table.attrs["clean_cs"], "clean_letter_mass": table.attrs["clean_letter_mass"],
                "cs_population_clean": population,
                "mean_difference_norm": dict(zip(map(int, layers), map(float, reading.gap.mean(0)))),
                "deed_residual_norm": dict(zip(map(int, layers), map(float, reading.extra["deed_norm"]))),
                "best": best, "validation": validation, "validation_skipped": skipped}

    def probe(self, run_dir: Path, *, positions: Sequence[str], kinds: Sequence[str], folds: int, n_perm: int, seed: int,
              orders: str, hook: str = "resid_post", progress: bool = True) -> tuple[dict[str, Any], list[str]]:
        heads: dict[str, Any] = {}
        lines = []
        for position in positions:
            head = run_probes(run_dir, hook=hook, position=position, kinds=kinds, folds=folds, seed=seed,
                              progress=progress, n_perm=n_perm)
            kind = "diffmean" if "diffmean" in head else kinds[0]
            heads[position] = head
            lines.append(f"{position}: word probe {head[kind]['word->word']:.2f}, transfer "
                         f"{head[kind]['word->deed_best']:.2f}")
        if orders != "shown":  # every order asked: the content choice (decide) apart from the letter (bind)
            content = run_content_probes(run_dir, positions=positions, hook=hook, folds=folds, n_perm=n_perm, seed=seed)
            heads["content"] = content
            for position, tests in content.items():
                layers = {k: tests[k]["first_significant_layer"] for k in ("decide_word", "bind_word") if k in tests}
                lines.append(f"{position}: word content {decodable_from(layers.get('decide_word'))}, "
                             f"letter {decodable_from(layers.get('bind_word'))}")
        return heads, lines

    def lens(self, run: RunDir, lm, out: Path, model: str) -> tuple[dict[str, Any], dict[str, Any], list]:
        acts = load_activations(run.path, hook="resid_post", position="last")
        ids = scored_entry(run)["letters"]["ids"]
        traj = trajectory_from_activations(lm, acts, ids)
        atomic_write_text(out / "trajectory.csv", traj.to_frame().to_csv(index=False))
        summary: dict[str, Any] = dict(traj.summary())
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        figs = localise_plots.lens_figures(traj, model)
        plots.write_html(figs, out / "lens.html", heading=f"wdprobe logit lens: {model}, {len(traj.items)} two-option items")
        pngs = [plots.write_png(f, out / f"lens-{i}.png") for i, f in enumerate(figs)]
        head: dict[str, Any] = {g: {k: summary[g].get(k) for k in ("n", "curve_divergence_layer",
                                                                 "item_divergence_layer_median")}
                                for g in ("all", "consistent", "inconsistent")}
        all_orders = load_activations(run.path, hook="resid_post", position="last", orders="all")
        if (all_orders.meta["in_content"] == 1).any():  # every order captured: the content-space lens too
            content = content_trajectory(lm, all_orders, ids)
            summary["content"], head["content"], made = write_trajectory(
                out, "content", content, f"{model}, content space (log-odds averaged over option orders)",
                f"wdprobe logit lens in content space: {model}, {len(content.items)} two-option items")
            pngs += made
        return summary, head, pngs

    def lens_status(self, summary: Mapping[str, Any]) -> str:
        return _divergence_words(summary, "")

    def patch_status(self, head: Mapping[str, Any]) -> str:
        if "full" not in head:
            return ""
        return f"full patch flips up to {head['full']['flip_rate']:.2f} of inconsistent items (layer {head['full']['layer']})"

    def steering_where(self, model: str, reading: Reading, settings: Mapping[str, Any], head: Mapping[str, Any]) -> str:
        return (f"{model}, {len(reading)} two-option items; alpha in units of the word-answer mean difference at the "
                "layer" + ("; content space: word content direction, both deed orders, content CS"
                           if settings["space"] == "content" else ""))

    def redraw_patch(self, run_dir: Path, summary, head: Mapping[str, Any], model: str) -> list[tuple[str, Any]]:
        import pandas as pd

        if "cs_clean" in head:
            summary.attrs["cs_clean"] = head["cs_clean"]
        cf = localise_plots.cross_form_figures(summary, f"{model}, {head['n_items']} two-option items "
                                                        f"({head['n_inconsistent']} inconsistent)")
        out = list(zip(["cross-form", "cross-form-by-letter"], cf))
        split = Path(run_dir) / f"patching/{self.prefix}cross_form_letter_split_summary.csv"
        if split.is_file():
            out.append(("cross-form-letter-split", localise_plots.letter_split_figure(
                pd.read_csv(split), f"{model}, {head['letter_split']['n_items']} two-option items, both deed orders")))
        return out

    def redraw_steer(self, table, head: Mapping[str, Any], model: str) -> list[tuple[str, Any]]:
        table.attrs["clean_cs"] = head["clean_cs_items"]
        ratio = (head.get("best") or {}).get("min_mass_ratio", MIN_MASS_RATIO)
        space = ("; content space: word content direction, both deed orders, content CS"
                 if head.get("space") == "content" else "")
        sf = localise_plots.steering_figures(table, f"{model}, {head['n_items']} two-option items; alpha in units "
                                                    f"of the word-answer mean difference at the layer{space}", ratio)
        return list(zip(["steering-surface", "steering-curves"], sf))


def write_letter_split(out: Path, every, items, *, seed: int = 0, stem: str = "cross_form") -> dict[str, Any]:
    """``<stem>_letter_split.csv`` (per item x condition x layer), its summary by layer, and the headline part:
    per condition, the numbers at the layer of the largest mean letter shift (where the patch moves the letter most,
    the layer its letter test picks), and the tests (which pick their own best layer and correct for it)."""
    split = letter_split(every, items)
    split = split.merge(items[["id"]], left_on="item", right_index=True)
    summary = summarise_letter_split(split, seed=seed)
    atomic_write_text(out / f"{stem}_letter_split.csv", split.to_csv(index=False))
    atomic_write_text(out / f"{stem}_letter_split_summary.csv", summary.to_csv(index=False))
    clean = split.drop_duplicates("item")
    head: dict[str, Any] = {"n_items": int(len(clean)), "content_cs_clean": float((clean["clean_content"] > 0).mean()),
                            "tests": letter_split_tests(split, seed=seed)}
    for cond, g in summary.groupby("condition"):
        best = g.loc[g["letter_shift"].idxmax()]
        head[cond] = {"layer": int(best["layer"]),
                      **{k: float(best[k]) for k in ("stance_shift", "stance_shift_low", "stance_shift_high",
                                                     "letter_shift", "letter_shift_low", "letter_shift_high",
                                                     "flip_rate_content", "flip_rate_same", "flip_rate_opposite",
                                                     "content_cs_after")}}
    return head


# ---- cloze -------------------------------------------------------------------------------------------

def cloze_items(run_dir: str | Path, lm, *, n_items: int | None = 64, seed: int = 0
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """Two-option items readable at a decision point in both forms, whose deed decision text re-encodes to its
    tokens: per item the word's decision sequence, the deed's decision text, the deed's decision tokens and the
    word's cloze choice. A seeded sample of ``n_items``, half cloze-inconsistent. Also the ids left out."""
    scored = load_score(run_dir)
    prompts = {(p.view.item.id, p.form): p for p in scored_cloze_prompts(run_dir, lm.tokenizer)}
    if not prompts:
        raise InputError(f"{run_dir}: the run has no cloze prompts; score it with --format cloze or both")
    tok = lm.tokenizer
    chat = scored_entry(RunDir(run_dir))["config"]["chat_template"]
    rows, kept, left_out = [], [], []
    for r in scored.rows:
        if r["n_options"] != 2:
            continue
        w, d = prompts[(r["id"], "word")], prompts[(r["id"], "deed")]
        pw = decision_point(tok, w.text, w.view.item.options("word"))
        pd_ = decision_point(tok, d.text, d.view.item.options("deed"))
        if pw is None or pd_ is None:
            left_out.append(r["id"])
            continue
        shared = tok.decode(pd_.sequence[len(pd_.sequence) - pd_.shared:]) if pd_.shared else ""
        text = d.text + shared
        if encode_prompts(tok, [text], "cpu")["input_ids"][0].tolist() != pd_.sequence:
            left_out.append(r["id"])  # the decision text would not re-tokenise to the decision tokens
            continue
        rows.append(dict(r, consistent=r["cloze_consistent"]))
        item = d.view.item  # d.text is wrap(cloze_prompt(item, "deed")) (scored_cloze_prompts): the reminder goes inside
        prompted = wrap(word_reminder(item, w.choice) + cloze_prompt(item, "deed"), tok, chat) + shared
        kept.append({"id": r["id"], "domain": r["domain"], "y_word": w.choice, "y_deed": d.choice,
                     "word_sequence": pw.sequence, "deed_text": text, "deed_tokens": pd_.tokens,
                     "deed_text_prompted": prompted})
    pick = choose_items(rows, n_items, seed, consistency="cloze_consistent")
    return [kept[i] for i in pick], left_out


class ClozeReadout(Readout):
    """The options' texts as continuations, read at their decision point (see the module docstring)."""

    name = "cloze"
    prefix = "cloze_"
    mass = "option_mass"
    position = "decision point"
    conditions = ("full", "stance", "random")
    stages = {"patch": "patch_cloze", "steer": "steer_cloze", "steer_validate": "steer_cloze_validate"}
    part_columns = {"patch": ("id", "condition", "layer", "toward_word"),
                    "steer": ("id", "condition", "layer", "alpha", "toward_word", "option_mass")}
    selects_by = "cs_balanced"

    def settings(self, run: RunDir, *, orders: str | None = None, space: str | None = None) -> dict[str, Any]:
        return {"position": self.position}

    def reading(self, run: RunDir, lm, *, n_items: int | None, seed: int, layers: Sequence[int], folds: int,
                settings: Mapping[str, Any], exclude: Sequence[str] = ()) -> Reading:
        import pandas as pd

        items, left_out = cloze_items(run.path, lm, n_items=n_items, seed=seed)
        if exclude:
            seen = set(exclude)
            items = [it for it in items if it["id"] not in seen]
        sources = last_residuals(lm, [it["word_sequence"] for it in items], layers, batch_size=16)
        union = tuple(sorted({t for it in items for t in it["deed_tokens"]}))
        column = {t: k for k, t in enumerate(union)}
        n = len(items)
        toward = np.array([column[it["deed_tokens"][it["y_word"]]] for it in items], dtype=int)
        away = np.array([column[it["deed_tokens"][1 - it["y_word"]]] for it in items], dtype=int)
        runs = DeedRuns([it["deed_text"] for it in items], np.arange(n), np.array(["shown"] * n), toward, away)
        frame = pd.DataFrame({"id": [it["id"] for it in items], "domain": [it["domain"] for it in items],
                              "y_word": [int(it["y_word"]) for it in items]})
        return Reading(frame, runs, union, sources, random=random_directions(len(layers), sources.shape[-1], seed),
                       left_out=left_out, extra={"items": items})

    def prompted_prompts(self, run: RunDir, lm, reading: Reading) -> list[str]:
        items = reading.extra["items"]
        return [items[int(i)]["deed_text_prompted"] for i in reading.runs.item]

    def fit_stance(self, reading: Reading, *, folds: int, stratify: bool = False) -> None:
        """Fill the reading's cross-fitted cloze stance directions and their lengths (difference of means of the word
        decision-point residuals by the word's cloze choice); an InputError when the sample cannot be cross-fitted."""
        y = reading.items["y_word"].to_numpy().astype(int)
        if stratify:
            counts = np.bincount(y, minlength=2)
            if counts.min() < folds:
                raise InputError(f"the word's cloze choice is the first option in {counts[0]} and the second in "
                                 f"{counts[1]} of {len(y)} items: too few of one choice for {folds} cross-fitted folds "
                                 "(sample more items or use fewer folds)")
        elif len(y) < 2 * folds:
            raise InputError(f"{len(y)} items")
        dirs, fold_of, gaps = crossfit_directions(reading.sources, y, folds=folds, stratify=stratify)
        reading.stance, reading.gap = dirs[fold_of], gaps[fold_of]

    def consistency(self, frame, reading: Reading):
        import pandas as pd

        clean = frame[frame.condition == "clean"].set_index("item")["toward_word"]
        return pd.DataFrame({"id": reading.items["id"], "domain": reading.items["domain"],
                             "consistent": (clean.reindex(range(len(reading))) > 0).astype(int).to_numpy()})

    def population_cs(self, run: RunDir, settings: Mapping[str, Any]) -> float | None:
        return None

    steer_settings = ("min_mass_ratio",)
    status_prefix = "cloze: "
    no_setting = "no setting kept the options' tokens likely"

    def probe(self, run_dir: Path, *, positions: Sequence[str], kinds: Sequence[str], folds: int, n_perm: int, seed: int,
              orders: str, hook: str = "resid_post", progress: bool = True) -> tuple[dict[str, Any], list[str]]:
        cloze = run_content_probes(run_dir, positions=positions, hook=hook, folds=folds, n_perm=n_perm, seed=seed,
                                   format=self.name)
        lines = []
        for position, tests in cloze.items():
            first = tests["decide_word"]["first_significant_layer"] if "decide_word" in tests else None
            lines.append(f"{position}: cloze word choice {decodable_from(first)}")
        return {"cloze": cloze}, lines

    def lens(self, run: RunDir, lm, out: Path, model: str) -> tuple[dict[str, Any], dict[str, Any], list]:
        trajs, unreadable = cloze_trajectories(lm, scored_cloze_prompts(run.path, lm.tokenizer))
        traj = trajs["logit"]
        summary, head, pngs = write_trajectory(
            out, "cloze", traj, f"{model}, cloze prompts at the options' decision point ({len(unreadable)} items whose "
                                "options never part left out)",
            f"wdprobe logit lens, cloze form: {model}, {len(traj.items)} two-option items", unreadable_items=unreadable)
        if "tuned" in trajs:  # the trained lens beside it, cross-fitted over items
            summary["tuned"], head["tuned"], made = write_trajectory(
                out, "cloze-tuned", trajs["tuned"], f"{model}, cloze prompts, tuned lens (affine translators fitted "
                                                    "to the last block's residual, cross-fitted over items)",
                f"wdprobe tuned lens, cloze form: {model}, {len(trajs['tuned'].items)} two-option items", lens="tuned")
            pngs += made
        else:
            summary["tuned"] = {"skipped": f"fewer than {TUNED_MIN_ITEMS} readable items to fit a trained lens"}
        return {"cloze": summary}, {"cloze": head}, pngs

    def lens_status(self, summary: Mapping[str, Any]) -> str:
        return _divergence_words(summary.get("cloze") or {}, "cloze: ")

    def patch_status(self, head: Mapping[str, Any]) -> str:
        if "full" not in head:
            return ""
        return (f"cloze: full patch reaches decision-step CS {head['full']['cs_after']:.2f} "
                f"(clean {head['cs_clean_decision_step']:.2f})")

    def patch_results(self, out: Path, rows: Sequence[Mapping[str, Any]], reading: Reading, *, seed: int,
                      model: str) -> tuple[dict[str, Any], list]:
        import pandas as pd

        frame = pd.DataFrame(rows)
        frame["layer"] = frame["layer"].astype(int)
        frame["toward_word"] = frame["toward_word"].astype(float)
        frame["item"] = frame["id"].map({iid: k for k, iid in enumerate(reading.ids)})
        table = self.consistency(frame, reading)
        summary = summarise_cloze_patch(frame, table)
        atomic_write_text(out.parent / self.result_file("patch", "table"),
                          frame.merge(table[["id", "consistent"]], on="id").to_csv(index=False))
        atomic_write_text(out.parent / self.result_file("patch", "summary"), summary.to_csv(index=False))
        head: dict[str, Any] = {"n_items": len(reading), "n_left_out": len(reading.left_out), "notes": reading.notes,
                                "cs_clean_decision_step": float(table["consistent"].mean()),
                                "tests": cross_form_tests(frame, table, seed=seed)}
        for cond, g in summary.groupby("condition"):
            best = g.loc[g["cs_after"].idxmax()]
            head[cond] = {"layer": int(best["layer"]), **{k: float(best[k]) for k in ("flip_rate", "break_rate", "cs_after")}}
        return head, []

    def steering_table(self, frame, items):
        return frame.merge(items[["id", "consistent"]], on="id")

    def steering_headline(self, reading: Reading, items, table, settings: Mapping[str, Any], *, layers: Sequence[int],
                          population: float | None, best: Mapping[str, Any] | None,
                          validation: Mapping[str, Any] | None, skipped: str | None) -> dict[str, Any]:
        return {"n_items": len(reading), "n_left_out": len(reading.left_out),
                "n_inconsistent": int((items.consistent == 0).sum()),
                "clean_cs_items": table.attrs["clean_cs"], "clean_option_mass": table.attrs["clean_option_mass"],
                "selected_by": (best or {}).get("selected_by", "cs_balanced"), "best": best, "validation": validation,
                "validation_skipped": skipped}

    def steering_where(self, model: str, reading: Reading, settings: Mapping[str, Any], head: Mapping[str, Any]) -> str:
        return (f"{model}, cloze form, {len(reading)} two-option items read at the options' decision point; alpha in "
                "units of the word-choice mean difference at the layer; cells ranked by "
                + ("balanced CS (flip + keep) / 2" if head["selected_by"] == "cs_balanced" else "CS"))

    def steering_figure_options(self, head: Mapping[str, Any]) -> dict[str, Any]:
        return {"mass_label": "option-token mass", "position": "decision point", "metric": head["selected_by"]}

    def steering_heading(self, model: str) -> str:
        return f"wdprobe steering in the cloze form: {model}"

    def redraw_patch(self, run_dir: Path, summary, head: Mapping[str, Any], model: str) -> list[tuple[str, Any]]:
        summary.attrs["cs_clean"] = head["cs_clean_decision_step"]
        return [("cross-form-cloze", localise_plots.cloze_patch_figure(
            summary, f"{model}, {head['n_items']} two-option items read where their options part"))]

    def redraw_steer(self, table, head: Mapping[str, Any], model: str) -> list[tuple[str, Any]]:
        table.attrs["clean_cs"] = head["clean_cs_items"]
        ratio = (head.get("best") or {}).get("min_mass_ratio", MIN_MASS_RATIO)
        sf = localise_plots.steering_figures(table, f"{model}, cloze form, {head['n_items']} two-option items at the "
                                                    "options' decision point; alpha in units of the word-choice mean "
                                                    "difference at the layer", ratio, mass_label="option-token mass",
                                             position="decision point", metric=head.get("selected_by", "cs_balanced"))
        return list(zip(["steering-cloze-surface", "steering-cloze-curves"], sf))



READOUTS: dict[str, Readout] = {"letter": LetterReadout(), "cloze": ClozeReadout()}


def readout(name: str | Readout) -> Readout:
    """The registered read-out of that name (a :class:`Readout` passes through)."""
    if isinstance(name, Readout):
        return name
    if name not in READOUTS:
        raise InputError(f"unknown answer format {name!r}: choose from {list(READOUTS)}")
    return READOUTS[name]


def scored_readouts(run_dir: str | Path, format: str = "auto") -> list[Readout]:
    """The read-outs an instrument reads on a run: ``auto``, every format it was scored in; otherwise the format(s)
    asked, refused by name when the run was not scored in them."""
    scored = readouts_for(scored_format(run_dir))
    if format == "auto":
        return scored
    asked = readouts_for(format)
    missing = [ro.name for ro in asked if ro not in scored]
    if missing:
        raise InputError(f"{run_dir}: the run was scored in the {scored_format(run_dir)} format, not {missing}; score "
                         f"it with --format {' or '.join(missing)} (or both)")
    return asked


def readouts_for(format: str) -> list[Readout]:
    """The read-outs a run's ``format`` setting covers: one format, or ``both`` (every registered read-out)."""
    if format == "both":
        return list(READOUTS.values())
    return [readout(format)]


def scored_format(run_dir: str | Path) -> str:
    """The answer format a run was scored in (``letter``, ``cloze`` or ``both``)."""
    return scored_entry(RunDir(run_dir))["config"].get("format", "letter")
