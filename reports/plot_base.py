"""What every report figure shares: fonts, axes, the colour scale, text escaping and error bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from reports.model import sig
from reports.specs import FigureSpec

__all__ = ["COLORSCALE", "PLOTLY_CONFIG", "REDRAW", "CURTAIN", "layout", "label", "labels", "rgba", "error_bars"]

COLORSCALE = "RdBu_r"
"""Diverging: blue -1, white 0, red +1 (the notebook's choice)."""
PLOTLY_CONFIG: Mapping[str, Any] = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
_GRID = "#e5e7eb"
_AXIS = dict(
    gridcolor=_GRID,
    zeroline=False,
    showline=True,
    linecolor="#9ca3af",
    ticks="outside",
    tickcolor="#9ca3af",
    automargin=True,
)
CURTAIN = "rgba(243,244,246,0.97)"
REDRAW = True
"""Animation frames repaint: heatmaps vanish in plotly.js transitions without a redraw (plotly.js#4491)."""


def layout(fig: go.Figure, spec: FigureSpec, **extra: Any) -> go.Figure:
    """The house style, the spec's height and any `extra` layout."""
    base: dict[str, Any] = dict(
        template="none",
        height=spec.height,
        font=dict(family=FONT, size=12, color="#1f2937"),
        margin=dict(l=64, r=24, t=80, b=56),
        paper_bgcolor="white",
        plot_bgcolor="white",
        hovermode="closest",
        # In the top margin, above any subplot titles.
        legend=dict(
            orientation="h",
            x=0,
            y=1,
            xref="paper",
            yref="container",
            xanchor="left",
            yanchor="top",
            bgcolor="rgba(255,255,255,0)",
        ),
        hoverlabel=dict(font=dict(family=FONT)),
    )
    fig.update_layout(**{**base, **extra})
    fig.update_xaxes(**_AXIS)
    fig.update_yaxes(**_AXIS)
    for a in fig.layout.annotations or ():  # subplot titles
        a.font = dict(family=FONT, size=13, color="#111827")
    return fig


def label(s: Any) -> str:
    """Text from data for Plotly labels: Plotly renders some HTML tags and %{...} in hover templates, so escape both."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("%{", "%&#123;")


def labels(values: Sequence[Any] | None) -> list[str] | None:
    """Each value through `label`."""
    return None if values is None else [label(v) for v in values]


def rgba(hex_colour: str, alpha: float) -> str:
    """A #rrggbb colour with transparency."""
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def error_bars(y: Sequence, lo: Sequence | None, hi: Sequence | None) -> dict | None:
    """Asymmetric whiskers from an interval (None without one)."""
    if lo is None or hi is None:
        return None
    plus = [None if (v is None or h is None) else sig(h - v) for v, h in zip(y, hi)]
    minus = [None if (v is None or l is None) else sig(v - l) for v, l in zip(y, lo)]
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1.4, width=4)
