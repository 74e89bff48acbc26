"""The one codec of the records that cross stages (run plan, block markers, stats summary, headline, eval period):
frozen dataclasses <-> JSON-ready data. storage writes and reads the bytes (storage.store.json_bytes,
Store.read_record); readers in gruviz_core decode with `from_json` too."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from gruviz_core.errors import StoreError

__all__ = ["to_json", "from_json"]

T = TypeVar("T")


def to_json(obj: Any) -> Any:
    """A record (a dataclass, nested or not) or plain data as JSON-ready data; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


def from_json(cls: type[T], data: Any, where: str = "record") -> T:
    """The frozen dataclass `cls` from JSON data: fields typed as tuples or records are rebuilt, unknown keys
    are ignored, a missing field without a default is a StoreError naming it."""
    if not isinstance(data, Mapping):
        raise StoreError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kw[f.name] = _as(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise StoreError(f"{where}: no field {f.name!r} for {cls.__name__}; the record is damaged or from "
                             "another version, recompute it")
    return cls(**kw)


def _as(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _as(inner[0], value, where) if len(inner) == 1 else value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_as(item, v, where) for v in value)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_json(hint, value, where)
    return value
