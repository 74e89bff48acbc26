"""Typed read of a published run for the report: its tables (checked against `gruviz_core.tables`),
its JSON records, earlier nights' headlines and the states of the few dogs the report draws.

A missing table is None (the report says 'not computed'); a table that lacks a column of its
schema is a StoreError naming the file, the column and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from gruviz_core.errors import ConfigError, NotFoundError, StoreError
from gruviz_core.results import DogStates, DogStatesSet, NightHeadline, RunResults, StatsSummary
from gruviz_core.tables import TABLES, schema_problems
from storage.layout import EVAL_TABLES, STATS_TABLES, RunLayout
from storage.states import open_states
from storage.store import StorePath, location, split

__all__ = ["read_run_results", "read_summary", "read_history", "read_dog_states", "read_json", "REPORT_TABLES"]

REPORT_TABLES: tuple[str, ...] = tuple(t for t in STATS_TABLES + EVAL_TABLES if t not in ("dog_seed", "row_summary", "probe_rows"))
"""Run tables the report reads (each a `RunResults` field); their paths come from storage.layout.RunLayout."""


def read_json(path: str | Path) -> dict | None:
    """A JSON object from a file; None when the file is missing, unreadable JSON or not an object."""
    store, key = split(path)
    try:
        obj = store.read_json(key)
    except (FileNotFoundError, NotADirectoryError, StoreError):
        return None
    return obj if isinstance(obj, dict) else None


def read_summary(run_dir: str | StorePath) -> StatsSummary | None:
    """The run's stats summary (stats/summary.json); None when the stats stage has not run."""
    store, key = split(RunLayout.at(run_dir).summary)
    try:
        return store.read_record(key, StatsSummary)
    except FileNotFoundError:
        return None


def read_run_results(run_dir: str | Path, *, tables: Iterable[str] | None = None) -> RunResults:
    """Every table and record of a published run that the report shows; `tables` names a subset to read
    (the others are None), e.g. ("dog",) for the email."""
    run_dir = location(run_dir)
    if not run_dir.is_dir():
        raise NotFoundError(
            f"report: run directory {run_dir} does not exist; pass a published run (storage.runs.latest_run)"
        )
    wanted = set(REPORT_TABLES if tables is None else tables)
    unknown = wanted - set(REPORT_TABLES)
    if unknown:
        raise ConfigError(f"read_run_results: unknown tables {sorted(unknown)}; expected some of {sorted(REPORT_TABLES)}")
    layout = RunLayout.at(run_dir)
    frames = {name: _table(run_dir, name) for name in REPORT_TABLES if name in wanted}
    return RunResults(
        name=run_dir.name,
        meta=read_json(layout.run_json) or {},
        summary=read_summary(run_dir),
        headline=read_json(layout.headline) or {},
        probe_record=read_json(layout.probe_record),
        drift_record=read_json(layout.drift_record),
        model_change_record=read_json(layout.model_change_record),
        determinism_record=read_json(layout.determinism_record),
        **frames,
    )


def _table(run_dir: StorePath, name: str) -> pd.DataFrame | None:
    path = RunLayout.at(run_dir).table(name)
    store, key = split(path)
    if not store.exists(key):
        return None
    problems = schema_problems(name, store.parquet_schema(key))
    if problems:
        raise StoreError(
            f"{path}: {'; '.join(problems)}; expected the columns of gruviz_core.tables.TABLES[{name!r}] "
            f"({', '.join(TABLES[name].names)}); recompute the run's stats and evaluation"
        )
    return store.read_parquet(key, columns=list(TABLES[name].names))


def read_history(dirs: Iterable[str | Path]) -> list[NightHeadline]:
    """The headline of each earlier run or published report directory that has one, in the order given."""
    out = []
    for d in dirs:
        night, head = _night_of(location(d))
        if night and head is not None:
            out.append(NightHeadline(night, head))
    return out


def _night_of(path: StorePath) -> tuple[str | None, dict | None]:
    head = read_json(RunLayout.at(path).headline) or read_json(path / "headline.json")  # a run, or a published report dir
    run = read_json(RunLayout.at(path).run_json) or {}
    night = (head or {}).get("night") or run.get("night")
    if not night and re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.name):
        night = path.name  # a published report directory <reports>/<night>/headline.json
    return (str(night) if night else None), head


def read_dog_states(run_dir: str | Path, ids: Sequence[str], *, seed: int = 0) -> DogStatesSet:
    """The states of the given dogs; a dog or a store that cannot be read is noted, never raised."""
    run_dir = location(run_dir)
    if not ids:
        return DogStatesSet()
    if not RunLayout.at(run_dir).states.exists():
        return DogStatesSet(note="Not computed for this run: states.zarr is missing.")
    try:
        reader = open_states(run_dir)
    except Exception as exc:  # a broken store must not sink the rest of the report
        return DogStatesSet(note=f"The states store could not be opened: {type(exc).__name__}: {exc}")
    return states_of(lambda dog_id: reader.dog(dog_id, seed=seed), ids)


def states_of(load, ids: Sequence[str]) -> DogStatesSet:
    """Apply `load(dog_id) -> DogStates` to each id, collecting failures as problems."""
    found: dict[str, DogStates] = {}
    problems = []
    for dog_id in ids:
        try:
            found[str(dog_id)] = load(str(dog_id))
        except Exception as exc:  # a dog missing from the store must not sink the report
            problems.append(f"{dog_id}: {type(exc).__name__}: {exc}")
    return DogStatesSet(found, tuple(problems))
