"""Strict JSON for `--json` output: NaN and infinities become null, never bare `NaN` (not JSON)."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps_strict", "jsonable"]


def jsonable(obj: Any) -> Any:
    """`obj` with non-finite floats (Python or NumPy) as None, NumPy scalars and arrays as Python values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalar or array
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_strict(obj: Any, **kw) -> str:
    """json.dumps with allow_nan=False after jsonable(); other objects as str()."""
    return json.dumps(jsonable(obj), allow_nan=False, default=str, **kw)
