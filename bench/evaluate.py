"""The evaluate stage (with resilience and CKA) as a ratio of the stats stage on the same run: this tree vs a baseline.

Two cases:
  simulated (default)  builds one run (random race-structured inputs, 3 untrained seed models with 64 units,
                       extract + stats) of ~3,000 dogs and times `evaluate_run` on it.
  --store ROOT         a real store with a finished nightly (e.g. the Iggy files: `gruviz nightly` on
                       ../shared/data/betfair-iggy): its LATEST run is copied here, and the evaluate stage is
                       timed end to end (`flows.stages.evaluate.run`: normalised inputs + evaluate_run).

Each tree (this one, and the baseline `git archive BASE`) runs in a child process on the same run, alternating,
one torch thread each: `compute_stats` first, then evaluate, so every evaluate time has a stats time from the
same process and moment beside it (this machine's load moves both). Prints one JSON line: median seconds per
tree, evaluate/stats ratios, and this/baseline. Run under `flock /tmp/gruviz-heavy.lock`.

    .venv/bin/python bench/evaluate.py [--dogs 3000] [--store ROOT] [--base d9c60d2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_CHILD = r"""
import json, pickle, sys, time, torch
torch.set_num_threads(1)
from flows.stages import evaluate, stats
a = json.loads(sys.argv[1])
t = time.perf_counter()
stats.compute_stats(a["run"])
ts = time.perf_counter() - t
t = time.perf_counter()
if a.get("inputs"):
    d = pickle.load(open(a["inputs"], "rb"))
    h = evaluate.evaluate_run(a["run"], models=d["models"], values=d["values"], context=d["context"],
                              offsets=d["offsets"], feature_names=d["features"])
else:
    h = evaluate.run(a["run"], a["root"], a["set_id"], a["seq"])
