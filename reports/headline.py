"""Page one's words, from the headline record alone (eval/headline.json): every sentence of the page's top,
the email's first lines and the flow's summary artifact is made here, from numbers that the page prints.

`page_one(head)` gives the findings in order (what saturation means on this model, the main comparison and
its checks, the gap to the market by race count, resilience, reproducibility, scope and yardsticks);
`verdict_text(head)` the verdict paragraph; `headline_lines(head)` the labelled lines of the email and the
summary artifact. A part the record lacks says 'not computed'; a number the text calls meaningless (kappa
when not estimable) is never printed. `headline_numbers` are the cards with their change since the night
before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reports.model import Finding, HeadlineNumber, sig
from reports.prose import METRIC_NAMES, PAGE_ONE, VERDICT

__all__ = [
    "record", "page_one", "races_label", "verdict_text", "headline_lines", "headline_numbers", "period_text",
    "scope_text", "rule_text", "effect_sizes_text", "family",
]


def record(head: Any) -> Mapping[str, Any]:
    """The headline as a mapping: a typed record (`to_dict`) or eval/headline.json as read."""
    if hasattr(head, "to_dict"):
        return head.to_dict()
    return head if isinstance(head, Mapping) else {}


def _m(head: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = head.get(key)
    return v if isinstance(v, Mapping) else {}


def _num(x: Any) -> float | None:
    return sig(x) if not isinstance(x, bool) else None


def _e(x: Any) -> str:
    """An effect or gap: 2 significant digits with its sign ('+0.082', '-0.0099')."""
    v = _num(x)
    return "n/a" if v is None else f"{v:+.2g}"


def _p(x: Any) -> str:
    """A positive quantity to 2 significant digits, plain (a gap, a rate)."""
    v = _num(x)
    return "n/a" if v is None else f"{v:.2g}"


def _ci(e: Mapping[str, Any]) -> str:
    return f"[{_e(e.get('lo'))}, {_e(e.get('hi'))}]"


def _has_ci(e: Mapping[str, Any]) -> bool:
    return bool(e.get("comparable", True)) and all(_num(e.get(k)) is not None for k in ("diff", "lo", "hi"))


def _excludes(e: Mapping[str, Any]) -> bool:
    lo, hi = _num(e.get("lo")), _num(e.get("hi"))
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def _pct(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "n/a"
    p = 100 * v
    return f"{p:.2g}%" if p < 10 else f"{p:.0f}%"


def _int(x: Any) -> str:
    """A count, exact (never rounded to significant digits)."""
    v = sig(x, 17) if not isinstance(x, bool) else None
    return "n/a" if v is None else f"{int(round(v)):,}"


def _nll(x: Any) -> str:
    v = _num(x)
    return "n/a" if v is None else f"{v:.4g}"


def races_label(bucket: Any) -> str:
    """'race 1' or 'races 2-5' of a race-count bucket."""
    return "race 1" if str(bucket) == "1" else f"races {bucket}"


def effect_sizes_text(e: Mapping[str, Any]) -> str:
    """'A vs B dogs, W vs X winners' of an effect record."""
    return VERDICT["sizes"].format(
        na=int(e.get("n_dogs_a") or 0), nb=int(e.get("n_dogs_b") or 0),
        wa=int(e.get("n_winners_a") or 0), wb=int(e.get("n_winners_b") or 0),
    )


# ---------------------------------------------------------------- what saturation means on this model


def magnitude_text(mag: Mapping[str, Any]) -> str:
    """Magnitude (tanh) saturation: none or some, with the largest |h| and the share of states near +-1."""
    if not mag:
        return PAGE_ONE["magnitude_absent"]
    share = _num(mag.get("share_states_any_095"))
    key = "magnitude_none" if share is not None and share < 0.01 and not mag.get("tanh_comparable") else "magnitude_some"
    text = PAGE_ONE[key].format(max_abs=_p(mag.get("max_abs")), share=_pct(share), n=_int(mag.get("n_states")))
    if key == "magnitude_some":
        text += " " + PAGE_ONE["tanh_comparable" if mag.get("tanh_comparable") else "tanh_not_comparable"]
    return text


def _s_at(plateau: Mapping[str, Any], race: int) -> float | None:
    for r in plateau.get("s_by_race") or []:
        if isinstance(r, Mapping) and r.get("race") == race:
            return _num(r.get("median_s"))
    return None


def _km_range(plateau: Mapping[str, Any]) -> tuple[int, int] | None:
    vals = [int(v) for g in plateau.get("km_grid") or [] if isinstance(g, Mapping) and (v := _num(g.get("median"))) is not None]
    return (min(vals), max(vals)) if vals else None


def plateau_text(plateau: Mapping[str, Any]) -> str:
    """The abs-sum plateau: its level, the race by which the median s reaches 90% and 95% of it, and the KM
    median time to plateau with its range across the rule's grid (the tolerance sets it)."""
    if not plateau:
        return PAGE_ONE["plateau_absent"]
    level, s1 = _num(plateau.get("level")), _s_at(plateau, 1)
    r90, r95 = plateau.get("race_90"), plateau.get("race_95")
    if level is None:
        return PAGE_ONE["plateau_absent"]
    if r95 is None and r90 is None:
        text = PAGE_ONE["plateau_not_reached"].format(level=f"{level:.2f}")
    else:
        text = PAGE_ONE["plateau"].format(
            s1=f"{s1:.2f}" if s1 is not None else "n/a", level=f"{level:.2f}",
            r90=int(r90) if r90 is not None else "not reached", r95=int(r95) if r95 is not None else "not reached",
        )
    km, span = plateau.get("km_median"), _km_range(plateau)
    if km is not None and span is not None:
        text += " " + PAGE_ONE["km_grid"].format(km=int(km), lo=span[0], hi=span[1])
    elif km is not None:
        text += " " + PAGE_ONE["km"].format(km=int(km))
    return text


