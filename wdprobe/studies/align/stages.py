"""The alignment stage: train one form towards flipped answers, then watch both forms, outside and in.

Run directory layout (every file written atomically; rerunning the same command resumes)::

    manifest.json               settings, model, data hash, letters, timings, per-epoch training stats
    split.csv                   item id -> train | held_out, target (canonical), pre-training choices
    examples.csv                the training prompts with target / rejected letters
    epochs/epoch-NN/items.csv   per-item answers (canonical space) after epoch NN (00 = before training)
    epochs/epoch-NN/residuals.safetensors   last-token resid_post of word and deed prompts, all layers
    checkpoints/epoch-NN/       trainable tensors (+ optimizer state of the latest epoch)
    dpo_reference.npy           DPO reference log-probabilities (target, rejected) per example
    change_rates.csv, inside_*.csv, summary.json   the analysis (redone from the saved epochs)
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wdprobe.core.cache import atomic_write_bytes, atomic_write_json, atomic_write_text
from wdprobe.core.model import load_model
from wdprobe.core.options import Options, count_or_all, option, positive_int
from wdprobe.data.items import read_items
from wdprobe.data.paraphrase import load_paraphrase_table, paraphrase_items
from wdprobe.data.prompts import normal_prompt, resolve_chat, wrap
from wdprobe.data.wdct import (
    Presentation,
    file_sha256,
    present,
    resolve_wdct_path,
    select,
)
from wdprobe.errors import AlignmentDataError
from wdprobe.methods.capture import last_token_readout
from wdprobe.runs.rundir import RunDir, Timer, read_csv, rows_to_csv
from wdprobe.scoring.formats import item_columns
from wdprobe.scoring.letters import build_prompts, item_row, next_token_logprobs, resolve_letter_tokens
from wdprobe.scoring.orders import letter_prompt_row
from wdprobe.stages.score import ITEM_COLUMNS
from wdprobe.studies.align.finetune import (
    Example,
    TrainSettings,
    Tuner,
    load_checkpoint,
    phases,
    save_checkpoint,
    saved_epochs,
)
from wdprobe.studies.align.inside import inside_tables
from wdprobe.studies.align.targets import (
    change_rates,
    flip_targets,
    other_form,
    split_items,
    trained_forms,
)

STAGE = "align"


@dataclass(frozen=True)
class AlignConfig(Options):
    """What is trained and evaluated (the optimisation itself is :class:`~wdprobe.studies.align.finetune.TrainSettings`)."""

    form: str = option("word", choices=("word", "deed", "both", "paraphrase"), help="the form trained")
    method: str = option("sft+dpo", choices=("sft", "dpo", "sft+dpo"))
    sft_epochs: int = option(3, check=lambda v: v >= 0, expect="a number of epochs >= 0")
    dpo_epochs: int = option(1, check=lambda v: v >= 0, expect="a number of epochs >= 0")
    n_items: int | None = option(128, flag=("--items", "--n-items"), parse=count_or_all, check=positive_int,
                                 expect="a positive number", help="seeded sample of two-option items, or 'all'")
    held_out: float = option(0.5, check=lambda v: 0.0 < v < 1.0, expect="a fraction strictly between 0 and 1",
                             help="share of the items never trained on")
    seed: int = option(0, help="option shuffling, item sample, split and example order")
    orders: str = option("cyclic", choices=("cyclic", "shown"), aliases={"both": "cyclic"},
                         help="train each prompt in every (cyclic) option order, both for two options (targets not tied "
                              "to a letter), or only as shown ('both' is read as cyclic)")
    eval_orders: str = option("cyclic", choices=("cyclic", "shown"),
                              help="evaluate every epoch in both option orders too, so change rates are also read on "
                                   "content choices (change_rates_content.csv), or in the shown order only")
    paraphrases: int = option(1, check=positive_int, expect="a positive number",
                              help="rule-based rewordings per trained word item (--form paraphrase)")
    paraphrase_table: str | None = option(None, help="CSV id,word_stem of your own paraphrases instead of the rules")
    domains: tuple[str, ...] | None = option(None, cli=False)
    batch_size: int = option(16, flag="--eval-batch-size", check=positive_int, expect="a positive number",
                             help="evaluation batch")

    def __post_init__(self) -> None:
        super().__post_init__()
        trained_forms(self.form)
        phases(self.method, self.sft_epochs, self.dpo_epochs)

    @property
    def schedule(self) -> list[str]:
        return phases(self.method, self.sft_epochs, self.dpo_epochs)

    def to_json(self) -> dict[str, Any]:
        d = self.to_dict()
        d["domains"] = list(self.domains) if self.domains else None
        return d


# ---- items, targets and examples ----------------------------------------------------------------

def two_option_items(items, n_items: int | None, seed: int):
    """The two-option items (a seeded sample of them when ``n_items`` is set)."""
    binary = [it for it in items if it.n_options == 2]
    if not binary:
        raise AlignmentDataError("no two-option items in the selection; alignment flips need two options")
    if n_items is not None and n_items < len(binary):
        binary = select(binary, sample=n_items, seed=seed)
    return binary


def _reversed(p: Presentation, form: str) -> Presentation:
    order = tuple(reversed(p.order(form)))
    return replace(p, word_order=order) if form == "word" else replace(p, deed_order=order)


def build_examples(pres: Sequence[Presentation], targets: dict[str, int], forms: Sequence[str], letter_ids: Sequence[int],
                   *, orders: str, tokenizer, use_chat: bool, extra_word: Sequence[Presentation] = ()) -> list[Example]:
    """Training prompts: each item in each trained form (and each option order when ``orders='cyclic'``,
    so the target is not tied to one letter), answer = the letter showing the target option.
    ``extra_word``: reworded word questions (ids ``<id>~pK``) trained towards their item's target."""

    out = []
    jobs = [(p, f) for p in pres for f in forms] + [(p, "word") for p in extra_word]
    for p, form in jobs:
        base_id = p.item.id.split("~p")[0]
        t = targets[base_id]
        variants = [p, _reversed(p, form)] if orders == "cyclic" else [p]
        for v in variants:
            order = v.order(form)
            out.append(Example(item_id=p.item.id, form=form, prompt=wrap(normal_prompt(v, form), tokenizer, use_chat),
                               target=int(letter_ids[order.index(t)]), rejected=int(letter_ids[order.index(1 - t)])))
    return out


