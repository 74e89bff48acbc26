"""The top of the page: the evaluation period, headline numbers with their change since the previous night,
cohort counts, and the verdict.

`verdict_text(headline)` is the one place the verdict is worded: the page, the email (`reports.email.
email_summary`) and the flow's summary artifact (which shows the email's lines) all say what it says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from reports.model import HeadlineNumber, sig
from reports.prose import HIGHER_IS_BETTER, METRIC_NAMES, VERDICT
from reports.sections.common import cohorts_in, nonempty

__all__ = ["headline_numbers", "cohort_counts", "verdict_text", "period_text", "rule_text", "rule_short",
           "effect_sizes_text"]

_HEADLINE_KEYS: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    # path in eval/headline.json, label, format, which direction is good
    (("period", "races"), "Races evaluated (held out)", "int", "neutral"),
    (("period", "dogs"), "Dogs evaluated", "int", "neutral"),
    (("saturated_share",), "Saturated share", "pct", "neutral"),
    (("plateau_median_km",), "Median time to plateau (KM)", "race", "neutral"),
    (("race_nll", "model"), "Race NLL, model", "num", "lower"),
    (("race_nll", "market"), "Race NLL, market", "num", "lower"),
    (("race_nll", "uniform"), "Race NLL, uniform", "num", "lower"),
)


def _get(head: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    cur: Any = head
    for k in path:
        if not isinstance(cur, Mapping) or k not in cur:
            return _MISSING
        cur = cur[k]
    return cur


_MISSING = object()


def _exact(x: Any) -> float | None:
    v = sig(x, 17)
    return None if v is None else float(round(v))


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "not reached" if kind == "race" else "n/a"
    if kind in ("int", "race"):
        return f"{int(round(float(v))):,}"
    if kind == "pct":
        return f"{100 * float(v):.1f}%"
    return f"{float(v):.4g}"


def _fmt_delta(d: float, kind: str) -> str:
    if kind in ("int", "race"):
        return f"{int(round(d)):+,}"
    if kind == "pct":
        return f"{100 * d:+.1f} pts"
    return f"{d:+.3g}"


def headline_numbers(head: Mapping[str, Any], prev: Mapping[str, Any] | None) -> tuple[HeadlineNumber, ...]:
    """The header's numbers; counts exact, the rest to 4 significant digits; changes against `prev`."""
    out = []
    for path, label, kind, good in _HEADLINE_KEYS:
        raw = _get(head, path)
        if raw is _MISSING:
            continue
        exact = kind in ("int", "race")  # counts are shown exactly, never rounded to significant digits
        v = _exact(raw) if exact else sig(raw)
        delta_text, tone = None, "neutral"
        praw = _get(prev, path) if prev else _MISSING
        pv = None if praw is _MISSING else (_exact(praw) if exact else sig(praw))
        if v is not None and pv is not None:
            d = v - pv
            delta_text = _fmt_delta(d, kind)
            if good == "lower" and abs(d) > 1e-12:
                tone = "good" if d < 0 else "bad"
        out.append(HeadlineNumber(".".join(path), label, v, _fmt(v, kind), delta_text, tone))
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


def rule_text(rule: Any) -> str:
    """'name vN (k=v, ...)' of a cohort rule record; 'n/a' without one."""
    if isinstance(rule, Mapping):
        params = rule.get("params") or {}
        p = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
        return f"{rule.get('name', '?')} v{rule.get('version', '?')}" + (f" ({p})" if p else "")
    return str(rule) if rule else "n/a"


def rule_short(rule: Any) -> str:
    """'name vN, theta=...' for sentences."""
    if not isinstance(rule, Mapping):
        return rule_text(rule)
    theta = (rule.get("params") or {}).get("theta")
    return f"{rule.get('name', '?')} v{rule.get('version', '?')}" + (f", theta={theta}" if theta is not None else "")


def period_text(head: Mapping[str, Any]) -> str | None:
    """What was evaluated, in one or two sentences: the period, that it is out of sample (or may not be), its size."""
    p = head.get("period")
    if not isinstance(p, Mapping):
        return None
    span = f"{p.get('start') or 'the first race'} to {p.get('end') or 'the last race'}"
    size = f"{int(p.get('races') or 0):,} races, {int(p.get('dogs') or 0):,} dogs, {int(p.get('rows') or 0):,} runners"
    cutoff = p.get("model_cutoff")
    if p.get("in_sample") is False:
        after = f"after the model set's training cutoff {cutoff}" if cutoff else "after the model set's training data"
        early = f" and its early-stopping window (to {p['early_stop_end']})" if p.get("early_stop_end") else ""
        text = f"Evaluated out of sample: races from {span} ({size}), {after}{early}."
    else:
        text = f"Evaluated on races from {span} ({size}); they may be in sample: the model set records no training date."
    if p.get("too_small"):
        text += f" Too small to compare (fewer than {int(p.get('min_races') or 0):,} races)."
    return text


