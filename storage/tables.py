"""A run's tables: Parquet written atomically under the run's layout, read back by name.

Every table lives where `storage.layout.RunLayout.table(name)` says; nothing else names the file.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gruviz_core.errors import NotFoundError
from storage import fs
from storage.atomic import write_json_atomic
from storage.fs import StorePath
from storage.layout import RunLayout

__all__ = ["write_parquet_atomic", "write_table", "read_table", "has_table", "read_record", "write_json"]


def write_parquet_atomic(df: pd.DataFrame, path: StorePath) -> None:
    """Write a table to a temporary sibling, then rename it over `path` (object storage: one PUT)."""
    path = fs.store_path(path)
    if fs.is_remote(path):
        fs.write_parquet(df, path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table(run_dir: str | StorePath, name: str, df: pd.DataFrame) -> StorePath:
    """Write the run table `name` (see storage.layout.STATS_TABLES / EVAL_TABLES); returns its path."""
    path = RunLayout.at(run_dir).table(name)
    write_parquet_atomic(df, path)
    return path


def has_table(run_dir: str | Path, name: str) -> bool:
    return RunLayout.at(run_dir).table(name).exists()


def read_table(run_dir: str | Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The run table `name`; a clear error when its stage has not run."""
    path = RunLayout.at(run_dir).table(name)
    if not path.exists():
        raise NotFoundError(f"run {run_dir}: no table {name} at {path}; run the stage that writes it first")
    return fs.read_parquet(path, columns=columns)


def read_record(path: str | StorePath) -> Any:
    """A JSON file of a run (run.json, summary, headline), or a clear error naming it."""
    try:
        return json.loads(fs.store_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise NotFoundError(f"{path}: missing; run the stage that writes it first") from e


def write_json(path: str | StorePath, obj: Any) -> None:
    write_json_atomic(path, obj)