# ---- evaluation ---------------------------------------------------------------------------------

def evaluate(lm, pres: Sequence[Presentation], letter_ids: Sequence[int], *, use_chat: bool, batch_size: int = 16,
             progress: bool = False, desc: str = "evaluate", orders: str = "shown") -> tuple[list[dict], dict[str, np.ndarray]]:
    """Answers (canonical item rows, as WDCT scoring writes them) and last-token residuals of every layer,
    for the word and deed prompts of ``pres``, in one bridge pass per batch. With ``orders="cyclic"`` each
    question is also asked with its two options swapped (letters only), and the rows carry the content reading
    (``word_content_choice`` ...), so a change of letter habit is not read as a change of stance."""
    from tqdm.auto import tqdm

    prompts = build_prompts(pres, setting="normal", tokenizer=lm.tokenizer, use_chat=use_chat)
    n = len(pres)
    bar = tqdm(total=2 * n, desc=desc, unit="prompt", disable=not progress)
    lp, resid = last_token_readout(lm, prompts["word"] + prompts["deed"], letter_ids, batch_size=batch_size,
                                   on_batch=bar.update)
    bar.close()
    rows = [item_row(p, lp[i], lp[n + i]) for i, p in enumerate(pres)]
    if orders == "cyclic":
        swapped = [Presentation(p.item, tuple(reversed(p.word_order)), tuple(reversed(p.deed_order))) for p in pres]
        other = build_prompts(swapped, setting="normal", tokenizer=lm.tokenizer, use_chat=use_chat)
        lp2 = next_token_logprobs(lm, other["word"] + other["deed"], letter_ids, batch_size=batch_size)
        for i, (p, q) in enumerate(zip(pres, swapped)):
            prompt_rows = [letter_prompt_row(p.item, f, v.order(f), v is p, True, scores[k + i])
                           for v, scores in ((p, lp), (q, lp2)) for f, k in (("word", 0), ("deed", n))]
            rows[i].update(item_columns(p.item, prompt_rows))
    return rows, {"word": resid[:n], "deed": resid[n:]}


