"""Run directories: plain artefacts (CSV/JSON) plus a manifest, written atomically, resumable.

A stage writes its results in parts (one CSV per chunk of items, each written atomically), so a
crash or Ctrl-C loses at most the chunk in flight; re-running into the same directory reads the
finished parts and only computes what is missing. What a run directory promises:

- the manifest records each stage's settings; a resume with other settings is refused, naming them;
- every parts folder carries the digest of the settings it was made with, so parts of another run
  (a deleted manifest, another seed, other model weights) are refused rather than mixed in;
- a stage is done only when its manifest entry says ``complete`` (:meth:`RunDir.mark_done`); readers
  refuse an unfinished stage by name;
- one process writes into a run directory at a time (an OS lock, released when the process ends);
- file names derived from data (item ids) are encoded, and every path is checked to stay inside the run.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import socket
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Mapping, Sequence
from urllib.parse import quote

from wdprobe.core.cache import atomic_write_bytes, atomic_write_json, atomic_write_text
from wdprobe.errors import (
    IntegrityError,
    RunError,
    RunLockedError,
    RunMismatchError,
    StageNotFinishedError,
    UnsafePathError,
)
from wdprobe.version import __version__

MANIFEST = "manifest.json"
LOCK = ".wdprobe.lock"
PARTS_SETTINGS = "settings.json"
MAX_NAME_BYTES = 200  # an item id's encoded file name, before suffixes such as ".json.sha256"
_HELD_LOCKS: dict[str, IO[str]] = {}  # run directories this process writes into, with their open lock files


def safe_name(text: str) -> str:
    """A file name for a value taken from data (an item id): percent-encoded, never a path or a dot name.

    Letters, digits, ``-``, ``_`` and inner dots stay as they are, so ordinary ids keep their file names."""
    name = quote(str(text), safe="-_.")
    if not name or name.startswith("."):
        name = "%2E" + name[1:] if name else "%00"
    if len(name.encode()) > MAX_NAME_BYTES:  # most file systems stop at 255 bytes; leave room for suffixes
        raise UnsafePathError(f"id {str(text)[:60]!r}...: its file name would be {len(name.encode())} bytes, over the "
                              f"{MAX_NAME_BYTES} a file system allows with room for suffixes; shorten the item's id")
    return name


def check_digest(path: Path, expected: str) -> None:
    """Refuse a file whose bytes no longer match the sha256 taken when it was written (a truncated,
    overwritten or bit-flipped part would otherwise be read as data)."""
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise IntegrityError(f"{path}: content changed since it was written (checksum mismatch); delete it and rerun "
                             "the same command, which recomputes it")


def write_checked(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with a ``.sha256`` file beside it, for :func:`read_checked`."""
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest() + "\n")


def read_checked(path: Path) -> bytes:
    """A file's bytes, verified against the ``.sha256`` written beside it; a missing checksum file is refused too
    (a file that should have one and has not cannot be verified, so it is not read)."""
    if not path.is_file():
        raise IntegrityError(f"{path}: missing; delete the stage's parts folder and rerun the stage")
    data = path.read_bytes()
    side = path.with_name(path.name + ".sha256")
    if not side.is_file():
        raise IntegrityError(f"{path}: its checksum file {side.name} is missing, so its content cannot be verified; "
                             "delete it with the stage's parts folder and rerun the stage")
    if hashlib.sha256(data).hexdigest() != side.read_text().strip():
        raise IntegrityError(f"{path}: content changed since it was written (checksum mismatch); delete it with the "
                             "stage's parts folder and rerun the stage")
    return data


def same_format_version(made_by: str, running: str) -> bool:
    """Whether a run written by wdprobe ``made_by`` may be continued by ``running``: the same major and minor
    version (a patch release keeps results and file layout; 0.x minor releases may change them)."""
    def head(v: str) -> tuple[str, ...]:
        return tuple(str(v).split(".")[:2])
    return head(made_by) == head(running)


