"""`build_report(results, ...) -> ReportModel`: the nightly page's content from a run's typed results (pure).

The caller reads the run (`storage.results.read_run_results`), earlier nights' headlines
(`read_history`) and the heatmap dogs' states (`read_dog_states(run_dir, heatmap_dog_ids(results,
watchlist))`); nothing here opens a file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gruviz_core.results import DogStates, DogStatesSet, NightHeadline, RunResults
from reports.headline import headline_numbers, page_one, period_text, record, scope_text, verdict_text
from reports.model import AnimHeatmapSpec, Panel, ReportModel, Section
from reports.sections.cohorts import comparison_section
from reports.sections.common import per_dog
from reports.sections.determinism import determinism_section
from reports.sections.drift import drift_section
from reports.sections.front import front_panels
from reports.sections.model_change import model_change_sections
from reports.sections.probes import probes_section
from reports.sections.resilience import divergence_section, resilience_section
from reports.sections.run import provenance, quality_section, trend_section
from reports.sections.saturation import saturation_section
from reports.sections.seeds import repro_section
from reports.sections.states import abs_sum_section, choose_dogs, states_section

__all__ = ["build_report", "heatmap_dog_ids"]

_NO_STATES = DogStatesSet(note="Not provided: no dog states were passed to the report.")


def heatmap_dog_ids(results: RunResults, watchlist: Sequence[str] = ()) -> list[str]:
    """The ids of the dogs the heatmaps show (read their states and pass them to `build_report`)."""
    dog, _ = per_dog(results.dog, results.summary)
    if dog is None:
        return []
    return [str(r["dog_id"]) for r in choose_dogs(dog, list(watchlist))[0]]


def build_report(
    results: RunResults,
    *,
    history: Sequence[NightHeadline] = (),
    dogs: DogStatesSet | Mapping[str, DogStates] | None = None,
    watchlist: Sequence[str] = (),
    data_quality: Mapping[str, Any] | None = None,
) -> ReportModel:
    """The nightly report's content from a run's results, earlier nights' headlines and the heatmap dogs' states."""
    if dogs is None:
        dogs = _NO_STATES
    elif not isinstance(dogs, DogStatesSet):
        dogs = DogStatesSet(dict(dogs))
    run_meta, head, summary = results.meta, record(results.headline), results.summary
    night = str(head.get("night") or run_meta.get("night") or results.name)
    rule = head.get("rule") or (summary.rule if summary else None) or run_meta.get("cohort_rule")
    if data_quality is None:
        data_quality = run_meta.get("data_quality")

    dog, layer = per_dog(results.dog, summary)
    hist = _history(history, night)
    prev = hist[-1] if hist else None

    div = results.divergence
    pairs = [] if div is None else list(dict.fromkeys(zip(div["dog_a"].astype(str), div["dog_b"].astype(str))))
    errors = [e for e in head.get("largest_errors") or [] if isinstance(e, dict)]
    states = states_section(dog, list(watchlist), dogs, run_id=run_meta.get("run_id"), pairs=pairs, errors=errors)
    chosen_ids = [
        str(d.id) for p in states.panels if isinstance(p.figure, AnimHeatmapSpec) for d in p.figure.dogs
    ]
    sections = (
        *model_change_sections(results),  # only on the night a new model set takes over
        comparison_section(results),
        abs_sum_section(results, dog, chosen_ids, layer, head),
        states,
        _guarded("reproducibility", "Reproducibility across seeds", repro_section, results),
        _guarded("resilience", "Resilience to data issues", resilience_section, results),
        _guarded("divergence", "Two-dog divergence", divergence_section, results, dog),
        _guarded("probes", "What the state knows", probes_section, results),
        saturation_section(results, layer),
        _guarded("input-drift", "Data quality: inputs against the training window", drift_section, results),
        _guarded("determinism", "Data quality: determinism watch", determinism_section, results),
        _closed(trend_section(night, head, hist)),
        _closed(quality_section(data_quality)),
    )
    sections = tuple(_fold_long_tables(_supporting(s) if s.id in _SUPPORTING else s) for s in sections)
    return ReportModel(
        title=f"gruviz nightly report {night}",
        night=night,
        verdict=verdict_text(head),
        period=period_text(head),
        scope=scope_text(head),
        findings=page_one(head),
        front=front_panels(results),
        headline=headline_numbers(head, prev[1] if prev else None),
        provenance=provenance(run_meta, rule, night, head),
        previous_night=prev[0] if prev else None,
        sections=sections,
    )


def _guarded(sid: str, title: str, build: Callable[..., Section], *args: Any) -> Section:
    """A section whose builder failed says so in a note (the error named) instead of losing the whole page."""
    try:
        return build(*args)
    except Exception as exc:  # noqa: BLE001 - the page must still be published; the note names the failure
        note = f"This section could not be built from the run's tables: {type(exc).__name__}: {exc}"
        return Section(sid, title, "", (Panel(title, "", note=note),))


_SUPPORTING = ("reproducibility", "resilience", "divergence", "probes")
"""Sections whose answer is on page one (its resilience and reproducibility lines, the scorecard) or in their
first panel: their titles, intros and panel titles stay in the page's first read, their figures and tables one
click away, except the resilience section's first figure (the notebook's hypothesis) and the probe atlas's first
panel (what the state holds best and worst, in sentences), which stay open."""


def _supporting(section: Section) -> Section:
    """Every panel of the section (notes aside) behind its own <details>, but the one it keeps open."""
    keep = -1
    if section.id == "resilience":
        keep = next((i for i, p in enumerate(section.panels) if p.figure is not None), -1)
    elif section.id == "probes":
        keep = 0
    panels = tuple(p if p.note is not None or i == keep else dataclasses.replace(p, closed=True)
                   for i, p in enumerate(section.panels))
    return dataclasses.replace(section, panels=panels)


LONG_TABLE_ROWS = 8
"""A table with more rows than this sits behind a closed <details> (the page reads in about 8 screens)."""


def _fold_long_tables(section: Section) -> Section:
    """Every long table of the section behind a <details>: charts first, numbers on demand."""
    panels = tuple(
        dataclasses.replace(p, collapsed=True)
        if p.table is not None and len(p.table.rows) > LONG_TABLE_ROWS and not p.collapsed else p
        for p in section.panels
    )
    return dataclasses.replace(section, panels=panels)


def _closed(section: Section) -> Section:
    """The section inside a closed <details>: read on demand, not part of the page's first read."""
    return dataclasses.replace(section, collapsed=True)


def _history(history: Sequence[NightHeadline], night: str) -> list[tuple[str, Mapping[str, Any]]]:
    """(night, headline) of earlier nights, oldest first; later or same nights are ignored (the last given wins)."""
    out: dict[str, Mapping[str, Any]] = {}
    for h in history:
        if h.night < night:
            out[h.night] = h.headline
    return sorted(out.items())