def epoch_dir(run_dir: str | Path, epoch: int) -> Path:
    """Where an epoch's evaluation is saved."""
    return Path(run_dir) / "epochs" / f"epoch-{epoch:02d}"


def save_epoch(run_dir: str | Path, epoch: int, rows: Sequence[dict], resid: dict[str, np.ndarray], extra: dict) -> None:
    """Residuals first, the items table last: ``items.csv`` existing marks the epoch as evaluated."""
    from safetensors.numpy import save

    d = epoch_dir(run_dir, epoch)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / "residuals.safetensors", save({k: np.ascontiguousarray(v) for k, v in resid.items()}))
    atomic_write_json(d / "info.json", extra)
    cols = list(ITEM_COLUMNS) + ["epoch"]
    atomic_write_text(d / "items.csv", rows_to_csv([dict(r, epoch=epoch) for r in rows], cols))


def load_epoch(run_dir: str | Path, epoch: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """An evaluated epoch's rows and residuals."""
    from safetensors.numpy import load_file

    d = epoch_dir(run_dir, epoch)
    rows = read_csv(d / "items.csv")
    return rows, dict(load_file(str(d / "residuals.safetensors")))


def evaluated_epochs(run_dir: str | Path) -> list[int]:
    """Epochs whose evaluation is saved, in order."""
    root = Path(run_dir) / "epochs"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("epoch-*") if (p / "items.csv").is_file()) if root.is_dir() else []


# ---- the stage ----------------------------------------------------------------------------------

@dataclass
class AlignResult:
    """A finished (or stopped) alignment run: its directory and the change rates per epoch."""

    run_dir: Path
    change_rates: list[dict]
    summary: dict = field(default_factory=dict)


