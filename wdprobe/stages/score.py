"""The WDCT scoring stage: model x items -> per-item CSV, metrics JSON and manifest in a run directory.

This is what ``wdprobe score`` calls; scripts call :func:`score_wdct` directly. Items are scored in
chunks; each finished chunk is written atomically, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from tqdm.auto import tqdm

from wdprobe.core.cache import atomic_write_json
from wdprobe.core.forward import default_batch_tokens
from wdprobe.core.model import load_model
from wdprobe.core.option_scoring import continuation_logprobs, continuation_trees
from wdprobe.core.options import Options, option, positive_int, with_values
from wdprobe.core.packing import ResidualRead, TokenRead, packable, tree_readout
from wdprobe.data.items import items_path, read_items
from wdprobe.data.prompts import cloze_prompt, load_demos, normal_prompt, resolve_chat, wrap
from wdprobe.data.wdct import (
    FORMS,
    LETTERS,
    SUBSETS,
    Presentation,
    file_sha256,
    present,
    resolve_wdct_path,
    select,
)
from wdprobe.errors import (
    InputError,
    MergeError,
    MissingInputError,
    PromptTooLongError,
    RunMismatchError,
    StageNotFinishedError,
)
from wdprobe.methods.capture import CaptureSpec, position_weights, presentation_spans, prompt_spans
from wdprobe.runs.rundir import RunDir, Timer, read_csv
from wdprobe.runs.shards import Shard, checked_shards, shard_dir
from wdprobe.runs.stage import finish_stage, save_in_parts, scored_entry, work_left
from wdprobe.scoring.formats import (
    CLOZE,
    FORMATS,
    LETTER,
    AnswerFormat,
    classic_columns,
    formats_of,
    item_columns,
    measured_formats,
)
from wdprobe.scoring.letters import (
    LetterTokens,
    build_prompts,
    complete_cot,
    next_token_logprobs,
    prompt_trees,
    resolve_letter_tokens,
)
from wdprobe.scoring.metrics import summarise
from wdprobe.scoring.orders import (
    CLOZE_COLUMNS,
    CONTENT_COLUMNS,
    ORDERS,
    PROMPT_COLUMNS,
    cloze_prompt_row,
    letter_prompt_row,
    orders_of,
    reading_metrics,
    typed_prompt_row,
)
from wdprobe.stages.stash import CaptureStash

STAGE = "score"
CLASSIC_COLUMNS = ["id", "domain", "n_options", "word_order", "deed_order",
                   "word_choice", "word_letter", "word_letter_mass", "deed_choice", "deed_letter", "deed_letter_mass",
                   "consistent", "pcs", "correct", "word_is_correct", "deed_is_correct"] + \
                  [f"p_{f}_{c}" for f in ("word", "deed") for c in range(4)]
ITEM_COLUMNS = CLASSIC_COLUMNS + CONTENT_COLUMNS + CLOZE_COLUMNS
LOW_MASS = 0.1  # below this the model is barely answering with a letter at all
_INT_COLUMNS = ("n_options", "word_choice", "deed_choice", "consistent", "correct", "word_is_correct", "deed_is_correct")


@dataclass
class ScoreResult:
    """What a scoring run produced: per-item rows (canonical space), per-prompt rows, metrics and where they live."""

    run_dir: Path
    rows: list[dict[str, Any]]
    metrics: dict[str, Any]
    prompt_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def _number(text: str) -> float | int | None:
    if text in ("", None):
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in str(text) else value


def typed_item_row(row: dict[str, str]) -> dict[str, Any]:
    """A per-item CSV row with its numbers parsed back (the inverse of writing items.csv); blanks (readings the
    run did not measure) stay blank."""
    out: dict[str, Any] = dict(row)
    for k in ITEM_COLUMNS:
        if k in ("id", "domain", "word_order", "deed_order", "word_letter", "deed_letter") or k not in row:
            continue
        out[k] = _number(row[k])
        if out[k] is None and k not in _INT_COLUMNS:
            out[k] = ""
    for k in ("pcs", "word_letter_mass", "deed_letter_mass"):
        if isinstance(out.get(k), int):
            out[k] = float(out[k])
    return out


def _letter_copy_consistent(row: dict[str, Any]) -> int:
    j = LETTERS.index(row["word_letter"])
    return int(int(row["word_order"][j]) == int(row["deed_order"][j]))


def wdct_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """CS/PCS of the classic reading (micro, macro, per domain), answer-format diagnostics and correctness, and
    ``readings``: every reading the run measured (shown, content, order-mean, cloze) with 95% intervals."""
    m = summarise(rows)
    lettered = [r for r in rows if r.get("word_letter")]
    for form in ("word", "deed"):
        if lettered:
            mass = np.array([r[f"{form}_letter_mass"] for r in lettered])
            m[f"{form}_letter_mass_mean"] = float(mass.mean())
            m[f"{form}_letter_mass_below_{LOW_MASS}"] = float((mass < LOW_MASS).mean())
            m[f"{form}_chose_A"] = float(np.mean([r[f"{form}_letter"] == "A" for r in lettered]))
        graded = [r[f"{form}_is_correct"] for r in rows if r[f"{form}_is_correct"] is not None]
        m[f"{form}_accuracy"] = float(np.mean(graded)) if graded else None
        m[f"{form}_accuracy_n"] = len(graded)
    if lettered:
        # CS a responder would get by answering the deed with the *letter* it gave the word question:
        # the floor/ceiling that letter-position habits alone explain, under independent shuffles.
        m["cs_letter_copy_baseline"] = float(np.mean([_letter_copy_consistent(r) for r in lettered]))
        m["same_letter_rate"] = float(np.mean([r["word_letter"] == r["deed_letter"] for r in lettered]))
    m["n_multi_option_items"] = sum(r["n_options"] > 2 for r in rows)
    if rows:
        m["readings"] = reading_metrics(rows)
    return m


def measurement_defaults(setting: str, orders: str | None, format: str | None) -> tuple[str, str]:
    """The orders and answer format a run uses: letter-free by default (``cyclic`` orders, letter and cloze
    formats), the paper's own protocol (``shown``, ``letter``) for the CoT setting; bad combinations refused."""
    if orders is None:
        orders = "shown" if setting == "cot" else "cyclic"
    if format is None:
        format = "letter" if setting == "cot" else "both"
    if orders not in ORDERS:
        raise InputError(f"unknown orders {orders!r}: choose one of {ORDERS}")
    formats = formats_of(format)  # refuses an unknown format by name
    if setting == "cot" and (orders != "shown" or not all(fmt.reasons_aloud for fmt in formats)):
        raise InputError("the cot setting generates one belief per prompt and is measured as the paper did: "
                         "use --orders shown --format letter with it")
    return orders, format


