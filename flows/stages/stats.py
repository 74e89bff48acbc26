"""The stats stage: aggregate what the extraction blocks stored, write the run's stats tables and summary.

    stats/dog_step   per row and layer: abs_sum, s, f090, f095, f099, delta, max_abs, move, write (seed 0)
    stats/row_summary per seed, row and layer: s, F_tau, max |h|, relative movement, write fraction
                     (DESIGN section 5: every comparison reads these, never the states)
    stats/dog        per dog and layer: plateau, censoring, tail F, cohort (seed 0)
    stats/dog_seed   per dog and seed: plateau and cohort under each seed's states
    stats/unit       per seed, layer, gate, unit: gate saturation and state unit health
    stats/step       per layer, step, cohort: quartiles of s and F_0.95
    stats/plateau    per layer and step: Kaplan-Meier share of dogs not yet plateaued
    stats/summary    effective dimension, unit health counts, cohort counts, rule, the plateau's population
                     curve, magnitude saturation in numbers, time to plateau across the (w, delta, k) grid

No state is decoded: each block stored its rows' summaries (storage.states: seed<k>/summary/*, from the
float32 states it computed) and its per-unit accumulators; this stage reads those (one seed's obs x layer
x 8 float32 at a time), merges the accumulators and builds the tables (gruviz_core.stats.SeedScan).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from gruviz_core import cohorts as co
from gruviz_core import stats as st
from gruviz_core.cohorts import CohortRule
from gruviz_core.errors import ConfigError
from gruviz_core.results import StatsSummary
from storage.layout import RunLayout
from storage.states import StatesReader, open_states, prefetch
from storage.store import PARQUET_ROWS
from storage.store import location as store_path
from storage.tables import read_record, write_json, write_table

__all__ = ["compute_stats", "seed_scan", "run_offsets"]


def compute_stats(
    run_dir: str | Path, *, rule: CohortRule | dict | None = None, allow_incomplete: bool = True,
    health: st.UnitHealthParams = st.UnitHealthParams(),
) -> StatsSummary:
    """Aggregate the per-row summaries and per-unit accumulators the extraction blocks stored for every seed
    (no state is decoded); write stats/*.parquet and stats/summary.json; return the summary."""
    t0 = time.perf_counter()
    run_dir = store_path(run_dir)
    rule = CohortRule.coerce(rule)
    if rule.tau not in st.TAUS:
        raise ConfigError(f"cohort rule {rule.name}: tau={rule.tau} is not one of the stored thresholds {st.TAUS}")
    reader = open_states(run_dir, allow_incomplete=allow_incomplete)
    # the reads run ahead in worker threads (decoding releases the GIL): the race dates, and the next seed's
    # summaries while one seed is aggregated (two seeds' rows in memory at a time, not one)
    with ThreadPoolExecutor(1, thread_name_prefix="gruviz-stats-read") as ahead:
        dates = ahead.submit(reader.race_dates)
        scans = prefetch(seed_scan(reader, k) for k in range(len(reader.seeds)))
        return _aggregate(run_dir, reader, scans, dates, rule, health, t0)


def seed_scan(reader: StatesReader, seed: int) -> st.SeedScan:
    """Seed position `seed`'s per-row summaries and its blocks' per-unit accumulators, merged."""
    units = st.UnitAccumulators()
    for part in reader.read_units(seed):
        units.merge(st.UnitAccumulators.from_arrays(part))
    return st.SeedScan.from_summaries(reader.row_summaries(seed), units, reader.n_units)


def _aggregate(run_dir, reader: StatesReader, scans: Iterable[st.SeedScan], dates: Future, rule: CohortRule,
               health: st.UnitHealthParams, t0: float) -> dict:
    """Every stats table and the summary from each seed's scan (seed order), written under the run; `dates`:
    the rows' race dates, being read."""
    L, n_obs = reader.n_layers, reader.n_obs
    layer = rule.layer % L
    offsets = run_offsets(reader)
    n_steps = np.diff(offsets)
    step = (np.arange(n_obs) - np.repeat(offsets[:-1], n_steps) + 1).astype(np.int32)
    units, eff_dim, dog_seed, counts, row_summary = [], {}, [], {}, []
    scan0 = d0 = None
    for k, scan in enumerate(scans):
        hl = st.unit_health(scan.moments, health) if scan.moments.n else None
        if hl is not None:
            units.append(st.unit_table(k, scan, hl))
            eff_dim[k] = [float(x) for x in scan.moments.effective_dim()]
            counts[k] = {"dead": int(hl["dead"].sum()), "always_saturated": int(hl["always_saturated"].sum())}
        d = st.dog_layer_table(scan, step, offsets, rule, layer)
        dog_seed.append(pd.DataFrame({"seed": k, "dog_index": np.arange(len(n_steps)),
                                      "plateau_step": d["plateau_step"], "cohort": d["cohort"]}))
        row_summary.append((k, _summary_columns(scan)))  # its arrays, not a frame: written by slices below
        if k == 0:
            scan0, d0 = scan, d  # seed 0's cohort layer, again below
        else:
            del scan
    # the tables are written by two threads while the rest is computed (Parquet's encoding and compression
    # release the GIL): on the Iggy night the writes took 0.44 s of the stage's 1.18 s, one after another
    with ThreadPoolExecutor(2, thread_name_prefix="gruviz-stats-write") as pool:
        # the two long tables go by slices of rows (Parquet row groups), never a whole frame and its Arrow copy
        writes = [pool.submit(write_table, run_dir, "row_summary",
                              (part for k, cols in row_summary for part in _row_summary(k, cols, step, n_steps)))]
        del row_summary
        idx = reader.index()
        debut = _debut_observed(dates.result(), offsets)
        dog_rows, step_tables, plateau_tables = [], [], []
        cohort_of_dog = None
        for li in range(L):
            d = d0 if li == layer else st.dog_layer_table(scan0, step, offsets, rule, li)
            if li == layer:
                cohort_of_dog = d["cohort"]
                thresholds = {"theta": d["thresholds"][0], "low": d["thresholds"][1], "tau": rule.tau}
            dog_rows.append(pd.DataFrame({
                "dog_index": idx["dog_index"], "dog_id": idx["dog_id"], "dog_name": idx["dog_name"],
                "n_steps": d["n_steps"], "layer": li, "plateau_step": d["plateau_step"],
                "censored": ~np.isfinite(d["plateau_step"]), "mean_s": d["mean_s"], "final_s": d["final_s"],
                **{f"mean_{c}_after": d[f"mean_{c}_after"] for c in st.TAU_COLUMNS}, "f_tail": d["f_tail"],
                "cohort": d["cohort"], "cohort_layer": li == layer, "debut_observed": debut,
            }))
            plateau_tables.append(st.kaplan_meier(d["plateau_step"], d["n_steps"], rule).assign(layer=li))
        cohort_cat = pd.Categorical(cohort_of_dog)  # factorised by dog, not by row
        row_cohort = pd.Categorical.from_codes(np.repeat(cohort_cat.codes, n_steps), cohort_cat.categories)
        for li in range(L):
            step_tables.append(st.step_quartiles(scan0, step, row_cohort, li))
        writes.append(pool.submit(write_table, run_dir, "dog_step", _dog_step(scan0, step, n_steps)))
        writes += [pool.submit(write_table, run_dir, "dog", pd.concat(dog_rows, ignore_index=True)),
                   pool.submit(write_table, run_dir, "dog_seed", pd.concat(dog_seed, ignore_index=True))]
        if units:
            writes.append(pool.submit(write_table, run_dir, "unit", pd.concat(units, ignore_index=True)))
        writes.append(pool.submit(write_table, run_dir, "step", pd.concat(step_tables, ignore_index=True)))
        plateau = pd.concat(plateau_tables, ignore_index=True)[["layer", "step", "at_risk", "plateaued", "survival"]]
        writes.append(pool.submit(write_table, run_dir, "plateau", plateau))
        saturation = _saturation_summary(scan0, step, offsets, rule, layer)
        for w in writes:
            w.result()  # a failed write fails the stage before its summary (written last) exists
    cohort_counts = {c: int((cohort_of_dog == c).sum()) for c in co.COHORTS}
    summary = StatsSummary(
        n_dogs=reader.n_dogs, n_obs=n_obs, n_layers=L, n_units=reader.n_units, seeds=tuple(reader.seeds),
        effective_dim=tuple(eff_dim.get(0, [])), effective_dim_by_seed={str(k): v for k, v in eff_dim.items()},
        dead_units=int(counts.get(0, {}).get("dead", 0)),
        always_saturated_units=int(counts.get(0, {}).get("always_saturated", 0)),
        unit_health_by_seed={str(k): v for k, v in counts.items()},
        unit_health_params={"dead_eps": health.dead_eps, "sat_share": health.sat_share, "sat_tau": 0.95},
        cohort_counts=cohort_counts, cohort_layer=layer, rule=rule.to_dict(), cohort_thresholds=thresholds,
        **saturation,
        rows_missing=int(scan0.rows_missing), bytes_scanned=int(scan0.bytes_scanned),  # states decoded: 0
        seconds=round(time.perf_counter() - t0, 3),
    )
    write_json(RunLayout.at(run_dir).summary, summary)
    _record_rule(run_dir, rule)
    return summary


_RELIANCE_RACES = (1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 50)
"""Races at which the report reads the median write fraction and relative movement."""
_KM_GRID: tuple[tuple[str, tuple[float, ...]], ...] = (("w", (3, 8)), ("delta", (0.02, 0.1)), ("k", (2, 5)))
"""One-at-a-time moves of the plateau's parameters for the time to plateau (it moves with the tolerance)."""


def _summary_columns(scan: st.SeedScan) -> dict[str, np.ndarray]:
    """A seed's per-row summaries as row_summary's value columns: {name: (obs, L) float32} (the scan's own)."""
    return {"s": scan.s, **{c: scan.f[:, :, i] for i, c in enumerate(st.TAU_COLUMNS)}, "max_abs": scan.max_abs,
            "move": scan.move, "write": scan.write}


def _by_rows(values: dict[str, np.ndarray], step: np.ndarray, n_steps: np.ndarray, keys) -> Iterator[pd.DataFrame]:
    """A long table by slices of PARQUET_ROWS rows (one slice when empty), every layer of a row together: the key
    columns `keys(dog, steps, L)` of the slice's rows, then each (obs, L) value array."""
    L = next(iter(values.values())).shape[1]
    dog = np.repeat(np.arange(len(n_steps), dtype=np.int32), n_steps)
    for a in range(0, max(len(step), 1), PARQUET_ROWS):
        rows = slice(a, min(a + PARQUET_ROWS, len(step)))
        yield pd.DataFrame({**keys(dog[rows], step[rows], L), **{c: v[rows].ravel() for c, v in values.items()}})


def _row_summary(seed: int, values: dict[str, np.ndarray], step: np.ndarray,
                 n_steps: np.ndarray) -> Iterator[pd.DataFrame]:
    """One seed's per-row summaries, every layer, by slices of rows: seed, layer, dog_index, step, s, f090..,
    max_abs, move, write."""
    return _by_rows(values, step, n_steps, lambda dog, steps, L: {
        "seed": np.full(len(dog) * L, seed, np.int16), "layer": np.tile(np.arange(L, dtype=np.int16), len(dog)),
        "dog_index": np.repeat(dog, L), "step": np.repeat(steps, L)})


def _dog_step(scan: st.SeedScan, step: np.ndarray, n_steps: np.ndarray) -> Iterator[pd.DataFrame]:
    """Seed 0's rows, every layer, by slices of rows: dog_index, step, layer, abs_sum, s, f090.., delta, max_abs,
    move, write."""
    values = {"abs_sum": scan.abs_sum, "s": scan.s, **{c: scan.f[:, :, i] for i, c in enumerate(st.TAU_COLUMNS)},
              "delta": scan.delta, "max_abs": scan.max_abs, "move": scan.move, "write": scan.write}
    return _by_rows(values, step, n_steps, lambda dog, steps, L: {
        "dog_index": np.repeat(dog.astype(np.int64), L), "step": np.repeat(steps, L),
        "layer": np.tile(np.arange(L), len(dog))})


def _saturation_summary(scan: st.SeedScan, step: np.ndarray, offsets: np.ndarray, rule: CohortRule,
                        layer: int) -> dict:
    """Both meanings of saturation in numbers (seed 0, the cohort layer): magnitude, the plateau's population
    curve, the time to plateau across the grid, the write fraction and relative movement by race."""
    s = scan.s[:, layer].astype(np.float64)
    n_steps = np.diff(offsets)
    km_grid = []
    for param, values in _KM_GRID:
        for v in values:
            r = replace(rule, **{param: type(getattr(rule, param))(v)})
            plateau = st.plateau_steps(s, step, offsets, w=r.w, delta=r.delta, k=r.k)
            km_grid.append({"param": param, "value": float(v), "median": st.km_median(plateau, n_steps, r)})
    fl = {c: scan.f[:, layer, i] for i, c in enumerate(st.TAU_COLUMNS)}
    return {
        "magnitude": st.magnitude_summary(scan.max_abs[:, layer], fl["f090"], fl["f095"]),
        "plateau_curve": st.population_curve(s, step),
        "km_grid": tuple(km_grid),
        "reliance": {
            "write_by_race": st.median_by_race(scan.write[:, layer], step, _RELIANCE_RACES),
            "move_by_race": st.median_by_race(scan.move[:, layer], step, _RELIANCE_RACES),
        },
    }


def _record_rule(run_dir: Path, rule: CohortRule) -> None:
    """Add the cohort rule to run.json (kept as is otherwise)."""
    p = RunLayout.at(run_dir).run_json
    info = read_record(p) if p.exists() else {}
    info["cohort_rule"] = rule.to_dict()
    write_json(p, info)


def _debut_observed(race_date: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(dog,) bool: the data cover the months before the dog's first observed race (see co.debut_observed)."""
    d = np.asarray(race_date, dtype="datetime64[D]")
    n = len(offsets) - 1
    if len(d) == 0:
        return np.zeros(n, dtype=bool)
    first = d[np.minimum(offsets[:-1], len(d) - 1)]
    m = d[~np.isnat(d)].astype("datetime64[M]").astype(np.int64)  # the months with races, sorted: by counting
    if len(m):
        m = np.flatnonzero(np.bincount(m - m.min())) + m.min()
    months = m.astype("datetime64[M]")
    return co.debut_observed(first, months) & (np.diff(offsets) > 0)


def run_offsets(reader) -> np.ndarray:
    """(dog + 1,) row offsets of a run's states store, checked contiguous."""
    idx = reader.index()
    start, size = idx["row_start"].to_numpy(), idx["row_size"].to_numpy()
    if len(start) and (start[0] != 0 or np.any(start[1:] != start[:-1] + size[:-1])):
        raise ConfigError(f"{reader.run_dir}: row_start is not contiguous; the stats stage needs the ragged layout")
    return np.concatenate([[0], np.cumsum(size)]).astype(np.int64)