def _plateau_sentence(head: Mapping[str, Any]) -> str:
    if "plateau_median_km" not in head:
        return ""
    km = head.get("plateau_median_km")
    return VERDICT["plateau_not_reached"] if km is None else VERDICT["plateau"].format(race=int(km))


def _share_sentence(head: Mapping[str, Any], counts: Mapping[str, int]) -> str:
    dogs = head.get("dogs") or sum(counts.values())
    if not dogs:
        return ""
    rule = rule_short(head.get("rule"))
    n_sat = counts.get("saturated")
    share = sig(head.get("saturated_share"))
    if share is None and n_sat is not None:
        share = n_sat / dogs
    if n_sat == 0 or (share is not None and share == 0):
        return VERDICT["none_saturated"].format(rule=rule, dogs=int(dogs))
    if share is None:
        return ""
    pct = 100 * float(share)
    return VERDICT["share"].format(share=f"{pct:.1f}%" if 0 < pct < 10 else f"{pct:.0f}%", dogs=int(dogs), rule=rule)


def effect_sizes_text(e: Mapping[str, Any]) -> str:
    """'A vs B dogs, W vs X winners' of an effect record."""
    return VERDICT["sizes"].format(
        na=int(e.get("n_dogs_a") or 0), nb=int(e.get("n_dogs_b") or 0),
        wa=int(e.get("n_winners_a") or 0), wb=int(e.get("n_winners_b") or 0),
    )


def _main_sentence(e: Any) -> str:
    if not isinstance(e, Mapping):
        return VERDICT["absent"]
    a, b, metric = str(e.get("a", "a")), str(e.get("b", "b")), str(e.get("metric", ""))
    sizes = effect_sizes_text(e)
    diff, lo, hi = sig(e.get("diff")), sig(e.get("lo")), sig(e.get("hi"))
    if not e.get("comparable") or diff is None or lo is None or hi is None:
        return VERDICT["too_small"].format(a=a, b=b, sizes=sizes)
    what = METRIC_NAMES.get(metric, metric.replace("_", " "))
    ci = VERDICT["ci"].format(lo=lo, hi=hi)
    if not e.get("excludes_zero"):
        return VERDICT["no_association"].format(a=a, b=b, what=what, diff=diff, ci=ci, sizes=sizes)
    worse = (diff > 0) != (metric in HIGHER_IS_BETTER)
    return VERDICT["associated"].format(
        a=a, b=b, what=what, diff=diff, ci=ci, sizes=sizes, word="worse" if worse else "better",
        n="n" if b[:1].lower() in "aeiou" else "",
    )


def _race_nll_sentence(head: Mapping[str, Any]) -> str:
    r = head.get("race_nll")
    if not isinstance(r, Mapping):
        return ""
    m, k, u = sig(r.get("model")), sig(r.get("market")), sig(r.get("uniform"))
    if m is None or u is None:
        return ""
    return VERDICT["race_nll"].format(m=m, k=k, u=u) if k is not None else VERDICT["race_nll_no_market"].format(m=m, u=u)


def verdict_text(head: Mapping[str, Any], counts: Mapping[str, int] | None = None) -> str:
    """The verdict, from eval/headline.json alone: period caveats, how many dogs saturate (rule), time to plateau,
    the main comparison (an association only when comparable and its interval excludes 0), the number of
    comparisons, race NLL. The page, the email and the summary artifact all use this text."""
    counts = dict(counts or head.get("cohort_counts") or {})
    period = head.get("period") if isinstance(head.get("period"), Mapping) else {}
    parts = []
    if period and period.get("in_sample") is None and "in_sample" in period:
        parts.append(VERDICT["in_sample"])
    share = _share_sentence(head, counts)
    if share or "plateau_median_km" in head:
        parts.append((share + _plateau_sentence(head)).strip())
    if period.get("too_small"):
        parts.append(
            VERDICT["too_small_period"].format(races=int(period.get("races") or 0), min_races=int(period.get("min_races") or 0))
        )
    else:
        parts.append(_main_sentence(head.get("main_effect")))
        n = head.get("n_comparisons")
        parts.append((VERDICT["comparisons"].format(n=int(n)) if isinstance(n, int) and n > 1 else VERDICT["causes"]).strip())
    nll = _race_nll_sentence(head)
    if nll:
        parts.append(nll)
    return " ".join(p for p in parts if p)