@dataclass(frozen=True)
class ScoreSettings(Options):
    """What a scoring run's result depends on (recorded in the manifest and checked on resume), declared once."""

    model: str = option("gemma-3-270m", help="embedded default 'gemma-3-270m', a local HF model directory, or a "
                                             "Hugging Face id")
    data: str | None = option(None, help="items: WDCT.csv or your own items; else $WDPROBE_WDCT, else the pinned "
                                         "WDCT download")
    setting: str = option("normal", choices=("normal", "cot"))
    seed: int = option(0, help="option-shuffling seed")
    limit: int | None = option(None, check=positive_int, expect="a positive number", help="first N items")
    sample: int | None = option(None, check=positive_int, expect="a positive number", help="seeded sample of N items")
    domains: list[str] | None = option(None, cli=False)
    subset: str | None = option(None, choices=tuple(SUBSETS), help="a named subset of WDCT")
    batch_size: int = option(32, check=positive_int, expect="a positive number")
    dtype: str = option("float32", choices=("float32", "bfloat16", "float16"))
    device: str | None = option(None, help="torch device (default: where the model loads, CPU here)")
    device_map: Any = option(None, cli=False)
    chat: str = option("auto", choices=("auto", "plain", "chat"))
    demos: str | None = option(None, help="upstream demo.csv for setting cot")
    chunk_items: int = option(64, cli=False, check=positive_int, expect="a positive number")
    orders: str | None = option(None, choices=ORDERS, help="option orders each question is asked in (default: cyclic; "
                                                           "shown for the cot setting)")
    format: str | None = option(None, choices=FORMATS, help="letter, cloze or both (default: both; letter for cot)")


def item_named(exc: PromptTooLongError, pres: Sequence[Presentation]) -> PromptTooLongError:
    """The error again, led by the id of the item whose question the too-long prompt holds."""
    owners = [p.item.id for p in pres if any(p.item.stem(f) in exc.prompt for f in FORMS)]
    return PromptTooLongError(f"item {', '.join(map(repr, owners or ['?']))}: {exc}", exc.prompt)


