"""The evaluate stage (with resilience and CKA) on a simulated run of ~3,000 dogs: this tree vs a baseline commit.

Builds one run (random race-structured inputs, 3 untrained seed models with 64 units, extract + stats), then
times `flows.stages.evaluate.evaluate_run` of this tree and of the baseline tree (`git archive BASE`),
each in a child process on the same run, alternating, one torch thread each; prints the median times and
their ratio (this / baseline) as one JSON line. Run under `flock /tmp/gruviz-heavy.lock`.

    .venv/bin/python bench/evaluate.py [--dogs 3000] [--base 03bbed5] [--repeats 2]
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
import pickle, sys, time, torch
torch.set_num_threads(1)
from flows.stages.evaluate import evaluate_run
d = pickle.load(open(sys.argv[1], "rb"))
t = time.perf_counter()
evaluate_run(d["run"], models=d["models"], values=d["values"], context=d["context"], offsets=d["offsets"],
             feature_names=d["features"])
print(time.perf_counter() - t)
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


def _time(tree: Path, inputs: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(inputs)], cwd=tree, env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{tree}: evaluate failed\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dogs", type=int, default=3000)
    ap.add_argument("--base", default="03bbed5")
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
        inputs = build(work, a.dogs)
        meta = pickle.load(open(inputs, "rb"))
        new, old = [], []
        for _ in range(a.repeats):
            old.append(_time(base, inputs))
            new.append(_time(REPO, inputs))
        mn, mo = statistics.median(new), statistics.median(old)
        print(json.dumps({"dogs": meta["n_dogs"], "obs": meta["n_obs"], "base": a.base, "evaluate_s": round(mn, 2),
                          "baseline_s": round(mo, 2), "ratio": round(mn / mo, 3), "runs_new": new, "runs_base": old}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
