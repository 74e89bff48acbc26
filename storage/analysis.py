"""The stats and evaluate stages: read a run's states store, write its Parquet tables.

    <run>/stats/dog_step.parquet  per row and layer: abs_sum, s, f090, f095, f099, delta (seed 0)
    <run>/stats/dog.parquet       per dog and layer: plateau, censoring, tail F, cohort (seed 0)
    <run>/stats/dog_seed.parquet  per dog and seed: plateau and cohort under each seed's states
    <run>/stats/unit.parquet      per seed, layer, gate, unit: gate saturation and state unit health
    <run>/stats/step.parquet      per layer, step, cohort: quartiles of s and F_0.95
    <run>/stats/plateau.parquet   per layer and step: Kaplan-Meier share of dogs not yet plateaued
    <run>/stats/summary.json      effective dimension, unit health counts, cohort counts, rule
    <run>/eval/*.parquet, eval/headline.json   cohort comparisons (see docs/ARCHITECTURE.md 4)

`compute_stats` scans the store once per seed, shard-aligned chunk by chunk: states never sit
in memory whole, only per-row scalars (obs x layer x 6 float32) and per-unit accumulators do.
Every table is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from gruviz_core import cohorts as co
from gruviz_core import evaluate as ev
from gruviz_core import resilience as rs
from gruviz_core import stats as st
from gruviz_core.cohorts import CohortRule
from gruviz_core.errors import ConfigError, NotFoundError
from gruviz_core.model import LoadedModel
from gruviz_core.racing import race_codes, race_softmax, renormalise, uniform_probs
from storage.atomic import write_json_atomic
from storage.states import open_states

__all__ = ["compute_stats", "evaluate_run", "scan_seed", "SeedScan", "prefetch", "write_parquet_atomic"]

_TAU_COLS = tuple(f"f{int(round(t * 100)):03d}" for t in st.TAUS)  # f090, f095, f099


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write a table to a temporary sibling, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class SeedScan:
    """What one streaming pass over a seed's states leaves: per-row scalars and per-unit accumulators."""

    def __init__(self, n_obs: int, n_layers: int, *, full: bool):
        self.s = np.full((n_obs, n_layers), np.nan, dtype=np.float32)
        """(obs, L) mean |h|."""
        self.f = np.full((n_obs, n_layers, len(st.TAUS)), np.nan, dtype=np.float32)
        """(obs, L, tau) near-boundary fractions."""
        self.abs_sum = np.full((n_obs, n_layers), np.nan, dtype=np.float32) if full else None
        self.delta = np.full((n_obs, n_layers), np.nan, dtype=np.float32) if full else None
        self.gates = {"z": st.GateCounts(), "r": st.GateCounts()}
        self.moments = st.StateMoments()
        self.bytes_scanned = 0
        self.rows_missing = 0


def scan_seed(chunks, step: np.ndarray, n_obs: int, n_layers: int, *, full: bool = True) -> SeedScan:
    """Fold an iterator of shard-aligned chunks (.start .stop .h .z .r, (n, L, H)) in row order."""
    out = SeedScan(n_obs, n_layers, full=full)
    carry = None
    for c in chunks:
        a, b = c.start, c.stop
        r = st.row_stats(c.h, step[a:b], carry)
        out.s[a:b], out.f[a:b] = r.s, r.f
        if full:
            out.abs_sum[a:b], out.delta[a:b] = r.abs_sum, r.delta
        ok = np.isfinite(r.s).all(axis=1)  # rows a dead writer never wrote are NaN
        h, z, g = c.h, c.z, c.r
        if not ok.all():  # copy only when some rows are missing
            out.rows_missing += int((~ok).sum())
            h, z, g = h[ok], z[ok], g[ok]
        out.moments.add(h)
        out.gates["z"].add(z)
        out.gates["r"].add(g)
        out.bytes_scanned += 3 * c.h.size * 2  # float16 on disk
        carry = c.h[-1] if len(c.h) else carry
    return out