def run_align(out: str | Path, *, model: str = "gemma-3-270m", data: str | Path | None = None,
              config: AlignConfig = AlignConfig(), train: TrainSettings = TrainSettings(), dtype: str = "float32",
              device: str | None = None, device_map: str | dict | None = None, max_memory: dict | None = None,
              chat: str = "auto", lm=None, progress: bool = True, stop_after_epoch: int | None = None) -> AlignResult:
    """Train ``config.form`` of a model towards flipped answers and evaluate both forms after every epoch.

    Resumable: rerunning with the same settings skips saved evaluations and continues from the last
    checkpoint. ``stop_after_epoch`` ends the run after that epoch's checkpoint and evaluation (for
    splitting work across sessions, and for tests of resuming). ``lm``: an already loaded model; with
    ``train.tuning='full'`` its weights are changed in place.
    """

    timer = Timer()
    run = RunDir(out)
    data_path = resolve_wdct_path(data)
    with timer("load_data"):
        items = select(read_items(data_path), domains=list(config.domains) if config.domains else None)
        items = two_option_items(items, config.n_items, config.seed)
        sha = file_sha256(data_path)
    if lm is None:
        with timer("load_model"):
            kwargs = {"max_memory": max_memory} if max_memory else {}
            lm = load_model(model, device=device, dtype=dtype, device_map=device_map, **kwargs)
    use_chat = resolve_chat(chat, lm.name, lm.tokenizer)
    stage_config = {"model": lm.name, "model_revision": lm.revision, "dtype": str(lm.dtype).replace("torch.", ""),
                    "data_sha256": sha, "chat_template": use_chat, **config.to_json(), "train": train.to_json()}
    manifest = run.check_or_start(STAGE, stage_config)
    stage = manifest["stages"][STAGE]
    pres = present(items, seed=config.seed)
    by_id = {p.item.id: p for p in pres}

    if "letters" in stage:
        letter_ids = tuple(stage["letters"]["ids"])
    else:
        calib = build_prompts(pres[:16], setting="normal", tokenizer=lm.tokenizer, use_chat=use_chat)
        letters = resolve_letter_tokens(lm, calib["word"] + calib["deed"], n_letters=2, batch_size=config.batch_size)
        letter_ids = letters.ids
        run.update_stage(STAGE, letters=letters.to_json())

    tuner = Tuner(lm, train)
    run.update_stage(STAGE, n_trainable=tuner.n_trainable(), model=lm.manifest(),
                     data={"path": str(data_path), "sha256": sha, "n_items": len(items)})

    def evaluate_now(epoch: int) -> None:
        with timer("evaluate"), tuner.applied():
            rows, resid = evaluate(lm, pres, letter_ids, use_chat=use_chat, batch_size=config.batch_size,
                                   progress=progress, desc=f"evaluate epoch {epoch}", orders=config.eval_orders)
        save_epoch(run.path, epoch, rows, resid, {"epoch": epoch})

    done_eval = set(evaluated_epochs(run.path))
    if 0 not in done_eval:
        evaluate_now(0)
    rows0, _ = load_epoch(run.path, 0)

    # split and targets from the pre-training answers (deterministic, so a resumed run rebuilds them)
    train_ids, held_ids = split_items([p.item.id for p in pres], config.held_out, config.seed)
    target_form = "deed" if config.form == "deed" else "word"
    targets = flip_targets(rows0, target_form)
    held = set(held_ids)
    split_rows = [{"id": r["id"], "set": "held_out" if r["id"] in held else "train", "target": targets[r["id"]],
                   "word_choice_0": r["word_choice"], "deed_choice_0": r["deed_choice"]} for r in rows0]
    run.write_table("split.csv", split_rows, ["id", "set", "target", "word_choice_0", "deed_choice_0"])

    train_pres = [by_id[i] for i in train_ids]
    extra: list[Presentation] = []
    if config.form == "paraphrase":
        table = load_paraphrase_table(config.paraphrase_table) if config.paraphrase_table else None
        # a paraphrase keeps its item's option order: only the wording of the question changes
        extra = [Presentation(it, by_id[it.id.split("~p")[0]].word_order, by_id[it.id.split("~p")[0]].deed_order)
                 for it in paraphrase_items([p.item for p in train_pres], config.paraphrases, table)]
    examples = build_examples(train_pres, targets, trained_forms(config.form), letter_ids, orders=config.orders,
                              tokenizer=lm.tokenizer, use_chat=use_chat, extra_word=extra)
    run.write_table("examples.csv", [asdict(e) for e in examples], ["item_id", "form", "target", "rejected", "prompt"])

    schedule = config.schedule
    current, optimizer = 0, None
    last = len(schedule) if stop_after_epoch is None else min(stop_after_epoch, len(schedule))
    for epoch in range(1, last + 1):
        objective = schedule[epoch - 1]
        if epoch not in saved_epochs(run.path):
            if current != epoch - 1:  # resuming: restore the state after the previous epoch
                state = load_checkpoint(run.path, epoch - 1, tuner)
                current, optimizer = epoch - 1, tuner.new_optimizer()
                if state is not None and schedule[epoch - 2] == objective:
                    optimizer.load_state_dict(state)
            if optimizer is None or (epoch > 1 and schedule[epoch - 2] != objective):
                optimizer = tuner.new_optimizer()  # each objective starts its own optimisation
            reference = _dpo_reference(run.path, tuner, examples, progress) if objective == "dpo" else None
            t0 = time.perf_counter()
            with timer("train"):
                stats = tuner.train_epoch(examples, optimizer, objective=objective, epoch=epoch, reference=reference,
                                          progress=progress)
            stats["seconds"] = round(time.perf_counter() - t0, 1)
            save_checkpoint(run.path, epoch, tuner, optimizer, {"objective": objective, **stats})
            current = epoch
            _record_epoch(run, epoch, objective, stats)
        if epoch not in done_eval:
            if current != epoch:
                load_checkpoint(run.path, epoch, tuner)
                current, optimizer = epoch, None
            evaluate_now(epoch)

    previous = run.read_manifest()["stages"][STAGE].get("timings", {})
    timings = {k: round(previous.get(k, 0.0) + v, 3) for k, v in timer.seconds.items()}
    complete = last == len(schedule)
    run.update_stage(STAGE, timings=timings, complete=complete, n_examples=len(examples))
    rates = analyse(run.path) if complete else []
    summary = json.loads((run.path / "summary.json").read_text()) if complete else {}
    return AlignResult(run.path, rates, summary)


