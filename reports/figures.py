"""Plotly figures from the report's typed figure specs (`reports.specs` in, `go.Figure` or an HTML fragment out).

One drawer per spec type. Fragments never include plotly.js (the page loads it once) and
always use the spec's fixed div id, so the same model renders to the same bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gruviz_core.errors import ConfigError
from reports.model import sig
from reports.specs import (
    AnimHeatmapSpec, Band, BandsSpec, FigureSpec, GatesSpec, GroupedSeries, GroupedSpec, HeatmapSpec, Line,
    Lines2Spec, LinesSpec, ScatterSpec,
)

__all__ = ["figure", "figure_html", "COLORSCALE", "PLOTLY_CONFIG"]

COLORSCALE = "RdBu_r"
"""Diverging: blue -1, white 0, red +1 (the notebook's choice)."""
PLOTLY_CONFIG: Mapping[str, Any] = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
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
_CURTAIN = "rgba(243,244,246,0.97)"
REDRAW = True
"""Animation frames repaint: heatmaps vanish in plotly.js transitions without a redraw (plotly.js#4491)."""


def _layout(fig: go.Figure, spec: FigureSpec, **extra: Any) -> go.Figure:
    base: dict[str, Any] = dict(
        template="none",
        height=spec.height,
        font=dict(family=_FONT, size=12, color="#1f2937"),
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
        hoverlabel=dict(font=dict(family=_FONT)),
    )
    fig.update_layout(**{**base, **extra})
    fig.update_xaxes(**_AXIS)
    fig.update_yaxes(**_AXIS)
    for a in fig.layout.annotations or ():  # subplot titles
        a.font = dict(family=_FONT, size=13, color="#111827")
    return fig


def _t(s: Any) -> str:
    """Text from data for Plotly labels: Plotly renders some HTML tags and %{...} in hover templates, so escape both."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("%{", "%&#123;")


def _ts(values: Sequence[Any] | None) -> list[str] | None:
    return None if values is None else [_t(v) for v in values]


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _err(y: Sequence, lo: Sequence | None, hi: Sequence | None) -> dict | None:
    if lo is None or hi is None:
        return None
    plus = [None if (v is None or h is None) else sig(h - v) for v, h in zip(y, hi)]
    minus = [None if (v is None or l is None) else sig(v - l) for v, l in zip(y, lo)]
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1.4, width=4)


# ---------------------------------------------------------------- hidden-state heatmaps


def _curtain(t: int, n_steps: int, n_units: int) -> tuple[list[float], list[float]]:
    """Polygon veiling the races after t (empty when the dog has no more races)."""
    left = min(t, n_steps) + 0.5
    right = n_steps + 0.5
    return [left, right, right, left, left], [-0.5, -0.5, n_units - 0.5, n_units - 0.5, -0.5]


def _anim_heatmap(spec: AnimHeatmapSpec) -> go.Figure:
    dogs, frames_at, layer = spec.dogs, spec.frames, spec.layer
    titles = [_t(f"{d.name} - {d.cohort} - {d.n_steps} races") for d in dogs]
    fig = make_subplots(rows=1, cols=len(dogs), subplot_titles=titles, horizontal_spacing=0.09)
    for i, d in enumerate(dogs):
        lz = min(layer, d.n_layers - 1)
        fig.add_trace(
            go.Heatmap(
                z=d.z[lz],
                x=d.steps,
                y=list(range(d.n_units)),
                customdata=[d.dates] * d.n_units,
                zmin=-1,
                zmax=1,
                zmid=0,
                colorscale=COLORSCALE,
                showscale=i == 0,
                colorbar=dict(title=dict(text="h"), len=0.75, thickness=12, x=1.01),
                hovertemplate="race %{x} (%{customdata})<br>unit %{y}<br>h = %{z}<extra>" + _t(d.name) + "</extra>",
            ),
            row=1,
            col=i + 1,
        )
    first = frames_at[0]
    n = len(dogs)
    for i, d in enumerate(dogs):
        x, y = _curtain(first, d.n_steps, d.n_units)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                fill="toself",
                fillcolor=_CURTAIN,
                line=dict(color="#6b7280", width=1),
                hoverinfo="skip",
                showlegend=False,
            ),
            row=1,
            col=i + 1,
        )
    frames = []
    for t in frames_at:
        data = []
        for d in dogs:
            x, y = _curtain(t, d.n_steps, d.n_units)
            data.append(go.Scatter(x=x, y=y))
        frames.append(go.Frame(name=str(t), data=data, traces=list(range(n, 2 * n))))
    fig.frames = frames
    for i, d in enumerate(dogs):
        fig.update_xaxes(range=[0.5, d.n_steps + 0.5], autorange=False, title_text="race", row=1, col=i + 1)
        fig.update_yaxes(
            range=[-0.5, d.n_units - 0.5],
            autorange=False,
            title_text=f"unit (layer {lz})" if i == 0 else None,
            row=1,
            col=i + 1,
        )
    # Frames carry only the two veils' 5-point outlines (data only; axes fixed above). redraw=True because
    # plotly.js clears heatmap (and fill) traces on redraw=False transitions (plotly.js#4491); repainting two
    # small heatmaps per frame is cheap.
    play = dict(frame=dict(duration=90, redraw=REDRAW), transition=dict(duration=0), fromcurrent=True, mode="immediate")
    stop = dict(frame=dict(duration=0, redraw=REDRAW), transition=dict(duration=0), mode="immediate")
    _layout(
        fig,
        spec,
        margin=dict(l=64, r=24, t=56, b=110),
        updatemenus=[
            dict(
                type="buttons",
                direction="left",
                showactive=False,
                x=0,
                y=-0.2,
                xanchor="left",
                yanchor="top",
                pad=dict(t=0, r=10),
                buttons=[
                    dict(label="Play", method="animate", args=[None, play]),
                    dict(label="Stop", method="animate", args=[[None], stop]),
                ],
            )
        ],
        sliders=[
            dict(
                active=0,
                x=0.14,
                y=-0.2,
                len=0.86,
                xanchor="left",
                yanchor="top",
                pad=dict(t=0, b=0),
                currentvalue=dict(prefix="race ", visible=True, xanchor="right", font=dict(size=13, color="#111827")),
                font=dict(color="rgba(0,0,0,0)"),  # 100 tick labels are noise: the current race shows above
                ticklen=3,
                transition=dict(duration=0),
                steps=[dict(method="animate", label=str(t), args=[[str(t)], stop]) for t in frames_at],
            )
        ],
    )
    return fig


def _static_heatmap(spec: HeatmapSpec) -> go.Figure:
    dogs, n_layers = spec.dogs, spec.n_layers
    titles = [_t(f"{d.name} - layer {l}") for l in range(n_layers) for d in dogs]
    fig = make_subplots(
        rows=n_layers,
        cols=len(dogs),
        subplot_titles=titles,
        horizontal_spacing=0.09,
        vertical_spacing=0.3 / max(n_layers, 1) + 0.06,
    )
    for l in range(n_layers):
        for i, d in enumerate(dogs):
            if l >= d.n_layers:
                continue
            fig.add_trace(
                go.Heatmap(
                    z=d.z[l],
                    x=d.steps,
                    y=list(range(d.n_units)),
                    customdata=[d.dates] * d.n_units,
                    zmin=-1,
                    zmax=1,
                    zmid=0,
                    colorscale=COLORSCALE,
                    showscale=(l == 0 and i == 0),
                    colorbar=dict(title=dict(text="h"), len=0.75, thickness=12, x=1.01),
                    hovertemplate="race %{x} (%{customdata})<br>unit %{y}<br>h = %{z}<extra>"
                    + _t(d.name)
                    + "</extra>",
                ),
                row=l + 1,
                col=i + 1,
            )
            if d.plateau:
                fig.add_vline(x=d.plateau, line=dict(color="#111827", width=1.5, dash="dash"), row=l + 1, col=i + 1)
            fig.update_xaxes(
                title_text="race" if l == n_layers - 1 else None, range=[0.5, d.n_steps + 0.5], row=l + 1, col=i + 1
            )
            fig.update_yaxes(
                title_text="unit" if i == 0 else None, range=[-0.5, d.n_units - 0.5], row=l + 1, col=i + 1
            )
    return _layout(fig, spec)


# ---------------------------------------------------------------- lines and bands


def _add_bands(fig: go.Figure, bands: Sequence[Band], row: int | None = None, col: int | None = None) -> None:
    where = dict(row=row, col=col) if row else {}
    for b in bands:
        hover = [f"{n:,} dogs" for n in b.n] or None
        fig.add_trace(
            go.Scatter(
                x=b.x,
                y=b.lo,
                mode="lines",
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=b.name,
            ),
            **where,
        )
        fig.add_trace(
            go.Scatter(
                x=b.x,
                y=b.hi,
                mode="lines",
                line=dict(width=0),
                fill="tonexty",
                fillcolor=_rgba(b.color, 0.18),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=b.name,
            ),
            **where,
        )
        fig.add_trace(
            go.Scatter(
                x=b.x,
                y=b.mid,
                mode="lines",
                name=_t(f"{b.name} (median, IQR)"),
                line=dict(color=b.color, width=2),
                legendgroup=b.name,
                text=hover,
                hovertemplate="race %{x}: %{y}<br>%{text}<extra>" + _t(b.name) + "</extra>",
            ),
            **where,
        )


def _add_lines(
    fig: go.Figure, series: Sequence[Line], row: int | None = None, col: int | None = None, legend: bool = True
) -> None:
    where = dict(row=row, col=col) if row else {}
    for s in series:
        line = dict(width=2, dash=s.dash, shape=s.shape)
        if s.color:
            line["color"] = s.color
        fig.add_trace(
            go.Scatter(
                x=s.x,
                y=s.y,
                mode=s.mode,
                name=_t(s.name),
                line=line,
                text=_ts(s.text),
                legendgroup=s.name,
                showlegend=legend,
                hovertemplate="%{x}: %{y}"
                + ("<br>%{text}" if s.text else "")
                + "<extra>"
                + _t(s.name)
                + "</extra>",
            ),
            **where,
        )


def _bands_figure(spec: BandsSpec) -> go.Figure:
    d = spec
    if d.split:
        fig = make_subplots(
            rows=1, cols=2, subplot_titles=["F_0.95 by cohort", "all dogs, three thresholds"], horizontal_spacing=0.1
        )
        _add_bands(fig, d.bands, 1, 1)
        _add_lines(fig, d.lines, 1, 2)
        fig.update_yaxes(range=d.yrange, title_text=d.ylabel, row=1, col=1)
        fig.update_yaxes(range=d.yrange, row=1, col=2)
        fig.update_xaxes(title_text=d.xlabel)
        return _layout(fig, spec)
    fig = go.Figure()
    _add_bands(fig, d.bands)
    _add_lines(fig, d.lines)
    palette = ("#111827", "#0e7490", "#9333ea", "#be123c")
    for i, e in enumerate(d.exemplars):
        colour = palette[i % len(palette)]
        fig.add_trace(
            go.Scatter(
                x=e.x,
                y=e.y,
                customdata=e.abs_sum,
                mode="lines",
                name=_t(e.name),
                line=dict(color=colour, width=1.3),
                hovertemplate="race %{x}: s = %{y}, abs-sum = %{customdata}<extra>" + _t(e.name) + "</extra>",
            )
        )
        if e.plateau and e.plateau in e.x:
            k = e.x.index(e.plateau)
            fig.add_trace(
                go.Scatter(
                    x=[e.plateau],
                    y=[e.y[k]],
                    mode="markers",
                    marker=dict(symbol="diamond", size=11, color=colour, line=dict(color="white", width=1)),
                    name=f"plateau of {e.name}",
                    showlegend=False,
                    hovertemplate="plateau at race %{x}<extra>" + _t(e.name) + "</extra>",
                )
            )
    if d.vline is not None:
        fig.add_vline(
            x=d.vline,
            line=dict(color="#374151", width=1.2, dash="dash"),
            annotation_text=d.vline_label or "",
            annotation_position="top right",
        )
    fig.update_xaxes(title_text=d.xlabel)
    fig.update_yaxes(title_text=d.ylabel, range=d.yrange)
    return _layout(fig, spec)


def _lines_figure(spec: LinesSpec) -> go.Figure:
    d = spec
    fig = go.Figure()
    _add_lines(fig, d.series)
    if d.diagonal:
        v = d.diagonal
        fig.add_trace(
            go.Scatter(
                x=[0, v],
                y=[0, v],
                mode="lines",
                name="perfect calibration",
                line=dict(color="#9ca3af", dash="dash", width=1),
                hoverinfo="skip",
            )
        )
    if d.hline is not None:
        fig.add_hline(y=d.hline, line=dict(color="#9ca3af", width=1, dash="dot"))
    fig.update_xaxes(title_text=d.xlabel, range=d.xrange)
    fig.update_yaxes(title_text=d.ylabel, range=d.yrange, type=None)
    return _layout(fig, spec)


def _lines2_figure(spec: Lines2Spec) -> go.Figure:
    d = spec
    panels = d.panels
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[_t(p.title) for p in panels], horizontal_spacing=0.1
    )
    for i, p in enumerate(panels):
        _add_lines(fig, p.series, 1, i + 1, legend=i == 0)
        fig.update_yaxes(title_text=p.ylabel, row=1, col=i + 1)
        if d.vline is not None:
            fig.add_vline(x=d.vline, line=dict(color="#374151", width=1, dash="dash"), row=1, col=i + 1)
    fig.update_xaxes(title_text=d.xlabel, type="category" if d.category_x else None)
    return _layout(fig, spec)


def _scatter_figure(spec: ScatterSpec) -> go.Figure:
    d = spec
    fig = go.Figure()
    for s in d.series:
        fig.add_trace(
            go.Scatter(
                x=s.x,
                y=s.y,
                text=_ts(s.text),
                mode="markers",
                name=_t(s.name),
                marker=dict(color=s.color, size=7, opacity=0.8),
                hovertemplate="%{text}<br>x = %{x}, y = %{y}<extra>" + _t(s.name) + "</extra>",
            )
        )
    fig.update_xaxes(title_text=d.xlabel, range=d.xrange)
    fig.update_yaxes(title_text=d.ylabel, type="log" if d.log_y else None)
    return _layout(fig, spec)


def _gates_figure(spec: GatesSpec) -> go.Figure:
    layers = spec.layers
    cols = min(len(layers), 4) or 1
    rows = (len(layers) + cols - 1) // cols
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[f"layer {l.layer}" for l in layers], horizontal_spacing=0.08
    )
    for k, l in enumerate(layers):
        r, c = k // cols + 1, k % cols + 1
        for g in l.gates:
            fig.add_trace(
                go.Scatter(
                    x=g.x,
                    y=g.y,
                    customdata=g.unit,
                    mode="markers",
                    name=g.name,
                    legendgroup=g.name,
                    showlegend=k == 0,
                    marker=dict(color=g.color, size=7, opacity=0.75),
                    hovertemplate="unit %{customdata}<br>left %{x}, right %{y}<extra>" + g.name + "</extra>",
                ),
                row=r,
                col=c,
            )
        fig.add_trace(
            go.Scatter(
                x=[0, 1],
                y=[1, 0],
                mode="lines",
                line=dict(color="#d1d5db", dash="dot", width=1),
                hoverinfo="skip",
                showlegend=False,
            ),
            row=r,
            col=c,
        )
        fig.update_xaxes(range=[-0.02, 1.02], title_text="fraction < 0.1 (left)", row=r, col=c)
        fig.update_yaxes(range=[-0.02, 1.02], title_text="fraction > 0.9 (right)" if c == 1 else None, row=r, col=c)
    spec_h = dataclasses.replace(spec, height=max(spec.height, 360 * rows))
    return _layout(fig, spec_h)


def _grouped_figure(spec: GroupedSpec) -> go.Figure:
    d = spec
    panels = d.panels
    cols = 2 if len(panels) == 4 else max(len(panels), 1)
    rows = (len(panels) + cols - 1) // cols
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[_t(p.title) for p in panels],
        horizontal_spacing=0.07,
        vertical_spacing=0.3 / rows,
    )
    seen: set[str] = set()
    for i, p in enumerate(panels):
        where = dict(row=i // cols + 1, col=i % cols + 1)
        for s in p.series:
            show = s.name not in seen
            seen.add(s.name)
            err = _err(s.y, s.lo, s.hi)
            common = dict(
                x=_ts(p.categories),
                y=s.y,
                name=_t(s.name),
                legendgroup=s.name,
                showlegend=show,
                hovertemplate="%{x}: %{y}<extra>" + _t(s.name) + "</extra>",
            )
            if d.mode == "bars":
                fig.add_trace(go.Bar(marker_color=s.color, error_y=err, **common), **where)
            else:
                fig.add_trace(
                    go.Scatter(mode="markers", marker=dict(color=s.color, size=9), error_y=err, **common), **where
                )
        if d.mode != "bars":
            fig.update_yaxes(range=_range(p.series), **where)
    fig.update_xaxes(type="category")
    spec_h = dataclasses.replace(spec, height=spec.height if rows == 1 else int(spec.height * 1.6))
    return _layout(fig, spec_h, barmode="group", scattermode="group", bargap=0.25)


def _range(series: Sequence[GroupedSeries]) -> list[float] | None:
    """A y range that fits the points and their whiskers (Plotly would stretch to 0 here)."""
    vals = [v for s in series for vs in (s.y, s.lo, s.hi) for v in (vs or []) if v is not None]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.05
    return [sig(lo - pad), sig(hi + pad)]


_DRAWERS: Mapping[type, Callable[[Any], go.Figure]] = {
    AnimHeatmapSpec: _anim_heatmap,
    HeatmapSpec: _static_heatmap,
    BandsSpec: _bands_figure,
    LinesSpec: _lines_figure,
    Lines2Spec: _lines2_figure,
    ScatterSpec: _scatter_figure,
    GatesSpec: _gates_figure,
    GroupedSpec: _grouped_figure,
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
