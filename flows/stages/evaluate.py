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
from gruviz_core import repro as rp
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
                        offsets=seqs.offsets, feature_names=seqs.feature_names,
                        train_rows=_train_rows(seqs.race_date, model_set.meta.get("cutoff")))


def evaluate_run(
    run_dir: str | Path, *, models: list[LoadedModel] | None = None, values: np.ndarray | None = None,
    context: np.ndarray | None = None, offsets: np.ndarray | None = None, feature_names: Sequence[str] = (),
    sample_dogs: int = 2000, seed: int = 0, n_boot: int = 200, allow_incomplete: bool = True,
    pairs: Sequence[tuple[str, str]] | None = None,
    perturbations: Sequence[rs.Perturbation] = rs.DEFAULT_PERTURBATIONS,
    target_steps: Sequence[int] = rs.TARGET_STEPS, train_rows: np.ndarray | None = None,
) -> dict:
    """Cohort comparisons of a run whose stats exist; writes eval/*.parquet and eval/headline.json.

    Resilience needs `models` (one per seed, in the store's seed order) and the normalised
    `values` (obs, F), `context` (obs, C) with `offsets` (dog + 1,) in the store's dog order;
    `train_rows` (obs,) bool marks the model's training period (kinds it never saw are 'n/a').
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
    tables["repro"] = ev.repro_table(probs, race, dog, cohort, *_kappas(run_dir, dogs, rule))
    tables["cka"] = _cka(reader, dogs, seed=seed, n_boot=min(n_boot, 100))
    ex_pairs = list(pairs) if pairs else co.exemplar_pair(dogs)
    tables["divergence"] = _divergence(reader, ex_pairs)
    notes = []
    if models and values is not None and context is not None and offsets is not None:
        tables.update(_resilience(rows, scores, sel, dogs, rule, models, values, context,
                                  _checked_offsets(reader, offsets), feature_names, train_rows, sample_dogs=sample_dogs,
                                  seed=seed, n_boot=n_boot, perturbations=perturbations, steps=target_steps))
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


def _kappas(run_dir: Path, dogs: pd.DataFrame, rule: CohortRule) -> tuple[np.ndarray | None, np.ndarray]:
    """(dog, seed) cohort labels of every seed (None without dog_seed) and the decided dogs (enough races to
    have checked a plateau: the same for every seed, so 'undecided' is left out of the agreement)."""
    decided = dogs["n_steps"].to_numpy() >= co.min_steps(rule)
    if not has_table(run_dir, "dog_seed"):
        return None, decided
    ds = read_table(run_dir, "dog_seed")
    lab = ds.pivot_table(index="dog_index", columns="seed", values="cohort", aggfunc="first")
    lab = lab.reindex(dogs["dog_index"].to_numpy())
    ok = lab.notna().all(axis=1).to_numpy()
    return lab.to_numpy(dtype=object), decided & ok


def _cka(reader, dogs: pd.DataFrame, *, seed: int, n_boot: int = 100, n_per_step: int = 1000,
         min_dogs: int = 200) -> pd.DataFrame:
    """Debiased CKA between seeds' top-layer states per step (gruviz_core.repro), states read once per seed."""
    if len(reader.seeds) < 2:
        return pd.DataFrame(columns=list(rp.CKA_COLUMNS))
    picks = rp.cka_dogs(dogs["n_steps"].to_numpy(), seed=seed, n_per_step=n_per_step, min_dogs=min_dogs)
    if not picks:
        return pd.DataFrame(columns=list(rp.CKA_COLUMNS))
    start = run_offsets(reader)[:-1]
    want = {t: start[d] + t - 1 for t, d in picks.items()}  # rows of each step's dogs
    rows = np.unique(np.concatenate(list(want.values())))
    states = {t: {} for t in want}
    for k in range(len(reader.seeds)):
        h = _top_rows(reader, k, rows)
        for t, r in want.items():
            states[t][k] = h[np.searchsorted(rows, r)]
    weights_of = lambda n: ev.poisson_weights(n, n_boot, seed + 3)  # noqa: E731
    return rp.cka_curve(states, weights_of=weights_of, seed=seed)


def _top_rows(reader, seed: int, rows: np.ndarray) -> np.ndarray:
    """(len(rows), H) float32 top-layer states at sorted `rows`, read chunk by chunk over their span."""
    out = np.zeros((len(rows), reader.n_units), dtype=np.float32)
    if not len(rows):
        return out
    for c in reader.iter_chunks(seed, (int(rows[0]), int(rows[-1]) + 1)):
        a, b = np.searchsorted(rows, [c.start, c.stop])
        out[a:b] = c.h[rows[a:b] - c.start, -1]
    return out


def _resilience(rows, scores, sel, dogs, rule, models, values, context, offsets, feature_names, train_rows, *,
                sample_dogs, seed, n_boot, perturbations, steps, feed_per_step: int = 40) -> dict[str, pd.DataFrame]:
    """The resilience and resilience_contrast tables: targets at several steps, scopes 'dog' and 'feed'."""
    names = tuple(feature_names) or tuple(models[0].feature_names)
    groups = rs.feature_groups(names)
    seen = rs.kinds_seen(values if train_rows is None else values[np.asarray(train_rows, bool)], groups)
    ok = np.zeros(len(rows), bool)
    ok[sel] = True
    plateau = np.full(len(offsets) - 1, np.nan)
    plateau[dogs["dog_index"].to_numpy()] = dogs["plateau_step"].to_numpy(np.float64)
    cases = rs.target_cases(offsets, ok, plateau, rule.k, sample_dogs=sample_dogs, seed=seed, steps=steps)
    race_all = race_codes(rows["race_id"].to_numpy())
    won_all = rows["won"].to_numpy(np.float64)
    others = [rs.others_in_race(scores[:, k], race_all, ok, cases.row) for k in range(len(models))]
    feed = rs.subsample_cases(cases, feed_per_step, seed)
    effects = {
        "dog": rs.case_effects(models, values, context, offsets, cases, others, won_all[cases.row], perturbations,
                               groups, seen, seed=seed),
        "feed": rs.feed_effects(models, values, context, offsets, rows["dog_index"].to_numpy(np.int64), race_all,
                                ok, np.nan_to_num(won_all), feed, perturbations, groups, seen, seed=seed),
    }
    weights = ev.poisson_weights(len(offsets) - 1, n_boot, seed + 5)
    res, con = rs.summarise(effects, {"dog": cases, "feed": feed}, perturbations, weights)
    return {"resilience": res, "resilience_contrast": con}


def _train_rows(race_date: np.ndarray, cutoff: str | None) -> np.ndarray | None:
    """(obs,) bool rows on or before the model set's training cutoff; None when the set does not say."""
    if not cutoff:
        return None
    return np.asarray(race_date).astype("datetime64[D]") <= np.datetime64(str(cutoff)[:10], "D")


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
