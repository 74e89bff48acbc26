"""`gruviz ingest SOURCE...`: form data files -> a content-addressed forms snapshot in the store.

Exits 2 naming the file (and leaves forms/LATEST where it was) when a file cannot be read, has no
data rows or none of its rows is accepted; the counts, rejects and warnings are in the snapshot's
manifest.json either way. A canonical file with no result column is named on stderr (its rows are kept).
"""

from __future__ import annotations

import argparse
import sys
from typing import Annotated

import typer

from flows.commands.options import Home, Json, Quiet, ShowProgress, choices, namespace, progress_shown
from flows.output import dumps_strict
from gruviz_core.formats import FORMATS

__all__ = ["HELP", "command", "run"]

HELP = ("Ingest form data (files, directories, globs; .csv, .csv.gz, .parquet) into a forms snapshot; "
        "exits 2 naming the file when one cannot be read or has no accepted row.")
Format = choices("Format", FORMATS)


def command(
    sources: Annotated[list[str], typer.Argument(metavar="SOURCE", help="files, directories or globs")],
    fmt: Annotated[Format | None, typer.Option(
        "--format", help="the files' format (default: detected from each header)")] = None,
    as_json: Json = False,
    home: Home = None,
    progress: ShowProgress = False,
    quiet: Quiet = False,
) -> int:
    """Progress: files read of all, rows read."""
    return run(namespace(sources=sources, fmt=fmt and fmt.value, json=as_json, home=home, progress=progress, quiet=quiet))


def run(args: argparse.Namespace) -> int:
    from flows.settings import load_settings
    from flows.stages.ingest import run as ingest

    settings = load_settings(home=args.home)
    with progress_shown(args):
        s = ingest(args.sources, settings.home, fmt=args.fmt, inflate=settings.inflate_limit)
    for path, n in s.files_without_result.items():  # on stderr: seen with --json too
        print(f"gruviz ingest: warning: {path}: no result column (won or finish_pos): its {n} accepted rows have no "
              "result, so no model can train or be evaluated on them; add a won or finish_pos column if the races "
              "have been run", file=sys.stderr)
    if args.json:
        print(dumps_strict(s.to_dict(), sort_keys=True))
        return 0
    print(f"snapshot {s.snapshot_id}  ({len(s.files)} file(s) -> {settings.home}/forms/{s.snapshot_id})")
    print(f"rows_in {s.rows_in} = accepted {s.accepted} + rejected {s.rejected} "
          f"+ duplicates_merged {s.duplicates_merged}")
    print(f"dogs {s.dogs}  races {s.races}")
    for reason, n in s.rejects_by_reason.items():
        print(f"  rejected {reason}: {n}")
    for code, n in s.warnings.items():
        print(f"  warning {code}: {n}")
    return 0
