"""The diagnostics section (closed by default): magnitude in numbers, time to plateau and its grid, gate
saturation, unit health, calibration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from gruviz_core.results import RunResults, StatsSummary
from reports.model import (
    MIN_BAND_DOGS,
    SOURCE_COLOURS,
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
from reports.prose import COHORT_EXPLAIN, EXPLAIN, INTRO
from reports.sections.common import ints, missing, nonempty, sigs

__all__ = ["saturation_section"]


def saturation_section(results: RunResults, layer: int) -> Section:
    """Diagnostics, closed by default: magnitude in numbers, time to plateau across the grid, gates, unit health,
    calibration."""
    head = results.headline if isinstance(results.headline, Mapping) else {}
    panels = [
        _magnitude_panel(head.get("magnitude")),
        _plateau_panel(results.plateau),
        *_km_grid_panel(head.get("plateau")),
        _gate_panel(results.unit),
        *_unit_health_panels(results.unit, results.summary),
        _calibration_panel(results.calibration),
    ]
    return Section("saturation", "Diagnostics: magnitude, plateau timing, gates, units, calibration",
                   INTRO["saturation"], tuple(panels), collapsed=True)


def _magnitude_panel(mag: Any) -> Panel:
    title = "Magnitude saturation in numbers"
    if not isinstance(mag, Mapping) or not mag:
        return Panel(title, "", note=missing("the headline's magnitude"))
    rows = (
        ("largest |h| in any state", sig(mag.get("max_abs"))),
        ("99th percentile of a state's largest |h|", sig(mag.get("q99_max_abs"))),
        ("share of states with any unit >= 0.95", sig(mag.get("share_states_any_095"))),
        ("share of states with any unit >= 0.90", sig(mag.get("share_states_any_090"))),
        ("states", None if mag.get("n_states") is None else int(mag["n_states"])),
        ("tanh-f groups big enough to compare", bool(mag.get("tanh_comparable"))),
    )
    return Panel(title, EXPLAIN["magnitude"], table=Table(("", "value"), rows))


def _km_grid_panel(plateau: Any) -> list[Panel]:
    grid = [g for g in (plateau or {}).get("km_grid") or [] if isinstance(g, Mapping)] if isinstance(plateau, Mapping) else []
    if not grid:
        return []
    rows = [("default", None, None if plateau.get("km_median") is None else int(plateau["km_median"]))]
    rows += [(str(g.get("param")), sig(g.get("value")), None if g.get("median") is None else int(g["median"]))
             for g in grid]
    return [Panel("Time to plateau across the rule's grid", EXPLAIN["km-grid"],
                  table=Table(("parameter moved", "value", "KM median race"), tuple(rows)))]


def _calibration_panel(cal: pd.DataFrame | None) -> Panel:
    """Model and market as separate series, all dogs, bin counts on hover."""
    title = "Calibration"
    if not nonempty(cal):
        return Panel(title, "", note=missing("eval/calibration.parquet"))
    sub = cal[cal["cohort"] == "all"] if (cal["cohort"] == "all").any() else cal
    series = []
    for src in [s for s in SOURCE_COLOURS if s in set(sub["source"])] + sorted(set(sub["source"]) - set(SOURCE_COLOURS)):
        s = sub[sub["source"] == src].sort_values("bin")
        text = [f"{int(n):,} runners" for n in s["n"]]
        series.append(Line(str(src), sigs(s["p_mean"]), sigs(s["won_rate"]), SOURCE_COLOURS.get(src, "#374151"),
                           mode="lines+markers", text=text))
    hi = sig(max(sub["p_mean"].max(), sub["won_rate"].max()) * 1.05) or 1.0
    series.append(Line("perfect calibration", [0.0, hi], [0.0, hi], "#9ca3af", dash="dash"))
    spec = LinesSpec("fig-calibration", series, xlabel="predicted probability", ylabel="observed win rate", height=360)
    return Panel(title, COHORT_EXPLAIN["calibration"], spec)


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


def _unit_health_panels(unit: pd.DataFrame | None, summary: StatsSummary | None) -> list[Panel]:
    explain_t = EXPLAIN["unit-health"]
    if not nonempty(unit):
        return [Panel("Unit health", explain_t, note=missing("stats/unit.parquet"))]
    unit = _first_seed(unit)
    state = unit[unit["gate"] == "h"] if (unit["gate"] == "h").any() else unit
    state = state.drop_duplicates(["layer", "unit"]).sort_values(["layer", "unit"])
    rows = []
    for layer in sorted(state["layer"].unique()):
        s = state[state["layer"] == layer]
        eff = _layer_value(summary.effective_dim if summary else None, int(layer))
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
