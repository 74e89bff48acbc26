"""The determinism watch: a dog whose history did not change since last night, under the same model set, must
have the same stored states (float16 exactly), gates and scores. A difference is named with its first differing
step and the likely cause (what changed between the two runs' records: code, settings, device, libraries).

Pure: arrays and run records in, plain dicts out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["hashed_sample", "same_history", "first_difference", "compare_states", "likely_causes", "CAUSE_FIELDS"]

CAUSE_FIELDS: tuple[tuple[str, str], ...] = (
    ("code_version", "code version"), ("device", "device"), ("libraries", "library versions"),
    ("settings", "settings"), ("seeds", "seeds"), ("n_layers", "layers"), ("n_units", "units"),
)
"""run.json fields whose change can move a dog's states under the same model set, and how the record names them."""

_QUIET_SETTINGS = frozenset({"recipients", "smtp_host", "smtp_port", "smtp_user", "smtp_sender", "report_base_url",
                             "watchlist", "keep_nights", "sources", "timezone", "email_timeout_s"})
"""Settings that cannot move a state (delivery, retention, which dogs are shown): not named as causes."""


def hashed_sample(ids: Iterable[str], n: int) -> list[str]:
    """The n ids with the smallest SHA-1, in that order: the same dogs every night while they are in the data."""
    return sorted({str(i) for i in ids}, key=lambda i: hashlib.sha1(i.encode()).hexdigest())[: max(int(n), 0)]


def same_history(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> bool:
    """The same races in the same order on the same dates (race_id, race_date: (T,))."""
    a_id, b_id = np.asarray(before["race_id"]).astype(str), np.asarray(after["race_id"]).astype(str)
    if a_id.shape != b_id.shape or np.any(a_id != b_id):
        return False
    a_d, b_d = np.asarray(before["race_date"]).astype("datetime64[D]"), np.asarray(after["race_date"]).astype("datetime64[D]")
    return bool(np.all((a_d == b_d) | (np.isnat(a_d) & np.isnat(b_d))))


def first_difference(a: np.ndarray, b: np.ndarray) -> int | None:
    """0-based first index along axis 0 where (T, ...) arrays differ (NaN equals NaN; shapes must match), or None."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return 0
    diff = ~((a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else (a == b))
    rows = diff.reshape(len(a), -1).any(axis=1) if len(a) else np.zeros(0, bool)
    hit = np.flatnonzero(rows)
    return int(hit[0]) if len(hit) else None


def compare_states(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray],
                   names: Sequence[str] = ("h", "z", "r", "score")) -> dict | None:
    """None when every array in `names` is identical; else {first_step (1-based), arrays (those that differ, first
    at that step first), max_abs (largest |difference| over finite values)}. Arrays: (T, ...) as stored."""
    firsts = {n: first_difference(before[n], after[n]) for n in names}
    hit = {n: i for n, i in firsts.items() if i is not None}
    if not hit:
        return None
    first = min(hit.values())
    max_abs = 0.0
    for n in hit:
        a, b = np.asarray(before[n], np.float64), np.asarray(after[n], np.float64)
        if a.shape == b.shape:
            d = np.abs(a - b)
            d = d[np.isfinite(d)]
            max_abs = max(max_abs, float(d.max()) if d.size else float("inf"))
        else:
            max_abs = float("inf")
    return {"first_step": first + 1, "arrays": sorted(hit, key=lambda n: (hit[n], n)), "max_abs": max_abs}


def likely_causes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What differs between two runs' records (run.json) that can move states under the same model set: one phrase
    per field, e.g. "code version 0.4+abc -> 0.4+def", "settings: batch_size 1024 -> 512". Empty when none does."""
    out = []
    for key, label in CAUSE_FIELDS:
        a, b = before.get(key), after.get(key)
        if a is None or b is None or a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                          and not (key == "settings" and k in _QUIET_SETTINGS))
            if keys:
                out.append(f"{label}: " + ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:6])
                           + (" ..." if len(keys) > 6 else ""))
        else:
            out.append(f"{label} {a} -> {b}")
    return out
