"""Pinned, checksummed downloads of public data into the cache (for users with internet)."""
from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .cache import atomic_write_bytes, cache_dir


@dataclass(frozen=True)
class PinnedFile:
    """A file at a fixed upstream commit with its expected sha256."""

    name: str
    url: str
    sha256: str
    env_var: str  # environment variable a user sets to point at a local copy
    flag: str  # CLI flag that does the same


WDCT_COMMIT = "63cba03da9f9da076faaae4c09c344102354b9dd"
WDCT = PinnedFile(
    name="WDCT.csv",
    url=f"https://raw.githubusercontent.com/icip-cas/Word-Deed-Consistency-Test/{WDCT_COMMIT}/data/WDCT.csv",
    sha256="94330dbb9acdbdd958a3b050b6301df35b7ca3c943e303dadaddf4b8d477cff7",
    env_var="WDPROBE_WDCT",
    flag="--data",
)


class DataUnavailableError(RuntimeError):
    """Neither a local path nor a download gave the data; the message says how to fix it."""


def fetch(pinned: PinnedFile, timeout: float = 30.0) -> Path:
    """Return the cached copy of ``pinned``, downloading and checking it first if needed."""
    target = cache_dir() / "data" / pinned.sha256[:12] / pinned.name
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == pinned.sha256:
        return target
    hint = (f"Point wdprobe at a local copy instead: pass {pinned.flag} /path/to/{pinned.name} "
            f"or set {pinned.env_var}=/path/to/{pinned.name}.")
    try:
        with urllib.request.urlopen(pinned.url, timeout=timeout) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DataUnavailableError(f"Could not download {pinned.name} from {pinned.url} ({exc}). {hint}") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != pinned.sha256:
        raise DataUnavailableError(f"Downloaded {pinned.name} has sha256 {got}, expected {pinned.sha256}. {hint}")
    atomic_write_bytes(target, data)
    return target
