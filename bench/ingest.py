"""Ingest throughput: the real Iggy files, a season of simulated form guides (many small files) and a
simulated 100k-dog Parquet; prints one JSON line.

    .venv/bin/python bench/ingest.py [--dogs 100000] [--guides 2500] [--iggy ../shared/data/betfair-iggy]
                                     [--baseline-rev 7730cd5] [--baseline-guides 150]

Each case reports rows/s and, measured in the same run, the ratio to the per-file ingest of
`--baseline-rev` (the code before issue 15, item 2: one pandas read and one adapter call per file),
run in a subprocess from `git archive` of that commit. The baseline sees the same Iggy files, and a
subset of `--baseline-guides` form guides (the per-file path needs ~0.2 s a guide); the new path is
timed on that subset too, so that both ratios (same files; all files vs the subset) are shown.

Run it under `flock /tmp/gruviz-heavy.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.stages.ingest import ingest  # noqa: E402
from gruviz_core.synth import simulate  # noqa: E402
from gruviz_core.synth_forms import form_guides  # noqa: E402
from storage.forms import load_snapshot  # noqa: E402

BASELINE_REV = "7730cd5"
"""The last commit whose ingest read and adapted file by file."""

_BASELINE_SNIPPET = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from storage.forms import ingest
t0 = time.perf_counter()
s = ingest(sys.argv[2:-1], sys.argv[-1])
print(json.dumps({"seconds": time.perf_counter() - t0, "rows_in": s.rows_in, "accepted": s.accepted,
                  "rejected": s.rejected, "duplicates_merged": s.duplicates_merged}))
"""


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _baseline_tree(rev: str, dest: Path) -> Path | None:
    """The baseline's gruviz_core and storage packages under dest, or None when git cannot give them."""
    archive = dest / "baseline.tar"
    done = subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), rev, "gruviz_core", "storage"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"bench/ingest.py: no baseline ({done.stderr.strip()})", file=sys.stderr)
        return None
    tree = dest / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _baseline(tree: Path | None, sources: list[str], home: Path) -> dict | None:
    if tree is None:
        return None
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", _BASELINE_SNIPPET, str(tree), *sources, str(home)],
                          capture_output=True, text=True, env=env, cwd=str(tree))
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["rows_per_s"] = round(out["rows_in"] / out["seconds"])
    out["seconds"] = round(out["seconds"], 2)
    return out


def _case(sources: list[str], home: Path) -> dict:
    s, secs = _timed(ingest, sources, home)
    return {"rows_in": s.rows_in, "accepted": s.accepted, "rejected": s.rejected,
            "duplicates_merged": s.duplicates_merged, "files": len(s.files), "seconds": round(secs, 2),
            "rows_per_s": round(s.rows_in / secs), "balanced": s.balanced}


def _ratio(new: dict, old: dict | None) -> float | None:
    if not old or "rows_per_s" not in old:
        return None
    return round(new["rows_per_s"] / old["rows_per_s"], 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dogs", type=int, default=100_000, help="simulated dogs of the Parquet case")
    ap.add_argument("--guides", type=int, default=2_500, help="simulated form guides (files) of the many-files case")
    ap.add_argument("--guide-dogs", type=int, default=8_000, help="simulated dogs the form guides are drawn from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iggy", default=str(REPO.parent / "shared" / "data" / "betfair-iggy"))
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the per-file ingest ('' = none)")
    ap.add_argument("--baseline-guides", type=int, default=150, help="form guides the per-file baseline reads")
    args = ap.parse_args()
    result: dict = {"bench": "ingest", "python": platform.python_version(), "cpus": os.cpu_count(),
                    "baseline_rev": args.baseline_rev or None}
    with tempfile.TemporaryDirectory(prefix="gruviz-bench-") as tmp:
        tmp = Path(tmp)
        tree = _baseline_tree(args.baseline_rev, tmp) if args.baseline_rev else None

        iggy = Path(args.iggy)
        if any(iggy.glob("*.csv.gz")):
            new = _case([str(iggy)], tmp / "iggy")
            _, load_s = _timed(load_snapshot, tmp / "iggy")
            new["load_snapshot_s"] = round(load_s, 2)
            old = _baseline(tree, [str(iggy)], tmp / "iggy-old")
            result["iggy"] = {**new, "baseline": old, "ratio_to_baseline": _ratio(new, old)}
        else:
            result["iggy"] = None

        runs, _ = _timed(simulate, args.guide_dogs, args.seed)
        fg, gen_s = _timed(form_guides, runs, args.guides, args.seed, starts=6)
        guides = tmp / "guides"
        guides.mkdir()
        for name, text in fg.files.items():
            (guides / name).write_text(text, encoding="utf-8")
        new = _case([str(guides)], tmp / "guides-home")
        subset = [str(guides / n) for n in sorted(fg.files)[: args.baseline_guides]]
        new_subset = _case(subset, tmp / "guides-subset")
        old = _baseline(tree, subset, tmp / "guides-old")
        result["form_guides"] = {
            **new, "generate_s": round(gen_s, 2), "rows_per_file": round(fg.rows / len(fg.files), 1),
            "subset": {"files": len(subset), "new": new_subset, "baseline": old,
                       "ratio_same_files": _ratio(new_subset, old)},
            "ratio_to_baseline": _ratio(new, old),
            "target_rows_per_s": 50_000,
        }

        runs, synth_s = _timed(simulate, args.dogs, args.seed)
        src = tmp / "synth.parquet"
        _, write_s = _timed(runs.to_parquet, src, index=False)
        s, secs = _timed(ingest, [str(src)], tmp / "synth")
        old = _baseline(tree, [str(src)], tmp / "synth-old")
        result["synth"] = {"dogs": args.dogs, "rows": len(runs), "races": s.races, "simulate_s": round(synth_s, 2),
                           "simulate_rows_per_s": round(len(runs) / synth_s), "write_parquet_s": round(write_s, 2),
                           "ingest_s": round(secs, 2), "ingest_rows_per_s": round(s.rows_in / secs),
                           "balanced": s.rows_in == s.accepted + s.rejected + s.duplicates_merged, "baseline": old,
                           "ratio_to_baseline": _ratio({"rows_per_s": s.rows_in / secs}, old)}
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