def score_wdct(out: str | Path, settings: ScoreSettings | None = None, *, progress: bool = True, lm=None,
               shard: "str | None" = None, capture: CaptureSpec | None = None, **given: Any) -> ScoreResult:
    """Score WDCT items with a model into run directory ``out`` (resumable), with ``settings`` (a
    :class:`ScoreSettings`; keyword arguments name its fields, given alone or over ``settings``).

    ``orders`` (``shown``, ``cyclic``, ``all``) says in which option orders each question is asked: ``shown`` is the
    paper's one seeded order; ``cyclic`` and ``all`` add the orders that permutation averaging needs (the shown
    order is always among the prompts, so the paper-compatible numbers come from the same run).
    ``format`` (``letter``, ``cloze``, ``both``) says whether options are answered by letter, scored as
    continuations of a prompt without option lines, or both. Every prompt is a row of ``prompts.csv``; ``items.csv``
    holds the classic (shown-order) columns and the content and cloze readings (:mod:`wdprobe.scoring.orders`).

    ``capture`` (a :class:`~wdprobe.methods.capture.CaptureSpec`) reads those activations in the scoring forward
    and keeps them for the capture stage of this run (:mod:`wdprobe.stages.stash`): ``wdprobe run`` uses it so
    that scoring and capture cost one pass.

    ``lm`` lets a script reuse an already loaded :class:`~wdprobe.core.model.LoadedModel`. ``shard`` (``"i/n"``)
    scores only the items of that shard (by item id) into ``out/shards/score/i-of-n/``; answer letters are
    still calibrated on the whole selection, so ``wdprobe merge out`` gives exactly the unsharded run.
    """
    s = with_values(settings or ScoreSettings(), {k: v for k, v in given.items() if v is not None}, "score_wdct") \
        if given else (settings or ScoreSettings())
    model, data, setting, seed, limit, sample = s.model, s.data, s.setting, s.seed, s.limit, s.sample
    domains, subset, batch_size, chat, demos = s.domains, s.subset, s.batch_size, s.chat, s.demos
    orders, format = measurement_defaults(setting, s.orders, s.format)
    timer = Timer()
    part = Shard.parse(shard)
    run = RunDir(shard_dir(out, STAGE, part) if part else out)
    data_path = items_path(data, Path(out) / "data" / "items.jsonl") or resolve_wdct_path(data)
    with timer("load_data"):
        all_items = read_items(data_path)
        items = select(all_items, domains=domains, subset=subset, sample=sample, seed=seed, limit=limit)
        sha = file_sha256(data_path)
    if lm is None:
        with timer("load_model"):
            lm = load_model(model, device=s.device, dtype=s.dtype, device_map=s.device_map)
    use_chat = resolve_chat(chat, lm.name, lm.tokenizer)
    demo_list = load_demos(demos) if setting == "cot" else None
    config = {"model": lm.name, "model_revision": lm.revision, "dtype": str(lm.dtype).replace("torch.", ""),
              "data_sha256": sha, "setting": setting, "seed": seed, "chat_template": use_chat,
              "orders": orders, "format": format,
              "items": {"domains": list(domains) if domains else None, "subset": subset, "sample": sample, "limit": limit}}
    if part:
        config["shard"] = str(part)
    manifest = run.check_or_start(STAGE, config)
    stage = manifest["stages"][STAGE]
    pres = present(items, seed=seed)
    formats = formats_of(format)

    with timer("resolve_letters"):
        if "letters" in stage:
            letters = LetterTokens.from_json(stage["letters"])
        else:
            calib = build_prompts(pres[:16], setting="normal", tokenizer=lm.tokenizer, use_chat=use_chat)
            try:
                letters = resolve_letter_tokens(lm, calib["word"] + calib["deed"], n_letters=4, batch_size=batch_size)
            except PromptTooLongError as exc:
                raise item_named(exc, pres[:16]) from None
            run.update_stage(STAGE, letters=letters.to_json())
    if part:  # letters were calibrated on the whole selection (as unsharded); score this shard's items only
        run.update_stage(STAGE, selection_ids=[p.item.id for p in pres])
        pres = part.select(pres, key=lambda p: p.item.id)

    saved = [dict(r) for r in run.read_parts(STAGE)]
    done_ids = {r["id"] for r in saved}
    todo = work_left(pres, done_ids, key=lambda p: p.item.id)
    per_item = sum(fmt.prompts_per_item(pres[0], orders) for fmt in formats) if pres else 0
    bar = tqdm(total=per_item * len(pres), initial=per_item * (len(pres) - len(todo)), unit="prompt",
               desc=f"score {lm.name}", disable=not progress)

    stash = CaptureStash(run, capture, lm.revision) if capture is not None and setting == "normal" else None

    scoring = ScoringPass(lm, letters, setting, orders, use_chat, demo_list, seed, batch_size, bar.update, stash)

    def score(chunk: Sequence[Presentation]) -> list[dict[str, Any]]:
        try:
            return [row for fmt in formats for row in ROW_SCORERS[fmt.name](scoring, chunk)]
        except PromptTooLongError as exc:
            raise item_named(exc, chunk) from None

    with timer("score"):
        saved += save_in_parts(run, STAGE, todo, chunk_size=s.chunk_items, columns=PROMPT_COLUMNS, compute=score)
    bar.close()

    prompt_rows = [typed_prompt_row(r) for r in _in_item_order(saved, [p.item.id for p in pres])]
    rows = item_rows(pres, prompt_rows)
    metrics = wdct_metrics(rows)
    run.write_table("prompts.csv", prompt_rows, PROMPT_COLUMNS)
    run.write_table("items.csv", rows, ITEM_COLUMNS)

    atomic_write_json(run.path / "metrics.json", metrics)
    previous = run.read_manifest()["stages"][STAGE].get("timings", {})
    timings = {k: round(previous.get(k, 0.0) + v, 3) for k, v in timer.seconds.items()}
    finish_stage(run, STAGE, model=lm.manifest(), data={"path": str(data_path), "sha256": sha, "n_items": len(pres)},
                  letters=letters.to_json(), timings=timings, batch_size=batch_size,
                  n_prompts=len(prompt_rows))
    return ScoreResult(run.path, rows, metrics, prompt_rows)