def checked_result_text(run_dir: str | Path, path: str | Path) -> str:
    """A stage's result file read back, verified against the sha256 its stage recorded when it finished (the
    manifest's ``outputs``): a table or summary edited or truncated since is refused by name instead of being
    reported. Files no finished stage recorded (runs made before outputs were recorded) are read as they are."""
    run, path = Path(run_dir), Path(path)
    data = path.read_bytes()
    try:
        rel = str(path.resolve().relative_to(run.resolve()))
    except ValueError:
        return data.decode("utf-8")
    manifest = RunDir(run).read_manifest() if (run / MANIFEST).is_file() else {}
    for name, entry in (manifest.get("stages") or {}).items():
        recorded = (entry.get("outputs") or {}).get(rel)
        if recorded and hashlib.sha256(data).hexdigest() != recorded:
            raise IntegrityError(f"{path}: changed since stage '{name}' wrote it (checksum mismatch); rerun that stage "
                                 "(or restore the file) before reading its results")
    return data.decode("utf-8")


def next_part_number(folder: Path, label: Mapping[str, Any]) -> int:
    """The number of a stage's next part: past every part on disk, every part its label ever recorded and the
    label's counter, so a part deleted (e.g. after a checksum failure) never has its number, or another part's
    rows, taken by its replacement."""
    seen = [int(p.stem.split("-")[1]) for p in folder.glob("part-*.csv") if p.stem.split("-")[1].isdigit()]
    seen += [int(name[5:10]) for name in label.get("parts", {}) if name[5:10].isdigit()]
    return max([int(label.get("next_part", 0))] + [k + 1 for k in seen])


