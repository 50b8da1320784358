"""Fine-tuning a loaded model on answer-letter targets: LoRA (peft) or full, SFT or DPO, per epoch.

Training runs on a plain Hugging Face twin of the bridge's weights (:func:`wdprobe.core.generation.plain_twin`,
no copy), so every evaluation and capture still goes through the TransformerBridge and its hook names:

- ``lora``: peft wraps the twin's projections; :meth:`Tuner.applied` adds the low-rank updates into the
  shared weights for the length of an evaluation and puts the saved originals back bit for bit after.
- ``full``: the twin's parameters *are* the bridge's, so training changes the bridge directly. The tied
  token embedding stays frozen (it is also the unembedding of the answer letters).

A training example is one prompt and two single-token answers: the target letter (SFT's label, DPO's
chosen) and the letter of the model's own current answer (DPO's rejected). Losses use the full-vocabulary
next-token log-probabilities at the prompt's last position, exactly what scoring reads.
DPO: ``-log sigmoid(beta * ((lp_c - ref_c) - (lp_r - ref_r)))`` with the reference log-probabilities
computed once, from the model as it stood when DPO began (after SFT in ``sft+dpo``).
"""
from __future__ import annotations

import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wdprobe.core.generation import plain_twin
from wdprobe.core.options import Options, option, positive_int
from wdprobe.errors import InputError, TrainingError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("sft", "dpo", "sft+dpo")


@dataclass(frozen=True)
class Example:
    """One training prompt: ``target`` and ``rejected`` are answer-letter token ids."""

    item_id: str
    form: str
    prompt: str
    target: int
    rejected: int


