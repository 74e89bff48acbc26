"""`gruviz ingest SOURCE...`: form data files -> a content-addressed forms snapshot in the store.

Exits 2 naming the file (and leaves forms/LATEST where it was) when a file cannot be read, has no
data rows or none of its rows is accepted; the counts, rejects and warnings are in the snapshot's
manifest.json either way.
"""

from __future__ import annotations

import argparse

from flows.output import dumps_strict
from flows.settings import load_settings
from gruviz_core.formats import FORMATS
from storage.forms import ingest

__all__ = ["HELP", "add_arguments", "run"]

HELP = ("Ingest form data (files, directories, globs; .csv, .csv.gz, .parquet) into a forms snapshot; "
        "exits 2 naming the file when one cannot be read or has no accepted row.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="files, directories or globs")
    p.add_argument("--format", dest="fmt", choices=sorted(FORMATS), default=None,
                   help="the files' format (default: detected from each header)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--home", default=None, help="store root (default: GRUVIZ_HOME or ./gruviz-data)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(home=args.home)
    s = ingest(args.sources, settings.home, fmt=args.fmt)
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
