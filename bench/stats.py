"""Statistics throughput over a states store of >= 5M steps, next to a plain read of the same store.

Builds a run with storage.writer.begin_run and fills seed0/h, z, r shard by shard with synthetic
states (a tanh random walk per dog, so they compress like real ones, not like white noise), then
times in the same process:

    read     iterate the store's shard-aligned chunks (decompress + float16 -> float32), nothing else
    scan     the streaming statistics pass (gruviz_core.stats.scan_seed): row stats, gates, moments
    scan_prefetch  the same with the next shard read in a background thread (as compute_stats does)
    stats    compute_stats end to end: the blocks' summaries (here written by the build from the states)
             + plateau + cohorts + every stats/ table written (it decodes no state since issue 26)

GB/s are of the states scanned (h, z, r as float16, uncompressed); the store's size on disk is
reported too. Prints one JSON line. Run under `flock /tmp/gruviz-heavy.lock`.

    .venv/bin/python bench/stats.py [--steps 5000000] [--units 64] [--dir /tmp/gruviz-bench-stats]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.stages.stats import compute_stats  # noqa: E402
from gruviz_core.stats import TAU_COLUMNS, UnitAccumulators, scan_seed  # noqa: E402
from storage import runs, states, writer  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _lengths(n_steps: int, rng: np.random.Generator) -> np.ndarray:
    """Careers of 1-150 races with a long tail, summing to n_steps."""
    out, total = [], 0
    while total < n_steps:
        x = np.clip(rng.geometric(1 / 17, size=100_000), 1, 150)
        out.append(x)
        total += int(x.sum())
    lens = np.concatenate(out)
    cut = np.searchsorted(np.cumsum(lens), n_steps)
    lens = lens[: cut + 1]
    lens[-1] -= int(lens.sum()) - n_steps
    return lens[lens > 0]


def build(root: Path, n_steps: int, units: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lens = _lengths(n_steps, rng)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    n, d = int(offsets[-1]), len(lens)
    plan = writer.begin_run(
        root, "bench", {"snapshot_id": "bench"}, offsets=offsets,
        dog_id=np.array([f"D{i}" for i in range(d)], dtype=object),
        dog_name=np.array([f"Dog {i}" for i in range(d)], dtype=object), n_layers=1, n_units=units, seeds=[0],
    )
    rows = {"race_id": np.array([f"R{i // 8}" for i in range(n)], dtype=object),
            "race_date": np.full(n, np.datetime64("2025-01-01")), "won": np.zeros(n, np.float32),
            "market_prob": np.full(n, 0.125, np.float32)}
    for b in range(plan.n_blocks):  # the rows' metadata, as the blocks of a real run write it
        with writer.BlockWriter(plan, b) as w:
            w.write_rows(rows, 0)
    g = zarr.open_group(zarr.storage.LocalStore(plan.path / states.STATES), mode="r+")
    step = (np.arange(n) - np.repeat(offsets[:-1], lens)).astype(np.int64)
    drive = rng.normal(scale=0.4, size=units)
    for s0 in range(0, n, plan.shard_rows):
        s1 = min(s0 + plan.shard_rows, n)
        k = s1 - s0
        # a random walk that restarts with each dog: drifts towards saturation as careers lengthen
        noise = rng.normal(scale=0.3, size=(k, units)).astype(np.float32)
        x = np.tanh(drive * np.sqrt(step[s0:s1, None] + 1) + noise)
        for name, arr in (("h", x), ("z", 1 / (1 + np.exp(-3 * x))), ("r", 1 / (1 + np.exp(-x)))):
            g[f"seed0/{name}"][s0:s1] = arr[:, None, :].astype(np.float16)
        g["score"][s0:s1, 0] = rng.normal(size=k).astype(np.float32)
    (plan.path / "blocks" / "0.json").write_text(json.dumps({"dogs": d, "device": "synthetic", "seconds": 0,
                                                             "check_max_err": []}))
    for b in range(1, plan.n_blocks):
        (plan.path / "blocks" / f"{b}.json").write_text(json.dumps({"dogs": 0, "device": "synthetic", "seconds": 0,
                                                                    "check_max_err": []}))
    _summaries(plan, g, step + 1)
    return runs.finish_run(plan.path)


def _summaries(plan, g, step: np.ndarray) -> None:
    """What extraction blocks store beside their states (per-row summaries, per-unit accumulators), here from the
    synthetic float16 states, so the stats stage (which reads only those) runs on this store."""
    reader = states.StatesReader(plan.path)
    scan = scan_seed(reader.iter_chunks(0), step, reader.n_obs, reader.n_layers)
    rows = {"s": scan.s, **{c: scan.f[:, :, i] for i, c in enumerate(TAU_COLUMNS)}, "max_abs": scan.max_abs,
            "move": scan.move, "write": scan.write, "delta": scan.delta}
    for name in states.ROW_SUMMARY:
        g[f"seed0/summary/{name}"][:] = rows[name]
    units = UnitAccumulators(z=scan.gates["z"], r=scan.gates["r"], moments=scan.moments)
    for b in range(plan.n_blocks):
        writer.BlockWriter(plan, b).write_units(0, (units if b == 0 else UnitAccumulators()).to_arrays())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5_000_000)
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--dir", default="/tmp/gruviz-bench-stats")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    root = Path(a.dir)
    if a.build_only:
        print(build(root, a.steps, a.units))
        return
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    # built in a child process so its buffers do not count in this process's peak RSS
    run = Path(subprocess.run([sys.executable, __file__, "--build-only", "--steps", str(a.steps), "--units",
                               str(a.units), "--dir", str(root)], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1])
    build_s = time.perf_counter() - t
    disk = sum(p.stat().st_size for p in (run / states.STATES).rglob("*") if p.is_file())
    reader = states.open_states(run, allow_incomplete=True)
    state_bytes = 3 * reader.n_obs * reader.n_layers * reader.n_units * 2

    t = time.perf_counter()
    rows = 0
    for c in reader.iter_chunks(0):
        rows += len(c.h)
    read_s = time.perf_counter() - t
    rss_read = _rss_mb()

    step = reader.rows()["step"].to_numpy()
    t = time.perf_counter()
    scan = scan_seed(reader.iter_chunks(0), step, reader.n_obs, reader.n_layers)
    scan_s = time.perf_counter() - t
    del scan
    rss_scan = _rss_mb()

    t = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):  # as compute_stats does
        scan = scan_seed(states.prefetch(reader.iter_chunks(0)), step, reader.n_obs, reader.n_layers)
    scan_pf_s = time.perf_counter() - t
    del scan

    t = time.perf_counter()
    summary = compute_stats(run)
    stats_s = time.perf_counter() - t
    out = {
        "bench": "stats", "steps": reader.n_obs, "dogs": reader.n_dogs, "units": reader.n_units,
        "states_gb": round(state_bytes / 1e9, 3), "disk_gb": round(disk / 1e9, 3), "build_s": round(build_s, 1),
        "read_s": round(read_s, 2), "read_gbps": round(state_bytes / 1e9 / read_s, 3),
        "scan_s": round(scan_s, 2), "scan_gbps": round(state_bytes / 1e9 / scan_s, 3),
        "scan_prefetch_s": round(scan_pf_s, 2), "scan_prefetch_gbps": round(state_bytes / 1e9 / scan_pf_s, 3),
        "stats_s": round(stats_s, 2), "stats_gbps": round(state_bytes / 1e9 / stats_s, 3),
        "scan_vs_read": round(read_s / scan_pf_s, 3), "peak_rss_mb_after_read": round(rss_read),
        "peak_rss_mb_after_scan": round(rss_scan), "peak_rss_mb": round(_rss_mb()),
        "cohorts": dict(summary.cohort_counts), "effective_dim": list(summary.effective_dim),
    }
    print(json.dumps(out))
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
