"""Peak memory (RSS) of the nightly stages on a simulated set of N dogs (1 seed or --seeds, H=64); prints one JSON line.

Each stage runs in its own child process, as the nightly's tasks would on a worker of their own, and
reports its own peak resident set (getrusage ru_maxrss) and wall time:

    setup     simulate N dogs (gruviz_core.synth) and ingest them; a small simulated set (2,000 dogs)
              trained for 1 epoch, 1 seed, H=64, registered as the model set (its weights do not
              change what the stages hold in memory; not measured as a nightly stage)
    features  flows.stages.features.run: the snapshot -> its ragged sequences (in blocks of dogs)
    extract   the nightly's extract tasks, each in its own process: begin (lays out the run from the
              rows' metadata), every block (block_dogs 16,384; `extract_block` is the largest block
              process: it reads and prepares only its own rows) and finish; `extract_flow` is the
              larger of begin and finish (what the flow's process holds)
    stats     flows.stages.stats.compute_stats (streams the states shard by shard)
    evaluate  flows.stages.evaluate.run: evaluate_run (resilience reads its inputs by rows)

Per stage: peak RSS in GB and in bytes per row (rows = the run's dog-steps), and the growth over the
process's RSS once its libraries are imported (about 0.4 GB) per row. Memory that grows with rows is
the slope between two sizes: run it at two N (e.g. 250,000 and 500,000) and extrapolate to
1M, or at 1M directly where the machine has the memory. Run under `flock /tmp/gruviz-heavy.lock`.

    .venv/bin/python bench/memory.py --dogs 250000 [--dir /tmp/gruviz-bench-mem] [--keep] [--until features]
    .venv/bin/python bench/memory.py --dir /tmp/gruviz-bench-mem --again evaluate   # on a kept store

--keep also writes what the stages found (bench-memory.json) into the store; --again STAGE reruns only the
stages from STAGE to --until on that kept store (no setup), e.g. the evaluate stage before and after a change.

Measured (2 cores, 24 GiB): features 1.9 GB at 250k dogs (4.85M rows), 2.64 GB at 500k (9.72M rows),
4.35 GB (209 s) at 1M (19.4M rows); evaluate (resilience beside the comparisons) before issue 26's bounds:
5.82 GB at 250k, 10.91 GB at 500k (about 21 GB at 1M by the slope); with uint8 bootstrap weights cast a
block of replicates at a time, plateau steps by blocks of dogs and resilience's inputs kept packed: 1.92 GB
at 250k (33 s), 3.19 GB at 500k (67 s), 5.85 GB at 1M (118 s, measured); 5.81 GB (117 s) on 2026-12-07 night.
Stats at 1M (same kept store, --again stats): 4.81 GB / 30.3 s before that night's changes, 4.18 GB / 17.4 s with
its two long tables written by slices of rows (Parquet row groups) and no dictionary tried on float columns.
At 250k dogs and --seeds 3 (same kept store, before / after): stats 2.82 / 2.24 GB (10.6 / 6.6 s), evaluate
2.93 / 2.89 GB (46.5 / 42.6 s; the kappa interval's whole float32 weights are not what sets its peak there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads(1)
a = json.loads(sys.argv[1])
import numpy, pandas, zarr, xarray, scipy.sparse  # the libraries every stage loads, before the baseline
from flows.stages import evaluate as _e, extract as _x, features as _f, stats as _s  # noqa: F401
t = time.perf_counter()
out = {{"base_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}
stage, root = a["stage"], a["root"]
if stage == "setup":
    import pandas as pd
    from gruviz_core import synth
    from flows.stages.ingest import ingest
    from flows.stages.train import train_and_register
    small = synth.simulate(2000, 1)
    p = f"{{root}}/small.parquet"
    small.to_parquet(p, index=False)
    snap = ingest(p, root).snapshot_id
    rep = train_and_register(root, snap, seeds=a.get("seeds", 1), hidden=64, epochs=1, promote=True)
    big = synth.simulate(a["dogs"], 0)
    out["sim_rows"] = int(len(big))
    p = f"{{root}}/big.parquet"
    big.to_parquet(p, index=False)
    del big
    s = ingest(p, root)
    out.update(snapshot_id=s.snapshot_id, set_id=rep.set_id)
elif stage == "features":
    from flows.stages import features
    out["seq_path"] = str(features.run(root, a["snapshot_id"], a["set_id"]))
    from storage.sequences import open_sequence_rows
    out["rows"] = len(open_sequence_rows(out["seq_path"]).values)  # the shape only: no row is read
elif stage == "begin":
    from flows.stages import extract
    out["plan"] = extract.begin(root, "mem", {{"run_id": "mem", "snapshot_id": a["snapshot_id"],
                                               "model_set_id": a["set_id"]}}, a["seq_path"], a["set_id"], 16384)
elif stage == "block":
    from flows.stages import extract
    out["dogs"] = extract.block(a["plan"], a["index"], device="cpu", batch_size=4096)
elif stage == "finish":
    import json as j
    from pathlib import Path
    from flows.stages import extract
    out["tmp_dir"] = extract.finish(a["plan"])
    out["rows"] = j.loads((Path(out["tmp_dir"]) / "run.json").read_text())["n_obs"]
elif stage == "stats":
    from flows.stages.stats import compute_stats
    compute_stats(a["tmp_dir"])
elif stage == "evaluate":
    from flows.stages import evaluate
    out["eval_seconds"] = evaluate.run(a["tmp_dir"], root, a["set_id"], a["seq_path"])["seconds"]
out["seconds"] = time.perf_counter() - t
out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(out))
"""


