"""`gruviz demo`: the main job on the embedded default (local store, local Prefect, no other service)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Simulate a season of form, train a small model set if there is none, run the nightly flow, print the report."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dogs", type=int, default=5000,
                   help="Dogs to simulate (default 5000: enough for a held-out window of about 2,500 races)")
    p.add_argument("--seed", type=int, default=7, help="Simulator seed")
    p.add_argument("--home", help="Store root (default GRUVIZ_HOME or ./gruviz-data)")
    p.add_argument("--epochs", type=int, default=None, help="Training epochs of the demo model set")
    p.add_argument("--night", help="The night simulated and run (YYYY-MM-DD; default tonight in GRUVIZ_TIMEZONE)")
    p.add_argument("--json", action="store_true", help="Print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    from flows.commands.nightly import report_state
    from flows.nightly import nightly
    from flows.settings import load_settings
    from flows.train import train
    from gruviz_core.synth import simulate
    from storage.registry import current_model_set

    s = load_settings(home=args.home)
    home = Path(s.home).resolve()
    night = args.night or _tonight(s.timezone)
    source = home / "demo" / f"synth-{args.dogs}-dogs-seed{args.seed}-to-{night}.parquet"
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        simulate(args.dogs, args.seed, end=night).to_parquet(source, index=False)  # racing ends tonight
        print(f"simulated {args.dogs} dogs -> {source}")
    if current_model_set(home) is None:
        print("no model set yet: training one (train flow)")
        train(source=[str(source)], home=str(home), epochs=args.epochs, promote=True)  # the demo runs its own set
    state = nightly(source=[str(source)], home=str(home), night=night, return_state=True)
    return report_state(state, as_json=args.json)


def _tonight(timezone: str) -> str:
    import datetime as dt
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo(timezone)).date().isoformat()