@dataclass(frozen=True)
class TrainSettings(Options):
    """Every hyperparameter of the optimisation (recorded in the run directory)."""

    tuning: str = option("lora", choices=("lora", "full"), help="LoRA adapters, or every weight")
    rank: int = option(8, check=positive_int, expect="a positive number", help="LoRA rank")
    lora_alpha: float = option(16.0, help="LoRA alpha")
    lora_dropout: float = option(0.0, cli=False)
    target_modules: tuple[str, ...] = option(LORA_TARGETS, cli=False)
    lr: float = option(1e-3, check=lambda v: v > 0, expect="a positive learning rate", help="learning rate")
    weight_decay: float = option(0.0, cli=False)
    batch_size: int = option(8, check=positive_int, expect="a positive number", help="training batch (examples)")
    beta: float = option(0.1, help="DPO beta")
    max_grad_norm: float = option(1.0, cli=False)
    seed: int = option(0, help="example order and adapter initialisation")
    # train only blocks >= layers_from (None: every block) and <= layers_to: blocks outside stay bit-identical
    layers_from: int | None = option(None, cli=False, check=lambda v: v >= 0, expect="a layer number >= 0")
    layers_to: int | None = option(None, cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers_to is not None and self.layers_to < (self.layers_from or 0):
            raise InputError(f"layers_to ({self.layers_to}) must be >= layers_from ({self.layers_from or 0})")

    @property
    def restricted(self) -> bool:
        """Whether training is limited to a window of blocks."""
        return self.layers_from is not None or self.layers_to is not None

    def to_json(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        for key in ("layers_from", "layers_to"):  # runs recorded before layer restriction existed keep their settings
            if d[key] is None:
                del d[key]
        return d


def _block_of(parameter_name: str) -> int | None:
    """The transformer block a Hugging Face parameter belongs to (``model.layers.7.mlp...`` -> 7), else None."""
    parts = parameter_name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a in ("layers", "h", "blocks") and b.isdigit():
            return int(b)
    return None


def phases(method: str, sft_epochs: int, dpo_epochs: int) -> list[str]:
    """The objective of each epoch 1..E, e.g. ``['sft', 'sft', 'dpo', 'dpo']`` for sft+dpo."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {METHODS}")
    return ["sft"] * (sft_epochs if "sft" in method else 0) + ["dpo"] * (dpo_epochs if "dpo" in method else 0)


def sft_loss(lp_target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the target letter at the prompt's end."""
    return -lp_target.mean()


def dpo_loss(lp_c: torch.Tensor, lp_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO loss (target letter chosen, the other rejected) against reference log-probabilities."""
    return -F.logsigmoid(beta * ((lp_c - ref_c) - (lp_r - ref_r))).mean()


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a function of (seed, epoch) only, so a resumed run repeats it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class Tuner:
    """The trainable side of a :class:`~wdprobe.core.model.LoadedModel`."""

    def __init__(self, lm, settings: TrainSettings):
        self.lm, self.settings = lm, settings
        twin = plain_twin(lm)
        lm.plain_cache.pop("twin", None)  # this twin gets adapters; generation must build its own
        torch.manual_seed(settings.seed)
        if settings.tuning == "lora":
            from peft import LoraConfig, get_peft_model

            present = {name.rsplit(".", 1)[-1] for name, _ in twin.named_modules()}
            targets = [t for t in settings.target_modules if t in present]
            if not targets:
                raise InputError(f"none of the LoRA target modules {list(settings.target_modules)} exist in {lm.name!r}; "
                                 f"pass target module names that do (e.g. from model.named_modules())")
            layers = self.trained_layers(lm.n_layers, settings.layers_from, settings.layers_to)
            cfg = LoraConfig(r=settings.rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                             target_modules=targets, bias="none",
                             **({"layers_to_transform": layers} if settings.restricted else {}))
            self.model = get_peft_model(twin, cfg)
        else:
            self.model = twin
            embed = twin.get_input_embeddings().weight
            keep = set(self.trained_layers(lm.n_layers, settings.layers_from, settings.layers_to))
            for name, p in twin.named_parameters():
                block = _block_of(name)
                p.requires_grad_(p is not embed and (not settings.restricted or (block is not None and block in keep)))
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not self.params:
            raise TrainingError(f"nothing to train in {lm.name!r} with tuning={settings.tuning!r}")

    @staticmethod
    def trained_layers(n_layers: int, layers_from: int | None, layers_to: int | None = None) -> list[int]:
        """The blocks training may change: all, or ``layers_from`` .. ``layers_to`` (inclusive; default the last)."""
        start = 0 if layers_from is None else layers_from
        if start >= n_layers:
            raise InputError(f"layers_from {start} leaves nothing to train in a {n_layers}-layer model")
        stop = n_layers - 1 if layers_to is None else min(layers_to, n_layers - 1)
        return list(range(start, stop + 1))

    # ---- state ----------------------------------------------------------------------------------
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone().contiguous() for n, p in self.params.items()}

    @torch.no_grad()
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.params) - set(state)
        if missing:
            raise InputError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[:3]}; "
                             "was it written with other tuning settings?")
        for n, p in self.params.items():
            p.copy_(state[n].to(p.device, p.dtype))

    def new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(list(self.params.values()), lr=self.settings.lr, weight_decay=self.settings.weight_decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block, the bridge computes with the trained weights (a no-op for full tuning)."""
        if self.settings.tuning == "full":
            yield
            return
        from peft.tuners.lora import LoraLayer

        saved = []
        with torch.no_grad():
            for module in self.model.modules():
                if isinstance(module, LoraLayer) and module.active_adapters:
                    weight = module.get_base_layer().weight
                    saved.append((weight, weight.detach().clone()))
                    for name in module.active_adapters:
                        weight.add_(module.get_delta_weight(name).to(weight.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for weight, original in saved:
                    weight.copy_(original)

    # ---- forward --------------------------------------------------------------------------------
    def _encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.lm.encode(prompts)
        # left padding: positions count real tokens only, as the bridge does
        enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return enc

    def answer_logprobs(self, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token log-probabilities of each example's target and rejected letters (with grad if enabled)."""
        enc = self._encode([e.prompt for e in examples])
        logits = self.model(**enc, logits_to_keep=1).logits[:, -1].float()
        lp = torch.log_softmax(logits, dim=-1)
        rows = torch.arange(len(examples), device=lp.device)
        tgt = torch.tensor([e.target for e in examples], device=lp.device)
        rej = torch.tensor([e.rejected for e in examples], device=lp.device)
        return lp[rows, tgt], lp[rows, rej]

    @torch.no_grad()
    def reference_logprobs(self, examples: Sequence[Example], progress: bool = False) -> np.ndarray:
        """``(n, 2)`` target/rejected log-probabilities under the current weights (DPO's reference)."""
        from tqdm.auto import tqdm

        self.model.eval()
        out = np.zeros((len(examples), 2))
        bs = self.settings.batch_size
        for s in tqdm(range(0, len(examples), bs), desc="DPO reference", disable=not progress):
            c, r = self.answer_logprobs(examples[s: s + bs])
            out[s: s + bs, 0], out[s: s + bs, 1] = c.cpu().numpy(), r.cpu().numpy()
        return out

    def train_epoch(self, examples: Sequence[Example], optimizer: torch.optim.Optimizer, *, objective: str, epoch: int,
                    reference: np.ndarray | None = None, progress: bool = False) -> dict[str, float]:
        """One pass over ``examples`` in the epoch's seeded order; returns mean loss and the share of
        examples whose target letter beat the rejected one during the pass."""
        from tqdm.auto import tqdm

        if objective == "dpo" and reference is None:
            raise InputError("DPO needs reference log-probabilities (Tuner.reference_logprobs)")
        if objective not in ("sft", "dpo"):
            raise InputError(f"objective must be 'sft' or 'dpo', not {objective!r}")
        self.model.train()
        order = epoch_order(len(examples), self.settings.seed, epoch)
        bs = self.settings.batch_size
        total, wins, seen = 0.0, 0, 0
        bar = tqdm(total=len(examples), desc=f"epoch {epoch} {objective}", unit="ex", disable=not progress)
        for s in range(0, len(order), bs):
            idx = order[s: s + bs]
            batch = [examples[i] for i in idx]
            lp_c, lp_r = self.answer_logprobs(batch)
            if objective == "sft":
                loss = sft_loss(lp_c)
            else:
                ref = torch.as_tensor(reference[idx], dtype=lp_c.dtype, device=lp_c.device)
                loss = dpo_loss(lp_c, lp_r, ref[:, 0], ref[:, 1], self.settings.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.settings.max_grad_norm and math.isfinite(self.settings.max_grad_norm):
                torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.settings.max_grad_norm)
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            wins += int((lp_c > lp_r).sum())
            seen += len(batch)
            bar.update(len(batch))
            bar.set_postfix(loss=f"{total / seen:.3f}")
        bar.close()
        self.model.eval()
        return {"loss": total / max(seen, 1), "target_wins": wins / max(seen, 1), "examples": seen}


# ---- checkpoints --------------------------------------------------------------------------------

def checkpoint_dir(run_dir: str | Path, epoch: int) -> Path:
    """Where the checkpoint of an epoch is saved."""
    return Path(run_dir) / "checkpoints" / f"epoch-{epoch:02d}"


def save_checkpoint(run_dir: str | Path, epoch: int, tuner: Tuner, optimizer: torch.optim.Optimizer | None,
                    info: dict) -> Path:
    """Trainable tensors (safetensors) + optimizer state + info, written to a temporary folder then renamed,
    so a checkpoint folder is either complete or absent. Older optimizer states are dropped (only the
    latest is needed to resume; for full tuning they are as large as the model twice)."""
    import json
    import os
    import shutil

    from safetensors.torch import save_file

    target = checkpoint_dir(run_dir, epoch)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tuner.trainable_state(), str(tmp / "trainable.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "info.json").write_text(json.dumps(dict(info, epoch=epoch), indent=2, default=str))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    for older in Path(run_dir, "checkpoints").glob("epoch-*"):
        if older != target and (older / "optimizer.pt").is_file():
            (older / "optimizer.pt").unlink()
    return target


def load_checkpoint(run_dir: str | Path, epoch: int, tuner: Tuner) -> dict | None:
    """Load an epoch's trainable tensors into ``tuner``; returns its optimizer state (None if not kept)."""
    from safetensors.torch import load_file

    d = checkpoint_dir(run_dir, epoch)
    if not (d / "trainable.safetensors").is_file():
        raise TrainingError(f"{d}: no checkpoint for epoch {epoch}")
    tuner.load_trainable_state(load_file(str(d / "trainable.safetensors")))
    opt = d / "optimizer.pt"
    return torch.load(opt, weights_only=True) if opt.is_file() else None


def saved_epochs(run_dir: str | Path) -> list[int]:
    """Epochs with a saved checkpoint, in order."""
    root = Path(run_dir) / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("epoch-*")
                  if not p.name.endswith(".partial") and (p / "trainable.safetensors").is_file()) if root.is_dir() else []


def publish_model(tuner: Tuner, lm, out: Path) -> None:
    """Merge the trained weights and write the Hugging Face files into ``out``, config.json last (a directory
    without config.json is not a model, so an interrupted write is never loaded)."""
    model = tuner.model.merge_and_unload() if tuner.settings.tuning == "lora" else tuner.model
    tmp = out / ".model.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    lm.tokenizer.save_pretrained(tmp)
    names = sorted(p.name for p in tmp.iterdir())
    for name in [n for n in names if n != "config.json"] + ["config.json"]:
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)
