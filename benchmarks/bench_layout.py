"""The layered package against the flat one it replaced: same study, same results, no slowdown (issue 15).

The baseline is the last commit before the restructure (``--baseline 75bf6ee``), unpacked from git into
a temporary folder and run with ``PYTHONPATH`` pointing at it; the current tree runs as installed. Both
run the same small study (score -> capture -> probes -> lens -> cross-form patching -> steering) into
fresh run directories, alternating which goes first over ``--repeats`` rounds. The tables each writes
are compared byte for byte (timings aside), and the wall times side by side.

Usage: python benchmarks/bench_layout.py --data PATH/TO/WDCT.csv [--sample 40] [--repeats 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING_FILES = {"manifest.json", "settings.json", ".wdprobe.lock"}  # plus *.sha256 sidecars (new files, not results)
TIMING_KEYS = ("seconds", "timings")


def unpack(commit: str, into: Path) -> Path:
    """The package as it was at ``commit`` (git archive), without touching the working tree."""
    archive = into / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), commit, "wdprobe"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "src", filter="data")
    return into / "src"


def study(pythonpath: Path | None, out: Path, data: str, sample: int) -> float:
    cfg = out.parent / f"{out.name}.toml"
    cfg.write_text('png = false\nstages = ["score", "capture", "probes", "lens", "patch_cross", "steer"]\n'
                   '[capture]\npositions = ["last"]\n[probes]\npositions = ["last"]\nkinds = ["diffmean"]\n'
                   '[patch_cross]\nitems = 24\n[steer]\nitems = 16\nalphas = [4.0, 16.0]\n')
    env = dict(os.environ, WDPROBE_PNG="0")
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wdprobe.cli", "run", "--config", str(cfg), "--data", data, "--sample",
                    str(sample), "--out", str(out), "--quiet"], check=True, capture_output=True, text=True, env=env,
                   cwd=out.parent)
    return time.perf_counter() - t0


def without_timings(path: Path) -> object:
    obj = json.loads(path.read_text())

    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if not any(k.startswith(t) for t in TIMING_KEYS)}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o
    return strip(obj)


def compare(a: Path, b: Path) -> dict[str, list[str]]:
    """Files of two runs: identical bytes, identical without timing fields (JSON), or different."""
    def kept(p: Path) -> bool:
        return p.is_file() and p.name not in TIMING_FILES and p.suffix != ".sha256"

    files_a = {p.relative_to(a) for p in a.rglob("*") if kept(p)}
    files_b = {p.relative_to(b) for p in b.rglob("*") if kept(p)}
    out: dict[str, list[str]] = {"identical": [], "identical_but_timings": [], "different": [],
                                 "only_one": sorted(map(str, files_a ^ files_b))}
    for rel in sorted(files_a & files_b):
        if filecmp.cmp(a / rel, b / rel, shallow=False):
            out["identical"].append(str(rel))
        elif rel.suffix == ".json" and without_timings(a / rel) == without_timings(b / rel):
            out["identical_but_timings"].append(str(rel))
        elif rel.suffix in (".html", ".png"):
            out["identical_but_timings"].append(str(rel))  # figures embed plotly ids and times
        else:
            out["different"].append(str(rel))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--baseline", default="75bf6ee", help="commit before the restructure")
    ap.add_argument("--sample", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    data = str(Path(args.data).resolve())
    times: dict[str, list[float]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_src = unpack(args.baseline, tmp)
        runs = {}
        for r in range(args.repeats):
            order = ["baseline", "current"] if r % 2 == 0 else ["current", "baseline"]
            for name in order:
                out = tmp / f"{name}-{r}"
                times[name].append(study(base_src if name == "baseline" else None, out, data, args.sample))
                runs.setdefault(name, out)
                print(f"round {r} {name}: {times[name][-1]:.1f} s", flush=True)
        files = compare(runs["baseline"], runs["current"])
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"sample": args.sample, "repeats": args.repeats, "baseline_commit": args.baseline, "seconds": times,
              "median_seconds": med, "current_over_baseline": round(med["current"] / med["baseline"], 3),
              "files": {k: len(v) for k, v in files.items()}, "different": files["different"], "only_one": files["only_one"]}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if files["different"] or files["only_one"]:
        sys.exit(f"results differ: {files['different'] + files['only_one']}")


if __name__ == "__main__":
    main()