te = time.perf_counter() - t
print(json.dumps({"stats_s": ts, "evaluate_s": te, "evaluate_run_s": h["seconds"]}))
"""


def build(work: Path, n_dogs: int) -> Path:
    """A run of n_dogs dogs (careers of 1-80 races in 8-runner races) with 3 seeds; returns a pickle of its inputs."""
    import pickle

    import numpy as np
    import torch

    from flows.stages.extract import extract_run
    from flows.stages.stats import compute_stats
    from gruviz_core.features import FEATURE_NAMES
    from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU

    rng = np.random.default_rng(0)
    field, n_races = 8, n_dogs * 3
    dog = np.concatenate([rng.choice(n_dogs, size=field, replace=False,
                                     p=(w := rng.pareto(1.5, n_dogs) + 0.05) / w.sum()) if i == 0 else
                          rng.choice(n_dogs, size=field, replace=False, p=w / w.sum()) for i in range(n_races)])
    race = np.repeat(np.arange(n_races), field)
    won = np.zeros(len(dog), np.float32)
    won[np.arange(n_races) * field + rng.integers(0, field, n_races)] = 1
    mp = rng.dirichlet(np.ones(field), size=n_races).ravel().astype(np.float32)
    order = np.lexsort((race, dog))
    dog, race, won, mp = dog[order], race[order], won[order], mp[order]
    sizes = np.bincount(dog, minlength=n_dogs)
    sizes = sizes[sizes > 0]
    n = len(dog)
    values = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    for i, name in enumerate(FEATURE_NAMES):
        if name.endswith("_missing"):
            values[:, i] = (rng.random(n) < 0.1).astype(np.float32)
    ctx_names = tuple(f"c{i}" for i in range(8))
    context = rng.normal(size=(n, len(ctx_names))).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    models = []
    for s in range(3):
        torch.manual_seed(s)
        m = RaceGRU(ModelConfig(len(FEATURE_NAMES), len(ctx_names), hidden_size=64, seed=s))
        models.append(LoadedModel.wrap(m, FEATURE_NAMES, ctx_names, model_id=f"s{s}"))
    tmp = extract_run(work / "store", "bench", {"snapshot_id": "bench"}, models, device="cpu",
                      seqs_values=values, context=context, offsets=offsets,
                      dog_id=np.array([f"D{i}" for i in range(len(sizes))], dtype=object),
                      dog_name=np.array([f"Dog {i}" for i in range(len(sizes))], dtype=object),
                      race_id=np.array([f"R{r}" for r in race], dtype=object),
                      race_date=np.datetime64("2024-01-01") + (race // 50).astype("timedelta64[D]"),
                      won=won, market_prob=mp)
    compute_stats(tmp)
    path = work / "inputs.pkl"
    with open(path, "wb") as f:
        pickle.dump({"run": str(tmp), "models": models, "values": values, "context": context, "offsets": offsets,
                     "features": FEATURE_NAMES, "n_dogs": len(sizes), "n_obs": n}, f)
    return path


def _time(tree: Path, job: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(job)], cwd=tree, env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{tree}: evaluate failed\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _store_job(store: Path, work: Path) -> tuple[dict, dict]:
    """A copy of the store's LATEST run and where its model set and sequences are."""
    runs = store / "runs"
    latest = runs / (runs / "LATEST").read_text().strip()
    meta = json.loads((latest / "run.json").read_text())
    seqs = sorted((store / "features").glob("*/sequences.zarr/_COMPLETE"), key=lambda p: p.stat().st_mtime)
    if not seqs:
        raise SystemExit(f"{store}: no features/*/sequences.zarr; run `gruviz nightly` on this store first")
    run = work / "run"
    shutil.copytree(latest, run, ignore=shutil.ignore_patterns("eval"))
    job = {"run": str(run), "root": str(store), "set_id": meta["model_set_id"], "seq": str(seqs[-1].parent)}
    return job, {"dogs": meta["n_dogs"], "obs": meta["n_obs"], "run": latest.name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dogs", type=int, default=3000)
    ap.add_argument("--store", default=None, help="a store with a finished nightly (its LATEST run is copied)")
    ap.add_argument("--base", default="d9c60d2")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    import pickle
    import statistics

    work = Path(tempfile.mkdtemp(prefix="gruviz-bench-eval-"))
    try:
        base = work / "base"
        base.mkdir()
        tar = subprocess.run(["git", "-C", str(REPO), "archive", a.base, "gruviz_core", "flows", "storage",
                              "reports"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=tar, check=True)
        if a.store:
            job, info = _store_job(Path(a.store).resolve(), work)
        else:
            inputs = build(work, a.dogs)
            meta = pickle.load(open(inputs, "rb"))
            job = {"run": meta["run"], "inputs": str(inputs)}
            info = {"dogs": meta["n_dogs"], "obs": meta["n_obs"], "run": "simulated"}
        runs: dict[str, list[dict]] = {"new": [], "base": []}
        for _ in range(a.repeats):
            runs["base"].append(_time(base, job))
            runs["new"].append(_time(REPO, job))
        med = {k: {q: statistics.median(r[q] for r in v) for q in ("stats_s", "evaluate_s", "evaluate_run_s")}
               for k, v in runs.items()}
        ratio = {k: statistics.median(r["evaluate_s"] / r["stats_s"] for r in v) for k, v in runs.items()}
        ratio_run = {k: statistics.median(r["evaluate_run_s"] / r["stats_s"] for r in v) for k, v in runs.items()}
        print(json.dumps({
            **info, "base": a.base,
            "evaluate_s": round(med["new"]["evaluate_s"], 2), "baseline_s": round(med["base"]["evaluate_s"], 2),
            "ratio": round(med["new"]["evaluate_s"] / med["base"]["evaluate_s"], 3),
            "evaluate_over_stats": round(ratio["new"], 2), "baseline_evaluate_over_stats": round(ratio["base"], 2),
            "evaluate_run_over_stats": round(ratio_run["new"], 2),
            "baseline_evaluate_run_over_stats": round(ratio_run["base"], 2),
            "runs_new": runs["new"], "runs_base": runs["base"]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
