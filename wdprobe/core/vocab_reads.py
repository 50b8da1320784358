"""Next-token log-probabilities read across many forwards, projected onto the vocabulary together.

On a large vocabulary (Gemma: 262,144 x 640) one unembedding call costs 50-100 ms on a CPU whatever the number of
positions it projects (the matrix is read from memory each call): a scoring pass of batches that read a handful of
positions each paid that per batch. Here a forward's own unembedding is skipped (its input is cut to zero positions)
and the final residuals of the read positions are kept; they are projected in chunks of ``chunk`` positions. The
projection is the model's own output head followed by the forward's final-logit soft-capping where the config
sets it; a model whose forward does anything else to the logits is detected once (:func:`defers_unembedding`)
and keeps the in-forward unembedding.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import numpy as np
import torch
from jaxtyping import Float

from wdprobe.core.forward import LAST_POSITION_HOOK

if TYPE_CHECKING:  # pragma: no cover
    from wdprobe.core.model import LoadedModel

UNEMBED_CHUNK = 256


def skip_unembedding(resid: Float[torch.Tensor, "batch pos d_model"], hook: object = None) -> Float[torch.Tensor, "batch 0 d_model"]:
    """Forward hook on the unembedding input passing no position on: the forward never reads the vocabulary matrix
    (a pass that only captures residuals)."""
    return resid[:, :0, :]


def unembed(lm: "LoadedModel", resid: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "n vocab"]:
    """Logits from final residuals (the unembedding's input), as the forward computes them after its last norm."""
    logits = lm.hf_model.get_output_embeddings()(resid[None])[0]
    cap = getattr(lm.hf_model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def defers_unembedding(lm: "LoadedModel", tol: float = 1e-4) -> bool:
    """Whether :func:`unembed` reproduces this model's forward logits (checked once per loaded model on a short
    prompt); when not, :class:`VocabularyReads` lets each forward unembed its own reads."""
    key = "defers_unembedding"
    if key not in lm.plain_cache:
        ids = torch.tensor([lm.tokenizer.encode("Is it right to keep a promise? Answer:")], device=lm.device)
        kept: list[torch.Tensor] = []

        def keep(x: torch.Tensor, hook: object = None) -> torch.Tensor:
            kept.append(x[0, -1:].detach())
            return x[:, -1:]

        with torch.no_grad():
            direct = lm.bridge.run_with_hooks(ids, fwd_hooks=[(LAST_POSITION_HOOK, keep)])[0, -1].float()
            try:
                # the kept residual stays where the head is (a model split over GPUs unembeds on its last device)
                deferred = unembed(lm, kept[0])[0].float().to(direct.device)
                ok = bool((deferred - direct).abs().max() <= tol * max(1.0, float(direct.abs().max())))
            except Exception:  # noqa: BLE001 - any failure means: unembed inside the forward
                ok = False
        lm.plain_cache[key] = ok
    return bool(lm.plain_cache[key])


class VocabularyReads:
    """Log-probabilities of chosen tokens at chosen positions of many forwards.

    Per forward, :meth:`hook` gives the hook that takes the read positions' final residuals (``select`` maps the
    unembedding input ``[batch, pos, d]`` to ``[n, d]``, one row per key); run the forward with it, then call
    :meth:`after_forward` with the forward's output. Results land in :attr:`logprobs` (key -> float64 array of the
    key's tokens), complete after :meth:`flush`."""

    def __init__(self, lm: "LoadedModel", *, chunk: int = UNEMBED_CHUNK) -> None:
        self.lm = lm
        self.chunk = chunk
        self.deferred = defers_unembedding(lm)
        self.logprobs: dict[Hashable, np.ndarray] = {}
        self._resid: list[torch.Tensor] = []
        self._wanted: list[tuple[Hashable, tuple[int, ...]]] = []
        self._this_forward: list[tuple[Hashable, tuple[int, ...]]] = []

    def hook(self, select: Callable[[torch.Tensor], torch.Tensor],
             wanted: Sequence[tuple[Hashable, Sequence[int]]]) -> tuple[str, Callable[..., torch.Tensor]]:
        """The unembedding-input hook for one forward reading ``wanted`` ((key, token ids) per selected row)."""
        self._this_forward = [(k, tuple(t)) for k, t in wanted]

        def fn(x: torch.Tensor, hook: object = None) -> torch.Tensor:
            chosen = select(x)
            if not self.deferred:
                return chosen[None]
            self._resid.append(chosen.detach())
            return x[:, :0, :]
        return LAST_POSITION_HOOK, fn

    def after_forward(self, output: Any) -> None:
        """Book the forward's reads: project now (no deferral) or once a chunk's worth has gathered."""
        wanted, self._this_forward = self._this_forward, []
        if not self.deferred:
            self._store(output[0].float(), wanted)
            return
        self._wanted += wanted
        if len(self._wanted) >= self.chunk:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        """Project every gathered residual onto the vocabulary."""
        if not self._wanted:
            self._resid = []
            return
        resid = torch.cat(self._resid)
        wanted, self._resid, self._wanted = self._wanted, [], []
        for a in range(0, len(wanted), self.chunk):
            self._store(unembed(self.lm, resid[a: a + self.chunk]).float(), wanted[a: a + self.chunk])

    @torch.no_grad()
    def _store(self, logits: Float[torch.Tensor, "n vocab"], wanted: Sequence[tuple[Hashable, tuple[int, ...]]]) -> None:
        # log-softmax at the read tokens only: one logsumexp pass, no second vocabulary-wide tensor
        if not wanted:
            return
        lse = torch.logsumexp(logits, dim=-1)
        width = max(len(t) for _, t in wanted)
        index = torch.tensor([list(t) + [0] * (width - len(t)) for _, t in wanted], device=logits.device)
        picked = (torch.gather(logits, 1, index) - lse[:, None]).double().cpu().numpy()
        for j, (key, tokens) in enumerate(wanted):
            self.logprobs[key] = picked[j, : len(tokens)]