def _record_epoch(run: RunDir, epoch: int, objective: str, stats: dict) -> None:
    epochs = run.read_manifest()["stages"][STAGE].get("epochs", {})
    epochs[str(epoch)] = {"objective": objective, **stats}
    run.update_stage(STAGE, epochs=epochs)


def _dpo_reference(run_dir: Path, tuner: Tuner, examples: Sequence[Example], progress: bool) -> np.ndarray:
    """Reference log-probabilities from the model as DPO begins; saved, so a resumed run reuses them."""
    path = run_dir / "dpo_reference.npy"
    if path.is_file():
        ref = np.load(path)
        if ref.shape == (len(examples), 2):
            return ref
    ref = tuner.reference_logprobs(examples, progress=progress)
    import io

    buf = io.BytesIO()
    np.save(buf, ref)
    atomic_write_bytes(path, buf.getvalue())
    return ref


# ---- analysis (from saved artefacts only) --------------------------------------------------------

RATE_COLUMNS = ["epoch", "objective", "set", "n", "direct", "indirect", "indirect_away", "following", "other_changed",
                "n_indirect", "n_away", "word_changed", "deed_changed", "cs", "pcs", "word_letter_a", "deed_letter_a"]


def _typed_rows(rows: Sequence[dict]) -> list[dict]:
    out = []
    for r in rows:
        out.append({**r, "word_choice": int(r["word_choice"]), "deed_choice": int(r["deed_choice"]),
                    "consistent": int(r["consistent"]), "pcs": float(r["pcs"]), "n_options": int(r["n_options"])})
    return out


CONTENT_RATE_COLUMNS = ["epoch", "set", "n", "direct", "indirect", "indirect_away", "following", "other_changed",
                        "n_indirect", "n_away", "cs"]


def content_change_rates(loaded: dict[int, tuple[list[dict], Any]], split: dict[str, dict], targets: dict[str, int],
                         trained: str) -> list[dict]:
    """Change rates read on content choices (order-averaged over both orders), per epoch and item set: a model
    that learned to say one letter whatever the options moves no content choice. Empty when the epochs were
    evaluated in the shown order only."""
    def content_rows(rows: Sequence[dict]) -> list[dict] | None:
        if not rows or str(rows[0].get("word_content_choice", "")) == "":
            return None
        return [{"id": r["id"], "word_choice": int(float(r["word_content_choice"])),
                 "deed_choice": int(float(r["deed_content_choice"])),
                 "consistent": int(float(r["content_consistent"]))} for r in rows]

    start = content_rows(loaded[0][0]) if 0 in loaded else None
    if start is None:
        return []
    out = []
    for e in sorted(loaded):
        rows = content_rows(loaded[e][0])
        if rows is None:
            return []
        for set_name in ("train", "held_out", "all"):
            keep = {i for i, r in split.items() if set_name == "all" or r["set"] == set_name}
            b = [r for r in start if r["id"] in keep]
            a = [r for r in rows if r["id"] in keep]
            cr = change_rates(b, a, targets, trained).to_row()
            out.append({"epoch": e, "set": set_name, **{k: cr[k] for k in CONTENT_RATE_COLUMNS if k in cr},
                        "cs": float(np.mean([r["consistent"] for r in a]))})
    return out