_STAGES = ("setup", "features", "begin", "block", "finish", "stats", "evaluate")


def _stage(job: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    code = _CHILD.format(repo=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(job)], cwd=REPO, env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise SystemExit(f"stage {job['stage']} failed (exit {out.returncode})\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dogs", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/gruviz-bench-mem")
    ap.add_argument("--seeds", type=int, default=1, help="seed models in the set (extract, stats and evaluate hold "
                    "some arrays per seed)")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--until", choices=_STAGES[1:], default=_STAGES[-1],
                    help="the last stage to run (e.g. features: setup and features only)")
    ap.add_argument("--again", choices=_STAGES[1:], default=None,
                    help="rerun only the stages from this one on a store kept by an earlier --keep run")
    a = ap.parse_args()
    root = Path(a.dir)
    kept = root / "bench-memory.json"
    t0 = time.perf_counter()
    if a.again:
        if not kept.exists():
            raise SystemExit(f"--again {a.again}: {kept} not found; run once with --keep --dir {root} first")
        saved = json.loads(kept.read_text())
        job, found, a.dogs, a.keep = saved["job"], saved["found"], saved["job"]["dogs"], True
        a.seeds = job.get("seeds", 1)
        stages = _STAGES[_STAGES.index(a.again): _STAGES.index(a.until) + 1]
    else:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        job, found = {"root": str(root), "dogs": a.dogs, "seeds": a.seeds}, {}
        stages = _STAGES[: _STAGES.index(a.until) + 1]
    try:
        for stage in stages:
            if stage == "block":
                blocks = [_stage({**job, "stage": stage, "index": i}) for i in range(job["plan"]["n_blocks"])]
                r = max(blocks, key=lambda b: b["peak_rss_bytes"])
                r = {**r, "seconds": sum(b["seconds"] for b in blocks), "blocks": len(blocks)}
            else:
                r = _stage({**job, "stage": stage})
            found[stage] = r
            job.update({k: r[k] for k in ("snapshot_id", "set_id", "seq_path", "tmp_dir", "plan") if k in r})
            print(f"{stage}: {r['seconds']:.1f} s, peak {r['peak_rss_bytes'] / 1e9:.2f} GB", file=sys.stderr, flush=True)
            if a.keep:
                kept.write_text(json.dumps({"job": job, "found": found}))
        if a.again:  # report the stages rerun, not those of the run that built the store
            found = {s: r for s, r in found.items() if s in stages}
        rows = saved["found"]["features"]["rows"] if a.again else found["features"]["rows"]
        if "finish" in found and "begin" in found:
            flow = max((found.pop("begin"), found.pop("finish")), key=lambda b: b["peak_rss_bytes"])
            found["extract_flow"], found["extract_block"] = flow, found.pop("block")
        print(json.dumps({
            "bench": "memory", "dogs": a.dogs, "rows": rows, "seeds": a.seeds, "units": 64,
            "total_s": round(time.perf_counter() - t0, 1),
            "stages": {s: {"peak_rss_gb": round(r["peak_rss_bytes"] / 1e9, 3),
                           "bytes_per_row": round(r["peak_rss_bytes"] / rows, 1),
                           "growth_bytes_per_row": round((r["peak_rss_bytes"] - r["base_rss_bytes"]) / rows, 1),
                           "seconds": round(r["seconds"], 1)}
                       for s, r in found.items()},
        }))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
