"""A run's tables and JSON records, by name, through the Store.

Every table lives where `storage.layout.RunLayout.table(name)` says; nothing else names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from gruviz_core.errors import NotFoundError
from storage.layout import RunLayout
from storage.store import StorePath, split

__all__ = ["write_table", "read_table", "has_table", "read_record", "write_json"]


def write_table(run_dir: str | StorePath, name: str, df: pd.DataFrame) -> StorePath:
    """Write the run table `name` (see storage.layout.STATS_TABLES / EVAL_TABLES); returns its location."""
    path = RunLayout.at(run_dir).table(name)
    store, key = split(path)
    store.write_parquet(key, df)
    return path


def has_table(run_dir: str | Path, name: str) -> bool:
    store, key = split(RunLayout.at(run_dir).table(name))
    return store.exists(key)


def read_table(run_dir: str | Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The run table `name`; a clear error when its stage has not run."""
    path = RunLayout.at(run_dir).table(name)
    store, key = split(path)
    try:
        return store.read_parquet(key, columns=columns)
    except FileNotFoundError as e:
        raise NotFoundError(f"run {run_dir}: no table {name} at {path}; run the stage that writes it first") from e


def read_record(path: str | StorePath) -> Any:
    """A JSON file of a run (run.json, summary, headline), or a clear error naming it."""
    store, key = split(path)
    try:
        return store.read_json(key)
    except FileNotFoundError as e:
        raise NotFoundError(f"{path}: missing; run the stage that writes it first") from e


def write_json(path: str | StorePath, obj: Any) -> None:
    """A JSON record written atomically (a dataclass record or plain data)."""
    store, key = split(path)
    store.write_json(key, obj)
