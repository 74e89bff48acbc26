"""Options shared by the `gruviz` subcommands, typed so a typo fails at parse time, and the progress switch."""

from __future__ import annotations

import argparse
import enum
import re
from collections.abc import Iterable
from typing import Annotated, Any

import typer

from flows.progress import shown, wanted

__all__ = ["Home", "Json", "ShowProgress", "Quiet", "DEVICE_METAVAR", "device", "choices", "cohort_rules", "namespace", "progress_shown"]

Home = Annotated[str | None, typer.Option("--home", help="store root (default: GRUVIZ_HOME or ./gruviz-data)")]
Json = Annotated[bool, typer.Option("--json", help="print the result as one JSON object on stdout (no progress bars)")]
ShowProgress = Annotated[bool, typer.Option(
    "--progress", help="show progress bars on stderr even when it is not a terminal, or with --json")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


DEVICE_METAVAR = "auto|cpu|cuda[:N]|mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")


def device(value: str) -> str:
    """A torch device name: auto, cpu, cuda, cuda:N or mps (whether it exists here is the preflight's check)."""
    text = str(value).strip()
    if not _DEVICE.match(text):
        raise ValueError(f"{value!r} is not a torch device; expected one of auto, cpu, cuda, cuda:N, mps")
    return text


def choices(name: str, values: Iterable[str]) -> type[enum.StrEnum]:
    """A fixed set of names as an enum: Typer offers them as a choice and refuses anything else at parse time."""
    return enum.StrEnum(name, {v: v for v in sorted(values)})


def cohort_rules() -> type[enum.StrEnum]:
    """The named cohort rules (gruviz_core.cohorts.RULES)."""
    from gruviz_core.cohorts import RULES

    return choices("CohortRule", RULES)


def namespace(**values: Any) -> argparse.Namespace:
    """The parsed options as the namespace each command's `run(args)` takes."""
    return argparse.Namespace(**values)


def progress_shown(args: argparse.Namespace):
    """Progress bars on stderr while the block runs, when wanted (a terminal, no --json or --quiet; or --progress).
    Wrap only the long work: the command prints its result after the bars are done."""
    force, quiet = getattr(args, "progress", False), getattr(args, "json", False) or getattr(args, "quiet", False)
    return shown(wanted(force=force, quiet=quiet))