def _by_race(rows: Any, key: str) -> list[tuple[int, float]]:
    out = []
    for r in rows or []:
        if isinstance(r, Mapping) and isinstance(r.get("race"), (int, float)) and _num(r.get(key)) is not None:
            out.append((int(r["race"]), float(_num(r.get(key)))))
    return sorted(out)


def reliance_text(reliance: Mapping[str, Any], plateau: Mapping[str, Any]) -> str:
    """The write fraction at race 1 against after the plateau (the race by which s reaches 95% of its level)."""
    write = _by_race(reliance.get("write_by_race"), "median_write")
    if not write:
        return PAGE_ONE["reliance_absent"]
    after = plateau.get("race_95") or plateau.get("race_90")
    first = write[0]
    later = [w for w in write if after is not None and w[0] >= int(after)]
    last = later[0] if later else write[-1]
    u1, u = f"{first[1]:.2f}", f"{last[1]:.2f}"
    way = "down from" if u < u1 else ("up from" if u > u1 else "as at")  # the words follow the two numbers shown
    return PAGE_ONE["reliance"].format(u1=u1, r1=first[0], u=u, r=last[0], way=way)


# ---------------------------------------------------------------- the main comparison and its checks


def family(head: Mapping[str, Any]) -> tuple[int, list[str]]:
    """(intervals, names) of the verdict's family: only tests that produced an interval."""
    v = _m(head, "verdict")
    if isinstance(v.get("n_intervals"), int):
        return int(v["n_intervals"]), [str(n) for n in v.get("family") or []]
    names = []
    for key in ("main_effect", "within_dog"):
        if _has_ci(_m(head, key)):
            names.append(key)
    for g in head.get("grid") or []:
        if isinstance(g, Mapping) and _has_ci(g):
            names.append(f"grid {g.get('param')}={g.get('value')}")
    return len(names), names


def _grid_text(grid: Sequence[Any]) -> str:
    pts = [g for g in grid if isinstance(g, Mapping)]
    if not pts:
        return ""
    ok = [g for g in pts if _has_ci(g)]
    if not ok:
        return PAGE_ONE["grid_none"].format(n=len(pts))
    zero = sum(1 for g in ok if not _excludes(g))
    text = PAGE_ONE["grid"].format(zero=zero, n=len(ok))
    if len(ok) < len(pts):
        text = text[:-1] + PAGE_ONE["grid_small"].format(k=len(pts) - len(ok))
    return text


def composition_flagged(head: Mapping[str, Any]) -> bool:
    """The market's own log-loss differs between the groups about as much as the model's gap does."""
    return bool(_m(head, "composition").get("flagged") or _m(head, "verdict").get("composition_flagged"))


def _composition_text(head: Mapping[str, Any]) -> str:
    ll = _m(_m(head, "composition"), "market_log_loss")
    if not _has_ci(ll):
        return ""
    text = PAGE_ONE["composition"].format(diff=_e(ll.get("diff")), ci=_ci(ll))
    return text + (PAGE_ONE["composition_flagged"] if composition_flagged(head) else PAGE_ONE["composition_ok"])


_LEADS = {"robust": "lead_robust", "fragile": "lead_fragile", "none": "lead_none"}


