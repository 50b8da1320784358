"""Pinned, checksummed downloads of public data into the cache (for users with internet)."""
from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from wdprobe.core.cache import atomic_write_bytes, cache_dir
from wdprobe.errors import DataUnavailableError


@dataclass(frozen=True)
class PinnedFile:
    """A file at a fixed upstream commit with its expected sha256."""

    name: str
    url: str
    sha256: str
    env_var: str  # environment variable a user sets to point at a local copy
    flag: str  # CLI flag that does the same
    canonical: bool = False  # sha256 of the parsed content (JSON keys sorted, text lines stripped), not the bytes


def content_sha256(name: str, data: bytes) -> str:
    """Checksum that ignores formatting: JSON re-serialised with sorted keys, text as stripped non-empty lines."""
    import json

    text = data.decode("utf-8")
    if name.endswith(".json"):
        text = json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    else:
        text = "\n".join(line.strip() for line in text.splitlines() if line.strip())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _digest(pinned: "PinnedFile", data: bytes) -> str:
    return content_sha256(pinned.name, data) if pinned.canonical else hashlib.sha256(data).hexdigest()


WDCT_COMMIT = "63cba03da9f9da076faaae4c09c344102354b9dd"
WDCT = PinnedFile(
    name="WDCT.csv",
    url=f"https://raw.githubusercontent.com/icip-cas/Word-Deed-Consistency-Test/{WDCT_COMMIT}/data/WDCT.csv",
    sha256="94330dbb9acdbdd958a3b050b6301df35b7ca3c943e303dadaddf4b8d477cff7",
    env_var="WDPROBE_WDCT",
    flag="--data",
)




def fetch(pinned: PinnedFile, timeout: float = 30.0) -> Path:
    """Return the cached copy of ``pinned``, downloading and checking it first if needed."""
    target = cache_dir() / "data" / pinned.sha256[:12] / pinned.name
    if target.is_file() and _digest(pinned, target.read_bytes()) == pinned.sha256:
        return target
    hint = (f"Point wdprobe at a local copy instead: pass {pinned.flag} /path/to/{pinned.name} "
            f"or set {pinned.env_var}=/path/to/{pinned.name}.")
    try:
        with urllib.request.urlopen(pinned.url, timeout=timeout) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DataUnavailableError(f"Could not download {pinned.name} from {pinned.url} ({exc}). {hint}") from exc
    got = _digest(pinned, data)
    if got != pinned.sha256:
        raise DataUnavailableError(f"Downloaded {pinned.name} has sha256 {got}, expected {pinned.sha256}. {hint}")
    atomic_write_bytes(target, data)
    return target


PCT_COMMIT = "ef4499a0bdfef8fc2cc223e1197534f29b2c63e6"
_PCT_URL = f"https://raw.githubusercontent.com/copenlu/llm-pct-tropes/{PCT_COMMIT}/data"
PCT_FILES = tuple(
    PinnedFile(name=name, url=f"{_PCT_URL}/{folder}/{name}", sha256=sha, env_var="WDPROBE_PCT", flag="--data",
               canonical=True)
    for folder, name, sha in (
        ("political_compass", "political_compass_questions.txt",
         "50fad662ea2e91696bac2d95200777eef337e45f5ad9d2d8e831d59cd23b1d33"),
        ("political_compass", "question_category_mapping.json",
         "b8a37fb34e37a595b303ca08db9f605825e73e07f159dc7bda6f075f487cc056"),
        ("prompting", "instructions.json", "88e674923789a7007af94b50a43d7bbeb7d953f92d915fb3889f7ae931ba6fd6"),
        ("prompting", "personas.json", "790232aad7e645a51cb85e564e8f34b3e9c2cfb54699899e790a361fc9118894"),
    )
)
