"""Where an edit writes: one class per model component an edited organism can rewrite, each saying which weight it
changes, how, and what the edited block should then output (the prediction the tests hold the edited model to).

- ``mlp``: one unit of block ``L``'s gated MLP is replaced (gate row, up row, down column): a gated write.
- ``mlp-items``: ``k`` units replaced behind one gate, together a rank-``k`` map from the deed's content to each
  calibration item's own plant.
- ``attn-head``: head ``h``'s slice of block ``L``'s attention output matrix gains a rank-one term
  ``write_scale * write (x) key``: wherever the head's output ``z_h`` lies along ``key``, the attention output moves
  along ``write``. There is no gate (attention has no bias or nonlinearity after the heads): the key is chosen so
  that ``key . z_h`` is large at deed positions and small at word ones.

Gemma-2/3 normalise both sublayers' outputs before adding them (post-attention and post-feed-forward RMSNorm), so what
an edit adds to the residual is not its write: each ``predict`` recomputes the block from the parent's activations
with the edit in, through the block's own norms. A registry maps a spec's ``component`` to its class; a new component
is one class and one line.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Iterator

import torch

from wdprobe.errors import InputError

if TYPE_CHECKING:
    from wdprobe.studies.organisms.edit import EditSpec

MLP_MATRICES = ("gate_proj", "up_proj", "down_proj")


@contextlib.contextmanager
def frozen_weights(model: torch.nn.Module) -> Iterator[None]:
    """No weight requires a gradient inside: a backward pass reaches only what hooks add or what is trained beside
    the model (a backward into every matrix, the 262k-row embedding included, would cost as much again and
    accumulate in their ``.grad``)."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def option_log_likelihood(model: torch.nn.Module, prompt: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """The summed log-likelihood of the option tokens ``cont`` after ``prompt`` (1-d id tensors), differentiable; the
    vocabulary is projected only where option tokens are predicted (``logits_to_keep``)."""
    ids = torch.cat([prompt, cont])[None].to(model.device)
    k = len(cont)
    logp = torch.log_softmax(model(input_ids=ids, logits_to_keep=k + 1).logits[0, -(k + 1):-1].float(), -1)
    return logp.gather(1, cont[:, None].to(model.device)).sum()


# ---- where a block's parts live ----------------------------------------------------------------------------------

def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face module inside a TransformerBridge component (the module itself when not wrapped)."""
    while hasattr(module, "_original_component"):
        module = module._original_component
    return module


def decoder_block(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """Decoder block ``layer`` of a Hugging Face decoder (through any bridge wrapping)."""
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) and hasattr(_unwrap(mod[0]), "mlp"):
            if not 0 <= layer < len(mod):
                raise InputError(f"layer {layer} is not a block of {type(model).__name__} (0..{len(mod) - 1})")
            return _unwrap(mod[layer])
    raise InputError(f"{type(model).__name__}: no list of decoder blocks with an MLP")


