"""When the model set changes: the page-one numbers under the set that ran last night and under the set that runs
tonight, and the one that moved most.

Every number here is in nats per runner (race NLL, gaps to the market, the settled - settling comparison), so their
changes compare directly. These are two nights' numbers (the data moved by a night too); the same-race comparison of
the two sets is a separate, heavier check. Pure: headline mappings in, rows out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["page_one_numbers", "moved"]


def page_one_numbers(headline: Mapping[str, Any]) -> dict[str, float]:
    """label -> value (nats per runner) of a night's headline record (eval/headline.json); absent numbers left out."""
    out: dict[str, float] = {}
    nll = headline.get("race_nll")
    if isinstance(nll, Mapping):
        for key, label in (("model_mean", "race NLL, seed ensemble"), ("model", "race NLL, seed 0"),
                           ("market", "race NLL, market")):
            _put(out, label, nll.get(key))
        if _num(nll.get("model_mean")) is not None and _num(nll.get("market")) is not None:
            out["gap to the market, seed ensemble"] = float(nll["model_mean"]) - float(nll["market"])
    main = headline.get("main_effect")
    if isinstance(main, Mapping) and main.get("comparable"):
        _put(out, "settled - settling, same step", main.get("diff"))
    for b in headline.get("gap_by_race_count") or ():
        if isinstance(b, Mapping):
            _put(out, f"gap to the market, races {b.get('bucket')}", b.get("diff"))
    return out


def moved(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, float, float, float]]:
    """(label, before, after, after - before) of every page-one number both headlines have, largest |change| first."""
    a, b = page_one_numbers(before), page_one_numbers(after)
    rows = [(k, a[k], b[k], b[k] - a[k]) for k in a if k in b]
    return sorted(rows, key=lambda r: -abs(r[3]))


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return None
    return float(v)


def _put(out: dict[str, float], label: str, v: Any) -> None:
    x = _num(v)
    if x is not None:
        out[label] = x
