"""`gruviz demo`: the main job on the embedded default (local store, local Prefect, no other service)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from flows.commands.options import Home, Json, Quiet, ShowProgress, namespace, progress_shown

__all__ = ["HELP", "command", "run", "demo_paths"]

HELP = "Simulate a season of form, train a small model set if there is none, run the nightly flow, print the report."


def command(
    dogs: Annotated[int, typer.Option(
        "--dogs", min=1, help="dogs to simulate (5000: enough for a held-out window of about 2,500 races)")] = 5000,
    seed: Annotated[int, typer.Option("--seed", help="simulator seed")] = 7,
    home: Home = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="training epochs of the demo model set")] = None,
    night: Annotated[str | None, typer.Option(
        "--night", metavar="YYYY-MM-DD", help="the night simulated and run (default: tonight in GRUVIZ_TIMEZONE)")] = None,
    as_json: Json = False,
    progress: ShowProgress = False,
    quiet: Quiet = False,
) -> int:
    """Progress: epochs per seed when it trains, dogs extracted."""
    return run(namespace(dogs=dogs, seed=seed, home=home, epochs=epochs, night=night, json=as_json,
                                        progress=progress, quiet=quiet))


def run(args: argparse.Namespace) -> int:
    from flows.commands.nightly import report_state
    from flows.nightly import nightly
    from flows.settings import load_settings
    from flows.train import train
    from gruviz_core.synth import simulate
    from storage.registry import current_model_set

    s = load_settings(home=args.home)
    night = args.night or _tonight(s.timezone)
    home, source = demo_paths(str(s.home), f"synth-{args.dogs}-dogs-seed{args.seed}-to-{night}.parquet")
    say = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON only
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        simulate(args.dogs, args.seed, end=night).to_parquet(source, index=False)  # racing ends tonight
        print(f"simulated {args.dogs} dogs -> {source}", file=say)
    fresh = current_model_set(home) is None
    if fresh:
        print("no model set yet: training one (train flow)", file=say)
    with progress_shown(args):
        if fresh:
            train(source=[str(source)], home=home, epochs=args.epochs, promote=True)  # the demo runs its own set
        state = nightly(source=[str(source)], home=home, night=night, return_state=True)
    return report_state(state, as_json=args.json)


def demo_paths(home: str, name: str) -> tuple[str, Path]:
    """(store root, simulated form file): a bucket URL stays a URL (never a local folder named 's3:'); the form
    file is the demo's input, not the store's: beside a local store, in a local cache for a remote one."""
    from storage.store import open_store

    store = open_store(home)
    if store.local_root is None:
        return home, Path(tempfile.gettempdir()) / "gruviz-demo" / name
    return str(store.local_root), store.local_root / "demo" / name


def _tonight(timezone: str) -> str:
    import datetime as dt
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo(timezone)).date().isoformat()