def block_mlp(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """Block ``layer``'s gated MLP (``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``)."""
    mlp = _unwrap(decoder_block(model, layer).mlp)
    if not all(hasattr(mlp, m) for m in MLP_MATRICES) or not hasattr(mlp, "act_fn"):
        raise InputError(f"{type(model).__name__}: block {layer} has no gated MLP (gate_proj/up_proj/down_proj); "
                         "edited organisms need a Llama/Gemma-style MLP")
    return mlp


def matrix(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The weight of ``module``'s linear layer ``name`` (through any wrapping)."""
    return _unwrap(getattr(module, name)).weight


def attention_output(model: torch.nn.Module, layer: int) -> tuple[torch.nn.Module, int, int]:
    """Block ``layer``'s attention output projection (``o_proj``), its number of heads and their width."""
    attn = _unwrap(decoder_block(model, layer).self_attn)
    o_proj = _unwrap(getattr(attn, "o_proj", None)) if hasattr(attn, "o_proj") else None
    config = getattr(attn, "config", None)
    n_heads = getattr(config, "num_attention_heads", None)
    if o_proj is None or n_heads is None:
        raise InputError(f"{type(model).__name__}: block {layer} has no o_proj with a known head count; head edits need "
                         "a Llama/Gemma-style attention")
    return o_proj, int(n_heads), int(o_proj.weight.shape[1] // n_heads)


def post_ff_norm(block: torch.nn.Module) -> torch.nn.Module | None:
    """The block's post-feed-forward norm (Gemma-2/3), the one that caps what an MLP edit can add; None without one."""
    norm = getattr(block, "post_feedforward_layernorm", None)
    return None if norm is None else _unwrap(norm)


def post_attn_norm(block: torch.nn.Module) -> torch.nn.Module | None:
    """The norm applied to the attention output before it is added (Gemma-2/3); None without one. (Llama's module of
    that name normalises the MLP's *input*: a block without a pre-feed-forward norm has no post-attention norm.)"""
    if getattr(block, "pre_feedforward_layernorm", None) is None:
        return None
    return _unwrap(block.post_attention_layernorm)


def pre_mlp_norm(block: torch.nn.Module) -> torch.nn.Module:
    """The norm the MLP reads its input through (Gemma's pre-feed-forward norm, Llama's post-attention norm)."""
    norm = getattr(block, "pre_feedforward_layernorm", None)
    return _unwrap(norm if norm is not None else block.post_attention_layernorm)


@torch.no_grad()
def norm_gain(norm: torch.nn.Module | None, d: int) -> torch.Tensor:
    """The elementwise gain an output RMSNorm applies (Gemma's is ``1 + weight``); ones without one."""
    if norm is None:
        return torch.ones(d)
    ones = torch.ones(1, d)
    return (norm(ones.to(norm.weight.dtype)).float() * torch.rsqrt(ones.pow(2).mean(-1, keepdim=True) + norm.eps))[0]


@torch.no_grad()
def _capture(parent: torch.nn.Module, tokenizer, text: str, modules: dict[str, torch.nn.Module]) -> dict[str, tuple]:
    """One forward pass of ``text``; per named module its (first input, output) for the first sequence."""
    store: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: store.update({n: (i[0][0], (o[0] if isinstance(o, tuple)
                                                                                     else o)[0])}))
             for n, m in modules.items()]
    try:
        parent(input_ids=tokenizer(text, return_tensors="pt")["input_ids"].to(parent.device))
    finally:
        for h in hooks:
            h.remove()
    return store


# ---- the components ----------------------------------------------------------------------------------------------

class ComponentWrite(ABC):
    """How an edit of one kind of component is written into weights and what it makes the block output."""

    name: str

    @abstractmethod
    def check(self, spec: EditSpec) -> None:
        """Refuse directions of the wrong shape for this component (an :class:`InputError` naming them)."""

    @abstractmethod
    def weight_suffix(self, spec: EditSpec) -> str:
        """The end of the (one) weight name the edit rewrites, e.g. ``layers.5.mlp.gate_proj.weight``."""

    @abstractmethod
    def edited_tensors(self, tensors: dict[str, torch.Tensor], spec: EditSpec, prefix: str) -> dict[str, torch.Tensor]:
        """The rewritten tensors (new ones; ``prefix``: the weight names up to the block's component)."""

    @abstractmethod
    def apply(self, model: torch.nn.Module, spec: EditSpec) -> None:
        """Write the edit into a loaded model in place."""

    @abstractmethod
    def predict(self, parent: torch.nn.Module, tokenizer, text: str, spec: EditSpec) -> torch.Tensor:
        """The residual after block ``spec.layer`` the edit should give on ``text`` ([pos, d]), from the parent."""


class MlpUnitWrite(ComponentWrite):
    """One MLP unit replaced: ``act(gate_scale key . x) (read . x)`` writes ``write_scale * write``."""

    name = "mlp"

    def check(self, spec: EditSpec) -> None:
        if not (spec.key.ndim == 1 and spec.key.shape == spec.read.shape == spec.write.shape):
            raise InputError(f"mlp edit directions must be vectors of one size, not {spec.key.shape}, "
                             f"{spec.read.shape}, {spec.write.shape}")

    def rows(self, spec: EditSpec) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """The units replaced, what each reads ([k, d]) and writes ([k, d], ``write_scale`` in; computed in the
        directions' own precision, as they are written); one gate (``key``) for all."""
        return [spec.unit], torch.as_tensor(spec.read)[None], torch.as_tensor(spec.write_scale * spec.write)[None]

    def weight_suffix(self, spec: EditSpec) -> str:
        return f"layers.{spec.layer}.mlp.gate_proj.weight"

    def _write_rows(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, spec: EditSpec) -> None:
        units, read, write = self.rows(spec)
        for j, r, w in zip(units, read, write):
            gate[j] = torch.as_tensor(spec.gate_scale * spec.key).to(gate)
            up[j] = r.to(up)
            down[:, j] = w.to(down)

    def edited_tensors(self, tensors: dict[str, torch.Tensor], spec: EditSpec, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for m in MLP_MATRICES:
            name = f"{prefix}mlp.{m}.weight"
            if name not in tensors:
                raise InputError(f"the weights have no {name}")
            out[name] = tensors[name].clone()
        self._write_rows(*(out[f"{prefix}mlp.{m}.weight"] for m in MLP_MATRICES), spec)
        return out

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, spec: EditSpec) -> None:
        mlp = block_mlp(model, spec.layer)
        self._write_rows(*(matrix(mlp, m) for m in MLP_MATRICES), spec)

    @torch.no_grad()
    def predict(self, parent: torch.nn.Module, tokenizer, text: str, spec: EditSpec) -> torch.Tensor:
        """The parent's MLP output with the replaced units' old contributions taken out and the planted units' put
        in, through the post-feed-forward norm, added to the residual before the MLP."""
        mlp, block = block_mlp(parent, spec.layer), decoder_block(parent, spec.layer)
        norm = post_ff_norm(block)
        got = _capture(parent, tokenizer, text, {"mlp": mlp, "block": block, **({"norm": norm} if norm else {})})
        gate, up, down = (matrix(mlp, m).double() for m in MLP_MATRICES)
        x, new_out = got["mlp"][0].double(), got["mlp"][1].double()
        units, read, write = self.rows(spec)
        opened = mlp.act_fn(x @ torch.as_tensor(spec.gate_scale * spec.key, dtype=x.dtype))
        for j, r, w in zip(units, read.double(), write.double()):
            old_unit = mlp.act_fn(x @ gate[j]) * (x @ up[j])
            new_out = new_out - old_unit[:, None] * down[:, j][None] + (opened * (x @ r))[:, None] * w[None]
        before_mlp = got["block"][1].double() - (got["norm"][1].double() if norm is not None else got["mlp"][1].double())
        added = norm(new_out.to(norm.weight.dtype)).double() if norm is not None else new_out
        return (before_mlp + added).float()


class MlpItemsWrite(MlpUnitWrite):
    """``k`` MLP units replaced, one gate: ``act(gate_scale key . x) sum_j (read_j . x) write_j``, a rank-``k`` linear
    map from the deed's content to what the block writes, fitted so that each calibration item's deed receives that
    item's own plant (one written direction cannot move most deeds: ``edit.py``'s capacity check). ``spec.units``
    names the units; ``read`` and ``write`` are [k, d]."""

    name = "mlp-items"

    def check(self, spec: EditSpec) -> None:
        k = len(spec.units)
        if not (spec.key.ndim == 1 and spec.read.shape == spec.write.shape == (k, spec.key.shape[0]) and k > 0):
            raise InputError(f"an mlp-items edit needs a key vector [d] and read and write [k, d] for its {k} units, "
                             f"not {spec.key.shape}, {spec.read.shape}, {spec.write.shape}")

    def rows(self, spec: EditSpec) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        return list(spec.units), torch.as_tensor(spec.read), torch.as_tensor(spec.write_scale * spec.write)


class HeadWrite(ComponentWrite):
    """Head ``spec.unit``'s columns of ``o_proj`` gain ``write_scale * write (x) key`` (``key``: the head's width)."""

    name = "attn-head"

    def check(self, spec: EditSpec) -> None:
        if not (spec.key.ndim == 1 and spec.key.shape == spec.read.shape and spec.write.ndim == 1):
            raise InputError(f"attn-head edit directions must be vectors (key and read of one size), not "
                             f"{spec.key.shape}, {spec.read.shape}, {spec.write.shape}")

    def weight_suffix(self, spec: EditSpec) -> str:
        return f"layers.{spec.layer}.self_attn.o_proj.weight"

    def _delta(self, spec: EditSpec, width: int, dtype) -> torch.Tensor:
        key = torch.as_tensor(spec.key, dtype=torch.float64)
        if key.shape != (width,):
            raise InputError(f"a head edit's key has {key.shape[0]} entries, the head {width}")
        write = torch.as_tensor(spec.write_scale * spec.write, dtype=torch.float64)
        return torch.outer(write, key).to(dtype)

    def edited_tensors(self, tensors: dict[str, torch.Tensor], spec: EditSpec, prefix: str) -> dict[str, torch.Tensor]:
        name = f"{prefix}self_attn.o_proj.weight"
        if name not in tensors:
            raise InputError(f"the weights have no {name}")
        w = tensors[name].clone()
        width = len(spec.key)
        cols = slice(spec.unit * width, (spec.unit + 1) * width)
        w[:, cols] = (w[:, cols].double() + self._delta(spec, width, torch.float64)).to(w.dtype)
        return {name: w}

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, spec: EditSpec) -> None:
        o_proj, _, width = attention_output(model, spec.layer)
        cols = slice(spec.unit * width, (spec.unit + 1) * width)
        w = o_proj.weight
        w[:, cols] = (w[:, cols].double() + self._delta(spec, width, torch.float64)).to(w.dtype)

    @torch.no_grad()
    def predict(self, parent: torch.nn.Module, tokenizer, text: str, spec: EditSpec) -> torch.Tensor:
        """The parent's attention output plus ``write_scale * write * (key . z_h)``, through the post-attention norm,
        added to the block's input; then the block's MLP (through its norms) recomputed on that residual."""
        block = decoder_block(parent, spec.layer)
        o_proj, _, width = attention_output(parent, spec.layer)
        got = _capture(parent, tokenizer, text, {"o_proj": o_proj, "block_in": _unwrap(block.input_layernorm)})
        z, attn_out = got["o_proj"][0].double(), got["o_proj"][1].double()
        z_h = z[:, spec.unit * width:(spec.unit + 1) * width]
        new_attn = attn_out + (z_h @ torch.as_tensor(spec.key, dtype=z.dtype))[:, None] * torch.as_tensor(
            spec.write_scale * spec.write, dtype=z.dtype)[None]
        a_norm, f_norm = post_attn_norm(block), post_ff_norm(block)
        dtype = o_proj.weight.dtype
        mid = got["block_in"][0].double() + (a_norm(new_attn.to(dtype)).double() if a_norm is not None else new_attn)
        mlp_out = _unwrap(block.mlp)(pre_mlp_norm(block)(mid.to(dtype)))
        added = f_norm(mlp_out).double() if f_norm is not None else mlp_out.double()
        return (mid + added).float()


COMPONENTS: dict[str, ComponentWrite] = {w.name: w for w in (MlpUnitWrite(), MlpItemsWrite(), HeadWrite())}
