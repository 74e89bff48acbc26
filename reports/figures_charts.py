"""Bands, lines, scatter, gate and grouped (points with whiskers, or bars) figures."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports.model import sig
from reports.plot_base import error_bars, label, labels, layout, rgba
from reports.specs import (
    Band,
    BandsSpec,
    GatesSpec,
    GroupedSeries,
    GroupedSpec,
    Line,
    Lines2Spec,
    LinesSpec,
    ScatterSpec,
)

__all__ = ["bands_figure", "lines_figure", "lines2_figure", "scatter_figure", "gates_figure", "grouped_figure"]

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
                fillcolor=rgba(b.color, 0.18),
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
                name=label(f"{b.name} (median, IQR)"),
                line=dict(color=b.color, width=2),
                legendgroup=b.name,
                text=hover,
                hovertemplate="race %{x}: %{y}<br>%{text}<extra>" + label(b.name) + "</extra>",
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
                name=label(s.name),
                line=line,
                text=labels(s.text),
                legendgroup=s.name,
                showlegend=legend,
                hovertemplate="%{x}: %{y}"
                + ("<br>%{text}" if s.text else "")
                + "<extra>"
                + label(s.name)
                + "</extra>",
            ),
            **where,
        )


def bands_figure(spec: BandsSpec) -> go.Figure:
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
        return layout(fig, spec)
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
                name=label(e.name),
                line=dict(color=colour, width=1.3),
                hovertemplate="race %{x}: s = %{y}, abs-sum = %{customdata}<extra>" + label(e.name) + "</extra>",
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
                    hovertemplate="plateau at race %{x}<extra>" + label(e.name) + "</extra>",
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
    return layout(fig, spec)


def lines_figure(spec: LinesSpec) -> go.Figure:
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
    return layout(fig, spec)


def lines2_figure(spec: Lines2Spec) -> go.Figure:
    d = spec
    panels = d.panels
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[label(p.title) for p in panels], horizontal_spacing=0.1
    )
    for i, p in enumerate(panels):
        _add_lines(fig, p.series, 1, i + 1, legend=i == 0)
        fig.update_yaxes(title_text=p.ylabel, row=1, col=i + 1)
        if d.vline is not None:
            fig.add_vline(x=d.vline, line=dict(color="#374151", width=1, dash="dash"), row=1, col=i + 1)
    fig.update_xaxes(title_text=d.xlabel, type="category" if d.category_x else None)
    return layout(fig, spec)


def scatter_figure(spec: ScatterSpec) -> go.Figure:
    d = spec
    fig = go.Figure()
    for s in d.series:
        fig.add_trace(
            go.Scatter(
                x=s.x,
                y=s.y,
                text=labels(s.text),
                mode="markers",
                name=label(s.name),
                marker=dict(color=s.color, size=7, opacity=0.8),
                hovertemplate="%{text}<br>x = %{x}, y = %{y}<extra>" + label(s.name) + "</extra>",
            )
        )
    fig.update_xaxes(title_text=d.xlabel, range=d.xrange)
    fig.update_yaxes(title_text=d.ylabel, type="log" if d.log_y else None)
    return layout(fig, spec)


def gates_figure(spec: GatesSpec) -> go.Figure:
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
    return layout(fig, spec_h)


def grouped_figure(spec: GroupedSpec) -> go.Figure:
    d = spec
    panels = d.panels
    cols = 2 if len(panels) == 4 else max(len(panels), 1)
    rows = (len(panels) + cols - 1) // cols
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[label(p.title) for p in panels],
        horizontal_spacing=0.07,
        vertical_spacing=0.3 / rows,
    )
    seen: set[str] = set()
    for i, p in enumerate(panels):
        where = dict(row=i // cols + 1, col=i % cols + 1)
        for s in p.series:
            show = s.name not in seen
            seen.add(s.name)
            err = error_bars(s.y, s.lo, s.hi)
            common = dict(
                x=labels(p.categories),
                y=s.y,
                name=label(s.name),
                legendgroup=s.name,
                showlegend=show,
                hovertemplate="%{x}: %{y}<extra>" + label(s.name) + "</extra>",
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
    return layout(fig, spec_h, barmode="group", scattermode="group", bargap=0.25)


def _range(series: Sequence[GroupedSeries]) -> list[float] | None:
    """A y range that fits the points and their whiskers (Plotly would stretch to 0 here)."""
    vals = [v for s in series for vs in (s.y, s.lo, s.hi) for v in (vs or []) if v is not None]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.05
    return [sig(lo - pad), sig(hi + pad)]
