"""Progress of the long steps, process-local: stages report counts, the CLI shows them.

    report("ingest", 3, 10, unit="files", rows=48_210)   # a stage or a flow task, from any thread
    with shown(True): ...                                # the CLI, for one command: Rich bars on stderr

A report with no listener costs one list check (a deployment's worker, a test). Reports made in
other processes (process or Dask task runners, spawned training workers) reach no listener here:
the CLI shows nothing for them, and the flow's Prefect artifacts still do.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["Report", "report", "listening", "wanted", "shown"]


@dataclass(frozen=True)
class Report:
    """One count of one long step."""

    task: str
    """What is counted, e.g. 'ingest', 'train seed 0', 'extract'; one bar per task."""
    done: int
    """Units done so far."""
    total: int | None
    """Units in all (None: unknown, a spinner)."""
    unit: str = ""
    """What a unit is: 'files', 'epochs', 'dogs'."""
    fields: dict[str, object] = field(default_factory=dict)
    """Extra counts shown beside the bar, e.g. rows=48210, val_loss=1.7321."""


_listeners: list[Callable[[Report], None]] = []
_lock = threading.Lock()


def report(task: str, done: int, total: int | None = None, *, unit: str = "", **fields: object) -> None:
    """Tell whoever listens in this process that `task` is at `done` of `total` `unit`."""
    if not _listeners:
        return
    event = Report(task, int(done), None if total is None else int(total), unit, dict(fields))
    with _lock:
        listeners = tuple(_listeners)
    for fn in listeners:
        fn(event)


@contextmanager
def listening(fn: Callable[[Report], None]) -> Iterator[None]:
    """Call `fn` with every report made in this process (any thread) while the block runs."""
    with _lock:
        _listeners.append(fn)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(fn)


def wanted(*, force: bool = False, quiet: bool = False, stream: TextIO | None = None) -> bool:
    """Progress is shown when forced, else unless quiet (--json, --quiet) or stderr is not a terminal."""
    if force:
        return True
    stream = sys.stderr if stream is None else stream
    return not quiet and bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def shown(enabled: bool, *, console=None) -> Iterator[None]:
    """Rich progress bars on stderr (never stdout) for every task reported while the block runs.

    On a terminal the bars update live; on anything else (a forced --progress into a file or a pipe)
    their final counts are written once when the block ends.
    """
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if console is None:
        console = Console(stderr=True)
        if not console.is_terminal:  # a file or a pipe: one line per bar, not wrapped at 80 columns
            console = Console(stderr=True, width=200)
    bars = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[extra]}"), TimeElapsedColumn(),
        console=console, redirect_stdout=False, redirect_stderr=False, transient=False,
    )
    ids: dict[str, int] = {}
    lock = threading.Lock()

    def on_report(r: Report) -> None:
        with lock:
            if r.task not in ids:
                ids[r.task] = bars.add_task(r.task, total=r.total, unit=r.unit, extra="")
            bars.update(ids[r.task], completed=r.done, total=r.total, unit=r.unit, extra=_extra(r.fields))

    with bars, listening(on_report):
        yield


def _extra(fields: dict[str, object]) -> str:
    """'rows 48,210  val_loss 1.7321': ints with separators, floats to 4 places."""
    parts = []
    for k, v in fields.items():
        if isinstance(v, bool) or v is None:
            text = str(v)
        elif isinstance(v, int):
            text = f"{v:,}"
        elif isinstance(v, float):
            text = f"{v:.4f}"
        else:
            text = str(v)
        parts.append(f"{k} {text}")
    return "  ".join(parts)