def prefetch(it: Iterator, depth: int = 1) -> Iterator:
    """Iterate `it` in a background thread, `depth` items ahead: reads (zarr/blosc release the GIL)
    overlap the statistics of the previous chunk. Memory: depth more chunks."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def _run() -> None:
        try:
            for x in it:
                while not stop.is_set():
                    try:
                        q.put(x, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # hand the reader's error to the consumer
            q.put(e)

    th = threading.Thread(target=_run, name="gruviz-prefetch", daemon=True)
    th.start()
    try:
        while True:
            x = q.get()
            if x is done:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()
        th.join(timeout=5)


def _offsets(reader) -> np.ndarray:
    idx = reader.index()
    start, size = idx["row_start"].to_numpy(), idx["row_size"].to_numpy()
    if len(start) and (start[0] != 0 or np.any(start[1:] != start[:-1] + size[:-1])):
        raise ConfigError(f"{reader.run_dir}: row_start is not contiguous; the stats stage needs the ragged layout")
    return np.concatenate([[0], np.cumsum(size)]).astype(np.int64)


def _dog_layer_table(scan: SeedScan, step, offsets, rule: CohortRule, layer: int) -> dict[str, np.ndarray]:
    """Per dog for one layer: plateau, censoring, tail F per tau, cohort."""
    s = scan.s[:, layer].astype(np.float64)
    plateau = st.plateau_steps(s, step, offsets, w=rule.w, delta=rule.delta, k=rule.k)
    start = co.tail_start(plateau, rule)
    n_steps = np.diff(offsets)
    tails = {t: co.tail_mean(scan.f[:, layer, i], step, offsets, start) for i, t in enumerate(st.TAUS)}
    f_rule = tails[rule.tau]
    dog = np.repeat(np.arange(len(n_steps)), n_steps)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_s = np.bincount(dog, weights=s, minlength=len(n_steps)) / np.maximum(n_steps, 1)
    final_s = np.where(n_steps > 0, s[np.maximum(offsets[1:] - 1, 0)], np.nan) if len(s) else np.full(len(n_steps), np.nan)
    return {
        "plateau_step": plateau, "n_steps": n_steps, "mean_s": mean_s, "final_s": final_s,
        **{f"mean_{c}_after": tails[t] for c, t in zip(_TAU_COLS, st.TAUS)},
        "f_tail": f_rule, "cohort": co.assign_cohorts(plateau, n_steps, f_rule, rule),
        "thresholds": co.resolve_thresholds(plateau, n_steps, f_rule, rule),
    }


def _kaplan_meier(plateau: np.ndarray, n_steps: np.ndarray, rule: CohortRule) -> pd.DataFrame:
    """Share of dogs not yet plateaued by step; a dog without T* is censored at its last checkable step."""
    event = np.isfinite(plateau)
    time_ = np.where(event, plateau, np.maximum(n_steps - rule.k + 1, 0)).astype(np.int64)
    t_max = int(time_.max()) if len(time_) else 0
    steps = np.arange(1, t_max + 1)
    exits = np.bincount(time_, minlength=t_max + 2)
    events = np.bincount(time_[event], minlength=t_max + 2)
    at_risk = len(time_) - np.concatenate([[0], np.cumsum(exits)])[steps]  # time >= t
    d = events[steps]
    with np.errstate(invalid="ignore", divide="ignore"):
        surv = np.cumprod(np.where(at_risk > 0, 1 - d / np.maximum(at_risk, 1), 1.0))
    return pd.DataFrame({"step": steps, "at_risk": at_risk, "plateaued": d, "survival": surv})


def _step_quartiles(scan: SeedScan, step, dog_cohort_row, layer: int) -> pd.DataFrame:
    df = pd.DataFrame({"step": step, "cohort": dog_cohort_row, "s": scan.s[:, layer], "f": scan.f[:, layer, 1]})
    parts = []
    for name, sub in [("all", df), *df.groupby("cohort", sort=True)]:
        g = sub.groupby("step")
        q = g[["s", "f"]].quantile([0.25, 0.5, 0.75]).unstack()
        parts.append(pd.DataFrame({
            "layer": layer, "step": q.index.to_numpy(), "cohort": name, "n": g.size().to_numpy(),
            "s_q25": q[("s", 0.25)].to_numpy(), "s_q50": q[("s", 0.5)].to_numpy(), "s_q75": q[("s", 0.75)].to_numpy(),
            "f095_q25": q[("f", 0.25)].to_numpy(), "f095_q50": q[("f", 0.5)].to_numpy(),
            "f095_q75": q[("f", 0.75)].to_numpy(),
        }))
    return pd.concat(parts, ignore_index=True)


def _unit_table(seed: int, scan: SeedScan, health: dict) -> pd.DataFrame:
    L, H = health["variance"].shape
    parts = []
    for gate, counts in scan.gates.items():
        left, right = counts.fractions() if counts.n else (np.full((L, H), np.nan),) * 2
        parts.append(pd.DataFrame({
            "seed": seed, "layer": np.repeat(np.arange(L), H), "gate": gate, "unit": np.tile(np.arange(H), L),
            "left": left.ravel(), "right": right.ravel(), "variance": health["variance"].ravel(),
            "mean_abs": health["mean_abs"].ravel(), "dead": health["dead"].ravel(),
            "always_saturated": health["always_saturated"].ravel(),
        }))
    return pd.concat(parts, ignore_index=True)


def compute_stats(
    run_dir: str | Path, *, rule: CohortRule | dict | None = None, allow_incomplete: bool = True,
    health: st.UnitHealthParams = st.UnitHealthParams(),
) -> dict:
    """Scan every seed of a run chunk by chunk; write stats/*.parquet and stats/summary.json; return the summary."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    rule = CohortRule.coerce(rule)
    if rule.tau not in st.TAUS:
        raise ConfigError(f"cohort rule {rule.name}: tau={rule.tau} is not one of the stored thresholds {st.TAUS}")
    reader = open_states(run_dir, allow_incomplete=allow_incomplete)
    L, n_obs = reader.n_layers, reader.n_obs
    layer = rule.layer % L
    offsets = _offsets(reader)
    n_steps = np.diff(offsets)
    step = (np.arange(n_obs) - np.repeat(offsets[:-1], n_steps) + 1).astype(np.int32)
    out_dir = run_dir / "stats"
    units, eff_dim, dog_seed, counts = [], {}, [], {}
    scan0 = None
    for k in range(len(reader.seeds)):
        # one BLAS thread: the prefetch thread decompresses meanwhile, and OpenBLAS threads
        # spin-waiting for a busy core made the Gram products 10x slower (measured)
        with threadpool_limits(1, user_api="blas"):
            scan = scan_seed(prefetch(reader.iter_chunks(k)), step, n_obs, L, full=(k == 0))
        hl = st.unit_health(scan.moments, health) if scan.moments.n else None
        if hl is not None:
            units.append(_unit_table(k, scan, hl))
            eff_dim[k] = [float(x) for x in scan.moments.effective_dim()]
            counts[k] = {"dead": int(hl["dead"].sum()), "always_saturated": int(hl["always_saturated"].sum())}
        d = _dog_layer_table(scan, step, offsets, rule, layer)
        dog_seed.append(pd.DataFrame({"seed": k, "dog_index": np.arange(len(n_steps)),
                                      "plateau_step": d["plateau_step"], "cohort": d["cohort"]}))
        if k == 0:
            scan0 = scan
        else:
            del scan
    idx = reader.index()
    dog_rows, step_tables, plateau_tables = [], [], []
    cohort_of_dog = None
    for li in range(L):
        d = _dog_layer_table(scan0, step, offsets, rule, li)
        if li == layer:
            cohort_of_dog = d["cohort"]
            thresholds = {"theta": d["thresholds"][0], "low": d["thresholds"][1], "tau": rule.tau}
        dog_rows.append(pd.DataFrame({
            "dog_index": idx["dog_index"], "dog_id": idx["dog_id"], "dog_name": idx["dog_name"],
            "n_steps": d["n_steps"], "layer": li, "plateau_step": d["plateau_step"],
            "censored": ~np.isfinite(d["plateau_step"]), "mean_s": d["mean_s"], "final_s": d["final_s"],
            **{f"mean_{c}_after": d[f"mean_{c}_after"] for c in _TAU_COLS}, "f_tail": d["f_tail"],
            "cohort": d["cohort"], "cohort_layer": li == layer,
        }))
        plateau_tables.append(_kaplan_meier(d["plateau_step"], d["n_steps"], rule).assign(layer=li))
    row_cohort = np.repeat(cohort_of_dog, n_steps)
    for li in range(L):
        step_tables.append(_step_quartiles(scan0, step, row_cohort, li))
    dog_index_row = np.repeat(np.arange(len(n_steps)), n_steps)
    dog_step = pd.DataFrame({
        "dog_index": np.repeat(dog_index_row, L), "step": np.repeat(step, L), "layer": np.tile(np.arange(L), n_obs),
        "abs_sum": scan0.abs_sum.ravel(), "s": scan0.s.ravel(),
        **{c: scan0.f[:, :, i].ravel() for i, c in enumerate(_TAU_COLS)}, "delta": scan0.delta.ravel(),
    })
    write_parquet_atomic(dog_step, out_dir / "dog_step.parquet")
    write_parquet_atomic(pd.concat(dog_rows, ignore_index=True), out_dir / "dog.parquet")
    write_parquet_atomic(pd.concat(dog_seed, ignore_index=True), out_dir / "dog_seed.parquet")
    if units:
        write_parquet_atomic(pd.concat(units, ignore_index=True), out_dir / "unit.parquet")
    write_parquet_atomic(pd.concat(step_tables, ignore_index=True), out_dir / "step.parquet")
    plateau = pd.concat(plateau_tables, ignore_index=True)[["layer", "step", "at_risk", "plateaued", "survival"]]
    write_parquet_atomic(plateau, out_dir / "plateau.parquet")
    cohort_counts = {c: int((cohort_of_dog == c).sum()) for c in co.COHORTS}
    summary = {
        "n_dogs": reader.n_dogs, "n_obs": n_obs, "n_layers": L, "n_units": reader.n_units, "seeds": reader.seeds,
        "effective_dim": eff_dim.get(0, []), "effective_dim_by_seed": {str(k): v for k, v in eff_dim.items()},
        "dead_units": counts.get(0, {}).get("dead", 0),
        "always_saturated_units": counts.get(0, {}).get("always_saturated", 0),
        "unit_health_by_seed": {str(k): v for k, v in counts.items()},
        "unit_health_params": {"dead_eps": health.dead_eps, "sat_share": health.sat_share, "sat_tau": 0.95},
        "cohort_counts": cohort_counts, "cohort_layer": layer, "rule": rule.to_dict(),
        "cohort_thresholds": thresholds,
        "rows_missing": scan0.rows_missing, "bytes_scanned": scan0.bytes_scanned,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(out_dir / "summary.json", summary)
    _record_rule(run_dir, rule)
    return summary


def _record_rule(run_dir: Path, rule: CohortRule) -> None:
    """Add the cohort rule to run.json (kept as is otherwise)."""
    p = run_dir / "run.json"
    info = json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
    info["cohort_rule"] = rule.to_dict()
    write_json_atomic(p, info)


# ----------------------------------------------------------------------------------------- evaluate


def _eval_rows(rows: pd.DataFrame, scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """Rows to score: known result, every seed scored, races with >= 2 such runners and a winner.

    If at least half of those races have a price for every runner, keep only those races so the
    market baseline sits on exactly the same rows; else report no market baseline.
    """
    won = rows["won"].to_numpy()
    ok = np.isfinite(won) & np.isfinite(scores).all(axis=1)
    race = race_codes(rows["race_id"].to_numpy())
    n_r = race.max() + 1 if len(race) else 0
    runners = np.bincount(race[ok], minlength=n_r)
    winners = np.bincount(race[ok], weights=won[ok], minlength=n_r)
    ok &= (runners[race] >= 2) & (winners[race] >= 1)
    mkt = np.isfinite(rows["market_prob"].to_numpy())
    priced = np.bincount(race[ok & ~mkt], minlength=n_r) == 0
    used = np.bincount(race[ok], minlength=n_r) > 0
    has_market = used.sum() > 0 and priced[used].mean() >= 0.5
    if has_market:
        ok &= priced[race]
    return np.flatnonzero(ok), bool(has_market)


def evaluate_run(
    run_dir: str | Path, *, models: list[LoadedModel] | None = None, values: np.ndarray | None = None,
    context: np.ndarray | None = None, offsets: np.ndarray | None = None, feature_names: Sequence[str] = (),
    sample_dogs: int = 2000, seed: int = 0, n_boot: int = 200, allow_incomplete: bool = True,
    pairs: Sequence[tuple[str, str]] | None = None,
    perturbations: Sequence[rs.Perturbation] = rs.DEFAULT_PERTURBATIONS,
) -> dict:
    """Cohort comparisons of a run whose stats exist; writes eval/*.parquet and eval/headline.json.

    Resilience needs `models` (one per seed, in the store's seed order) and the normalised
    `values` (obs, F), `context` (obs, C) with `offsets` (dog + 1,) in the store's dog order.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    stats_dir, out_dir = run_dir / "stats", run_dir / "eval"
    if not (stats_dir / "dog.parquet").exists():
        raise NotFoundError(f"{stats_dir}: no dog.parquet; run storage.analysis.compute_stats({run_dir}) first")
    reader = open_states(run_dir, allow_incomplete=allow_incomplete)
    summary = json.loads((stats_dir / "summary.json").read_text(encoding="utf-8"))
    rule = CohortRule.from_dict(summary["rule"])
    dogs = pd.read_parquet(stats_dir / "dog.parquet")
    dogs = dogs[dogs["cohort_layer"]].sort_values("dog_index").reset_index(drop=True)
    cohort = dogs["cohort"].to_numpy(dtype=object)
    rows = reader.rows()
    scores = reader.scores().astype(np.float64)  # (obs, seed)
    sel, has_market = _eval_rows(rows, scores)
    r = rows.iloc[sel]
    won = r["won"].to_numpy(np.float64)
    race = race_codes(r["race_id"].to_numpy())
    dog = r["dog_index"].to_numpy(np.int64)
    step = r["step"].to_numpy()
    probs = np.stack([race_softmax(scores[sel, k], race) for k in range(scores.shape[1])], axis=1)  # (n, seed)
    p = probs[:, 0]
    sources = {"model": p, "model_mean": probs.mean(axis=1), "uniform": uniform_probs(race)}
    if has_market:
        sources["market"] = renormalise(r["market_prob"].to_numpy(np.float64), race)
    weights = ev.poisson_weights(len(cohort), n_boot, seed)
    tables: dict[str, pd.DataFrame] = {}
    tables["cohort_metrics"] = ev.cohort_metrics(sources, won, race, dog, cohort, weights=weights)
    row_cohort = cohort[dog]
    cal = [ev.calibration(sources[s], won, row_cohort).assign(source=s) for s in ("model", "market") if s in sources]
    tables["calibration"] = pd.concat(cal, ignore_index=True)
    ref = sources.get("market")
    eff = ev.effect_sizes(p, won, race, dog, cohort, weights=weights, ref=ref)
    tables["length_matched"], eff_lm = ev.length_matched(p, won, race, dog, step, cohort, weights=weights, ref=ref)
    tables["effect_size"] = pd.concat([eff, eff_lm], ignore_index=True)
    tables["sensitivity"] = _sensitivity(dogs, rule, p, won, dog)
    kappa_pairs = _kappas(stats_dir, len(reader.seeds))
    tables["repro"] = _repro(probs, race, dog, cohort, kappa_pairs, stats_dir)
    tables["cka"] = _cka(reader, dogs, seed=seed)
    ex_pairs = list(pairs) if pairs else _exemplar_pair(dogs)
    tables["divergence"] = _divergence(reader, ex_pairs)
    notes = []
    if models and values is not None and context is not None and offsets is not None:
        tables["resilience"] = _resilience(reader, rows, scores, sel, cohort, models, values, context, offsets,
                                           feature_names, sample_dogs, seed, perturbations)
    else:
        notes.append("resilience skipped: evaluate_run was given no models and normalised inputs")
    for name, df in tables.items():
        write_parquet_atomic(df, out_dir / f"{name}.parquet")
    cm = tables["cohort_metrics"].set_index(["source", "cohort", "metric"])["value"]

    def _get(src, c="all", m="log_loss"):
        return float(cm.get((src, c, m), np.nan))

    eff_i = tables["effect_size"].set_index(["adjust", "metric"])
    headline = {
        "dogs": reader.n_dogs, "obs": reader.n_obs, "eval_rows": int(len(sel)), "eval_races": int(race.max() + 1) if len(race) else 0,
        "seeds": reader.seeds, "cohort_counts": summary["cohort_counts"], "rule": summary["rule"],
        "saturated_share": summary["cohort_counts"].get("saturated", 0) / max(reader.n_dogs, 1),
        "model_log_loss": _get("model"), "model_mean_log_loss": _get("model_mean"),
        "market_log_loss": _get("market"), "uniform_log_loss": _get("uniform"),
        "model_hit_rate": _get("model", m="hit_rate"), "market_hit_rate": _get("market", m="hit_rate"),
        "model_auc": _get("model", m="auc"),
        "saturated_log_loss": _get("model", "saturated"), "unsaturated_log_loss": _get("model", "unsaturated"),
        "log_loss_diff": _effect(eff_i, "none"), "log_loss_diff_length_matched": _effect(eff_i, "length_matched"),
        "gap_vs_market_diff_length_matched": _effect(eff_i, "length_matched", ev.GAP_METRIC),
        "saturated_gap_vs_market": _get("model", "saturated", ev.GAP_METRIC),
        "unsaturated_gap_vs_market": _get("model", "unsaturated", ev.GAP_METRIC),
        "effective_dim": summary.get("effective_dim"), "dead_units": summary.get("dead_units"),
        "always_saturated_units": summary.get("always_saturated_units"),
        "exemplars": [{"dog_a": a, "dog_b": b} for a, b in ex_pairs],
        "has_market": has_market, "n_boot": n_boot, "bootstrap_seed": seed,
        "tables": sorted(tables), "notes": notes, "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(out_dir / "headline.json", headline)
    return headline


def _effect(eff_i: pd.DataFrame, adjust: str, metric: str = "log_loss") -> dict:
    try:
        row = eff_i.loc[(adjust, metric)]
    except KeyError:
        return {"diff": None, "lo": None, "hi": None}
    return {k: (None if not np.isfinite(row[k]) else float(row[k])) for k in ("diff", "lo", "hi")}


def _sensitivity(dogs: pd.DataFrame, rule: CohortRule, p, won, dog) -> pd.DataFrame:
    """Cohort sizes and model log-loss over a grid of (tau, theta)."""
    ll = -(won * np.log(np.clip(p, 1e-12, 1)) + (1 - won) * np.log1p(-np.clip(p, 0, 1 - 1e-12)))
    n = len(dogs)
    ll_d = np.bincount(dog, weights=ll, minlength=n)
    n_d = np.bincount(dog, minlength=n)
    f_by_tau = {t: dogs[f"mean_{c}_after"].to_numpy() for c, t in zip(_TAU_COLS, st.TAUS)}
    out = []
    for tau, theta, c in co.sensitivity_cohorts(dogs["plateau_step"].to_numpy(), dogs["n_steps"].to_numpy(),
                                                 f_by_tau, rule):
        for name in co.COHORTS:
            m = c == name
            rows_ = n_d[m].sum()
            out.append((tau, theta, name, int(m.sum()), float(ll_d[m].sum() / rows_) if rows_ else np.nan))
    return pd.DataFrame(out, columns=["tau", "theta", "cohort", "n_dogs", "log_loss"])


def _kappas(stats_dir: Path, n_seeds: int) -> dict[tuple[int, int], np.ndarray]:
    ds = pd.read_parquet(stats_dir / "dog_seed.parquet")
    by = {k: g.sort_values("dog_index")["cohort"].to_numpy(dtype=object) for k, g in ds.groupby("seed")}
    return {(a, b): (by[a], by[b]) for a in range(n_seeds) for b in range(a + 1, n_seeds) if a in by and b in by}


def _repro(probs, race, dog, cohort, kappa_pairs, stats_dir) -> pd.DataFrame:
    spread = ev.prob_spread(probs)
    row_c = cohort[dog]
    out = []
    for scope in ["all", *co.COHORTS]:
        m = np.ones(len(dog), bool) if scope == "all" else row_c == scope
        if not m.any():
            continue
        out.append((scope, "prob_spread", float(spread[m].mean()), int(m.sum())))
        out.append((scope, "top_pick_churn", ev.top_pick_churn(probs, race, None if scope == "all" else m), int(m.sum())))
    if kappa_pairs:
        out.append(("all", "kappa", float(np.mean([ev.cohen_kappa(a, b) for a, b in kappa_pairs.values()])),
                    len(cohort)))
        for scope in co.COHORTS:  # share of seed-a members of a cohort that seed b puts there too
            agree = [float(np.mean(b[a == scope] == scope)) for a, b in kappa_pairs.values() if (a == scope).any()]
            if agree:
                out.append((scope, "agreement", float(np.mean(agree)), int((cohort == scope).sum())))
    return pd.DataFrame(out, columns=["scope", "metric", "value", "n"])


def _cka(reader, dogs: pd.DataFrame, *, seed: int, n_sample: int = 300, max_step: int = 60,
         min_dogs: int = 20) -> pd.DataFrame:
    """Linear CKA between every pair of seeds' top-layer states at each step, on a sample of dogs."""
    K = len(reader.seeds)
    cols = ["step", "seed_a", "seed_b", "cka", "cohort", "n"]
    if K < 2:
        return pd.DataFrame(columns=cols)
    rng = np.random.default_rng(seed)
    cand = np.flatnonzero(dogs["n_steps"].to_numpy() >= 2)
    pick = np.sort(rng.choice(cand, size=min(n_sample, len(cand)), replace=False))
    states = {k: [reader.dog_at(int(d), k).h[:max_step, -1] for d in pick] for k in range(K)}  # (T, H) each
    lens = np.array([len(h) for h in states[0]])
    coh = dogs["cohort"].to_numpy(dtype=object)[pick]
    out = []
    for t in range(1, int(lens.max(initial=0)) + 1):
        have = lens >= t
        for scope in ["all", *co.COHORTS]:
            m = have if scope == "all" else have & (coh == scope)
            if m.sum() < min_dogs:
                continue
            idx = np.flatnonzero(m)
            xs = {k: np.stack([states[k][i][t - 1] for i in idx]) for k in range(K)}
            for a in range(K):
                for b in range(a + 1, K):
                    out.append((t, a, b, ev.linear_cka(xs[a], xs[b]), scope, len(idx)))
    return pd.DataFrame(out, columns=cols)


def _exemplar_pair(dogs: pd.DataFrame) -> list[tuple[str, str]]:
    """The most and the least saturated dog by mean s among dogs with long histories."""
    if len(dogs) < 2:
        return []
    n = dogs["n_steps"].to_numpy()
    long = dogs[n >= max(np.quantile(n, 0.9), 2)]
    if len(long) < 2:
        long = dogs
    order = long.sort_values(["mean_s", "dog_index"])
    return [(str(order["dog_id"].iloc[-1]), str(order["dog_id"].iloc[0]))]


def _divergence(reader, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    out = []
    for a, b in pairs:
        ha, hb = reader.dog(a).h, reader.dog(b).h
        d = rs.pair_divergence(ha, hb)
        out.append(pd.DataFrame({"pair": f"{a} vs {b}", "dog_a": a, "dog_b": b,
                                 "step": np.arange(1, len(d) + 1), "distance": d}))
    cols = ["pair", "dog_a", "dog_b", "step", "distance"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=cols)


def _resilience(reader, rows, scores, sel, cohort, models, values, context, offsets, feature_names,
                sample_dogs, seed, perturbations) -> pd.DataFrame:
    """Perturb sampled dogs' histories; score their last race against the other runners' stored scores."""
    store_off = _offsets(reader)
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(offsets) != len(store_off) or np.any(offsets != store_off):
        raise ConfigError(f"{reader.run_dir}: the offsets given to evaluate_run do not match the store's "
                          f"row_start/row_size ({len(offsets) - 1} vs {reader.n_dogs} dogs); pass the run's sequences")
    names = tuple(feature_names) or tuple(models[0].feature_names)
    groups = rs.feature_groups(names)
    ok = np.zeros(reader.n_obs, bool)
    ok[sel] = True
    last = store_off[1:] - 1
    n_steps = np.diff(store_off)
    cand = np.flatnonzero((n_steps >= 3) & ok[np.maximum(last, 0)])
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(cand, size=min(sample_dogs, len(cand)), replace=False))
    tgt = last[pick]
    race_all = race_codes(rows["race_id"].to_numpy())
    out = []
    for k, model in enumerate(models):
        lse, mx = _others(scores[:, k], race_all, ok, tgt)
        won = rows["won"].to_numpy(np.float64)[tgt]
        hists = [values[store_off[d]:last[d]] for d in pick]
        s0, h0 = rs.final_scores(model, hists, values[tgt], context[tgt])
        for j, pert in enumerate(perturbations):
            prng = np.random.default_rng([seed, k, j])
            done = [rs.perturb_history(h, pert, groups, prng) for h in hists]
            s1, h1 = rs.final_scores(model, [x for x, _ in done], values[tgt], context[tgt])
            dl, flip = rs.race_effects(s0, s1, lse, mx, won)
            div = np.linalg.norm(h1 - h0, axis=1)
            pos = np.array([w for _, w in done], dtype=object)
            c = cohort[pick]
            for scope in ["all", *co.COHORTS]:
                for where in ["all", "early", "late"]:
                    m = (c == scope) if scope != "all" else np.ones(len(pick), bool)
                    if where != "all":
                        m = m & (pos == where)
                    if m.any():
                        out.append((pert.kind, pert.severity, scope, where, k, float(dl[m].mean()),
                                    float(flip[m].mean()), float(div[m].mean()), int(m.sum())))
    df = pd.DataFrame(out, columns=["perturbation", "severity", "cohort", "position", "seed", "d_loss", "flip_rate",
                                    "state_divergence", "n"])
    agg = df.groupby(["perturbation", "severity", "cohort", "position"], sort=False)
    res = agg.apply(lambda g: pd.Series({
        "d_loss": np.average(g["d_loss"], weights=g["n"]), "flip_rate": np.average(g["flip_rate"], weights=g["n"]),
        "state_divergence": np.average(g["state_divergence"], weights=g["n"]), "n": int(g["n"].sum()),
    }), include_groups=False).reset_index()
    res["n"] = res["n"].astype(np.int64)
    return res


def _others(score: np.ndarray, race: np.ndarray, ok: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-sum-exp and max of the OTHER valid runners' scores in each target row's race. -> (B,), (B,)."""
    n_r = int(race.max()) + 1
    s = np.where(ok, score, -np.inf)
    top = np.full(n_r, -np.inf)
    np.maximum.at(top, race, s)
    with np.errstate(invalid="ignore"):  # races without a valid runner: -inf - -inf, masked out
        e = np.where(ok, np.exp(s - top[race]), 0.0)
    tot = np.bincount(race, weights=e, minlength=n_r)
    rt = race[tgt]
    rest = np.maximum(tot[rt] - e[tgt], 1e-300)
    lse = np.log(rest) + top[rt]
    # max of the others: the race max unless the target holds it, then the second highest
    order = np.lexsort((-s, race))
    first = np.ones(len(order), bool)
    first[1:] = race[order][1:] != race[order][:-1]
    second = np.full(n_r, -np.inf)
    pos_first = np.flatnonzero(first)
    nxt = pos_first + 1
    has2 = (nxt < len(order)) & (race[order][np.minimum(nxt, len(order) - 1)] == race[order][pos_first])
    second[race[order][pos_first[has2]]] = s[order][nxt[has2]]
    top_row = np.full(n_r, -1)
    top_row[race[order][pos_first]] = order[pos_first]
    mx = np.where(top_row[rt] == tgt, second[rt], top[rt])
    return lse, mx
