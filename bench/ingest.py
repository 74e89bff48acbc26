"""Ingest throughput: the real Iggy files and a simulated 100k-dog set; prints one JSON line.

    .venv/bin/python bench/ingest.py [--dogs 100000] [--iggy ../shared/data/betfair-iggy]

Run it under `flock /tmp/gruviz-heavy.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gruviz_core.synth import simulate  # noqa: E402
from storage.forms import ingest, load_snapshot  # noqa: E402


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dogs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iggy", default=str(REPO.parent / "shared" / "data" / "betfair-iggy"))
    args = ap.parse_args()
    result: dict = {"bench": "ingest", "python": platform.python_version(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="gruviz-bench-") as tmp:
        tmp = Path(tmp)
        iggy = Path(args.iggy)
        if any(iggy.glob("*.csv.gz")):
            s, secs = _timed(ingest, [str(iggy)], tmp / "iggy")
            _, load_s = _timed(load_snapshot, tmp / "iggy", s.snapshot_id)
            result["iggy"] = {"rows_in": s.rows_in, "accepted": s.accepted, "files": len(s.files), "seconds": round(secs, 2),
                              "rows_per_s": round(s.rows_in / secs), "load_snapshot_s": round(load_s, 2)}
        else:
            result["iggy"] = None
        runs, synth_s = _timed(simulate, args.dogs, args.seed)
        src = tmp / "synth.parquet"
        _, write_s = _timed(runs.to_parquet, src, index=False)
        s, secs = _timed(ingest, [str(src)], tmp / "synth")
        result["synth"] = {"dogs": args.dogs, "rows": len(runs), "races": s.races, "simulate_s": round(synth_s, 2),
                           "simulate_rows_per_s": round(len(runs) / synth_s), "write_parquet_s": round(write_s, 2),
                           "ingest_s": round(secs, 2), "ingest_rows_per_s": round(s.rows_in / secs),
                           "balanced": s.rows_in == s.accepted + s.rejected + s.duplicates_merged}
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
