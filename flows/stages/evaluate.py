"""The evaluate stage: cohort comparisons of a run whose stats exist -> eval tables and the headline.

    eval/cohort_metrics, calibration, length_matched, effect_size, sensitivity, repro, cka, resilience,
    divergence (docs/ARCHITECTURE.md lists their columns) and eval/headline.json.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flows.stages.stats import run_offsets
from gruviz_core import cohorts as co
from gruviz_core import evaluate as ev
from gruviz_core import resilience as rs
from gruviz_core.cohorts import CohortRule
from gruviz_core.errors import ConfigError, NotFoundError
from gruviz_core.model import LoadedModel
from gruviz_core.racing import race_codes, race_softmax, renormalise, uniform_probs
from storage.layout import RunLayout
from storage.states import open_states
from storage.tables import has_table, read_record, read_table, write_json, write_table

__all__ = ["evaluate_run", "run"]


def run(tmp_dir: str, root: str, set_id: str, seq_path: str) -> dict:
    """Evaluate a finished run with the model set's models and the run's normalised inputs; the headline."""
    from flows.stages.extract import inputs

    seqs, model_set, values, context = inputs(root, seq_path, set_id)
    return evaluate_run(Path(tmp_dir), models=model_set.models, values=values, context=context,
                        offsets=seqs.offsets, feature_names=seqs.feature_names)


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
    layout = RunLayout.at(run_dir)
    if not has_table(run_dir, "dog"):
        raise NotFoundError(f"{layout.stats}: no dog table; run the stats stage (flows.stages.stats.compute_stats) first")
    reader = open_states(run_dir, allow_incomplete=allow_incomplete)
    summary = read_record(layout.summary)
    rule = CohortRule.from_dict(summary["rule"])
    dogs = read_table(run_dir, "dog")
    dogs = dogs[dogs["cohort_layer"]].sort_values("dog_index").reset_index(drop=True)
    cohort = dogs["cohort"].to_numpy(dtype=object)
    rows = reader.rows()
    scores = reader.scores().astype(np.float64)  # (obs, seed)
    sel, has_market = ev.eval_rows(rows, scores)
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
    tables["sensitivity"] = ev.sensitivity(dogs, rule, p, won, dog)
    kappa_pairs = _kappas(run_dir, len(reader.seeds))
    tables["repro"] = ev.repro_table(probs, race, dog, cohort, kappa_pairs)
    tables["cka"] = _cka(reader, dogs, seed=seed)
    ex_pairs = list(pairs) if pairs else co.exemplar_pair(dogs)
    tables["divergence"] = _divergence(reader, ex_pairs)
    notes = []
    if models and values is not None and context is not None and offsets is not None:
        tables["resilience"] = rs.resilience_table(rows, scores, sel, cohort, models, values, context,
                                                   _checked_offsets(reader, offsets), feature_names, sample_dogs,
                                                   seed, perturbations)
    else:
        notes.append("resilience skipped: evaluate_run was given no models and normalised inputs")
    for name, df in tables.items():
        write_table(run_dir, name, df)
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
        "log_loss_diff": ev.effect_of(eff_i, "none"), "log_loss_diff_length_matched": ev.effect_of(eff_i, "length_matched"),
        "gap_vs_market_diff_length_matched": ev.effect_of(eff_i, "length_matched", ev.GAP_METRIC),
        "saturated_gap_vs_market": _get("model", "saturated", ev.GAP_METRIC),
        "unsaturated_gap_vs_market": _get("model", "unsaturated", ev.GAP_METRIC),
        "effective_dim": summary.get("effective_dim"), "dead_units": summary.get("dead_units"),
        "always_saturated_units": summary.get("always_saturated_units"),
        "exemplars": [{"dog_a": a, "dog_b": b} for a, b in ex_pairs],
        "has_market": has_market, "n_boot": n_boot, "bootstrap_seed": seed,
        "tables": sorted(tables), "notes": notes, "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(layout.headline, headline)
    return headline


def _kappas(run_dir: Path, n_seeds: int) -> dict[tuple[int, int], np.ndarray]:
    ds = read_table(run_dir, "dog_seed")
    by = {k: g.sort_values("dog_index")["cohort"].to_numpy(dtype=object) for k, g in ds.groupby("seed")}
    return {(a, b): (by[a], by[b]) for a in range(n_seeds) for b in range(a + 1, n_seeds) if a in by and b in by}


def _cka(reader, dogs: pd.DataFrame, *, seed: int, n_sample: int = 300, max_step: int = 60) -> pd.DataFrame:
    """Linear CKA between seeds' top-layer states per step, on a sample of dogs read from the store."""
    if len(reader.seeds) < 2:
        return ev.cka_table({0: []}, np.array([], dtype=object))
    pick = ev.cka_sample(dogs["n_steps"].to_numpy(), seed=seed, n_sample=n_sample)
    states = {k: [reader.dog_at(int(d), k).h[:max_step, -1] for d in pick] for k in range(len(reader.seeds))}
    return ev.cka_table(states, dogs["cohort"].to_numpy(dtype=object)[pick])


def _divergence(reader, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    out = []
    for a, b in pairs:
        ha, hb = reader.dog(a).h, reader.dog(b).h
        d = rs.pair_divergence(ha, hb)
        out.append(pd.DataFrame({"pair": f"{a} vs {b}", "dog_a": a, "dog_b": b,
                                 "step": np.arange(1, len(d) + 1), "distance": d}))
    cols = ["pair", "dog_a", "dog_b", "step", "distance"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=cols)


def _checked_offsets(reader, offsets: np.ndarray) -> np.ndarray:
    """The store's row offsets, which the normalised inputs given to evaluate_run must match."""
    store_off = run_offsets(reader)
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(offsets) != len(store_off) or np.any(offsets != store_off):
        raise ConfigError(f"{reader.run_dir}: the offsets given to evaluate_run do not match the store's "
                          f"row_start/row_size ({len(offsets) - 1} vs {reader.n_dogs} dogs); pass the run's sequences")
    return store_off
