"""`gruviz synth --dogs N --seed S --out FILE`: simulated canonical form data for demos and benchmarks."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Annotated

import typer

from flows.commands.options import namespace
from gruviz_core.errors import ConfigError

__all__ = ["HELP", "command", "run"]

HELP = "Simulate races of N dogs into a canonical runs file (.csv, .csv.gz or .parquet)."


def command(
    out: Annotated[str, typer.Option("--out", help="output file: .csv, .csv.gz or .parquet")],
    dogs: Annotated[int, typer.Option("--dogs", help="number of dogs")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="random seed (same seed, same data)")] = 0,
    start: Annotated[str, typer.Option("--start", help="first race date (ISO)")] = "2023-01-01",
) -> int:
    return run(namespace(out=out, dogs=dogs, seed=seed, start=start))


def run(args: argparse.Namespace) -> int:
    from gruviz_core.synth import simulate

    out = Path(args.out)
    name = out.name.lower()
    if not name.endswith((".csv", ".csv.gz", ".parquet")):
        raise ConfigError(f"--out {out}: use a .csv, .csv.gz or .parquet file name")
    t0 = time.perf_counter()
    runs = simulate(args.dogs, args.seed, start=args.start)
    out.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".parquet"):
        runs.to_parquet(out, index=False)
    else:
        runs.to_csv(out, index=False, date_format="%Y-%m-%d")
    print(f"{out}: {len(runs)} runs, {runs['dog_id'].nunique()} dogs, {runs['race_id'].nunique()} races "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0
