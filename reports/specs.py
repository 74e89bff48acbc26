"""Typed figure specs of the report: one frozen dataclass per kind of figure, drawn by `reports.figures`.

Values are already rounded; arrays are lists (they go to Plotly as is). Re-exported by `reports.model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FigureSpec", "DogHeat", "AnimHeatmapSpec", "HeatmapSpec", "Band", "Line", "ExemplarCurve", "BandsSpec",
    "LinesSpec", "LinesPanel", "Lines2Spec", "ScatterSeries", "ScatterSpec", "GateSeries", "GateLayer", "GatesSpec",
    "GroupedSeries", "GroupedPanel", "GroupedSpec", "MatrixSpec",
]


@dataclass(frozen=True)
class DogHeat:
    """One dog's states for the heatmaps, sampled to at most MAX_HEATMAP_STEPS steps."""

    id: str
    """The dog's id."""
    name: str
    """The dog's name."""
    cohort: str
    """Its cohort."""
    n_steps: int
    """Races in its career (T)."""
    n_layers: int
    """GRU layers (L)."""
    n_units: int
    """Hidden units per layer (H)."""
    steps: list[int]
    """(S,) 1-based steps drawn."""
    dates: list[str]
    """(S,) race dates, YYYY-MM-DD."""
    z: list[list[list[float | None]]]
    """(L, H, S) states, 3 decimals."""
    plateau: int | None
    """Its plateau step, None when censored."""


@dataclass(frozen=True)
class AnimHeatmapSpec:
    """Animated top-layer heatmaps of the dogs, race by race (Play/Stop and a slider)."""

    div_id: str
    """Fixed id of the figure's div (Plotly would pick a random one: the page must be deterministic)."""
    dogs: list[DogHeat]
    """The dogs, side by side."""
    frames: list[int]
    """Steps of the animation frames (at most MAX_FRAMES)."""
    layer: int
    """Layer shown (the top one)."""
    height: int = 380
    """Height in pixels."""


@dataclass(frozen=True)
class HeatmapSpec:
    """Static steps x units heatmaps, one row per layer, one column per dog."""

    div_id: str
    """Fixed id of the figure's div."""
    dogs: list[DogHeat]
    """The dogs, side by side."""
    n_layers: int
    """Rows of panels."""
    height: int = 380
    """Height in pixels."""


@dataclass(frozen=True)
class Band:
    """A cohort's middle half (25th-75th percentile) and median by step."""

    name: str
    """The cohort."""
    color: str
    """Its colour."""
    x: list[int]
    """(S,) steps."""
    lo: list[float | None]
    """(S,) 25th percentile."""
    mid: list[float | None]
    """(S,) median."""
    hi: list[float | None]
    """(S,) 75th percentile."""
    n: list[int]
    """(S,) dogs at each step."""


@dataclass(frozen=True)
class Line:
    """One line of a lines figure."""

    name: str
    """Legend name."""
    x: list[Any]
    """(N,) x values."""
    y: list[float | None]
    """(N,) y values."""
    color: str | None = None
    """Colour; Plotly's when None."""
    dash: str = "solid"
    """Plotly dash style."""
    mode: str = "lines"
    """Plotly mode ('lines', 'lines+markers')."""
    shape: str = "linear"
    """Plotly line shape ('hv' for steps)."""
    text: list[str] | None = None
    """(N,) hover text, if any."""


@dataclass(frozen=True)
class ExemplarCurve:
    """One heatmap dog's s by step, with its plateau marked."""

    name: str
    """The dog's name."""
    x: list[int]
    """(T,) steps."""
    y: list[float | None]
    """(T,) s."""
    abs_sum: list[float | None]
    """(T,) abs-sum (hover)."""
    plateau: int | None
    """Its plateau step."""


@dataclass(frozen=True)
class BandsSpec:
    """Cohort bands plus lines (and exemplar dogs); `split` puts the lines in a second panel."""

    div_id: str
    """Fixed id of the figure's div."""
    bands: list[Band]
    """Cohort bands."""
    lines: list[Line]
    """Lines over all dogs."""
    xlabel: str
    """x axis title."""
    ylabel: str
    """y axis title."""
    yrange: list[float] | None = None
    """y axis range."""
    exemplars: list[ExemplarCurve] = field(default_factory=list)
    """Heatmap dogs' curves (single panel only)."""
    vline: float | None = None
    """A dashed vertical line (single panel only)."""
    vline_label: str | None = None
    """Its label."""
    split: bool = False
    """Bands left, lines right."""
    height: int = 380
    """Height in pixels."""