def settings_digest(settings: Mapping[str, Any]) -> str:
    """sha256 of the settings as canonical JSON: what parts and results are labelled with."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def rows_to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text of rows in the given column order (missing values empty)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_manifest_file(path: str | Path) -> dict[str, Any]:
    """A run's ``manifest.json``, checked: a JSON object whose ``stages`` (when present) is an object of objects.
    Anything else raises :class:`~wdprobe.errors.RunError` naming the file and what to do."""
    path = Path(path)
    hint = ("restore it from a copy, or start the run again in a new directory (its results cannot be trusted "
            "without the manifest that says which settings made them)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RunError(f"{path}: not UTF-8 text, so not a wdprobe manifest; {hint}") from None
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}; truncated?); "
                       f"{hint}") from None
    if not isinstance(manifest, dict):
        raise RunError(f"{path}: a JSON {type(manifest).__name__}, not the object a wdprobe manifest is; {hint}")
    stages = manifest.get("stages", {})
    if not isinstance(stages, dict) or not all(isinstance(v, dict) for v in stages.values()):
        raise RunError(f"{path}: its 'stages' is not an object of stage entries; {hint}")
    return manifest


class RunDir:
    """One run directory: ``manifest.json`` plus per-stage artefacts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # paths ----------------------------------------------------------------------------------------
    def child(self, *parts: str) -> Path:
        """A path inside the run directory; refuses one that would land outside it (``..``, absolute)."""
        path = self.path.joinpath(*parts)
        root = self.path.resolve()
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            raise UnsafePathError(f"{path}: outside the run directory {self.path}; file names from data must be "
                                  "made safe with wdprobe.runs.rundir.safe_name")
        return path

    # one writer at a time ---------------------------------------------------------------------------
    def lock(self) -> None:
        """Take this run directory for this process (re-entrant), or say which process holds it.

        The lock is an OS file lock: it is released when the process ends, however it ends, so a killed
        run never leaves a stale lock behind."""
        key = str(self.path.resolve())
        if key in _HELD_LOCKS:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fh = open(self.path / LOCK, "a+", encoding="utf-8")
        except OSError as exc:  # read-only, full or missing mount: say where and why, not a traceback
            raise RunError(f"{self.path}: cannot write into this run directory ({exc.strerror or exc}); give an --out "
                           "directory this user can write to") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunLockedError(f"{self.path} is being written by {holder}; wait for it to finish, or use another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {now()}")
        fh.flush()
        _HELD_LOCKS[key] = fh

    def announce(self, stage: str) -> None:
        """Say in the held lock which stage this process is running, so ``wdprobe status`` can show it even
        before the stage has recorded anything (while the model loads, say)."""
        fh = _HELD_LOCKS.get(str(self.path.resolve()))
        if fh is None:
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {now()}; stage {stage}")
        fh.flush()

    def unlock(self) -> None:
        """Let other processes write here again (called when a stage is done)."""
        fh = _HELD_LOCKS.pop(str(self.path.resolve()), None)
        if fh is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    def holder(self) -> str | None:
        """Which process is writing into this run now (None when no process is)."""
        path = self.path / LOCK
        if not path.is_file() or str(self.path.resolve()) in _HELD_LOCKS:
            return None
        with open(path, "a+", encoding="utf-8") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                return fh.read().strip() or "another process"
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def read_manifest(self) -> dict[str, Any]:
        """The manifest ({} for a run not started); a manifest that is not a JSON object with a ``stages`` object
        (truncated, edited, another program's file) is refused, naming the file, never read as an empty run."""
        if not self.manifest_path.is_file():
            return {}
        return read_manifest_file(self.manifest_path)

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.manifest_path, dict(manifest, updated=now()))

    # stages ----------------------------------------------------------------------------------------
    def stage_entry(self, stage: str) -> dict[str, Any]:
        """The manifest's entry for ``stage`` ({} when the stage never started)."""
        return dict(self.read_manifest().get("stages", {}).get(stage) or {})

    def is_done(self, stage: str) -> bool:
        """Whether ``stage`` finished (the one done-marker every stage writes through :meth:`mark_done`)."""
        return bool(self.stage_entry(stage).get("complete"))

    def require_done(self, stage: str, command: str) -> dict[str, Any]:
        """The entry of a finished ``stage``, or an error naming the command that finishes it."""
        entry = self.stage_entry(stage)
        if not entry.get("complete"):
            state = "did not finish" if entry else "has not run"
            raise StageNotFinishedError(f"{self.path}: stage '{stage}' {state}; run `{command}` (it resumes) before reading it")
        return entry

    def mark_done(self, stage: str, **fields: Any) -> None:
        """Record ``stage`` as finished (``complete``, a time stamp, and any fields given) and release the lock."""
        self.update_stage(stage, **fields, complete=True, finished=now())
        self.unlock()

    def check_or_start(self, stage: str, config: Mapping[str, Any]) -> dict[str, Any]:
        """Start a stage or resume it; refuse when the directory holds a run of different settings, or
        parts made with other settings, or when another process is writing here."""
        self.lock()
        manifest = self.read_manifest()
        made_by = (manifest.get("environment") or {}).get("wdprobe")
        if made_by and not same_format_version(made_by, __version__):
            raise RunMismatchError(f"{self.path} was written by wdprobe {made_by}; this is wdprobe {__version__}, whose "
                                   "results and file layout may differ, so the run is not continued by it. Use a new "
                                   f"--out directory, or wdprobe {made_by} to finish this one")
        previous = manifest.get("stages", {}).get(stage, {}).get("config")
        if previous is not None:
            diff = {k: (previous.get(k), v) for k, v in config.items() if previous.get(k) != v}
            if diff:
                detail = ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
                raise RunMismatchError(f"{self.path} already holds a '{stage}' run with other settings ({detail}); "
                                       "use a new --out directory, or delete this one (`wdprobe run` also takes --restart STAGE for the patching and steering stages)")
        manifest.setdefault("created", now())
        manifest.setdefault("environment", environment())
        manifest.setdefault("stages", {}).setdefault(stage, {})["config"] = dict(config)
        self._check_parts(stage, config)
        self.write_manifest(manifest)
        return manifest

    def _check_parts(self, stage: str, config: Mapping[str, Any]) -> None:
        """Label the stage's parts folder with the settings digest, or refuse parts made with others."""
        folder = self.parts_dir(stage)
        label = folder / PARTS_SETTINGS
        digest = settings_digest(config)
        if label.is_file():
            made = json.loads(label.read_text())
            if made.get("digest") != digest:
                old = made.get("settings", {})
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise RunMismatchError(f"{folder} holds parts made with other settings (differing: {diff}); delete that "
                                       "folder to start the stage again, or use a new --out directory")
        elif folder.is_dir() and any(folder.glob("part-*")):
            raise RunMismatchError(f"{folder} holds parts with no record of their settings; delete that folder to start "
                                   "the stage again")

    @contextmanager
    def writing(self):
        """Hold the run's lock for one read-modify-write of the manifest: taken here (and let go after) unless this
        process holds it already, so another process's stage never interleaves with the write."""
        held = str(self.path.resolve()) in _HELD_LOCKS
        self.lock()
        try:
            yield
        finally:
            if not held:
                self.unlock()

    def update_stage(self, stage: str, **fields: Any) -> None:
        """Add ``fields`` to a stage's manifest entry, under the run's lock."""
        with self.writing():
            manifest = self.read_manifest()
            manifest.setdefault("stages", {}).setdefault(stage, {}).update(fields)
            self.write_manifest(manifest)

    def reset_stage(self, stage: str, outputs: Sequence[str] = ()) -> None:
        """Forget a stage: its manifest entry, its parts and the named output files/folders (for --restart), under
        the run's lock."""
        with self.writing():
            self._reset_stage(stage, outputs)

    def _reset_stage(self, stage: str, outputs: Sequence[str]) -> None:
        manifest = self.read_manifest()
        if stage in manifest.get("stages", {}):
            del manifest["stages"][stage]
            self.write_manifest(manifest)
        shutil.rmtree(self.parts_dir(stage), ignore_errors=True)
        for name in outputs:
            for p in self.path.glob(name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    # parts --------------------------------------------------------------------------------------
    def parts_dir(self, stage: str) -> Path:
        return self.path / f"{stage}.parts"

    def read_parts(self, stage: str) -> list[dict[str, str]]:
        """Every saved row of ``stage``, each part checked against the checksum taken when it was written."""
        d = self.parts_dir(stage)
        rows: list[dict[str, str]] = []
        if not d.is_dir():
            return rows
        label = d / PARTS_SETTINGS
        sums = json.loads(label.read_text()).get("parts", {}) if label.is_file() else {}
        for p in sorted(d.glob("part-*.csv")):
            if p.name not in sums:
                raise IntegrityError(f"{p}: no checksum was recorded for this part when the stage wrote its parts, so "
                                     "it was not written by this stage; delete it and rerun the same command")
            check_digest(p, sums[p.name])
            try:
                rows.extend(read_csv(p))
            except (UnicodeDecodeError, csv.Error) as exc:
                raise IntegrityError(f"{p}: unreadable ({exc}); delete this part file and rerun the same command "
                                     "(it recomputes what the part held)") from None
        return rows

    def next_part(self, stage: str) -> int:
        """The number :meth:`write_part` gives the stage's next part (for files written beside it, e.g. shards)."""
        d = self.parts_dir(stage)
        label = d / PARTS_SETTINGS
        return next_part_number(d, json.loads(label.read_text()) if label.is_file() else {}) if d.is_dir() else 0

    def write_part(self, stage: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   settings: Mapping[str, Any] | None = None) -> Path:
        """Save one finished chunk of a stage atomically. The first part labels the folder with the settings
        (the stage's manifest config, or ``settings`` when a merge writes parts before the stage starts)."""
        d = self.parts_dir(stage)
        d.mkdir(parents=True, exist_ok=True)
        label = d / PARTS_SETTINGS
        if not label.is_file():
            config = dict(settings) if settings is not None else self.stage_entry(stage).get("config", {})
            atomic_write_json(label, {"digest": settings_digest(config), "settings": config})
        made = json.loads(label.read_text())
        n = next_part_number(d, made)
        path = d / f"part-{n:05d}.csv"
        text = rows_to_csv(rows, columns).encode("utf-8")
        atomic_write_bytes(path, text)
        made.setdefault("parts", {})[path.name] = hashlib.sha256(text).hexdigest()
        made["next_part"] = n + 1
        atomic_write_json(label, made)
        return path

    def write_table(self, name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
        path = self.path / name
        atomic_write_text(path, rows_to_csv(rows, columns))
        return path


def now() -> str:
    """The current UTC time, to the second, for manifests."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment() -> dict[str, str]:
    """Library versions, machine and threads, recorded in every manifest."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    try:
        tl = version("transformer-lens")
    except PackageNotFoundError:  # pragma: no cover - import problems surface elsewhere
        tl = "unavailable"

    return {"wdprobe": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "transformer_lens": tl, "machine": platform.machine(),
            "threads": str(torch.get_num_threads())}


class Timer:
    """Wall-clock seconds of named steps, for manifests."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)