def _verdict_kind(head: Mapping[str, Any]) -> str:
    kind = _m(head, "verdict").get("kind")
    if kind in ("robust", "fragile", "none", "not_comparable"):
        return str(kind)
    main = _m(head, "main_effect")
    if not _has_ci(main):
        return "not_comparable"
    return "fragile" if _excludes(main) else "none"


def comparison_text(head: Mapping[str, Any]) -> str:
    """The main comparison (settled minus settling at the same step), within the same dogs, across the grid, the
    market's own difference (composition) and the negative control; the lead says robust, fragile or none."""
    main = _m(head, "main_effect")
    if not main:
        return VERDICT["absent"]
    a, b = str(main.get("a", "settled")), str(main.get("b", "settling"))
    kind = _verdict_kind(head)
    if kind == "not_comparable":
        return PAGE_ONE["not_comparable"].format(a=a, b=b, sizes=effect_sizes_text(main))
    metric = str(main.get("metric") or "gap_vs_market")
    parts = [
        PAGE_ONE[_LEADS[kind]].format(what=METRIC_NAMES.get(metric, metric.replace("_", " "))),
        PAGE_ONE["main"].format(a=a, b=b, diff=_e(main.get("diff")), ci=_ci(main), na=_int(main.get("n_dogs_a")),
                                nb=_int(main.get("n_dogs_b"))),
    ]
    within = _m(head, "within_dog")
    if _has_ci(within):
        parts.append(PAGE_ONE["within"].format(diff=_e(within.get("diff")), ci=_ci(within),
                                               n=_int(within.get("n_dogs_a"))))
    elif within:
        parts.append(PAGE_ONE["within_small"].format(sizes=effect_sizes_text(within)))
    parts.append(_grid_text(head.get("grid") or []))
    parts.append(_composition_text(head))
    return " ".join(p for p in parts if p)


def control_text(head: Mapping[str, Any]) -> str:
    """The negative control beside the comparison it controls; '' when absent."""
    nc = _m(head, "negative_control")
    if not _has_ci(nc):
        return ""
    return PAGE_ONE["control"].format(diff=_e(nc.get("diff")), ci=_ci(nc),
                                      reading=PAGE_ONE["control_bad" if _excludes(nc) else "control_ok"])


_TEST_NAMES = {"main": "settled minus settling", "within_dog": "within the same dogs",
               "dose_write_prev": "the slope on the write fraction u", "dose_move_prev": "the slope on the movement m",
               "dose_s_prev": "the slope on the abs-sum s"}
"""How the page names each test of the verdict's family."""


def family_text(head: Mapping[str, Any]) -> str:
    """The multiple-comparison family counted honestly: only the tests that produced an interval."""
    n, _ = family(head)
    holm = [h for h in _m(head, "verdict").get("holm") or [] if isinstance(h, Mapping)]
    if not n:
        return VERDICT["causes"].strip()
    if holm:
        names = [_TEST_NAMES.get(str(h.get("name")), str(h.get("name"))) for h in holm
                 if h.get("excludes_zero", h.get("rejected"))]
        return PAGE_ONE["family_holm"].format(n=n, k=len(names), verb="excludes" if len(names) == 1 else "exclude",
                                              which=f" ({', '.join(names)})" if names else "")
    return PAGE_ONE["family"].format(n=n)


# ---------------------------------------------------------------- gap by race count, resilience, reproducibility


def gap_text(rows: Any) -> str:
    """The model's gap to the market at the first and the last race-count bucket, with intervals."""
    pts = [r for r in rows or [] if isinstance(r, Mapping) and _num(r.get("diff")) is not None]
    if len(pts) < 2:
        return PAGE_ONE["gap_absent"]
    first, last = pts[0], pts[-1]
    d0, d1 = float(_num(first["diff"])), float(_num(last["diff"]))
    hi1, lo0 = _num(last.get("hi")), _num(first.get("lo"))
    key = "gap_falls" if hi1 is not None and lo0 is not None and hi1 < lo0 else "gap_flat"
    return PAGE_ONE[key].format(
        b0=races_label(first["bucket"]), d0=_p(d0), ci0=f"[{_p(first.get('lo'))}, {_p(first.get('hi'))}]",
        b1=races_label(last["bucket"]), d1=_p(d1), ci1=f"[{_p(last.get('lo'))}, {_p(last.get('hi'))}]",
        ratio=f"{d1 / d0:.2g}" if d0 else "n/a",
    )


