"""The hidden-state heatmaps: animated (Play/Stop, a slider, a veil over races still to come) and static; a labelled
matrix (units x quantities)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports.plot_base import COLORSCALE, CURTAIN, REDRAW, label, labels, layout
from reports.specs import AnimHeatmapSpec, HeatmapSpec, MatrixSpec

__all__ = ["anim_heatmap", "static_heatmap", "matrix_heatmap"]

def _curtain(t: int, n_steps: int, n_units: int) -> tuple[list[float], list[float]]:
    """Polygon veiling the races after t (empty when the dog has no more races)."""
    left = min(t, n_steps) + 0.5
    right = n_steps + 0.5
    return [left, right, right, left, left], [-0.5, -0.5, n_units - 0.5, n_units - 0.5, -0.5]


def anim_heatmap(spec: AnimHeatmapSpec) -> go.Figure:
    dogs, frames_at, layer = spec.dogs, spec.frames, spec.layer
    titles = [label(f"{d.name} - {d.cohort} - {d.n_steps} races") for d in dogs]
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
                hovertemplate="race %{x} (%{customdata})<br>unit %{y}<br>h = %{z}<extra>" + label(d.name) + "</extra>",
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
                fillcolor=CURTAIN,
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
    layout(
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


def static_heatmap(spec: HeatmapSpec) -> go.Figure:
    dogs, n_layers = spec.dogs, spec.n_layers
    titles = [label(f"{d.name} - layer {l}") for l in range(n_layers) for d in dogs]
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
                    + label(d.name)
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
    return layout(fig, spec)


def matrix_heatmap(spec: MatrixSpec) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=spec.z,
            x=labels(spec.x),
            y=labels(spec.y),
            zmin=spec.zmin,
            zmax=spec.zmax,
            zmid=0,
            colorscale=COLORSCALE,
            colorbar=dict(title=dict(text=label(spec.zlabel)), len=0.75, thickness=12),
            hovertemplate="%{y}<br>%{x}<br>" + label(spec.zlabel) + " = %{z}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text=spec.xlabel, type="category", tickangle=-35)
    fig.update_yaxes(title_text=spec.ylabel, type="category", autorange="reversed")
    return layout(fig, spec, margin=dict(l=72, r=24, t=40, b=110))
