"""The top of the page: headline numbers with their change since the previous night, cohort counts, verdict."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from reports.model import HeadlineNumber, sig
from reports.prose import VERDICT
from reports.sections.common import cohorts_in, nonempty

__all__ = ["headline_numbers", "cohort_counts", "verdict"]

_HEADLINE_KEYS: tuple[tuple[str, str, str, str], ...] = (
    # key, label, format, which direction is good
    ("dogs", "Dogs", "int", "neutral"),
    ("obs", "Races (dog-steps)", "int", "neutral"),
    ("saturated_share", "Saturated share", "pct", "neutral"),
    ("median_plateau_step", "Median plateau race", "num", "neutral"),
    ("model_log_loss", "Model log-loss", "num", "lower"),
    ("market_log_loss", "Market log-loss", "num", "lower"),
    ("uniform_log_loss", "Uniform log-loss", "num", "lower"),
)


def _exact(x: Any) -> float | None:
    v = sig(x, 17)
    return None if v is None else float(round(v))


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "n/a"
    if kind == "int":
        return f"{int(round(float(v))):,}"
    if kind == "pct":
        return f"{100 * float(v):.1f}%"
    return f"{float(v):.4g}"


def _fmt_delta(d: float, kind: str) -> str:
    if kind == "int":
        return f"{int(round(d)):+,}"
    if kind == "pct":
        return f"{100 * d:+.1f} pts"
    return f"{d:+.3g}"


def headline_numbers(head: Mapping[str, Any], prev: Mapping[str, Any] | None) -> tuple[HeadlineNumber, ...]:
    """The header's numbers; counts exact, the rest to 4 significant digits; changes against `prev`."""
    out = []
    for key, label, kind, good in _HEADLINE_KEYS:
        if key not in head:
            continue
        exact = kind == "int"  # counts are shown exactly, never rounded to significant digits
        v = _exact(head.get(key)) if exact else sig(head.get(key))
        delta_text, tone = None, "neutral"
        pv = (_exact(prev.get(key)) if exact else sig(prev.get(key))) if prev else None
        if v is not None and pv is not None:
            d = v - pv
            delta_text = _fmt_delta(d, kind)
            if good == "lower" and abs(d) > 1e-12:
                tone = "good" if d < 0 else "bad"
        out.append(HeadlineNumber(key, label, v, _fmt(v, kind), delta_text, tone))
    return tuple(out)


def cohort_counts(
    head: Mapping[str, Any], summary: Mapping[str, Any] | None, dog: pd.DataFrame | None
) -> tuple[tuple[str, int], ...]:
    """(cohort, dogs) in display order, from the headline, else the summary, else the dog table."""
    counts = head.get("cohort_counts") or head.get("cohorts") or (summary or {}).get("cohort_counts")
    if not isinstance(counts, dict) and nonempty(dog):
        counts = dog["cohort"].value_counts().to_dict()
    if not isinstance(counts, dict):
        return ()
    return tuple((c, int(counts[c])) for c in cohorts_in(counts) if c != "all")


def _effect_row(effect: pd.DataFrame | None, adjust: str, metric: str = "log_loss") -> dict | None:
    """The `metric` effect row (a - b) with finite diff/lo/hi, for `adjust` ('none' or 'length_matched')."""
    if not nonempty(effect):
        return None
    ll = effect[effect["metric"] == metric]
    ll = ll[ll["adjust"].fillna("none") == adjust]
    for _, r in ll.iterrows():
        vals = [sig(r[k]) for k in ("diff", "lo", "hi")]
        if all(v is not None for v in vals):
            return {"a": str(r["a"]), "b": str(r["b"]), "diff": vals[0], "lo": vals[1], "hi": vals[2]}
    return None


def verdict(
    head: Mapping[str, Any],
    counts: dict[str, int],
    median_plateau: float | None,
    effect: pd.DataFrame | None,
    lm: pd.DataFrame | None,
) -> str:
    """One paragraph: how many dogs saturate, whether it changes prediction (with its interval), model vs market."""
    parts = []
    dogs = head.get("dogs") or sum(counts.values())
    share = sig(head.get("saturated_share"))
    if share is None and dogs:
        share = counts.get("saturated", 0) / dogs
    if share is not None and dogs:
        pct = 100 * float(share)
        s = VERDICT["share"].format(share=f"{pct:.1f}%" if 0 < pct < 10 else f"{pct:.0f}%", dogs=int(dogs))
        if median_plateau is not None:
            s += VERDICT["plateau"].format(race=median_plateau)
        parts.append(s + ".")
    parts += _comparison(effect, lm)
    m, k = sig(head.get("model_log_loss")), sig(head.get("market_log_loss"))
    if m is not None and k is not None:
        parts.append(VERDICT["market"].format(word="beats" if m < k else "trails", m=m, k=k))
    return " ".join(parts)


def _comparison(effect: pd.DataFrame | None, lm: pd.DataFrame | None) -> list[str]:
    # Against the market on the same races when there is one: raw log-loss mostly tracks how often a
    # cohort's dogs win (saturated dogs win more), the gap to the market tracks how well they are modelled.
    metric = "log_loss_vs_market" if _effect_row(effect, "none", "log_loss_vs_market") else "log_loss"
    what = VERDICT["gap_market"] if metric == "log_loss_vs_market" else VERDICT["gap_raw"]
    row = _effect_row(effect, "none", metric)
    if row is None:
        return [VERDICT["empty"] if effect is not None else VERDICT["absent"]]
    a, b, diff, lo, hi = row["a"], row["b"], row["diff"], row["lo"], row["hi"]
    ci = VERDICT["ci"].format(lo=lo, hi=hi)
    key = "better" if hi < 0 else "worse" if lo > 0 else "unclear"
    parts = [VERDICT[key].format(a=a, b=b, what=what, size=abs(diff), ci=ci)]
    adj = _effect_row(effect, "length_matched", metric)
    if adj is not None:
        clear = adj["hi"] < 0 or adj["lo"] > 0
        parts.append(
            VERDICT["matched"].format(**adj) + VERDICT["matched_clear" if clear else "matched_unclear"]
        )
    else:
        held = _length_matched_agreement(lm, a, b, diff)
        if held:
            parts.append(held)
    return parts


def _length_matched_agreement(lm: pd.DataFrame | None, a: str, b: str, diff: float) -> str | None:
    if not nonempty(lm):
        return None
    ll = lm[lm["metric"] == "log_loss"].pivot_table(index="stratum", columns="cohort", values="value", aggfunc="first")
    if a not in ll.columns or b not in ll.columns:
        return None
    d = (ll[a] - ll[b]).dropna()
    if not len(d):
        return None
    same = int((np.sign(d) == np.sign(diff)).sum())
    return VERDICT["strata"].format(same=same, n=len(d))