def _res_measures(res: Any) -> dict[str, Mapping[str, Any]]:
    """measure -> {early, late, diff, lo, hi} of the held-out latest-race test (resilience.latest_race_summary),
    from its 'held_out' part, a mapping of measures or a list of rows with 'measure'."""
    if isinstance(res, Mapping) and isinstance(res.get("held_out"), Mapping):
        res = res["held_out"]
    if isinstance(res, Mapping):
        return {k: v for k, v in res.items() if isinstance(v, Mapping)}
    out = {}
    for r in res or []:
        if isinstance(r, Mapping) and r.get("measure"):
            out[str(r["measure"])] = r
    return out


def _reading(e: Mapping[str, Any], more: str, less: str, unclear: str) -> str:
    if not _has_ci(e):
        return unclear
    return more if float(e["lo"]) > 0 else (less if float(e["hi"]) < 0 else unclear)


def resilience_text(res: Any) -> str:
    """The latest-race test: sensitivity (flip rate) and harm (race NLL) early against late, kept apart."""
    m = _res_measures(res)
    flip, harm = m.get("flip_rate"), m.get("d_nll")
    if not flip and not harm:
        return PAGE_ONE["resilience_absent"]
    parts = []
    if flip:
        parts.append(PAGE_ONE["res_flip"].format(
            reading=_reading(flip, "more sensitive", "less sensitive", "not clearly more sensitive"),
            early=_p(flip.get("early")), late=_p(flip.get("late")), diff=_e(flip.get("diff")), ci=_ci(flip)))
    if harm:
        parts.append(PAGE_ONE["res_harm"].format(
            reading=_reading(harm, "more harmed", "less harmed", "not clearly more harmed"),
            early=_e(harm.get("early")), late=_e(harm.get("late")), diff=_e(harm.get("diff")), ci=_ci(harm)))
    return PAGE_ONE["res_lead"] + " " + " ".join(parts)


def _value(x: Any) -> float | None:
    if isinstance(x, Mapping):
        x = x.get("value", x.get("all"))
    return _num(x)


def repro_text(head: Mapping[str, Any]) -> str:
    """Churn and spread across seeds, the ensemble against seed 0, kappa only when estimable."""
    rep, ens, nll = _m(head, "repro"), _m(head, "ensemble"), _m(head, "race_nll")
    parts = []
    churn, spread = _value(rep.get("churn")), _value(rep.get("spread"))
    if churn is not None:
        parts.append(PAGE_ONE["churn"].format(churn=_pct(churn))
                     + (PAGE_ONE["spread"].format(spread=_p(spread)) if spread is not None else "") + ".")
    by_seed = [v for v in (ens.get("by_seed") or []) if _num(v) is not None]
    e_nll = _num(ens.get("race_nll")) if ens else _num(nll.get("model_mean"))
    s0 = _num(by_seed[0]) if by_seed else _num(nll.get("model"))
    if e_nll is not None and s0 is not None:
        k = len(by_seed) or None
        parts.append(PAGE_ONE["ensemble"].format(k=f"{k}-seed" if k else "seed", e=_nll(e_nll), s0=_nll(s0),
                                                 diff=_e(e_nll - s0)))
    kappa = rep.get("kappa")
    if isinstance(kappa, str):
        parts.append(PAGE_ONE["kappa_text"].format(kappa=kappa))
    elif _num(kappa) is not None:
        parts.append(PAGE_ONE["kappa"].format(kappa=f"{_num(kappa):.2f}"))
    return " ".join(parts) if parts else PAGE_ONE["repro_absent"]


def scope_text(head: Mapping[str, Any]) -> str | None:
    """Which dogs, runners and races the step-indexed comparisons use."""
    sc = _m(head, "scope")
    if not sc:
        return None
    return PAGE_ONE["scope"].format(dd=_int(sc.get("debut_dogs")), d=_int(sc.get("dogs")),
                                    dr=_int(sc.get("debut_runners")), r=_int(sc.get("runners")),
                                    races=_int(sc.get("races")))


def yardsticks_text(head: Mapping[str, Any]) -> str:
    """Race NLL of the ensemble, seed 0, the market, the source's rated price and uniform on the same races."""
    r = _m(head, "race_nll")
    names = (("model_mean", "seed ensemble"), ("model", "seed 0"), ("market", "market"),
             ("rated", "the source's rated price"), ("uniform", "uniform"))
    parts = [f"{label} {_nll(v)}" for k, label in names if (v := _num(r.get(k))) is not None]
    return PAGE_ONE["yardsticks"].format(parts=", ".join(parts)) if parts else ""


# ---------------------------------------------------------------- the page, the verdict, the email