@dataclass(frozen=True)
class ScoringPass:
    """What every format's scorer of one run reads: the model, the answer letters, the setting and the batching."""

    lm: Any
    letters: LetterTokens
    setting: str
    orders: str
    use_chat: bool
    demos: Any
    seed: int
    batch_size: int
    on_batch: Callable[[int], Any]
    stash: CaptureStash | None = None


def _letter_rows(ps: ScoringPass, chunk: Sequence[Presentation]) -> list[dict[str, Any]]:
    """Letter format: every (form, option order) prompt's answer-letter log-probabilities."""
    lm, letters, setting, orders, use_chat = ps.lm, ps.letters, ps.setting, ps.orders, ps.use_chat
    demos, seed, batch_size, on_batch, stash = ps.demos, ps.seed, ps.batch_size, ps.on_batch, ps.stash
    specs: list[tuple[Presentation, str, tuple[int, ...], bool, bool]] = []
    texts: list[str] = []
    groups: list[list[int]] = []
    if setting == "cot":  # one prompt per form, as the paper: normal word question, CoT deed question
        prompts = build_prompts(chunk, setting=setting, tokenizer=lm.tokenizer, use_chat=use_chat, demos=demos, seed=seed)
        prompts["deed"] = complete_cot(lm, prompts["deed"], batch_size=max(1, batch_size // 2))
        for f in FORMS:
            for p, text in zip(chunk, prompts[f]):
                specs.append((p, f, p.order(f), True, False))
                texts.append(text)
    else:
        for p in chunk:
            for f in FORMS:
                group = []
                for order, shown, in_content in orders_of(p, f, orders):
                    view = Presentation(p.item, order, order)
                    group.append(len(texts))
                    specs.append((p, f, order, shown, in_content))
                    texts.append(wrap(normal_prompt(view, f), lm.tokenizer, use_chat))
                groups.append(group)
    lp = np.zeros((len(texts), len(letters.ids)))
    rest_groups: list[list[int]] | None = groups if groups else None
    if stash is not None and groups:
        trees = prompt_trees(lm.tokenizer, texts, groups)
        packed = packable(lm, trees)
        if packed:  # one pass reads the letters and the residuals the capture stage wants
            where = [(j, k) for j, t in enumerate(packed) for k in range(len(groups[t]))]
            order_of = [i for t in packed for i in groups[t]]
            reads = [TokenRead(j, k, -1, letters.ids) for j, k in where]
            spans, n_opts = [], []
            for i in order_of:
                p, f, order, _, _ = specs[i]
                spans.append(presentation_spans(Presentation(p.item, order, order), f, texts[i]))
                n_opts.append(p.item.n_options)
            lps = _stashed_readout(lm, stash, [trees[t] for t in packed], reads, where, [texts[i] for i in order_of],
                                   spans, n_opts, [(specs[i][0].item.id, specs[i][1], "letter",
                                                    "".join(map(str, specs[i][2]))) for i in order_of],
                                   batch_size, on_batch)
            lp[order_of] = np.stack(lps)
            done = set(packed)
            rest_groups = [g for t, g in enumerate(groups) if t not in done]
    rest = [i for g in rest_groups for i in g] if rest_groups is not None else list(range(len(texts)))
    if rest:
        # one item's orders share everything before the option lines: that prefix runs once per item and form
        at = {i: j for j, i in enumerate(rest)}
        lp[rest] = next_token_logprobs(lm, [texts[i] for i in rest], letters.ids, batch_size=batch_size,
                                       on_batch=on_batch,
                                       groups=[[at[i] for i in g] for g in rest_groups] if rest_groups else None)
    return [letter_prompt_row(p.item, f, order, shown, in_content, lp[i])
            for i, (p, f, order, shown, in_content) in enumerate(specs)]


def _stashed_readout(lm, stash: CaptureStash, trees, reads, where, texts, spans, n_opts, keys, batch_size: int,
                     on_batch, budget_share: float = 1.0) -> list[np.ndarray]:
    """Token reads plus the capture spec's residuals at each prompt's positions (``where[j]``: prompt j's tree and
    branch), in one pass; the residuals go to the stash, the log-probabilities are returned."""
    spec = stash.spec
    rreads = [ResidualRead(t, k, w) for (t, k), text, sp, n in zip(where, texts, spans, n_opts)
              for w in position_weights(lm.tokenizer, text, sp, n, spec.positions)]
    budget = default_batch_tokens(lm.device)
    budget = int(budget * budget_share) if budget else None
    lps, resid = tree_readout(lm, trees, reads, rreads, spec.hook_names(), max_batch_tokens=budget,
                              max_rows=batch_size, on_batch=on_batch)
    n_pos, n_layers = len(spec.positions), len(spec.layers)
    resid = resid.reshape(len(texts), n_pos, len(spec.hooks), n_layers, lm.d_model)
    stash.add(keys, {f"{h}/{p}": resid[:, j, a] for a, h in enumerate(spec.hooks) for j, p in enumerate(spec.positions)})
    return lps


def _cloze_rows(ps: ScoringPass, chunk: Sequence[Presentation]) -> list[dict[str, Any]]:
    """Cloze format: every option text's log-likelihood as a continuation of each form's stem."""
    lm, use_chat, batch_size, on_batch, stash = ps.lm, ps.use_chat, ps.batch_size, ps.on_batch, ps.stash
    prompts, conts, owner = [], [], []
    for p in chunk:
        for f in FORMS:
            text = wrap(cloze_prompt(p.item, f), lm.tokenizer, use_chat)
            for c, option_text in enumerate(p.item.options(f)):
                prompts.append(text)
                conts.append(option_text)
                owner.append((p, f, c))
    total, n_tokens = np.zeros(len(prompts)), np.zeros(len(prompts), dtype=np.int64)
    rest = list(range(len(prompts)))
    if stash is not None:
        ct = continuation_trees(lm.tokenizer, prompts, conts)
        packed = packable(lm, ct.trees)
        if packed:  # the capture's cloze prompt is read in each item's first option branch (causal: unchanged)
            slot = {t: j for j, t in enumerate(packed)}
            mine = [r for r in range(len(prompts)) if ct.row_branch[r][0] in slot]
            reads = [TokenRead(slot[rd.tree], rd.branch, rd.position, rd.tokens)
                     for rd in (ct.reads[k] for r in mine for k in ct.row_reads[r])]
            firsts = [r for r in mine if owner[r][2] == 0]
            lps = _stashed_readout(lm, stash, [ct.trees[t] for t in packed], reads,
                                   [(slot[ct.row_branch[r][0]], ct.row_branch[r][1]) for r in firsts],
                                   [prompts[r] for r in firsts],
                                   [prompt_spans(prompts[r], owner[r][0].item.stem(owner[r][1]), [], ()) for r in firsts],
                                   [0] * len(firsts), [(owner[r][0].item.id, owner[r][1], "cloze", "") for r in firsts],
                                   batch_size, on_batch, budget_share=0.5)
            k = 0
            for r in mine:
                n = len(ct.row_reads[r])
                total[r], n_tokens[r] = sum(float(lp[0]) for lp in lps[k: k + n]), ct.n_tokens[r]
                k += n
            rest = [r for r in range(len(prompts)) if ct.row_branch[r][0] not in slot]
    if rest:
        total[rest], n_tokens[rest] = continuation_logprobs(lm, [prompts[r] for r in rest], [conts[r] for r in rest],
                                                            batch_size=batch_size, on_batch=on_batch)
    rows = []
    i = 0
    for p in chunk:
        for f in FORMS:
            k = p.item.n_options
            rows.append(cloze_prompt_row(p.item, f, total[i:i + k], n_tokens[i:i + k]))
            i += k
    return rows


ROW_SCORERS: dict[str, Callable[[ScoringPass, Sequence[Presentation]], list[dict[str, Any]]]] = {
    LETTER.name: _letter_rows, CLOZE.name: _cloze_rows}  # an answer format's scorer: chunk of items -> prompt rows


def _in_item_order(prompt_rows: Sequence[dict[str, Any]], ids: Sequence[str]) -> list[dict[str, Any]]:
    rank = {i: n for n, i in enumerate(ids)}
    kept = [r for r in prompt_rows if r["id"] in rank]
    return sorted(kept, key=lambda r: (rank[r["id"]], r["form"] != "word", r["format"], r["order"]))


def item_rows(pres: Sequence[Presentation], prompt_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-item rows from per-prompt rows: the classic columns from the shown-order letter prompts (from the cloze
    reading when the run has no letters) and the content and cloze readings beside them."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in prompt_rows:
        by_id.setdefault(r["id"], []).append(r)
    rows = []
    for p in pres:
        mine = by_id.get(p.item.id)
        if not mine:
            raise MergeError(f"item {p.item.id!r} has no scored prompts in this run")
        extra = item_columns(p.item, mine)
        row = classic_columns(p, mine, extra)
        if row is None:
            raise MergeError(f"item {p.item.id!r}: no answer format measured both of its forms")
        row.update(extra)
        rows.append(typed_item_row({k: str(v) for k, v in row.items()}))
    return rows


def load_score(run_dir: str | Path) -> ScoreResult:
    """Read a finished scoring run back (items.csv + metrics.json)."""

    run = RunDir(run_dir)
    items = run.path / "items.csv"
    if not items.is_file():
        raise StageNotFinishedError(f"{run.path} has no items.csv: run `wdprobe score --out {run.path}` first")
    rows = [typed_item_row(r) for r in read_csv(items)]
    prompts = run.path / "prompts.csv"
    prompt_rows = [typed_prompt_row(r) for r in read_csv(prompts)] if prompts.is_file() else []
    return ScoreResult(run.path, rows, json.loads((run.path / "metrics.json").read_text()), prompt_rows)


def load_items(run_dir: str | Path):
    """A finished scoring run's ``items.csv`` as a DataFrame, one row per item: the paper-compatible columns and the
    content and cloze readings (blank where the run did not measure them)."""
    import pandas as pd

    return pd.DataFrame(load_score(run_dir).rows, columns=ITEM_COLUMNS)


def load_prompts(run_dir: str | Path):
    """A finished scoring run's ``prompts.csv`` as a DataFrame, one row per (item, form, format, order): the letter
    log-probabilities in presented order, the per-option scores in canonical order, the choice."""
    import pandas as pd

    rows = load_score(run_dir).prompt_rows
    if not rows:
        raise StageNotFinishedError(f"{run_dir} has no prompts.csv: it was scored before per-prompt tables existed; "
                                    "score it again into a new run directory")
    return pd.DataFrame(rows, columns=PROMPT_COLUMNS)


def scored_items(run_dir: str | Path, entry: dict[str, Any], scored: ScoreResult) -> dict[str, Any]:
    """The items a run scored, by id, re-read from the file scoring read, which must still be byte for byte the file
    scored (its sha256 is in the manifest): an edited question would otherwise be captured, patched or steered under
    answers the model gave to another text."""
    path = Path(entry["data"]["path"])
    if not path.is_file():
        raise MissingInputError(f"{run_dir}: the items file it was scored from, {path}, is not there any more; put it "
                                "back (the same bytes) or score again into a new run directory")
    recorded = entry["data"].get("sha256")
    if recorded and file_sha256(path) != recorded:
        raise RunMismatchError(f"{run_dir}: the items file {path} changed since the run was scored (sha256 "
                               f"{file_sha256(path)[:12]}... now, {recorded[:12]}... scored); its prompts cannot be "
                               "rebuilt as scored. Restore the file, or score the new items into a new run directory")
    by_id = {it.id: it for it in read_items(path)}
    missing = [r["id"] for r in scored.rows if r["id"] not in by_id]
    if missing:
        raise InputError(f"{run_dir}: item(s) {missing[:5]} of the run are not in {path} any more")
    return by_id


def scored_prompts(run_dir: str | Path, tokenizer) -> tuple[list, dict[str, list[str]], ScoreResult]:
    """The presentations and word/deed prompts of a scored run, rebuilt exactly as they were scored
    (same items, shuffling seed and chat template), aligned with the run's item rows."""
    scored = load_score(run_dir)
    cfg = scored_entry(RunDir(run_dir))
    if cfg["config"]["setting"] != "normal":
        raise InputError(f"{run_dir}: this stage supports runs scored in the 'normal' setting, "
                         f"not {cfg['config']['setting']!r}")
    if LETTER not in measured_formats(cfg["config"]):
        raise InputError(f"{run_dir}: this stage reads answers by letter, and the run was scored in the cloze format "
                         "only; score with --format letter or --format both")
    by_id = scored_items(run_dir, cfg, scored)
    pres = present([by_id[r["id"]] for r in scored.rows], seed=cfg["config"]["seed"])
    prompts = build_prompts(pres, setting="normal", tokenizer=tokenizer, use_chat=cfg["config"]["chat_template"])
    return pres, prompts, scored


@dataclass(frozen=True)
class ScoredPrompt:
    """One prompt of a scored run, rebuilt exactly as scored, with what the model did on it; its class says in which
    answer format it was asked (:class:`LetterPrompt`, :class:`ClozePrompt`) and how its parts are read.

    ``view`` is the item in this prompt's option order; ``item`` is the item's row of ``items.csv``."""

    view: Presentation
    form: str
    text: str
    shown: bool
    in_content: bool
    choice: int
    letter: str
    item: dict[str, Any]
    answer_format: ClassVar[AnswerFormat] = LETTER

    @property
    def format(self) -> str:
        return self.answer_format.name

    @property
    def order(self) -> str:
        return "".join(map(str, self.view.order(self.form)))

    def spans(self) -> Any:
        """The prompt's character spans (question, option lines, answer cue) for position-keyed captures."""
        return presentation_spans(self.view, self.form, self.text)

    @property
    def n_option_lines(self) -> int:
        return self.view.item.n_options

    @property
    def order_text(self) -> str:
        """The option order as recorded in a capture's metadata (blank where the format has no orders)."""
        return self.order

    @property
    def content_choice(self) -> Any:
        """The item's choice in content space for this form (blank where the run did not measure it)."""
        return self.item.get(f"{self.form}_content_choice", "")

    @property
    def consistent(self) -> Any:
        """The item's word-deed consistency as this format reads it in the prompt's own order."""
        return self.item["consistent"]

    @property
    def content_consistent(self) -> Any:
        return self.item.get("content_consistent", "")


LetterPrompt = ScoredPrompt  # the letter format's prompt: the base reading


@dataclass(frozen=True)
class ClozePrompt(ScoredPrompt):
    """A cloze prompt: no option lines and no letters, so its question is the stem, its ``choice`` is the cloze
    choice (best mean log-likelihood per token), ``letter`` is empty and ``view`` keeps the canonical order."""

    answer_format: ClassVar[AnswerFormat] = CLOZE

    def spans(self) -> Any:
        return prompt_spans(self.text, self.view.item.stem(self.form), [], ())

    @property
    def n_option_lines(self) -> int:
        return 0

    @property
    def order_text(self) -> str:
        return ""

    @property
    def content_choice(self) -> Any:
        return self.choice

    @property
    def consistent(self) -> Any:
        return self.item["cloze_consistent"]

    @property
    def content_consistent(self) -> Any:
        return self.item["cloze_consistent"]


def scored_letter_prompts(run_dir: str | Path, tokenizer) -> list[ScoredPrompt]:
    """Every letter-format prompt of a scored run (each item's word prompts, then its deed prompts, in the run's
    order of orders). A run scored before orders existed gives its one shown prompt per form."""
    pres, prompts, scored = scored_prompts(run_dir, tokenizer)
    cfg = scored_entry(RunDir(run_dir))["config"]
    if not scored.prompt_rows:
        return [ScoredPrompt(p, f, prompts[f][i], True, False, int(row[f"{f}_choice"]), row[f"{f}_letter"], row)
                for i, (p, row) in enumerate(zip(pres, scored.rows)) for f in FORMS]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in LETTER.own(scored.prompt_rows):
        by_id.setdefault(r["id"], []).append(r)
    out = []
    for p, row in zip(pres, scored.rows):
        for f in FORMS:
            for r in (r for r in by_id.get(p.item.id, []) if r["form"] == f):
                order = tuple(int(ch) for ch in r["order"])
                view = Presentation(p.item, order, order)
                text = wrap(normal_prompt(view, f), tokenizer, cfg["chat_template"])
                out.append(ScoredPrompt(view, f, text, bool(r["shown"]), bool(r["in_content"]), int(r["choice"]),
                                        r["letter"], row))
    return out


def scored_cloze_prompts(run_dir: str | Path, tokenizer) -> list[ScoredPrompt]:
    """Every cloze prompt of a scored run (each item's word prompt, then its deed prompt), rebuilt exactly as scored:
    no option lines and no letters, so ``choice`` is the cloze choice (best mean log-likelihood per token), ``letter``
    is empty and ``view`` keeps the canonical order. Empty for a run scored without the cloze format."""
    scored = load_score(run_dir)
    cfg = scored_entry(RunDir(run_dir))
    if CLOZE not in measured_formats(cfg["config"]):
        return []
    by_id = scored_items(run_dir, cfg, scored)
    out = []
    for row in scored.rows:
        item = by_id[row["id"]]
        canonical = tuple(range(item.n_options))
        for f in FORMS:
            text = wrap(cloze_prompt(item, f), tokenizer, cfg["config"]["chat_template"])
            out.append(ClozePrompt(Presentation(item, canonical, canonical), f, text, False, False,
                                   int(row[f"{f}_cloze_choice"]), "", row))
    return out


PROMPT_REBUILDERS: dict[str, Callable[[Any, Any], list[ScoredPrompt]]] = {
    LETTER.name: scored_letter_prompts, CLOZE.name: scored_cloze_prompts}  # an answer format's prompts of a run


def scored_run_prompts(run_dir: str | Path, tokenizer) -> list[ScoredPrompt]:
    """Every prompt of a scored run in every answer format it measured (format by format, in
    :data:`~wdprobe.scoring.formats.ANSWER_FORMATS` order), rebuilt exactly as scored."""
    config = scored_entry(RunDir(run_dir))["config"]
    return [p for fmt in measured_formats(config) for p in PROMPT_REBUILDERS[fmt.name](run_dir, tokenizer)]


def merge_score(run_dir: str | Path) -> dict[str, Any]:
    """Merge the scoring shards into ``run_dir/items.csv``, ``metrics.json`` and the manifest."""

    run = RunDir(run_dir)
    entries = checked_shards(run.path, STAGE)
    order = entries[0][1].get("selection_ids")
    if not order:
        raise MergeError(f"{entries[0][0]}: the manifest lacks selection_ids (written by sharded scoring)")
    rows: dict[str, dict[str, Any]] = {}
    prompt_rows: list[dict[str, Any]] = []
    for d, _ in entries:
        for r in read_csv(d / "items.csv"):
            if r["id"] in rows:
                raise MergeError(f"item {r['id']} appears in two shards ({d.name} and another)")
            rows[r["id"]] = typed_item_row(r)
        if (d / "prompts.csv").is_file():
            prompt_rows += [dict(r) for r in read_csv(d / "prompts.csv")]
    missing = [i for i in order if i not in rows]
    if missing:
        raise MergeError(f"{len(missing)} selected items are in no shard, e.g. {missing[:3]}")
    merged = [rows[i] for i in order]
    metrics = wdct_metrics(merged)
    run.write_table("items.csv", merged, ITEM_COLUMNS)
    if prompt_rows:
        run.write_table("prompts.csv", _in_item_order(prompt_rows, order), PROMPT_COLUMNS)
    atomic_write_json(run.path / "metrics.json", metrics)
    first = entries[0][1]
    config = {k: v for k, v in first["config"].items() if k != "shard"}
    manifest = run.read_manifest()
    manifest.setdefault("environment", RunDir(entries[0][0]).read_manifest().get("environment"))
    timings: dict[str, float] = {}
    for _, e in entries:
        for k, v in e.get("timings", {}).items():
            timings[k] = round(timings.get(k, 0.0) + v, 3)
    manifest.setdefault("stages", {})[STAGE] = {
        "config": config, "letters": first["letters"], "model": first.get("model"),
        "data": dict(first.get("data", {}), n_items=len(merged)), "batch_size": first.get("batch_size"),
        "timings": timings, "complete": True,
        "merged_from": [str(d.relative_to(run.path)) for d, _ in entries]}
    run.write_manifest(manifest)
    return metrics


run_score = score_wdct  # the stage's name in the registry and the CLI: every stage function is run_<stage>
