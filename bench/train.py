"""Training on the real Betfair Iggy files: time per epoch and per seed, test-window metrics vs market, rated price, uniform.

Ingests ../shared/data/betfair-iggy into a scratch store (once; the snapshot is content-addressed),
builds the sequences, trains K seeds of the built-in GRU with train_and_register, and prints one
JSON line: rows, timings, and per seed the validation win log-loss, race log-loss (-log p of the
winner), Brier and hit rate of the model beside the market (renormalised BSP on the same priced
rows) and a uniform 1/field forecast; then the test window (after the early-stopping window): each seed,
the mean of the seeds (the production score), and its differences from the market, Iggy's own Rated Price
(the canonical `rated_price` column: a yardstick, never an input) and the uniform on the same races; and the
seconds per epoch of the built-in model against the old feature set (one-hot tracks) timed alternately in this
run, as a ratio. Run under `flock /tmp/gruviz-heavy.lock`.

    .venv/bin/python bench/train.py [--seeds 3] [--hidden 64] [--epochs 30] [--threads 1] [--workers 2] [--no-market]
        [--ratio-epochs 2] [--dir /tmp/gruviz-bench-train]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from flows.stages import features  # noqa: E402
from flows.stages.ingest import ingest  # noqa: E402
from flows.stages.train import _training_data, train_and_register  # noqa: E402
from gruviz_core.features import (  # noqa: E402
    CATEGORICAL,
    CONTEXT_NAMES,
    FEATURE_NAMES,
    MARKET_CONTEXT,
    TRACK_INDEX,
    track_embedding_columns,
)
from gruviz_core.model import ModelConfig  # noqa: E402
from gruviz_core.train import TrainConfig, TrainData, train_seed  # noqa: E402

IGGY = Path(__file__).resolve().parents[2] / "shared" / "data" / "betfair-iggy"
KEYS = ("log_loss", "race_log_loss", "brier", "hit_rate")


def old_features(data: TrainData, norm) -> tuple[TrainData, ModelConfig]:
    """The feature set before the track embedding, as a baseline for the epoch time: the track index expanded back
    into one-hot context columns (vocabulary + unknown) and the box x track table over them."""
    col, box = track_embedding_columns(norm.context_names)
    n = CATEGORICAL[TRACK_INDEX]
    onehot = np.eye(n, dtype=np.float32)[data.context[:, col].astype(np.int64)]
    ctx = np.concatenate([np.delete(data.context, col, axis=1), onehot], axis=1)
    n_dense = data.context.shape[1] - 1
    track = tuple(range(n_dense, n_dense + n))
    box = tuple(b if b < col else b - 1 for b in box)
    cfg = ModelConfig(data.values.shape[1], ctx.shape[1], context_skip=True, box_columns=box, track_columns=track)
    return replace(data, context=ctx), cfg


def epoch_ratio(seq_path, cfg: TrainConfig, epochs: int, hidden: int) -> dict:
    """Seconds per epoch of the built-in model (track embedding) and of the old feature set (one-hot tracks), one
    seed each, alternating in this process so the machine's load hits both alike; ratio new / old."""
    data, norm, _, _ = _training_data(Path(seq_path), cfg.val_frac, cfg.test_frac, None)
    col, box = track_embedding_columns(norm.context_names)
    new_cfg = ModelConfig(data.values.shape[1], data.context.shape[1], hidden_size=hidden, context_skip=True,
                          box_columns=box, track_column=col, n_tracks=CATEGORICAL[TRACK_INDEX])
    old_data, old_cfg = old_features(data, norm)
    old_cfg = replace(old_cfg, hidden_size=hidden)
    tc = replace(cfg, epochs=1, patience=10)
    new_s, old_s = [], []
    for _ in range(epochs):
        new_s.append(float(train_seed(data, new_cfg, tc).curve["seconds"].iloc[0]))
        old_s.append(float(train_seed(old_data, old_cfg, tc).curve["seconds"].iloc[0]))
    return {"epochs_each": epochs, "new_context_cols": int(data.context.shape[1]),
            "old_context_cols": int(old_data.context.shape[1]), "new_epoch_s": round(float(np.median(new_s)), 2),
            "old_epoch_s": round(float(np.median(old_s)), 2),
            "ratio_new_over_old": round(float(np.median(new_s) / np.median(old_s)), 3)}


