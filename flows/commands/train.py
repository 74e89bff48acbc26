"""`gruviz train`: train K seeds of the built-in GRU on a forms snapshot and register them as the current model set."""

from __future__ import annotations

import argparse
import sys
from typing import Annotated

import typer

from flows.commands.options import Home, Json, Quiet, ShowProgress, namespace, progress_shown
from flows.output import dumps_strict

__all__ = ["HELP", "MULTI_VALUE", "command", "run"]

HELP = ("Train K seeds of the GRU model on a forms snapshot (default: the latest); the set becomes current if it "
        "beats the uniform baseline on its validation window (or with --promote).")
MULTI_VALUE = ("--source",)


def command(
    snapshot: Annotated[str | None, typer.Option("--snapshot", help="forms snapshot id (default: forms/LATEST)")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", min=1, help="seeds K (default: GRUVIZ_SEEDS or 3)")] = None,
    hidden: Annotated[int | None, typer.Option(
        "--hidden", min=1, help="GRU units per layer (default: GRUVIZ_HIDDEN_SIZE or 64)")] = None,
    layers: Annotated[int | None, typer.Option("--layers", min=1, help="GRU layers (default: GRUVIZ_NUM_LAYERS or 1)")] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, help="max epochs per seed (early stopping may end sooner)")] = None,
    source: Annotated[list[str] | None, typer.Option(
        "--source", metavar="PATH...", help="form data to ingest first (files, directories, globs)")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="seeds trained in parallel processes (default 1; no per-epoch progress)")] = None,
    market: Annotated[bool | None, typer.Option(
        "--market", help="also give the model the market price as pre-race context (default: form only; "
        "the market is always the baseline)")] = None,
    promote: Annotated[bool, typer.Option(
        "--promote", help="make the set current even if it does not beat the uniform baseline")] = False,
    as_json: Json = False,
    home: Home = None,
    progress: ShowProgress = False,
    quiet: Quiet = False,
) -> int:
    return run(namespace(
        snapshot=snapshot, seeds=seeds, hidden=hidden, layers=layers, epochs=epochs, source=source or None,
        workers=workers, market=market, promote=promote, json=as_json, home=home, progress=progress, quiet=quiet))


def run(args: argparse.Namespace) -> int:
    """Runs the `train` Prefect flow (visible in the UI like a scheduled run) and prints its report."""
    from flows.preflight import preflight_train
    from flows.server import prefect_api, signals_raise
    from flows.settings import load_settings
    from flows.train import train

    s = load_settings(home=args.home)
    preflight_train(s, snapshot=args.snapshot, sources=args.source)  # before a server starts
    with signals_raise(), prefect_api(), progress_shown(args):  # the temporary Prefect server dies with this command
        state = train(source=args.source, snapshot=args.snapshot, home=args.home, seeds=args.seeds,
                      hidden=args.hidden, layers=args.layers, epochs=args.epochs, market=args.market,
                      workers=args.workers, promote=args.promote, return_state=True)
    if not state.is_completed():
        print(f"gruviz train: flow run {state.state_details.flow_run_id} ended {state.name}: {state.message}",
              file=sys.stderr)
        return 1
    report = state.result()
    rc = 0 if report.get("current") else 1
    if not report.get("current"):
        print(f"gruviz train: model set {report['set_id']} does not beat the uniform baseline on its validation "
              "window: registered, NOT made current (train longer or on more data, or pass --promote)",
              file=sys.stderr)
    if args.json:
        print(dumps_strict(report, sort_keys=True))
        return rc
    status = "current" if report.get("current") else "not current"
    print(f"model set {report['set_id']}  (snapshot {report['snapshot_id']}, seeds {report['seeds']}, {status})")
    print(f"train up to {report['cutoff']}: {report['n_train_rows']} rows; validation: {report['n_val_rows']} rows")
    print(f"{'':14s}{'log-loss':>10s}{'race LL':>10s}{'Brier':>9s}{'hit rate':>10s}{'rows':>9s}")
    per_seed = report["per_seed"]
    rows = [(f"seed {k}", v["model"]) for k, v in per_seed.items()]
    rows += [(f"seed {k} priced", v["model_priced"]) for k, v in per_seed.items() if v.get("model_priced")]
    rows += [("market", report["market"])] if report.get("market") else []
    rows += [("uniform", report["uniform"])]
    for name, m in rows:
        print(f"{name:14s}{m['log_loss']:10.4f}{m['race_log_loss']:10.4f}{m['brier']:9.4f}{m['hit_rate']:10.3f}{m['n_rows']:9d}")
    test = report.get("test") or {}
    if test:
        print(f"test window after {report['early_stop_end']}: {report['n_test_rows']} rows "
              "(never fitted on or used to stop)")
        print(f"{'':14s}{'log-loss':>10s}{'race LL':>10s}{'Brier':>9s}{'hit rate':>10s}{'rows':>9s}")
        rows = [(f"seed {k}", m) for k, m in test["per_seed"].items()] + [("mean of seeds", test["ensemble"])]
        for name, m in rows:
            print(f"{name:14s}{m['log_loss']:10.4f}{m['race_log_loss']:10.4f}{m['brier']:9.4f}{m['hit_rate']:10.3f}"
                  f"{m['n_rows']:9d}")
        for name, v in test.get("vs", {}).items():
            b, d = v["baseline"], v["diff"]
            print(f"{name:14s}{b['log_loss']:10.4f}{b['race_log_loss']:10.4f}{b['brier']:9.4f}{b['hit_rate']:10.3f}"
                  f"{b['n_rows']:9d}   mean of seeds - {name} on its {b['n_races']} races: race LL "
                  f"{d['race_log_loss']:+.4f}, log-loss {d['log_loss']:+.4f}")
    t = report["timings"]
    print(f"time: {t['total_s']:.1f} s total, {t['per_epoch_s']:.1f} s per epoch")
    print(f"flow run: {state.state_details.flow_run_id}")
    return rc
