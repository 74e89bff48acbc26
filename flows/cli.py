"""The `gruviz` command line: one module per subcommand under flows/commands/.

Each module `flows/commands/<name>.py` defines `HELP: str`, `add_arguments(parser)` and
`run(args) -> int`. A command whose module is missing is simply not offered.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from gruviz_core.errors import GruvizError

__all__ = ["main", "COMMANDS"]

COMMANDS = ("demo", "synth", "ingest", "train", "model", "nightly", "serve")


def _parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="gruviz", description="Look inside GRU models of greyhound race form.")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"flows.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"flows.commands.{name}":
                continue
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        modules[name] = mod
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    # Prefect's temporary server would send telemetry from its SQLite database while the flow writes to it
    # ("database is locked" tracebacks on a busy machine); the user can still turn it on.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    parser, modules = _parser()
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except GruvizError as exc:
        print(f"gruviz {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