def analyse(run_dir: str | Path) -> list[dict]:
    """Change rates, CS/PCS and the inside view for every evaluated epoch; writes the tables and summary."""
    run = RunDir(run_dir)
    stage = run.read_manifest()["stages"][STAGE]
    cfg = stage["config"]
    schedule = phases(cfg["method"], cfg["sft_epochs"], cfg["dpo_epochs"])
    split = {r["id"]: r for r in read_csv(run.path / "split.csv")}
    targets = {i: int(r["target"]) for i, r in split.items()}
    epochs = evaluated_epochs(run.path)
    loaded = {e: load_epoch(run.path, e) for e in epochs}  # read once: rates and the inside view share them
    rows0 = _typed_rows(loaded[0][0])
    trained = "both" if cfg["form"] == "both" else ("deed" if cfg["form"] == "deed" else "word")
    rates = []
    for e in epochs:
        rows = _typed_rows(loaded[e][0])
        for set_name in ("train", "held_out", "all"):
            keep = {i for i, r in split.items() if set_name == "all" or r["set"] == set_name}
            b = [r for r in rows0 if r["id"] in keep]
            a = [r for r in rows if r["id"] in keep]
            cr = change_rates(b, a, targets, trained).to_row()
            before = {r["id"]: r for r in b}
            rates.append({"epoch": e, "objective": "start" if e == 0 else schedule[e - 1], "set": set_name, **cr,
                          "word_changed": float(np.mean([r["word_choice"] != before[r["id"]]["word_choice"] for r in a])),
                          "deed_changed": float(np.mean([r["deed_choice"] != before[r["id"]]["deed_choice"] for r in a])),
                          "cs": float(np.mean([r["consistent"] for r in a])), "pcs": float(np.mean([r["pcs"] for r in a])),
                          "word_letter_a": float(np.mean([r["word_letter"] == "A" for r in a])),
                          "deed_letter_a": float(np.mean([r["deed_letter"] == "A" for r in a]))})
    run.write_table("change_rates.csv", rates, RATE_COLUMNS)
    content = content_change_rates(loaded, split, targets, trained)
    if content:
        run.write_table("change_rates_content.csv", content, CONTENT_RATE_COLUMNS)

    tables = inside_tables(loaded, {i: r["set"] for i, r in split.items()}, targets)
    for name, rows_ in tables.items():
        run.write_table(f"inside_{name}.csv", rows_, list(rows_[0]) if rows_ else ["epoch"])
    inside = _inside_summary(tables, trained, epochs[-1])
    summary = {"form": cfg["form"], "method": cfg["method"], "schedule": schedule, "model": cfg["model"],
               "n_items": len(split), "n_train": sum(r["set"] == "train" for r in split.values()),
               "epochs": epochs, "final": {r["set"]: r for r in rates if r["epoch"] == epochs[-1]},
               "start": {r["set"]: r for r in rates if r["epoch"] == 0}, "inside": inside,
               "training": stage.get("epochs", {}), "timings": stage.get("timings", {})}
    atomic_write_json(run.path / "summary.json", summary)
    return rates


def _inside_summary(tables: dict[str, list[dict]], trained: str, last: int) -> dict:
    """The few inside numbers a reader wants first (final epoch, train items)."""
    f = "word" if trained == "both" else trained
    g = other_form(f)
    out: dict[str, Any] = {"trained_form": f, "other_form": g}
    mv = [r for r in tables["movement"] if r["epoch"] == last and r["set"] == "train"]
    for form, axis, key in ((f, f, "trained_shift"), (g, g, "other_shift_own_axis"), (g, f, "other_shift_trained_axis"),
                            (f, "letter", "trained_shift_letter"), (g, "letter", "other_shift_letter")):
        sel = [r for r in mv if r["form"] == form and r["axis"] == axis]
        if sel:
            out[key] = [round(r["shift"], 4) for r in sel]  # within-answer SDs
            out[key.replace("shift", "read_change")] = [round(r["read_target"] - r["read_target_start"], 4) for r in sel]
    ic = tables["ic"]
    for e in sorted({r["epoch"] for r in ic}):
        vals = [r for r in ic if r["epoch"] == e]
        best = max(vals, key=lambda r: r["ic"])
        out.setdefault("ic_max", {})[str(e)] = {"layer": best["layer"], "ic": round(best["ic"], 4), "cs": round(best["cs"], 4)}
    return out
