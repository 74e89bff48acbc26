"""The saturation section: F_tau by race, gate saturation, unit health and time to plateau."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from gruviz_core.results import RunResults
from reports.model import (
    MIN_BAND_DOGS,
    BandsSpec,
    GateLayer,
    GateSeries,
    GatesSpec,
    Line,
    LinesSpec,
    Panel,
    ScatterSeries,
    ScatterSpec,
    Section,
    Table,
    sig,
)
from reports.prose import EXPLAIN, INTRO
from reports.sections.common import bands, by_layer, ints, missing, nonempty, sigs

__all__ = ["saturation_section"]


def saturation_section(results: RunResults, layer: int) -> Section:
    """Magnitude, gate and spectral saturation, and how long dogs take to plateau."""
    panels = [
        _f_tau_panel(results, layer),
        _gate_panel(results.unit),
        *_unit_health_panels(results.unit, results.summary),
        _plateau_panel(results.plateau),
    ]
    return Section("saturation", "Saturation", INTRO["saturation"], tuple(panels))


def _f_tau_panel(results: RunResults, layer: int) -> Panel:
    explain = EXPLAIN["f-tau"]
    step = by_layer(results.step, layer)
    ds = results.dog_step
    if not nonempty(step) and not nonempty(ds):
        return Panel("F_tau by race", explain, note=missing("stats/step.parquet and stats/dog_step.parquet"))
    lines = []
    if nonempty(ds):
        ds = by_layer(ds, layer)
        g = ds.groupby("step", sort=True).agg(
            n=("f095", "size"), f090=("f090", "mean"), f095=("f095", "mean"), f099=("f099", "mean")
        )
        g = g[g["n"] >= MIN_BAND_DOGS]
        for col, tau, dash in (("f090", "0.9", "dot"), ("f095", "0.95", "solid"), ("f099", "0.99", "dash")):
            lines.append(Line(f"tau = {tau}", ints(g.index), sigs(g[col]), "#111827", dash))
    spec = BandsSpec(
        "fig-f-tau",
        bands=bands(step, "f095", ("saturated", "partial", "unsaturated")) if nonempty(step) else [],
        lines=lines,
        xlabel="race (step)",
        ylabel="F_tau (share of units)",
        yrange=[0, 1],
        split=True,
        height=400,
    )
    return Panel("F_tau by race", explain, spec)


def _first_seed(unit: pd.DataFrame) -> pd.DataFrame:
    return unit[unit["seed"] == unit["seed"].min()]


def _gate_panel(unit: pd.DataFrame | None) -> Panel:
    explain = EXPLAIN["gates"]
    if not nonempty(unit):
        return Panel("Gate saturation per layer", explain, note=missing("stats/unit.parquet"))
    unit = _first_seed(unit)
    layers = []
    for layer in sorted(unit["layer"].unique()):
        sub = unit[unit["layer"] == layer]
        gates = []
        for gate, colour in (("z", "#b45309"), ("r", "#0e7490")):
            g = sub[sub["gate"] == gate].sort_values("unit")
            if len(g):
                gates.append(GateSeries(f"{gate} gate", sigs(g["left"]), sigs(g["right"]), ints(g["unit"]), colour))
        layers.append(GateLayer(int(layer), gates))
    return Panel("Gate saturation per layer", explain, GatesSpec("fig-gates", layers, height=400))


def _layer_value(obj: Any, layer: int) -> Any:
    if isinstance(obj, dict):
        return obj.get(str(layer), obj.get(layer))
    if isinstance(obj, (list, tuple)):
        return obj[layer] if layer < len(obj) else None
    return obj


def _unit_health_panels(unit: pd.DataFrame | None, summary: Mapping[str, Any] | None) -> list[Panel]:
    explain_t = EXPLAIN["unit-health"]
    if not nonempty(unit):
        return [Panel("Unit health", explain_t, note=missing("stats/unit.parquet"))]
    unit = _first_seed(unit)
    state = unit[unit["gate"] == "h"] if (unit["gate"] == "h").any() else unit
    state = state.drop_duplicates(["layer", "unit"]).sort_values(["layer", "unit"])
    rows = []
    for layer in sorted(state["layer"].unique()):
        s = state[state["layer"] == layer]
        eff = _layer_value((summary or {}).get("effective_dim"), int(layer))
        rows.append(
            (
                int(layer),
                len(s),
                int(s["dead"].sum()),
                int(s["always_saturated"].sum()),
                sig(eff),
                sig(s["mean_abs"].mean()),
            )
        )
    table = Table(("layer", "units", "dead", "always saturated", "effective dimension", "mean |h|"), tuple(rows))
    dead, pinned = state["dead"].astype(bool), state["always_saturated"].astype(bool)
    series = [_unit_series("healthy", state[~(dead | pinned)], "#0f766e")]
    for name, mask, colour in (("dead", dead, "#6b7280"), ("always saturated", pinned, "#c2410c")):
        sub = state[mask]
        if len(sub):
            series.append(_unit_series(name, sub, colour))
    fig = ScatterSpec(
        "fig-unit-health", series, xlabel="mean |h|", ylabel="variance", log_y=True, xrange=[0, 1], height=360
    )
    return [Panel("Unit health", explain_t, table=table), Panel("Units: size vs movement", EXPLAIN["unit-scatter"], fig)]


def _unit_series(name: str, df: pd.DataFrame, colour: str) -> ScatterSeries:
    text = [f"layer {int(l)} unit {int(u)}" for l, u in zip(df["layer"], df["unit"])]
    return ScatterSeries(name, sigs(df["mean_abs"]), sigs(df["variance"]), text, colour)


def _plateau_panel(pl: pd.DataFrame | None) -> Panel:
    explain = EXPLAIN["plateau"]
    if not nonempty(pl):
        return Panel("Time to plateau", explain, note=missing("stats/plateau.parquet"))
    series = []
    for layer in sorted(pl["layer"].unique()):
        sub = pl[pl["layer"] == layer].sort_values("step")
        sub = sub[sub["at_risk"] >= MIN_BAND_DOGS]
        text = [f"{int(a):,} dogs still racing" for a in sub["at_risk"]]
        series.append(Line(f"layer {int(layer)}", ints(sub["step"]), sigs(sub["survival"]), shape="hv", text=text))
    spec = LinesSpec(
        "fig-plateau", series, xlabel="race (step)", ylabel="share not yet plateaued", yrange=[0, 1.02], hline=0.5,
        height=360,
    )
    return Panel("Time to plateau", explain, spec)