def page_one(head: Any) -> tuple[Finding, ...]:
    """Page one's answers after the verdict, in order, each sentence from a number in the record (and on the page)."""
    h = record(head)
    plateau = _m(h, "plateau")
    out = [
        Finding("magnitude", PAGE_ONE["label_magnitude"], magnitude_text(_m(h, "magnitude"))),
        Finding("plateau", PAGE_ONE["label_plateau"], plateau_text(plateau)),
        Finding("reliance", PAGE_ONE["label_reliance"], reliance_text(_m(h, "reliance"), plateau)),
        Finding("gap", PAGE_ONE["label_gap"], gap_text(h.get("gap_by_race_count"))),
        Finding("resilience", PAGE_ONE["label_resilience"], resilience_text(h.get("resilience_latest"))),
        Finding("reproducibility", PAGE_ONE["label_repro"], repro_text(h)),
    ]
    yard = yardsticks_text(h)
    if yard:
        out.append(Finding("yardsticks", PAGE_ONE["label_yardsticks"], yard))
    return tuple(out)


def verdict_text(head: Any) -> str:
    """The verdict paragraph: period caveats, the main comparison with its checks and negative control, the
    family it counts (only tests that produced an interval)."""
    h = record(head)
    period = _m(h, "period")
    parts = []
    if period and period.get("in_sample") is None and "in_sample" in period:
        parts.append(VERDICT["in_sample"])
    if period.get("too_small"):
        parts.append(VERDICT["too_small_period"].format(races=int(period.get("races") or 0),
                                                        min_races=int(period.get("min_races") or 0)))
    else:
        parts += [comparison_text(h), control_text(h), family_text(h)]
    return " ".join(p for p in parts if p)


def headline_lines(head: Any) -> dict[str, str]:
    """The labelled lines of the email and the flow's summary artifact: the verdict first, then page one."""
    h = record(head)
    out = {"Verdict": verdict_text(h)}
    period = period_text(h)
    if period:
        out["Evaluated"] = period
    scope = scope_text(h)
    if scope:
        out["Scope"] = scope
    for f in page_one(h):
        out[f.label] = f.text
    return out


def rule_text(rule: Any) -> str:
    """'name vN (k=v, ...)' of a cohort rule record; 'n/a' without one."""
    if isinstance(rule, Mapping):
        params = rule.get("params") or {}
        p = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
        return f"{rule.get('name', '?')} v{rule.get('version', '?')}" + (f" ({p})" if p else "")
    return str(rule) if rule else "n/a"


def period_text(head: Any) -> str | None:
    """What was evaluated, in one or two sentences: the period, that it is out of sample (or may not be), its size."""
    p = record(head).get("period")
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


# ---------------------------------------------------------------- the cards

_CARDS: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    # path in the headline, label, format, which direction is good
    (("race_nll", "model_mean"), "Race NLL, seed ensemble", "num", "lower"),
    (("race_nll", "model"), "Race NLL, seed 0", "num", "lower"),
    (("race_nll", "market"), "Race NLL, market", "num", "lower"),
    (("race_nll", "rated"), "Race NLL, rated price", "num", "lower"),
    (("race_nll", "uniform"), "Race NLL, uniform", "num", "lower"),
    (("period", "races"), "Races evaluated (held out)", "int", "neutral"),
    (("period", "rows"), "Runners evaluated", "int", "neutral"),
    (("period", "dogs"), "Dogs evaluated", "int", "neutral"),
)

_MISSING = object()


def _get(head: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    cur: Any = head
    for k in path:
        if not isinstance(cur, Mapping) or k not in cur or cur[k] is None:
            return _MISSING
        cur = cur[k]
    return cur


def _exact(x: Any) -> float | None:
    v = sig(x, 17)
    return None if v is None else float(round(v))


def headline_numbers(head: Any, prev: Any) -> tuple[HeadlineNumber, ...]:
    """The cards; counts exact, the rest to 4 significant digits; changes against `prev`."""
    h, p = record(head), record(prev) if prev is not None else None
    out = []
    for path, label, kind, good in _CARDS:
        raw = _get(h, path)
        if raw is _MISSING:
            continue
        exact = kind == "int"  # counts are shown exactly, never rounded to significant digits
        v = _exact(raw) if exact else sig(raw)
        praw = _get(p, path) if p else _MISSING
        pv = None if praw is _MISSING else (_exact(praw) if exact else sig(praw))
        delta_text, tone = None, "neutral"
        if v is not None and pv is not None:
            d = v - pv
            delta_text = f"{int(round(d)):+,}" if exact else f"{d:+.3g}"
            if good == "lower" and abs(d) > 1e-12:
                tone = "good" if d < 0 else "bad"
        text = "n/a" if v is None else (f"{int(v):,}" if exact else f"{v:.4g}")
        out.append(HeadlineNumber(".".join(path), label, v, text, delta_text, tone))
    return tuple(out)