@dataclass(frozen=True)
class LinesSpec:
    """Lines in one panel."""

    div_id: str
    """Fixed id of the figure's div."""
    series: list[Line]
    """The lines."""
    xlabel: str | None = None
    """x axis title."""
    ylabel: str | None = None
    """y axis title."""
    xrange: list[float] | None = None
    """x axis range."""
    yrange: list[float] | None = None
    """y axis range."""
    diagonal: float | None = None
    """Draw the diagonal from 0 to this value (calibration)."""
    hline: float | None = None
    """A dotted horizontal line at this y."""
    height: int = 380
    """Height in pixels."""


@dataclass(frozen=True)
class LinesPanel:
    """One panel of a side-by-side lines figure."""

    title: str
    """Panel title."""
    series: list[Line]
    """Its lines."""
    ylabel: str | None = None
    """y axis title."""


@dataclass(frozen=True)
class Lines2Spec:
    """Lines in panels side by side, sharing the x axis title."""

    div_id: str
    """Fixed id of the figure's div."""
    panels: list[LinesPanel]
    """The panels."""
    xlabel: str
    """x axis title."""
    vline: float | None = None
    """A dashed vertical line in every panel."""
    vline_label: str | None = None
    """What the vertical line is."""
    category_x: bool = False
    """Categorical x axis (nights)."""
    height: int = 380
    """Height in pixels."""


@dataclass(frozen=True)
class ScatterSeries:
    """One group of points."""

    name: str
    """Legend name."""
    x: list[float | None]
    """(N,) x."""
    y: list[float | None]
    """(N,) y."""
    text: list[str]
    """(N,) hover text."""
    color: str
    """Colour."""


@dataclass(frozen=True)
class ScatterSpec:
    """Points in one panel."""

    div_id: str
    """Fixed id of the figure's div."""
    series: list[ScatterSeries]
    """The point groups."""
    xlabel: str
    """x axis title."""
    ylabel: str
    """y axis title."""
    log_y: bool = False
    """Log y axis."""
    xrange: list[float] | None = None
    """x axis range."""
    height: int = 380
    """Height in pixels."""


@dataclass(frozen=True)
class GateSeries:
    """One gate's units in a layer: share of steps left- (x) and right-saturated (y)."""

    name: str
    """'z gate' or 'r gate'."""
    x: list[float | None]
    """(H,) fraction below 0.1."""
    y: list[float | None]
    """(H,) fraction above 0.9."""
    unit: list[int]
    """(H,) unit numbers."""
    color: str
    """Colour."""


@dataclass(frozen=True)
class GateLayer:
    """One layer's gate panel."""

    layer: int
    """0-based layer."""
    gates: list[GateSeries]
    """z then r."""


@dataclass(frozen=True)
class GatesSpec:
    """Gate saturation scatter, one panel per layer."""

    div_id: str
    """Fixed id of the figure's div."""
    layers: list[GateLayer]
    """The layers."""
    height: int = 380
    """Height in pixels (grows with rows of panels)."""


@dataclass(frozen=True)
class GroupedSeries:
    """One series of a grouped figure: a value per category, with optional interval."""

    name: str
    """Legend name."""
    color: str
    """Colour."""
    y: list[float | None]
    """(C,) values."""
    lo: list[float | None] | None = None
    """(C,) interval low."""
    hi: list[float | None] | None = None
    """(C,) interval high."""


@dataclass(frozen=True)
class GroupedPanel:
    """One panel of a grouped figure."""

    title: str
    """Panel title."""
    categories: list[str]
    """(C,) x categories."""
    series: list[GroupedSeries]
    """The series."""


@dataclass(frozen=True)
class GroupedSpec:
    """Points with whiskers, or bars, per category, in panels."""

    div_id: str
    """Fixed id of the figure's div."""
    panels: list[GroupedPanel]
    """The panels (four make a 2 x 2 grid)."""
    mode: str
    """'points' or 'bars'."""
    height: int = 380
    """Height in pixels."""


@dataclass(frozen=True)
class MatrixSpec:
    """A labelled matrix as one heatmap on a diverging scale (e.g. units x quantities)."""

    div_id: str
    """Fixed id of the figure's div."""
    z: list[list[float | None]]
    """(R, C) values."""
    x: list[str]
    """(C,) column labels."""
    y: list[str]
    """(R,) row labels, drawn top to bottom."""
    zlabel: str
    """Colour bar title."""
    xlabel: str | None = None
    """x axis title."""
    ylabel: str | None = None
    """y axis title."""
    zmin: float = -1.0
    """Bottom of the colour scale."""
    zmax: float = 1.0
    """Top of the colour scale."""
    height: int = 380
    """Height in pixels."""


FigureSpec = (
    AnimHeatmapSpec | HeatmapSpec | BandsSpec | LinesSpec | Lines2Spec | ScatterSpec | GatesSpec | GroupedSpec
    | MatrixSpec
)
"""Any figure of the report; `reports.figures.figure(spec)` draws it by its type."""
