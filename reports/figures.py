"""Plotly figures from the report's typed figure specs (`reports.specs` in, `go.Figure` or an HTML fragment out).

One drawer per spec type (heatmaps in `reports.figures_heatmaps`, the rest in `reports.figures_charts`).
Fragments never include plotly.js (the page loads it once) and always use the spec's fixed div id,
so the same model renders to the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import plotly.graph_objects as go

from gruviz_core.errors import ConfigError
from reports.figures_charts import (
    bands_figure,
    gates_figure,
    grouped_figure,
    lines2_figure,
    lines_figure,
    scatter_figure,
)
from reports.figures_heatmaps import anim_heatmap, matrix_heatmap, static_heatmap
from reports.plot_base import COLORSCALE, PLOTLY_CONFIG, REDRAW
from reports.specs import (
    AnimHeatmapSpec,
    BandsSpec,
    FigureSpec,
    GatesSpec,
    GroupedSpec,
    HeatmapSpec,
    Lines2Spec,
    LinesSpec,
    MatrixSpec,
    ScatterSpec,
)

__all__ = ["figure", "figure_html", "COLORSCALE", "PLOTLY_CONFIG", "REDRAW"]

_DRAWERS: Mapping[type, Callable[[Any], go.Figure]] = {
    AnimHeatmapSpec: anim_heatmap,
    HeatmapSpec: static_heatmap,
    BandsSpec: bands_figure,
    LinesSpec: lines_figure,
    Lines2Spec: lines2_figure,
    ScatterSpec: scatter_figure,
    GatesSpec: gates_figure,
    GroupedSpec: grouped_figure,
    MatrixSpec: matrix_heatmap,
}


def figure(spec: FigureSpec) -> go.Figure:
    """The Plotly figure for a spec."""
    try:
        draw = _DRAWERS[type(spec)]
    except KeyError:
        raise ConfigError(
            f"figure {getattr(spec, 'div_id', '?')}: unknown spec type {type(spec).__name__}; "
            f"expected one of {sorted(t.__name__ for t in _DRAWERS)} (reports.specs)"
        ) from None
    return draw(spec)


def figure_html(spec: FigureSpec) -> str:
    """An HTML fragment (div + script) for the spec: no plotly.js, fixed div id, no autoplay."""
    return figure(spec).to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=spec.div_id,
        auto_play=False,
        config=dict(PLOTLY_CONFIG),
        default_height=f"{spec.height}px",
    )