def _test_summary(test: dict) -> dict:
    """Test window: each seed and the mean of seeds, and the mean of seeds minus each baseline on the same races."""
    if not test:
        return {}
    pick = lambda m: {k: round(m[k], 4) for k in KEYS} | {"n_rows": m["n_rows"], "n_races": m["n_races"]}  # noqa: E731
    return {
        "per_seed": {k: pick(m) for k, m in test["per_seed"].items()},
        "mean_of_seeds": pick(test["ensemble"]),
        "vs": {name: {"baseline": pick(v["baseline"]), "model": pick(v["model"]),
                      "diff": {k: round(v["diff"][k], 4) for k in KEYS}} for name, v in test["vs"].items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per seed")
    ap.add_argument("--workers", type=int, default=2, help="seeds trained in parallel processes")
    ap.add_argument("--dir", default="/tmp/gruviz-bench-train")
    ap.add_argument("--source", default=str(IGGY))
    ap.add_argument("--no-market", action="store_true", help="train without the price in the context (form only)")
    ap.add_argument("--drop", nargs="*", default=[], help="leave out features/context columns starting with these "
                    "prefixes (ablations), e.g. grade_change kind_ track_ placed")
    ap.add_argument("--no-box-track", action="store_true", help="no box x track term in the model")
    ap.add_argument("--no-rated", action="store_true", help="skip the rated-price yardstick")
    ap.add_argument("--ratio-epochs", type=int, default=2, help="epochs each of the new and the old feature set timed "
                    "alternately for the epoch-time ratio (0: skip)")
    ap.add_argument("--verbose", action="store_true", help="print each epoch's losses to stderr")
    a = ap.parse_args()
    if not any(Path(a.source).glob("*.csv.gz")):
        print(json.dumps({"skipped": f"no Iggy files at {a.source}"}))
        return 0
    t0 = time.perf_counter()
    snap = ingest([a.source], a.dir)
    t_ingest = time.perf_counter() - t0
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if a.verbose else None
    drop = tuple(a.drop)
    context = [n for n in CONTEXT_NAMES if not (a.no_market and n in MARKET_CONTEXT) and not n.startswith(drop or ("\0",))]
    feats = [n for n in FEATURE_NAMES if not n.startswith(drop or ("\0",))]
    r = train_and_register(a.dir, snap.snapshot_id, seeds=a.seeds, hidden=a.hidden, layers=a.layers,
                           train_config=TrainConfig(threads=a.threads), epochs=a.epochs, context_names=context,
                           feature_names=feats, box_track=not a.no_box_track,
                           workers=a.workers, log_fn=log, yardsticks=(lambda _s: {}) if a.no_rated else None)
    pick = lambda m: {k: round(m[k], 4) for k in KEYS} | {"n_rows": m["n_rows"], "n_races": m["n_races"]}  # noqa: E731
    out = {
        "bench": "train", "source": "betfair-iggy", "snapshot_id": snap.snapshot_id, "rows": snap.accepted,
        "dogs": snap.dogs, "races": snap.races, "threads": a.threads, "workers": a.workers, "hidden": a.hidden, "layers": a.layers,
        "market_in_context": not a.no_market, "dropped": list(drop), "box_track": not a.no_box_track,
        "seeds": r.seeds, "set_id": r.set_id, "cutoff": r.cutoff,
        "n_train_rows": r.n_train_rows, "n_val_rows": r.n_val_rows,
        "ingest_s": round(t_ingest, 1), "features_s": round(r.timings["features_s"], 1),
        "per_seed_s": [round(s, 1) for s in r.timings["per_seed_s"]],
        "per_epoch_s": round(r.timings["per_epoch_s"], 2), "train_total_s": round(r.timings["total_s"], 1),
        "epochs": {k: v["epochs"] for k, v in r.per_seed.items()},
        "best_epoch": {k: v["best_epoch"] for k, v in r.per_seed.items()},
        "model": {k: pick(v["model"]) for k, v in r.per_seed.items()},
        "model_priced": {k: pick(v["model_priced"]) for k, v in r.per_seed.items() if v.get("model_priced")},
        "market": pick(r.market) if r.market else None,
        "uniform": pick(r.uniform),
        "early_stop_end": r.early_stop_end, "n_test_rows": r.n_test_rows,
        "test": _test_summary(r.test),
        "epoch_time_vs_old_features": epoch_ratio(features.run(a.dir, snap.snapshot_id), TrainConfig(threads=a.threads),
                                                  a.ratio_epochs, a.hidden) if a.ratio_epochs > 0 else None,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
