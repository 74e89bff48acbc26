"""When a new model set took over tonight: which, from which, the two sets on the same held-out races (accuracy,
favourites, status, states), and the page-one numbers of the two nights (eval/model_change)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gruviz_core.results import RunResults
from reports.model import Panel, Section, Table, sig

__all__ = ["model_change_sections"]

_ID, _TITLE = "model-change", "A new model set took over"
_INTRO = ("Tonight's model set is not the one that ran last night. Before reading a change in tonight's numbers as "
          "a change in the dogs, read how the numbers moved with the model.")
_EXPLAIN = ("Page-one numbers under last night's set on last night's data, and under tonight's set on tonight's "
            "(race NLL and the overall gap to the market in nats per race, the rest in nats per runner): largest change "
            "first. Both the model and a night of data changed between them; the same-race comparison above holds the "
            "data fixed.")
_EXPLAIN_SAME = ("Both sets on the same held-out races of tonight's run (whole races, a sample of dogs; the previous "
                 "set re-ran their histories and its states were not stored): each number under each set with its "
                 "95% interval over dogs, and the change (tonight's - the previous set's) with its own. Largest "
                 "change first. For race NLL and the gaps to the market lower is better, so a change above 0 means "
                 "tonight's set does worse on these races; settled - settling is a difference between two groups of "
                 "dogs, not a score of either set, and its change has no interval (the two effects' bootstrap "
                 "replicates are not kept).")
_EXPLAIN_STATUS = ("The same dogs' settled/settling status (rule plateau-s, each set's own plateau) at a fixed race "
                   "under each set: the share of matching labels (seed positions paired), its 95% interval over dogs, "
                   "Fleiss' kappa of seed 0 against seed 0 (0: no more agreement than chance, below 0: less; not "
                   "estimable when one label covers almost all), and the share of the dogs settled under each set.")
_EXPLAIN_CKA = ("Debiased linear CKA between the two sets' seed-0 top-layer states of the same dogs after race t (1: "
                "the same representation up to rotation and scale; the permutation baseline is what unrelated dogs "
                "give).")
_EXPLAIN_CKA_SEEDS = (" Beside it, the CKA between tonight's set's own seeds at the same race (the reproducibility "
                      "section's): what retraining the same set gives. The two sets' CKA is {lo:.2f} to {hi:.2f}, "
                      "their seeds' {slo:.2f} to {shi:.2f}: {reading}.")
_EXPLAIN_CKA_NO_SEEDS = (" Tonight's set has no CKA between its own seeds to set this against (one seed, or the table "
                         "is missing), so how far below a retrain of the same set this sits is not shown.")


def model_change_sections(results: RunResults) -> tuple[Section, ...]:
    """The section when a new set took over; none on an ordinary night."""
    rec = results.model_change_record
    if not rec or not rec.get("changed"):
        return ()
    intro = (f"{_INTRO} Tonight: {rec.get('current_set')}; last night ({rec.get('previous_night') or '?'}, run "
             f"{rec.get('previous_run') or '?'}): {rec.get('previous_set')}.")
    panels = [*_same_race_panels(rec.get("same_races"), _seed_cka(results)), _nights_panel(rec)]
    return (Section(_ID, _TITLE, intro, tuple(panels)),)


def _nights_panel(rec: Mapping[str, Any]) -> Panel:
    rows = tuple((str(m["number"]), sig(m["before"]), sig(m["after"]), sig(m["change"]))
                 for m in rec.get("moved") or [] if isinstance(m, dict))
    if not rows:
        return Panel("Numbers under each set, night against night", "",
                     note="Last night's run has no headline numbers to set against tonight's.")
    table = Table(("number", f"last night ({rec.get('previous_set')})", f"tonight ({rec.get('current_set')})",
                   "change"), rows)
    return Panel("Numbers under each set, night against night", _EXPLAIN, table=table)


def _seed_cka(results: RunResults) -> dict[int, float]:
    """race -> CKA between tonight's set's own seeds (mean over seed pairs; eval/cka); empty when not computed."""
    cka = results.cka
    if cka is None or not len(cka) or not {"step", "cka"} <= set(cka.columns):
        return {}
    return {int(t): float(v) for t, v in cka.groupby("step")["cka"].mean().items() if sig(v) is not None}


def _same_race_panels(same: Mapping[str, Any] | None, seeds: Mapping[int, float] | None = None) -> list[Panel]:
    title = "The two sets on the same races"
    if not same:
        return [Panel(title, "", note="Not computed: the same-race comparison did not run tonight.")]
    if same.get("error"):
        return [Panel(title, "", note=f"Not computed: {same['error']}. The night's other numbers do not depend on it.")]
    scope = (f"{int(same.get('races') or 0):,} held-out races ({same.get('start')} to {same.get('end')}), "
             f"{int(same.get('runners') or 0):,} runners, {int(same.get('dogs') or 0):,} dogs; previous set "
             f"{same.get('previous_set')} ({len(same.get('previous_seeds') or [])} seeds) against "
             f"{same.get('current_set')} ({len(same.get('current_seeds') or [])} seeds).")
    rows = tuple((str(r["number"]), _ci(r.get("before"), r.get("before_lo"), r.get("before_hi")),
                  _ci(r.get("after"), r.get("after_lo"), r.get("after_hi")),
                  _ci(r.get("change"), r.get("lo"), r.get("hi")), str(r.get("unit") or ""))
                 for r in same.get("numbers") or [] if isinstance(r, dict))
    panels = [Panel(title, f"{scope} {_EXPLAIN_SAME} {_disagreement(same)}",
                    table=Table(("number", "previous set", "tonight's set", "change", "unit"), rows))]
    status = tuple((int(r["step"]), int(r.get("n") or 0), _ci(r.get("agreement"), r.get("lo"), r.get("hi")),
                    sig(r.get("kappa"), 3) if sig(r.get("kappa")) is not None else (r.get("kappa_note") or ""),
                    sig(r.get("settled_before"), 3), sig(r.get("settled_after"), 3))
                   for r in same.get("status_agreement") or [] if isinstance(r, dict))
    if status:
        panels.append(Panel("Settled or settling under each set", _EXPLAIN_STATUS,
                            table=Table(("race", "dogs", "agreement", "kappa (seed 0)", "settled, previous",
                                         "settled, tonight's"), status)))
    seeds = seeds or {}
    recs = [r for r in same.get("cka") or [] if isinstance(r, dict)]
    cka = tuple((int(r["step"]), int(r.get("n") or 0), _ci(r.get("cka"), r.get("lo"), r.get("hi")),
                 sig(r.get("cka_perm"), 3), sig(seeds.get(int(r["step"])), 3)) for r in recs)
    panels.append(Panel("The two sets' states (CKA)", _EXPLAIN_CKA + _cka_reading(recs, seeds),
                        table=Table(("race", "dogs", "CKA", "permutation baseline", "tonight's seeds (CKA)"), cka)
                        if cka else None,
                        note=None if cka else "Too few sampled dogs at any race count for CKA."))
    return panels


def _cka_reading(recs: list[Mapping[str, Any]], seeds: Mapping[int, float]) -> str:
    """The sets' CKA range against the seeds' at the same races, and what it says, from those numbers only: a race
    counts as below when the sets' whole 95% interval is under the seeds' CKA."""
    rows = [(float(r["cka"]), sig(r.get("hi")), seeds[int(r["step"])]) for r in recs
            if sig(r.get("cka")) is not None and int(r["step"]) in seeds]
    if not rows:
        return _EXPLAIN_CKA_NO_SEEDS if recs else ""
    below = sum((hi if hi is not None else a) < own for a, hi, own in rows)
    if below == len(rows):
        reading = (f"at all {len(rows)} races the two sets' interval lies below tonight's seeds' CKA: the new set "
                   "represents the dogs differently, by more than a retrain of the same set does")
    elif below == 0:
        reading = f"at none of these {len(rows)} races does the two sets' interval lie below tonight's seeds' CKA"
    else:
        reading = f"at {below} of these {len(rows)} races the two sets' interval lies below tonight's seeds' CKA"
    sets, own = [a for a, _, _ in rows], [b for _, _, b in rows]
    return _EXPLAIN_CKA_SEEDS.format(lo=min(sets), hi=max(sets), slo=min(own), shi=max(own), reading=reading)


def _disagreement(same: Mapping[str, Any]) -> str:
    d = same.get("disagreement") or {}
    ens, s0 = d.get("ensemble") or {}, d.get("seed0") or {}
    if sig(ens.get("value")) is None:
        return ""
    text = (f"The favourites differ in {_pct(ens.get('value'))} of the races "
            f"(95% interval {_pct(ens.get('lo'))} to {_pct(ens.get('hi'))}; seed ensembles)")
    if sig(s0.get("value")) is not None:
        text += f", {_pct(s0.get('value'))} seed 0 against seed 0"
    return text + "."


def _pct(v: Any) -> str:
    x = sig(v)
    return "?" if x is None else f"{100 * x:.1f}%"


def _ci(v: Any, lo: Any, hi: Any) -> str:
    x, a, b = sig(v, 3), sig(lo, 3), sig(hi, 3)
    if x is None:
        return ""
    return f"{x:g} [{a:g}, {b:g}]" if a is not None and b is not None else f"{x:g}"
