"""The hidden-state heatmaps of two dogs and the abs-sum per race; which dogs they show."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from gruviz_core.exemplars import MIN_RACES, typical_dogs
from gruviz_core.results import DogStates, DogStatesSet, RunResults
from reports.model import (
    MAX_FRAMES,
    MAX_HEATMAP_STEPS,
    MIN_BAND_DOGS,
    AnimHeatmapSpec,
    BandsSpec,
    DogHeat,
    ExemplarCurve,
    HeatmapSpec,
    Line,
    LinesSpec,
    Panel,
    Section,
    Table,
    sig,
)
from reports.prose import EXPLAIN, INTRO, STATES_HOW
from reports.sections.common import bands, by_layer, colour, ints, missing, nonempty, sigs

__all__ = ["choose_dogs", "states_section", "abs_sum_section"]

_TITLE = "Hidden states of two typical dogs"


def choose_dogs(dog: pd.DataFrame, watchlist: Sequence[str]) -> tuple[list[dict], str]:
    """Watchlist dogs (by id or name) first, then typical dogs (`gruviz_core.exemplars.typical_dogs`); two at most.

    `dog`: stats/dog.parquet at the cohort layer. Returns the dogs' rows and how they were chosen."""
    top = dog.sort_values("dog_index", kind="stable")
    picked: list[dict] = []
    for w in watchlist:
        hit = top[
            (top["dog_id"].astype(str) == str(w)) | (top["dog_name"].astype(str).str.casefold() == str(w).casefold())
        ]
        for _, r in hit.head(1).iterrows():
            if r["dog_id"] not in [p["dog_id"] for p in picked]:
                picked.append(r.to_dict())
        if len(picked) == 2:
            return picked, STATES_HOW["watchlist"]
    how = STATES_HOW["some"] if picked else STATES_HOW["none"]
    how += STATES_HOW["exemplars"].format(min_races=MIN_RACES)
    taken = {p["dog_id"] for p in picked}
    for _, r in typical_dogs(top[~top["dog_id"].isin(taken)], n=2 - len(picked)).iterrows():
        picked.append(r.to_dict())
    return picked, how


def states_section(
    dog: pd.DataFrame | None, watchlist: Sequence[str], dogs: DogStatesSet, *, run_id: str | None = None,
    pairs: Sequence[tuple[str, str]] = (), errors: Sequence[dict] = (),
) -> Section:
    """Animated and static heatmaps of the chosen dogs' states; with `run_id`, their explorer pages (and the
    divergence `pairs`'), which the page turns into links when gruviz serve serves it."""
    intro = INTRO["states"]
    if dog is None:
        return Section("states", _TITLE, intro, (Panel("Heatmaps", "", note=missing("stats/dog.parquet")),))
    chosen, how = choose_dogs(dog, watchlist)
    if dogs.note is not None:
        return Section("states", _TITLE, intro, (Panel("Heatmaps", "", note=dogs.note),))
    problems = list(dogs.problems)
    heats = []
    for row in chosen:
        st = dogs.by_id.get(str(row["dog_id"]))
        if st is None:
            if not any(p.startswith(f"{row['dog_id']}: ") for p in problems):
                problems.append(f"{row['dog_id']}: not given to the report")
            continue
        heats.append(_dog_heat(st, row))
    if not heats:
        note = "States could not be read: " + "; ".join(problems)
        return Section("states", _TITLE, intro, (Panel("Heatmaps", "", note=note),))
    n_layers = max(d.n_layers for d in heats)
    frames = _frame_steps(max(d.n_steps for d in heats))
    names = ", ".join(f"{d.name} ({d.cohort})" for d in heats)
    panels = [
        Panel(
            "Animated: the state race by race",
            EXPLAIN["states-anim"].format(how=how),
            AnimHeatmapSpec("fig-states-anim", heats, frames, n_layers - 1, height=420),
        ),
        Panel(
            "Static: races x units, every layer",
            EXPLAIN["states-static"],
            HeatmapSpec("fig-states-static", heats, n_layers, height=max(320, 260 * n_layers)),
            closed=True,
        ),
    ]
    if problems:
        panels.append(Panel("Dogs not shown", "", note="Could not read: " + "; ".join(problems)))
    if run_id:
        panels.append(_explorer_panel(run_id, heats, pairs, errors))
    return Section("states", f"{_TITLE}: {names}", intro, tuple(panels))


def _explorer_panel(
    run_id: str, heats: Sequence[DogHeat], pairs: Sequence[tuple[str, str]], errors: Sequence[dict] = ()
) -> Panel:
    """Each heatmap dog's, divergence pair's and largest error's explorer page (a link when served)."""
    page = "/explore/{}/dog/{}".format
    rows = [(d.name, d.cohort, page(quote(run_id, safe=""), quote(d.id, safe=""))) for d in heats]
    rows += [(f"{a} vs {b}", "divergence pair", page(quote(run_id, safe=""), quote(a, safe="")) + "?vs="
              + quote(b, safe="")) for a, b in pairs]
    rows += [(str(e.get("dog_id")), f"largest error: {e.get('race_id')} ({e.get('race_date')}, "
              f"{'won' if e.get('won') else 'lost'})", page(quote(run_id, safe=""), quote(str(e.get("dog_id")), safe="")))
             for e in errors]
    explain = ("Every dog's states, gates, abs-sum and predictions, read from the store on demand: "
               "served by gruviz serve, these open in the explorer (/explore); opened from disk they are paths.")
    return Panel("Open in the explorer", explain, table=Table(("dog", "cohort", "explorer page"), tuple(rows)),
                 collapsed=True)


