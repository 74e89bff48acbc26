"""The probe stage on a sizeable simulated run, as seconds and as a ratio of the stats stage on the same run.

Builds one run from `gruviz_core.synth` (about 19 races per dog: 26,000 dogs is about 500k rows, the Iggy
files' size) through the real path (build_sequences, 3 untrained seed models with 64 units, extract_run), then
times, in this process with one BLAS and one torch thread: `compute_stats`, and `flows.stages.probe.probe_run`
at the default dog budget (twice). The evaluate stage ran at 1.96x the stats stage on Iggy (bench/evaluate.py
--store), so probe / evaluate is about (probe / stats) / 1.96. Prints one JSON line. Run under
`flock /tmp/gruviz-heavy.lock`.

    .venv/bin/python bench/probe.py [--dogs 26000] [--budget 1500] [--hidden 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dogs", type=int, default=26000)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=64)
    a = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from flows.stages.extract import extract_run
    from flows.stages.probe import DEFAULT_DOGS, probe_run
    from flows.stages.stats import compute_stats
    from gruviz_core import synth
    from gruviz_core.features import build_sequences, fit_normaliser
    from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU

    torch.set_num_threads(1)
    budget = a.budget or DEFAULT_DOGS
    runs = synth.simulate(a.dogs, 0)
    seqs = build_sequences(runs)
    v, c = fit_normaliser(seqs).apply(seqs.values, seqs.context)
    models = []
    for s in range(3):
        torch.manual_seed(s)
        m = RaceGRU(ModelConfig(len(seqs.feature_names), len(seqs.context_names), hidden_size=a.hidden, seed=s))
        models.append(LoadedModel.wrap(m, seqs.feature_names, seqs.context_names, model_id=f"s{s}"))
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        tmp = extract_run(root, "bench", {"snapshot_id": "bench"}, models, seqs_values=v, context=c,
                          offsets=seqs.offsets, dog_id=seqs.dog_id, dog_name=seqs.dog_name, race_id=seqs.race_id,
                          race_date=seqs.race_date, won=seqs.won, market_prob=seqs.market_prob, device="cpu")
        extract_s = time.perf_counter() - t
        with threadpool_limits(1, user_api="blas"):
            t = time.perf_counter()
            compute_stats(tmp)
            stats_s = time.perf_counter() - t
        probe_s, record = [], {}
        for _ in range(2):
            t = time.perf_counter()
            record = probe_run(tmp, runs, dogs=budget)
            probe_s.append(time.perf_counter() - t)
    print(json.dumps({
        "dogs": a.dogs, "rows": int(seqs.n_obs), "hidden": a.hidden, "seeds": 3, "budget": budget,
        "probed_rows": record["n_rows"], "extract_s": round(extract_s, 2), "stats_s": round(stats_s, 2),
        "probe_s": [round(x, 2) for x in probe_s], "probe_read_s": record["seconds_read"],
        "probe_over_stats": round(min(probe_s) / stats_s, 3),
        "probe_over_evaluate_est": round(min(probe_s) / stats_s / 1.96, 3),
    }))


if __name__ == "__main__":
    main()
