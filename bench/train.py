"""Training on the real Betfair Iggy files: time per epoch and per seed, test-window metrics vs market, rated price, uniform.

Ingests ../shared/data/betfair-iggy into a scratch store (once; the snapshot is content-addressed),
builds the sequences, trains K seeds of the built-in GRU with train_and_register, and prints one
JSON line: rows, timings, and per seed the validation win log-loss, race log-loss (-log p of the
winner), Brier and hit rate of the model beside the market (renormalised BSP on the same priced
rows) and a uniform 1/field forecast; then the test window (after the early-stopping window): each seed,
the mean of the seeds (the production score), and its differences from the market, Iggy's own Rated Price
(a yardstick read from the raw files, never an input) and the uniform on the same races. Run under `flock /tmp/gruviz-heavy.lock`.

    .venv/bin/python bench/train.py [--seeds 3] [--hidden 64] [--epochs 30] [--threads 1] [--workers 2] [--no-market] [--dir /tmp/gruviz-bench-train]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flows.stages.train import train_and_register  # noqa: E402
from gruviz_core.features import CONTEXT_NAMES, FEATURE_NAMES, MARKET_CONTEXT  # noqa: E402
from gruviz_core.formats import normalise_name  # noqa: E402
from gruviz_core.train import TrainConfig  # noqa: E402
from storage.forms import ingest  # noqa: E402

IGGY = Path(__file__).resolve().parents[2] / "shared" / "data" / "betfair-iggy"
KEYS = ("log_loss", "race_log_loss", "brier", "hit_rate")


def rated_price(source: str):
    """Iggy's own `Rated Price` as a yardstick (1 / price per row of the sequences; NaN where absent).

    The canonical schema does not keep it, so it is read from the raw files here and joined on
    (race_id = 'bf:' + MarketId, dog_id = the normalised dog name), as gruviz_core.formats does.
    """
    raw = pd.concat([pd.read_csv(f, usecols=["MarketId", "Dog", "Rated Price"])
                     for f in sorted(Path(source).glob("*.csv.gz"))], ignore_index=True)
    key = pd.DataFrame({"race": "bf:" + raw["MarketId"].astype("Int64").astype(str),
                        "dog": normalise_name(raw["Dog"].astype("string")).astype(str),
                        "p": 1.0 / pd.to_numeric(raw["Rated Price"], errors="coerce")})
    key = key[np.isfinite(key["p"]) & (key["p"] > 0)].drop_duplicates(["race", "dog"]).set_index(["race", "dog"])["p"]

    def sticks(seqs) -> dict:
        dog = np.repeat(np.asarray(seqs.dog_id, dtype=str), seqs.row_size)
        idx = pd.MultiIndex.from_arrays([np.asarray(seqs.race_id, dtype=str), dog])
        return {"rated_price": key.reindex(idx).to_numpy(dtype=np.float64)}

    return sticks


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
    ap.add_argument("--no-rated", action="store_true", help="skip the Iggy rated-price yardstick")
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
                           workers=a.workers, log_fn=log, yardsticks=None if a.no_rated else rated_price(a.source))
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
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
