"""`gruviz train`: train K seeds of the built-in GRU on a forms snapshot and register them as the current model set."""

from __future__ import annotations

import argparse
import json

from flows.settings import load_settings
from gruviz_core.errors import NotFoundError
from gruviz_core.features import CONTEXT_NAMES, MARKET_CONTEXT

__all__ = ["HELP", "add_arguments", "run"]

HELP = "Train K seeds of the GRU model on a forms snapshot (default: the latest) and mark the set current."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot", default=None, help="forms snapshot id (default: forms/LATEST)")
    p.add_argument("--seeds", type=int, default=None, help="seeds K (default: GRUVIZ_SEEDS or 3)")
    p.add_argument("--hidden", type=int, default=None, help="GRU units per layer (default: GRUVIZ_HIDDEN_SIZE or 64)")
    p.add_argument("--layers", type=int, default=None, help="GRU layers (default: GRUVIZ_NUM_LAYERS or 1)")
    p.add_argument("--epochs", type=int, default=None, help="max epochs per seed (early stopping may end sooner)")
    p.add_argument("--workers", type=int, default=1, help="seeds trained in parallel processes (default 1)")
    p.add_argument("--no-market", action="store_true",
                   help="leave the price out of the model's context (the GRU learns from form alone); "
                        "the market stays the baseline")
    p.add_argument("--json", action="store_true", help="print the training report as one JSON object")
    p.add_argument("--home", default=None, help="store root (default: GRUVIZ_HOME or ./gruviz-data)")


def run(args: argparse.Namespace) -> int:
    from storage.forms import latest_snapshot
    from storage.registry import train_and_register

    s = load_settings(home=args.home, seeds=args.seeds, hidden_size=args.hidden, num_layers=args.layers)
    snapshot = args.snapshot or latest_snapshot(s.home)
    if snapshot is None:
        raise NotFoundError(f"store {s.home}: no forms snapshot yet; run `gruviz ingest SOURCE` first")
    log = None if args.json else (lambda m: print(m, flush=True))
    context = [n for n in CONTEXT_NAMES if n not in MARKET_CONTEXT] if args.no_market else None
    report = train_and_register(
        s.home, snapshot, seeds=s.seeds, hidden=s.hidden_size, layers=s.num_layers, epochs=args.epochs,
        context_names=context, workers=args.workers, log_fn=log,
    )
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True, default=str))
        return 0
    print(f"model set {report.set_id}  (snapshot {report.snapshot_id}, seeds {report.seeds}, current)")
    print(f"train up to {report.cutoff}: {report.n_train_rows} rows; validation: {report.n_val_rows} rows")
    print(f"{'':14s}{'log-loss':>10s}{'race LL':>10s}{'Brier':>9s}{'hit rate':>10s}{'rows':>9s}")
    rows = [(f"seed {k}", v["model"]) for k, v in report.per_seed.items()]
    rows += [(f"seed {k} priced", v["model_priced"]) for k, v in report.per_seed.items() if v.get("model_priced")]
    rows += [("market", report.market)] if report.market else []
    rows += [("uniform", report.uniform)]
    for name, m in rows:
        print(f"{name:14s}{m['log_loss']:10.4f}{m['race_log_loss']:10.4f}{m['brier']:9.4f}{m['hit_rate']:10.3f}{m['n_rows']:9d}")
    t = report.timings
    print(f"time: {t['total_s']:.1f} s total, {t['per_epoch_s']:.1f} s per epoch")
    return 0
