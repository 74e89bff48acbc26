"""The nightly report's records: `ReportModel` of sections of panels, each panel a typed figure spec
(one frozen dataclass per kind in `reports.specs`, drawn by `reports.figures`), a table or a 'not computed' note.

Everything here is already aggregated and rounded (4 significant digits, `sig`); nothing per dog is
kept except the heatmap dogs, so the page size does not grow with the number of dogs. Built by
`reports.build.build_report`; rendered by `reports.render`. Arrays are lists (they go to Plotly as is).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from reports.prose import GLOSSARY
from reports.specs import (
    AnimHeatmapSpec,
    Band,
    BandsSpec,
    DogHeat,
    ExemplarCurve,
    FigureSpec,
    GateLayer,
    GateSeries,
    GatesSpec,
    GroupedPanel,
    GroupedSeries,
    GroupedSpec,
    HeatmapSpec,
    Line,
    Lines2Spec,
    LinesPanel,
    LinesSpec,
    ScatterSeries,
    ScatterSpec,
)

__all__ = [
    "ReportModel", "Section", "Panel", "Table", "HeadlineNumber", "Finding", "FigureSpec",
    "DogHeat", "AnimHeatmapSpec", "HeatmapSpec", "Band", "Line", "ExemplarCurve", "BandsSpec", "LinesSpec",
    "LinesPanel", "Lines2Spec", "ScatterSeries", "ScatterSpec", "GateSeries", "GateLayer", "GatesSpec",
    "GroupedSeries", "GroupedPanel", "GroupedSpec",
    "sig", "COHORT_ORDER", "COHORT_COLOURS", "SOURCE_COLOURS", "MAX_FRAMES", "MAX_HEATMAP_STEPS", "MIN_BAND_DOGS",
    "GLOSSARY",
]

COHORT_ORDER: tuple[str, ...] = ("all", "settled", "settling", "saturated", "partial", "unsaturated", "undecided")
COHORT_COLOURS: Mapping[str, str] = {
    "all": "#4b5563",
    "settled": "#c2410c",
    "settling": "#1d4ed8",
    "saturated": "#c2410c",
    "partial": "#a16207",
    "unsaturated": "#1d4ed8",
    "undecided": "#6b7280",
}
SOURCE_COLOURS: Mapping[str, str] = {
    "model": "#0f766e",
    "model_mean": "#14b8a6",
    "market": "#7c3aed",
    "uniform": "#9ca3af",
}
MAX_FRAMES = 100
"""Most animation frames of the state heatmap; longer careers are sampled."""
MAX_HEATMAP_STEPS = 300
"""Most steps drawn in a dog's heatmap; longer careers are sampled evenly."""
MIN_BAND_DOGS = 10
"""A cohort band is drawn at a step only where at least this many dogs reach it."""


def sig(x: Any, digits: int = 4) -> float | None:
    """x rounded to `digits` significant digits as a short float; None for NaN/None/inf."""
    if x is None or x is pd.NA:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


# ---------------------------------------------------------------- the page


@dataclass(frozen=True)
class Table:
    """A small table: header and rows of cells (str, int, float or None)."""

    columns: tuple[str, ...]
    """Header cells."""
    rows: tuple[tuple[Any, ...], ...]
    """One tuple per row, aligned with columns."""


@dataclass(frozen=True)
class Panel:
    """One figure or table with a title, what it shows and how to read it; or a 'not computed' note."""

    title: str
    """Short heading."""
    explain: str
    """What it shows and how to read it, in a sentence or two."""
    figure: FigureSpec | None = None
    """The figure, if any."""
    table: Table | None = None
    """The table, if any."""
    note: str | None = None
    """Shown instead when the input was not computed for this run (names the missing table)."""
    collapsed: bool = False
    """Render the table inside a closed <details> (long tables); the figure stays open."""
    closed: bool = False
    """Render the whole panel, figure and table, inside a closed <details> (secondary figures)."""


@dataclass(frozen=True)
class Section:
    """A titled part of the page."""

    id: str
    """Anchor id (stable)."""
    title: str
    """Heading."""
    intro: str
    """One or two sentences: the question this section answers."""
    panels: tuple[Panel, ...]
    """Figures and tables, in order."""
    collapsed: bool = False
    """Render the whole section inside a closed <details> (diagnostics, history, data quality)."""


@dataclass(frozen=True)
class HeadlineNumber:
    """One number of the header, with its change since the previous night."""

    key: str
    """Key in eval/headline.json."""
    label: str
    """What it is, in words."""
    value: float | int | None
    """Tonight's value."""
    text: str
    """Tonight's value, formatted."""
    delta_text: str | None
    """Change since the previous night, formatted with its sign; None without a previous night."""
    tone: str
    """'good', 'bad' or 'neutral': colour of the change (lower log-loss is good)."""


@dataclass(frozen=True)
class Finding:
    """One answer of page one (reports.headline.page_one)."""

    key: str
    """Stable id."""
    label: str
    """What it answers, in a few words."""
    text: str
    """Its sentences, each from a number on the page."""


@dataclass(frozen=True)
class ReportModel:
    """Everything the nightly page shows."""

    title: str
    """Page title."""
    night: str
    """The night (YYYY-MM-DD) this report is for."""
    verdict: str
    """The verdict paragraph (reports.headline.verdict_text): the comparison with its checks, the family, yardsticks."""
    period: str | None
    """What was evaluated: the period, out of sample or not, races and runners (headline.period_text)."""
    scope: str | None
    """Which dogs and runners the step-indexed comparisons use (headline.scope_text); None when not recorded."""
    findings: tuple[Finding, ...]
    """Page one's answers in order (headline.page_one)."""
    front: tuple[Panel, ...]
    """Page one's figure and scorecard (the gap to the market by race count, settled vs settling)."""
    headline: tuple[HeadlineNumber, ...]
    """The numbers at the top."""
    provenance: tuple[tuple[str, str], ...]
    """(label, value): date, snapshot, model set, seeds, code version, device, cohort rule, ..."""
    previous_night: str | None
    """The night the changes are measured against."""
    sections: tuple[Section, ...]
    """The body, in order."""
    glossary: tuple[tuple[str, str], ...] = field(default=GLOSSARY)
    """(term, definition)."""