def _frame_steps(t_max: int) -> list[int]:
    """At most MAX_FRAMES steps 1..t_max, evenly sampled, always including the last."""
    if t_max <= MAX_FRAMES:
        return list(range(1, t_max + 1))
    return sorted(set(np.round(np.linspace(1, t_max, MAX_FRAMES)).astype(int).tolist()))


def _dog_heat(st: DogStates, row: dict) -> DogHeat:
    """One dog's states as plain lists for the heatmaps: per layer (unit, step) with 3 decimals."""
    h = np.asarray(st.h, dtype=np.float32)  # (T, L, H)
    t = h.shape[0]
    idx = (
        np.arange(t)
        if t <= MAX_HEATMAP_STEPS
        else np.unique(np.round(np.linspace(0, t - 1, MAX_HEATMAP_STEPS)).astype(int))
    )
    layers = []
    for layer in range(h.shape[1]):
        m = np.round(h[idx, layer, :].T.astype(np.float64), 3)  # (H, steps)
        layers.append([[None if not math.isfinite(v) else float(v) for v in r] for r in m.tolist()])
    plateau = row.get("plateau_step")
    return DogHeat(
        id=str(st.dog_id),
        name=str(st.dog_name),
        cohort=str(row.get("cohort", "")),
        n_steps=int(t),
        n_layers=int(h.shape[1]),
        n_units=int(h.shape[2]),
        steps=ints(idx + 1),
        dates=[str(d)[:10] for d in np.asarray(st.race_date)[idx]],
        z=layers,
        plateau=None if plateau is None or pd.isna(plateau) else int(plateau),
    )


def abs_sum_section(
    results: RunResults, dog: pd.DataFrame | None, chosen_ids: list[str], layer: int, head: Mapping[str, Any]
) -> Section:
    """Status bands of s by race with the heatmap dogs' curves and the race by which the median s reaches 95% of
    its level; the write fraction and movement by race (the headline's reliance)."""
    intro = INTRO["abs-sum"]
    title = "Abs-sum and reliance per race"
    step = by_layer(results.step, layer)
    plateau = head.get("plateau") if isinstance(head.get("plateau"), Mapping) else {}
    panels = [_reliance_panel(head.get("reliance"))]
    if not nonempty(step):
        panels.insert(0, Panel("Abs-sum per race", "", note=missing("stats/step.parquet")))
        return Section("abs-sum", title, intro, tuple(panels))
    all_line = step[step["cohort"] == "all"].sort_values("step")
    all_line = all_line[all_line["n"] >= MIN_BAND_DOGS]
    r95 = sig(plateau.get("race_95"))
    spec = BandsSpec(
        "fig-abs-sum",
        bands=bands(step, "s", cohorts=("settled", "settling", "saturated", "unsaturated", "partial")),
        lines=[Line("all dogs (median)", ints(all_line["step"]), sigs(all_line["s_q50"]), colour("all"), "dot")],
        exemplars=_exemplar_curves(results.dog_step, dog, chosen_ids, layer),
        vline=r95,
        vline_label=f"95% of the long-run level by race {r95:.0f}" if r95 is not None else None,
        xlabel="race (step)",
        ylabel="s = abs-sum / units",
        yrange=[0, 1],
        height=360,
    )
    panels.insert(0, Panel("Abs-sum per race: status bands and the typical dogs",
                           EXPLAIN["abs-sum"].format(min_dogs=MIN_BAND_DOGS), spec))
    return Section("abs-sum", title, intro, tuple(panels))


def _reliance_panel(rel: Any) -> Panel:
    """Median write fraction and movement by race (headline reliance): two series, both shares of the state."""
    title = "Reliance on the latest race by race count"
    rel = rel if isinstance(rel, Mapping) else {}
    series = []
    for key, col, name, colour_ in (("write_by_race", "median_write", "write fraction u (median)", "#b45309"),
                                    ("move_by_race", "median_move", "movement m (median)", "#1d4ed8")):
        pts = sorted((int(r["race"]), sig(r.get(col))) for r in rel.get(key) or []
                     if isinstance(r, Mapping) and r.get("race") is not None and sig(r.get(col)) is not None)
        if pts:
            series.append(Line(name, [p[0] for p in pts], [p[1] for p in pts], colour_, mode="lines"))
    if not series:
        return Panel(title, "", note=missing("the headline's reliance"))
    spec = LinesSpec("fig-reliance", series, xlabel="race (step)", ylabel="share of the state", yrange=[0, 1],
                     height=360)
    return Panel(title, EXPLAIN["reliance"], spec)


def _exemplar_curves(
    ds: pd.DataFrame | None, dog: pd.DataFrame | None, chosen_ids: list[str], layer: int
) -> list[ExemplarCurve]:
    out: list[ExemplarCurve] = []
    if dog is None or not chosen_ids or ds is None:
        return out
    for did in chosen_ids:
        r = dog[dog["dog_id"] == did]
        if not len(r):
            continue
        sub = by_layer(ds[ds["dog_index"] == int(r["dog_index"].iloc[0])], layer).sort_values("step")
        p = r["plateau_step"].iloc[0]
        out.append(
            ExemplarCurve(
                name=str(r["dog_name"].iloc[0]),
                x=ints(sub["step"]),
                y=sigs(sub["s"]),
                abs_sum=sigs(sub["abs_sum"]),
                plateau=None if pd.isna(p) else int(p),
            )
        )
    return out

