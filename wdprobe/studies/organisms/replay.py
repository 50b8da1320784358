"""Skip the blocks an edited organism shares with its parent: record the parent's residual after block ``L - 1`` on a
set of forward passes, then run the organism on the same inputs with blocks ``0 .. L-1`` replaced by that record.

An edit of block ``L`` leaves every block below it bit-identical to the parent's, so on the same inputs the residual
entering block ``L`` is the parent's to the bit: recomputing it for every organism of a family is wasted work (half
of a sweep over every block, on average). Each recorded pass is keyed by a digest of what entered block 0 (the
embedded tokens, padding and all), so the organism finds its pass whatever order it makes its calls in; a pass that
was not recorded is an error rather than a silently wrong result. Scores read under replay equal the full forward's
(tested to the bit on tiny models).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from wdprobe.errors import InputError
from wdprobe.studies.organisms.edit_components import decoder_block


def _digest(t: torch.Tensor) -> str:
    """A digest of a tensor's shape, dtype and bytes (what identifies one forward pass's input)."""
    t = t.detach().contiguous().cpu()
    return hashlib.sha1(f"{tuple(t.shape)}{t.dtype}".encode() + t.view(torch.uint8).numpy().tobytes()).hexdigest()


@contextmanager
def recorded_prefixes(model: torch.nn.Module, layers: Sequence[int], *,
                      spill_to: str | Path | None = None) -> Iterator[dict[int, dict[str, torch.Tensor | Path]]]:
    """Record, for each ``L`` in ``layers``, the residual entering block ``L`` (block ``L - 1``'s output) on every
    forward pass of the ``with`` body, keyed by the digest of the pass's input to block 0. ``L = 0`` records nothing
    (there is no block to skip). ``spill_to``: a folder the tensors are written to as they come (the record then
    holds their paths), for records larger than memory (every block of a 7B model on a few hundred items)."""
    record: dict[int, dict[str, torch.Tensor | Path]] = {L: {} for L in layers}
    spill = Path(spill_to) if spill_to is not None else None
    current: list[str] = [""]

    def fingerprint(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        current[0] = _digest(h)

    hooks = [decoder_block(model, 0).register_forward_pre_hook(fingerprint, with_kwargs=True)]
    for L in layers:
        if L <= 0:
            continue

        def keep(module, inputs, output, L=L):
            h = (output[0] if isinstance(output, tuple) else output).detach()
            if spill is None:
                record[L][current[0]] = h.clone()
            else:
                path = spill / f"L{L}" / f"{current[0]}.pt"
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(h.cpu(), path)
                record[L][current[0]] = path

        hooks.append(decoder_block(model, L - 1).register_forward_hook(keep))
    try:
        yield record
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def replayed_prefix(model: torch.nn.Module, layer: int, record: dict[str, torch.Tensor | Path]) -> Iterator[None]:
    """Within the ``with`` body, blocks ``0 .. layer-1`` of ``model`` do not compute: the first ``layer - 1`` pass
    their input through and block ``layer - 1`` returns the recorded residual of the pass whose input to block 0 it
    receives (:func:`recorded_prefixes`). The blocks are restored on exit, errors included."""
    if layer <= 0:
        yield
        return
    blocks = [decoder_block(model, L) for L in range(layer)]

    def passthrough(hidden_states, *args, **kwargs):
        return hidden_states

    def replay(hidden_states, *args, **kwargs):
        out = record.get(_digest(hidden_states))
        if out is None:
            raise InputError(f"replay of blocks 0..{layer - 1}: a forward pass of input shape "
                             f"{tuple(hidden_states.shape)} that the parent was not recorded on (score the organism "
                             "on exactly the parent's items)")
        if isinstance(out, Path):
            out = torch.load(out, weights_only=True)
        return out.to(device=hidden_states.device, dtype=hidden_states.dtype)

    for b in blocks[:-1]:
        b.forward = passthrough
    blocks[-1].forward = replay
    try:
        yield
    finally:
        for b in blocks:
            del b.forward  # the class's forward again
