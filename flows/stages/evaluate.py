"""The evaluate stage: cohort comparisons of a run whose stats exist -> eval tables and the headline.

    eval/cohort_metrics, calibration, status_compare, status_effect, dose_response, sensitivity, repro, cka, resilience,
    divergence (docs/ARCHITECTURE.md lists their columns) and eval/headline.json.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flows.stages import compare as cp
from flows.stages.stats import run_offsets
from flows.stages.train import snapshot_yardsticks
from gruviz_core import cohorts as co
from gruviz_core import comparisons as cmp
from gruviz_core import evaluate as ev
from gruviz_core import repro as rp
from gruviz_core import resilience as rs
from gruviz_core import stats as st
from gruviz_core.cohorts import CohortRule
from gruviz_core.errors import ConfigError, NotFoundError
from gruviz_core.exemplars import typical_pair
from gruviz_core.features import column_index
from gruviz_core.headline import EvalPeriod, Headline
from gruviz_core.model import LoadedModel
from gruviz_core.racing import race_codes, race_softmax, renormalise, uniform_probs
from gruviz_core.results import StatsSummary
from gruviz_core.sequences import row_index
from storage.layout import RunLayout
from storage.registry import load_model_set
from storage.results import read_summary
from storage.sequences import load_sequence_meta, open_sequence_rows
from storage.states import open_states
from storage.store import location as store_path
from storage.tables import has_table, read_record, read_table, write_json, write_table

__all__ = ["evaluate_run", "run", "Holdout", "holdout_of"]


@dataclass(frozen=True)
class Holdout:
    """Which races a run may compare on: those after the model set last saw (fit or early stopping)."""

    after: str | None = None
    """ISO date; races strictly after it are out of sample. None: unknown, every race is compared."""
    basis: str = "none"
    """'builtin-split' (train | early-stopping | test windows), 'registered' (the team's training date) or 'none'."""
    model_cutoff: str | None = None
    """Last date of the model set's training period, as recorded."""
    early_stop_end: str | None = None
    """Last date of its early-stopping window, as recorded."""

    def keep(self, race_date: np.ndarray) -> np.ndarray:
        """(rows,) bool: race_date (datetime64) after the boundary (all True without one)."""
        d = np.asarray(race_date, dtype="datetime64[D]")
        if self.after is None:
            return np.ones(len(d), dtype=bool)
        return d > np.datetime64(self.after, "D")


def holdout_of(meta: dict) -> Holdout:
    """The held-out boundary recorded with a model set (its registry manifest)."""
    cutoff, es_end, until = meta.get("cutoff"), meta.get("early_stop_end"), meta.get("trained_until")
    if es_end:
        return Holdout(str(es_end), "builtin-split", cutoff, es_end)
    if until:
        return Holdout(str(until), "registered", cutoff, None)
    return Holdout(None, "none", cutoff, None)


def run(tmp_dir: str, root: str, set_id: str, seq_path: str, *, n_boot: int = 1000, min_races: int = 2000) -> dict:
    """Evaluate a finished run with the model set's models and the run's normalised inputs; the headline.

    Memory: holds per row of the run its won and dog columns, race codes, scores, the comparisons' per-row
    summaries (stats/row_summary, float32), and (B, dog) uint8 bootstrap weights (1 KB a dog at B = 1,000,
    cast to float a block of replicates at a time); not the model inputs, which resilience reads from the
    sequences store by rows as it needs them (the cases' rows, normalised and kept packed; the training
    rows' flag columns a window at a time), nor the snapshot (its yardstick prices are read from a few
    columns). Measured (bench/memory.py, 1 seed, H=64, the stage alone): 1.92 GB at 250k simulated dogs
    (4.85M rows), 3.19 GB at 500k, 5.85 GB at 1M (19.4M rows, 118 s).
    """
    offsets = load_sequence_meta(seq_path)["offsets"]
    model_set = load_model_set(root, set_id)
    return evaluate_run(tmp_dir, models=model_set.models, inputs=partial(_run_inputs, seq_path, model_set, offsets),
                        offsets=offsets, feature_names=model_set.feature_names,
                        n_boot=n_boot, holdout=holdout_of(model_set.meta), min_races=min_races,
                        yardsticks=_run_yardsticks(tmp_dir, root, int(offsets[-1])))


def _run_yardsticks(run_dir: str, root: str, n_obs: int) -> dict[str, np.ndarray]:
    """The run's snapshot's yardstick prices (e.g. Iggy's rated price) per row, {} when it has none."""
    meta = read_record(RunLayout.at(store_path(run_dir)).run_json) or {}
    snapshot_id = meta.get("snapshot_id")
    return snapshot_yardsticks(root, str(snapshot_id), n_obs) if snapshot_id else {}


def _run_inputs(seq_path: str, model_set, offsets: np.ndarray) -> tuple[_NormalisedRows, _NormalisedRows, np.ndarray | None]:
    """(values, context, train_rows) for resilience, read where it runs (in the background); rows are
    normalised when resilience first asks for them."""
    seqs = open_sequence_rows(seq_path, meta=("race_date",))  # rows read when resilience asks for them
    values, context = _lean_inputs(model_set, seqs)
    return values, context, _train_rows(seqs.meta["race_date"], model_set.meta.get("cutoff"))


def _lean_inputs(model_set, seqs) -> tuple[_NormalisedRows, _NormalisedRows]:
    """(values, context): ModelSet.prepare's columns, normalised on demand (no full-size copy made up front).

    Resilience reads the histories of a few thousand sampled dogs and races (a few % of the rows on the
    Iggy files), so normalising every row first (1 s of its 9 s there) was mostly wasted."""
    fi = column_index(seqs.feature_names, model_set.feature_names, what=f"model set {model_set.set_id} features")
    ci = column_index(seqs.context_names, model_set.context_names, what=f"model set {model_set.set_id} context")
    return (_NormalisedRows(seqs.values, fi, model_set.normaliser.select(model_set.feature_names, ())),
            _NormalisedRows(seqs.context, ci, model_set.normaliser.select((), model_set.context_names), context=True))


_SCAN_ROWS = 1 << 20
"""Rows read at a time where every training row is scanned (kinds_seen's columns)."""


class _NormalisedRows:
    """raw[:, cols] normalised by `norm` (its race features, or its context with context=True), each row
    computed the first time it is asked for and kept: `x[rows]` -> (..., len(cols)) float32 for any NumPy
    row index. Memory: the rows asked for, packed (plus a 4-byte slot per row): resilience's cases are spread
    over every dog, so an (obs, len(cols)) buffer would have most of its pages touched (0.8 GB at 250k dogs).
    `x.columns(rows, cols)` -> some normalised columns of some rows without keeping them (kinds_seen's scan
    of the training rows)."""

    def __init__(self, raw: np.ndarray, cols: Sequence[int], norm, *, context: bool = False):
        self.raw, self.cols, self.norm, self.context = raw, np.asarray(cols, np.int64), norm, context
        self.shape = (len(raw), len(self.cols))
        self.dtype = np.dtype(np.float32)
        self._slot = np.full(len(raw), -1, np.int64 if len(raw) >= 2**31 else np.int32)  # row -> packed position
        self._packed = np.empty((0, len(self.cols)), np.float32)
        self._n = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, tuple):
            raise TypeError("_NormalisedRows: index rows only (x[rows]), then columns of the result")
        idx = row_index(rows, len(self))
        need = np.unique(idx[self._slot[idx] < 0])
        if len(need):
            end = self._n + len(need)
            if end > len(self._packed):  # grow by half again at least: amortised copies
                grown = np.empty((max(end, len(self._packed) * 3 // 2, 1024), self.shape[1]), np.float32)
                grown[: self._n] = self._packed[: self._n]
                self._packed = grown
            self._packed[self._n: end] = self._apply(self.raw[need][:, self.cols], self.norm)
            self._slot[need] = np.arange(self._n, end)
            self._n = end
        return self._packed[self._slot[rows]]

    def columns(self, rows, cols: Sequence[int]) -> np.ndarray:
        """(n, len(cols)) normalised columns `cols` (positions among len(self.cols)) of `rows`, read
        _SCAN_ROWS rows at a time (the raw rows may be read from the store on demand)."""
        cols = np.asarray(cols, np.int64)
        names = tuple((self.norm.context_names if self.context else self.norm.feature_names)[c] for c in cols)
        norm = self.norm.select((), names) if self.context else self.norm.select(names, ())
        idx = row_index(rows, len(self))
        out = np.empty((len(idx), len(cols)), np.float32)
        for a in range(0, len(idx), _SCAN_ROWS):
            part = idx[a:a + _SCAN_ROWS]
            out[a:a + len(part)] = self._apply(self.raw[part][:, self.cols[cols]], norm)
        return out

    def _apply(self, x: np.ndarray, norm) -> np.ndarray:
        empty = np.zeros((len(x), 0), np.float32)
        return norm.apply(empty, x)[1] if self.context else norm.apply(x, empty)[0]


def _period(holdout: Holdout, r: pd.DataFrame, race: np.ndarray, min_races: int) -> EvalPeriod:
    """The evaluation period as the report states it."""
    d = r["race_date"].to_numpy(dtype="datetime64[D]")
    n_races = int(race.max() + 1) if len(race) else 0
    return EvalPeriod(
        start=str(d.min()) if len(d) else None, end=str(d.max()) if len(d) else None,
        after=holdout.after, model_cutoff=holdout.model_cutoff, early_stop_end=holdout.early_stop_end,
        basis=holdout.basis, races=n_races, dogs=int(r["dog_index"].nunique()), rows=int(len(r)),
        in_sample=False if holdout.after is not None else None, min_races=int(min_races),
        too_small=n_races < min_races,
    )


def _yardstick_nll(sticks: dict[str, np.ndarray], sel: np.ndarray, sources: dict, won: np.ndarray,
                   race: np.ndarray) -> dict[str, dict]:
    """Each yardstick's race NLL on the held-out races where every runner has its price, with the ensemble's
    and the market's on the same races: {name: {races, race_nll, model_mean, market}}."""
    out = {}
    for name, p_all in sticks.items():
        q = renormalise(np.asarray(p_all, np.float64)[sel], race)
        ok = np.isfinite(q)
        if not ok.any():
            continue
        sub = pd.factorize(race[ok])[0].astype(np.int64)
        out[name] = {"races": int(sub.max() + 1), "race_nll": cmp.race_nll(q[ok], won[ok], sub),
                     **{k: cmp.race_nll(sources[k][ok], won[ok], sub) for k in ("model_mean", "market") if k in sources}}
    return out


def _nll(p: np.ndarray | None, won: np.ndarray, race: np.ndarray) -> float | None:
    if p is None or len(p) == 0:
        return None
    return cmp.race_nll(p, won, race)


def _km_median(run_dir: Path, summary: StatsSummary) -> int | None:
    """Kaplan-Meier median time to plateau of the cohort layer; None while the curve stays above 0.5."""
    if not has_table(run_dir, "plateau"):
        return None
    km = read_table(run_dir, "plateau")
    km = km[km["layer"] == summary.cohort_layer]
    below = km[km["survival"] <= 0.5]
    return int(below["step"].min()) if len(below) else None


def evaluate_run(
    run_dir: str | Path, *, models: list[LoadedModel] | None = None, values: np.ndarray | None = None,
    context: np.ndarray | None = None, offsets: np.ndarray | None = None, feature_names: Sequence[str] = (),
    sample_dogs: int = 2000, seed: int = 0, n_boot: int = 1000, allow_incomplete: bool = True,
    pairs: Sequence[tuple[str, str]] | None = None,
    perturbations: Sequence[rs.Perturbation] = rs.DEFAULT_PERTURBATIONS,
    holdout: Holdout | None = None, sizes: cmp.Sizes = cmp.Sizes(), min_races: int = 2000, grid_boot: int = 200,
    target_steps: Sequence[int] = rs.TARGET_STEPS, train_rows: np.ndarray | None = None,
    inputs: Callable[[], tuple[np.ndarray, Any, np.ndarray | None]] | None = None,
    yardsticks: dict[str, np.ndarray] | None = None,
) -> dict:
    """Cohort comparisons of a run whose stats exist; writes eval/*.parquet and eval/headline.json.

    Resilience needs `models` (one per seed, in the store's seed order) and the normalised
    `values` (obs, F), `context` (obs, C; or anything whose [rows] gives those rows, as `run` passes)
    with `offsets` (dog + 1,) in the store's dog order;
    `train_rows` (obs,) bool marks the model's training period (kinds it never saw are 'n/a').
    `yardsticks`: other forecasters' win probabilities per row (obs,), e.g. the source's rated price: their
    race NLL beside the ensemble's on the races where every runner has one.
    `inputs`, instead of values, context and train_rows: a callable returning the three, called where
    resilience runs (a second core when there is one), so reading and normalising them is off the
    stage's critical path.
    """
    t0 = time.perf_counter()
    run_dir = store_path(run_dir)
    layout = RunLayout.at(run_dir)
    if not has_table(run_dir, "dog"):
        raise NotFoundError(f"{layout.stats}: no dog table; run the stats stage (flows.stages.stats.compute_stats) first")
    reader = open_states(run_dir, allow_incomplete=allow_incomplete)
    summary = read_summary(run_dir)
    if summary is None:
        raise NotFoundError(f"{layout.summary}: missing; run the stats stage (flows.stages.stats.compute_stats) first")
    rule = CohortRule.from_dict(summary.rule)
    dogs = read_table(run_dir, "dog")
    dogs = dogs[dogs["cohort_layer"]].sort_values("dog_index").reset_index(drop=True)
    cohort = dogs["cohort"].to_numpy(dtype=object)
    rows = reader.rows()
    scores = reader.scores().astype(np.float64)  # (obs, seed)
    race_all = race_codes(rows["race_id"].to_numpy())  # once: factorising 500k strings is not free
    sel, has_market = ev.eval_rows(rows, scores, race_all)
    holdout = holdout or Holdout()
    sel = sel[holdout.keep(rows["race_date"].to_numpy()[sel])]  # out of sample: after the held-out boundary
    r = rows.iloc[sel]
    # what the rest reads of every row (resilience: won, dog); race_id's codes are race_all (its strings cost
    # ~70 bytes a row), and the dates, steps and prices are read for the evaluated rows only (r)
    rows = rows[["won", "dog_index"]]
    resilience = None  # the resilience re-runs (torch, most of the stage) on a second core while the rest runs here
    if inputs is None and values is not None and context is not None:
        inputs = lambda: (values, context, train_rows)  # noqa: E731
    if models and inputs is not None and offsets is not None:
        checked = _checked_offsets(reader, offsets)  # here: a mismatch fails the stage before any work
        resilience = _Background(partial(
            _resilience, rows, race_all, scores, sel, dogs, rule, models, inputs, checked, feature_names,
            sample_dogs=sample_dogs, seed=seed, n_boot=n_boot, perturbations=perturbations, steps=target_steps))
    won = r["won"].to_numpy(np.float64)
    race = pd.factorize(race_all[sel], sort=False)[0].astype(np.int64)  # the same codes as race_codes(r.race_id)
    dog = r["dog_index"].to_numpy(np.int64)
    step = r["step"].to_numpy()
    probs = np.stack([race_softmax(scores[sel, k], race) for k in range(scores.shape[1])], axis=1)  # (n, seed)
    p = probs[:, 0]
    sources = {"model": p, "model_mean": probs.mean(axis=1), "uniform": uniform_probs(race)}
    if has_market:
        sources["market"] = renormalise(r["market_prob"].to_numpy(np.float64), race)
    weights = cmp.bootstrap_weights(len(cohort), n_boot, seed)  # (B, dog) uint8, shared by every comparison
    period = _period(holdout, r, race, min_races)
    tables: dict[str, pd.DataFrame] = {}
    # by the dog's cohort (decided by its whole career: includes selection); a smaller B suffices here
    tables["cohort_metrics"] = ev.cohort_metrics(sources, won, race, dog, cohort,
                                                 weights=weights[: min(n_boot, 200)])
    row_cohort = cohort[dog]
    cal = [ev.calibration(sources[s], won, row_cohort).assign(source=s) for s in ("model", "market") if s in sources]
    tables["calibration"] = pd.concat(cal, ignore_index=True)
    if rule.by_plateau and not period.too_small and len(sel):
        found = cp.plateau_comparisons(run_dir, summary, rule, dogs, sel, probs, sources.get("market"), won, race, dog,
                                       weights, sizes=sizes, grid_boot=grid_boot, n_obs=reader.n_obs)
    else:
        found = _comparisons(run_dir, summary, rule, dogs, rows, sel, sources, won, race, dog, step, weights,
                             sizes=sizes, grid_boot=grid_boot, too_small=period.too_small)
    tables.update(found.tables)
    tables["repro"] = ev.repro_table(probs, race, dog, step, won, _kappas(run_dir, dogs, rule), weights=weights)
    tables["cka"] = _cka(reader, dogs, seed=seed, n_boot=min(n_boot, 100))
    ex_pairs = list(pairs) if pairs else typical_pair(dogs)  # the one exemplar rule (page, divergence, email)
    tables["divergence"] = _divergence(reader, ex_pairs)
    notes = list(found.notes)
    if resilience is not None:
        tables.update(resilience.result())
    else:
        notes.append("resilience skipped: evaluate_run was given no models and normalised inputs")
    for name, df in tables.items():
        write_table(run_dir, name, df)
    cm = tables["cohort_metrics"].set_index(["source", "cohort", "metric"])["value"]

    def _get(src, c="all", m="log_loss"):
        return float(cm.get((src, c, m), np.nan))

    km_median = _km_median(run_dir, summary)
    headline = {
        "dogs": reader.n_dogs, "obs": reader.n_obs, "eval_rows": int(len(sel)),
        "eval_races": int(race.max() + 1) if len(race) else 0,
        "seeds": reader.seeds, "cohort_counts": dict(summary.cohort_counts), "rule": dict(summary.rule),
        "saturated_share": summary.cohort_counts.get("saturated", 0) / max(reader.n_dogs, 1),
        "period": period, "race_nll": {k: _nll(sources.get(k), won, race) for k in ("model", "model_mean", "market", "uniform")},
        "model_log_loss": _get("model"), "model_mean_log_loss": _get("model_mean"),
        "market_log_loss": _get("market"), "uniform_log_loss": _get("uniform"),
        "model_hit_rate": _get("model", m="hit_rate"), "market_hit_rate": _get("market", m="hit_rate"),
        "model_auc": _get("model", m="auc"),
        **found.headline, "plateau_median_km": km_median,
        **cp.saturation_headline(summary, km_median, probs, won, race, rule),
        "effective_dim": list(summary.effective_dim), "dead_units": summary.dead_units,
        "always_saturated_units": summary.always_saturated_units,
        "exemplars": [{"dog_a": a, "dog_b": b} for a, b in ex_pairs],
        "largest_errors": _largest_errors(r, dogs, sources, won),
        "has_market": has_market, "n_boot": n_boot, "bootstrap_seed": seed, "grid_boot": grid_boot,
        "min_sizes": {"dogs": sizes.min_dogs, "winners": sizes.min_winners},
        "tables": sorted(tables), "notes": notes, "seconds": round(time.perf_counter() - t0, 3),
    }
    headline["yardsticks"] = _yardstick_nll(yardsticks or {}, sel, sources, won, race)
    headline["race_nll"]["rated"] = (headline["yardsticks"].get("rated_price") or {}).get("race_nll")
    if "resilience_contrast" in tables:
        headline["resilience_latest"] = rs.latest_race_summary(tables["resilience_contrast"])
    headline["repro"] = cp.repro_headline(tables.get("repro"))
    headline = Headline.from_dict(headline).to_dict()  # the typed record, written once
    write_json(layout.headline, headline)
    return headline


class _Background:
    """`fn()` in a daemon thread when this process may use more than one core, else when asked for;
    `.result()` returns its value or raises its exception. Torch and NumPy release the GIL, so with one
    torch thread per Python thread the two run on two cores (inputs are only read, never written)."""

    def __init__(self, fn: Callable[[], Any]):
        self._fn, self._out, self._err = fn, None, None
        self._thread = None
        if _usable_cores() > 1:
            self._thread = threading.Thread(target=self._run, name="gruviz-evaluate-resilience", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._out = self._fn()
        except BaseException as e:  # re-raised by result(), in the stage's thread
            self._err = e

    def result(self) -> Any:
        if self._thread is None:
            return self._fn()
        self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _kappas(run_dir: Path, dogs: pd.DataFrame, rule: CohortRule) -> ev.SeedStatus:
    """Every seed's plateau step per dog (stats/dog_seed; seed 0's alone without it) and the rule's (w, k), for
    status at any race; step-indexed rows use debut-observed dogs only (DESIGN section 5)."""
    plateau = dogs["plateau_step"].to_numpy(np.float64)[:, None]  # (dog, 1): seed 0, the cohort layer
    if has_table(run_dir, "dog_seed"):
        ds = read_table(run_dir, "dog_seed")
        lab = ds.pivot(index="dog_index", columns="seed", values="plateau_step").sort_index(axis=1)
        plateau = lab.reindex(dogs["dog_index"].to_numpy()).to_numpy(np.float64)  # (dog, seed)
    step_ok = dogs["debut_observed"].to_numpy(bool) if "debut_observed" in dogs else None
    return ev.SeedStatus(plateau, dogs["n_steps"].to_numpy(), rule.w, rule.k, step_ok)


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
    """(len(rows), H) float32 top-layer states at sorted `rows`: h alone (not z, r), only the chunks holding them."""
    out = np.zeros((len(rows), reader.n_units), dtype=np.float32)
    if not len(rows):
        return out
    arr = getattr(reader, "_arr", None)  # the reader has no public row selection yet
    if arr is not None:
        return arr(f"seed{seed}/h").get_orthogonal_selection((rows, reader.n_layers - 1, slice(None))).astype(np.float32)
    for c in reader.iter_chunks(seed, (int(rows[0]), int(rows[-1]) + 1)):  # h, z and r of every chunk in the span
        a, b = np.searchsorted(rows, [c.start, c.stop])
        out[a:b] = c.h[rows[a:b] - c.start, -1]
    return out


def _resilience(rows, race_all, scores, sel, dogs, rule, models, inputs, offsets, feature_names, *,
                sample_dogs, seed, n_boot, perturbations, steps, feed_per_step: int = 100, latest_dogs: int = 8000,
                within_dogs: int = 3000) -> dict[str, pd.DataFrame]:
    """The resilience and resilience_contrast tables (gruviz_core.resilience): scopes 'dog', 'within-dog', 'feed'.

    Sample sizes, chosen so the latest-race test is tight and the costly re-runs stay few:
      dog, latest-race kinds   every held-out dog with a target step, up to `latest_dogs`: these kinds
                               cost at most one GRU step per case, and the page-one early-minus-late
                               flip-rate interval must be at most 0.04 wide on the Iggy files (it was
                               0.038 with 2,000 dogs; about 1/sqrt(dogs) narrower with more);
      dog, other kinds         `sample_dogs` of those dogs (they re-run up to the whole history);
      within-dog               up to `within_dogs` debut-observed dogs with an early and a late target
                               over all their races (latest-race kinds, sensitivity only);
      feed                     `feed_per_step` held-out races per target step, latest-race kinds only
                               (every runner re-scored), so each side has >= 100 dogs for a reading.
    n_boot replicates over dogs (page one reads the latest-race contrast: n_boot >= 1,000 there).
    `inputs()` gives the normalised (values, context, train_rows)."""
    values, context, train_rows = inputs()
    names = tuple(feature_names) or tuple(models[0].feature_names)
    groups = rs.feature_groups(names)
    seen = rs.kinds_seen(_training_rows(values, train_rows), groups)
    n_dogs = len(offsets) - 1
    ok = np.zeros(len(rows), bool)
    ok[sel] = True
    ok_all = _scored_rows(scores, race_all)  # any period: sensitivity needs no outcome
    debut = np.ones(n_dogs, bool)
    if "debut_observed" in dogs:  # step-indexed science on dogs whose first race is their debut (DESIGN 5)
        debut[:] = False
        debut[dogs["dog_index"].to_numpy()] = dogs["debut_observed"].to_numpy(bool)
    latest = tuple(p for p in perturbations if p.kind in rs.LATEST_KINDS)
    other = tuple(p for p in perturbations if p.kind not in rs.LATEST_KINDS)
    held = rs.target_cases(offsets, ok, sample_dogs=latest_dogs, seed=seed, steps=steps)
    some = rs.subsample_dogs(held, sample_dogs, seed)
    within = rs.within_dog_cases(offsets, ok_all, sample_dogs=within_dogs, seed=seed, steps=steps, dog_ok=debut)
    feed = rs.subsample_cases(held, feed_per_step, seed)
    won_all = rows["won"].to_numpy(np.float64)
    row_dog = rows["dog_index"].to_numpy(np.int64)

    def _dog_block(scope, cases, perts, ok_rows, won):
        others = [rs.others_in_race(scores[:, k], race_all, ok_rows, cases.row) for k in range(len(models))]
        eff = rs.case_effects(models, values, context, offsets, cases, others, won, perts, groups, seen, seed=seed)
        return rs.Block(scope, cases, perts, eff)

    blocks = [
        _dog_block("dog", held, latest, ok, won_all[held.row]),
        _dog_block("dog", some, other, ok, won_all[some.row]),
        _dog_block("within-dog", within, latest, ok_all, None),
        rs.Block("feed", feed, latest, rs.feed_effects(models, values, context, offsets, row_dog, race_all, ok,
                                                       np.nan_to_num(won_all), feed, latest, groups, seen, seed=seed)),
    ]
    res, con = rs.summarise(blocks, n_boot=n_boot, seed=seed + 5)
    return {"resilience": res, "resilience_contrast": con}


def _scored_rows(scores: np.ndarray, race: np.ndarray) -> np.ndarray:
    """(obs,) bool: every seed scored the row and its race has at least two such runners."""
    ok = np.isfinite(scores).all(axis=1)
    runners = np.bincount(race[ok], minlength=int(race.max()) + 1 if len(race) else 0)
    return ok & (runners[race] >= 2)


def _training_rows(values, train_rows: np.ndarray | None):
    """The training rows of `values` as kinds_seen reads them: for _NormalisedRows, column c of those rows
    normalised on demand (kinds_seen reads only a few flag columns), not every training row."""
    rows = slice(None) if train_rows is None else np.flatnonzero(np.asarray(train_rows, bool))
    if isinstance(values, _NormalisedRows):
        return lambda c: values.columns(rows, [c])[:, 0]
    return values[rows]


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


@dataclass(frozen=True)
class _Found:
    tables: dict[str, pd.DataFrame]
    headline: dict
    notes: list[str] = field(default_factory=list)


_GROUPS = ("saturated", "partial", "unsaturated", "undecided")  # the magnitude rules' (plateau rules: flows.stages.compare)
_SENSITIVITY_GRID: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("tau", (0.9, 0.99)), ("theta", (0.1, 0.5)), ("w", (3, 8)), ("delta", (0.02, 0.1)), ("k", (2, 5)),
)
"""One-at-a-time grid around the rule's own values (tau, theta, and the plateau's w, delta, k)."""


def _comparisons(run_dir, summary, rule, dogs, rows, sel, sources, won, race, dog, step, weights, *,
                 sizes: cmp.Sizes, grid_boot: int, too_small: bool) -> _Found:
    """Scored races grouped by the status the model had at prediction time, compared within step strata;
    the negative control, within-dog, dose-response and the threshold grid (see gruviz_core.comparisons)."""
    n_dogs = len(dogs)
    layer = summary.cohort_layer
    ds = read_table(run_dir, "dog_step", columns=["step", "layer", "s", *st.TAU_COLUMNS])
    ds = ds[ds["layer"] == layer]
    s_row = ds["s"].to_numpy(np.float64)
    f_rows = {tau: ds[c].to_numpy(np.float64) for tau, c in zip(st.TAUS, st.TAU_COLUMNS)}
    steps_all = ds["step"].to_numpy(np.int64)
    offsets = np.concatenate([[0], np.cumsum(dogs["n_steps"].to_numpy(np.int64))])
    empty = {"status_compare": cmp.group_table(cmp.row_metrics(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), None),
                                               np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, object),
                                               weights, groups=_GROUPS, n_dogs=n_dogs)}
    if too_small or len(sel) == 0:
        return _Found({**empty, "status_effect": cp.effect_frame([]), "dose_response": _dose_frame(pd.DataFrame()),
                       "sensitivity": _sens_frame([])},
                      {"main_effect": None, "negative_control": None, "within_dog": None, "dose_trend": None,
                       "n_comparisons": 0, "debut_scope": None},
                      ["comparisons skipped: the held-out period is too small or empty"])
    rm = cmp.row_metrics(sources["model"], won, race, sources.get("market"))
    metric = "gap_vs_market" if rm.has_market else "runner_log_loss"
    status = co.status_at_prediction(s_row, f_rows[rule.tau], steps_all, offsets, dogs["plateau_step"].to_numpy(), rule,
                                     rows=sel)  # the evaluated rows only
    debut = dogs["debut_observed"].to_numpy(bool) if "debut_observed" in dogs else np.zeros(n_dogs, bool)
    scope_debut = np.unique(dog[debut[dog]]).size >= sizes.min_dogs
    in_scope = debut[dog] if scope_debut else np.ones(len(dog), bool)
    notes = [] if scope_debut else ["step-indexed comparisons include dogs whose debut is not observed "
                                    "(too few dogs with an observed debut in the period)"]
    group = np.where(in_scope, status.status, "out of scope")
    stratum = cmp.stratum_of(step)
    cohort = dogs["cohort"].to_numpy(dtype=object)
    effects = [
        ("main", cmp.stratified_effect(rm, dog, group, stratum, weights, a="saturated", b="unsaturated",
                                       metric=metric, n_dogs=n_dogs, sizes=sizes)),
        ("negative_control", cmp.stratified_effect(rm, dog, np.where((step == 1) & in_scope, cohort[dog], "-"),
                                                   stratum, weights, a="saturated", b="unsaturated", metric=metric,
                                                   n_dogs=n_dogs, sizes=sizes)),
        ("within_dog", _within_dog_scoped(rm, dog, status.plateau_reached, in_scope, weights, metric,
                                          n_dogs, sizes)),
        ("by_dog_cohort", cmp.stratified_effect(rm, dog, cohort[dog], stratum, weights, a="saturated",
                                                b="unsaturated", metric=metric, n_dogs=n_dogs, sizes=sizes)),
    ]
    dose, trend = cmp.dose_response(rm, dog, status.s_prev, (step >= 2) & in_scope, weights,
                                    metric=metric, n_dogs=n_dogs)
    effects.append(("dose_trend", _trend_effect(metric, trend, dose, sizes)))
    sens = _sensitivity(rm, dog, stratum, in_scope, sel, s_row, f_rows, steps_all, offsets, rule, weights[:grid_boot],
                        metric, n_dogs, sizes)
    tables = {
        "status_compare": cmp.group_table(rm, dog, group, stratum, weights, groups=_GROUPS, n_dogs=n_dogs),
        "status_effect": cp.effect_frame(effects), "dose_response": _dose_frame(dose), "sensitivity": _sens_frame(sens),
    }
    by = dict(effects)
    head = {"main_effect": by["main"], "negative_control": by["negative_control"], "within_dog": by["within_dog"],
            "dose_trend": trend if trend.get("slope") is not None else None,
            "n_comparisons": len(effects) + len(sens) - 1, "debut_scope": "observed" if scope_debut else "all",
            "main_metric": metric}
    return _Found(tables, head, notes)


def _within_dog_scoped(rm, dog, after, in_scope, weights, metric, n_dogs, sizes) -> dict:
    keep = np.flatnonzero(in_scope)
    sub = cmp.RowMetrics(rm.values[keep], rm.has_market)
    return cmp.within_dog_effect(sub, dog[keep], after[keep], weights, metric=metric, n_dogs=n_dogs, sizes=sizes)


def _trend_effect(metric: str, trend: dict, dose: pd.DataFrame, sizes: cmp.Sizes) -> dict:
    ok = trend.get("slope") is not None
    lo, hi = trend.get("lo"), trend.get("hi")
    n = int(dose["n_dogs"].max()) if len(dose) else 0
    comparable = ok and len(dose) >= 3 and int(dose["n_dogs"].min()) >= sizes.min_dogs
    return {"metric": metric, "a": "slope per unit s_prev", "b": "", "diff": trend.get("slope"), "lo": lo, "hi": hi,
            "n_dogs_a": n, "n_dogs_b": n, "n_winners_a": 0, "n_winners_b": 0, "comparable": bool(comparable),
            "excludes_zero": bool(comparable and lo is not None and np.isfinite(lo) and (lo > 0 or hi < 0))}


def _sensitivity(rm, dog, stratum, in_scope, sel, s_row, f_rows, steps_all, offsets, rule, weights, metric,
                 n_dogs, sizes) -> list[tuple]:
    """The main effect at each point of the one-at-a-time grid (and the rule's own point first)."""
    out = []
    points = [("default", None, rule)]
    for param, values in _SENSITIVITY_GRID:
        for v in values:
            if param == "theta":
                r = replace(rule, theta=v, low=min(rule.low, v))
            else:
                r = replace(rule, **{param: type(getattr(rule, param))(v)})
            points.append((param, v, r))
    plateau_cache: dict[tuple, np.ndarray] = {}
    for param, v, r in points:
        key = (r.w, r.delta, r.k)
        if key not in plateau_cache:
            plateau_cache[key] = st.plateau_steps(s_row, steps_all, offsets, w=r.w, delta=r.delta, k=r.k)
        status = co.status_at_prediction(s_row, f_rows[r.tau], steps_all, offsets, plateau_cache[key], r, rows=sel)
        group = np.where(in_scope, status.status, "out of scope")
        e = cmp.stratified_effect(rm, dog, group, stratum, weights, a="saturated", b="unsaturated", metric=metric,
                                  n_dogs=n_dogs, sizes=sizes)
        na, nb = int((group == "saturated").sum()), int((group == "unsaturated").sum())
        value = float("nan") if v is None else v  # the default row: the rule's own parameters
        out.append((param, float(value), e["n_dogs_a"], e["n_dogs_b"], na, nb, e["diff"], e["lo"], e["hi"],
                    e["comparable"]))
    return out


def _dose_frame(dose: pd.DataFrame) -> pd.DataFrame:
    cols = ["score", "decile", "score_lo", "score_hi", "score_mid", "value", "lo", "hi", "metric", "n_rows", "n_dogs"]
    if len(dose) == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("decile", "n_rows", "n_dogs") else
                                          ("object" if c in ("score", "metric") else "float64")) for c in cols})
    return dose.assign(score="s_prev")[cols]


def _sens_frame(rows: list[tuple]) -> pd.DataFrame:
    cols = ["param", "value", "n_dogs_a", "n_dogs_b", "n_rows_a", "n_rows_b", "diff", "lo", "hi", "comparable"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("diff", "lo", "hi", "value"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("n_dogs_a", "n_dogs_b", "n_rows_a", "n_rows_b"):
        df[c] = df[c].astype("int64")
    df["comparable"] = df["comparable"].astype(bool)
    return df


def _largest_errors(r: pd.DataFrame, dogs: pd.DataFrame, sources: dict, won: np.ndarray, n: int = 5) -> list[dict]:
    """The runners of the period's last race day that the model got most wrong: the largest per-runner
    log-loss gap to the market (log-loss without one). For the report's links to the explorer."""
    if len(r) == 0:
        return []
    ll = cmp.row_metrics(sources["model"], won, np.zeros(len(won), np.int64), sources.get("market")).values
    err = ll[:, 1] if "market" in sources else ll[:, 2]  # gap, else runner log-loss
    day = r["race_date"].to_numpy(dtype="datetime64[D]")
    last = day == day.max()
    idx = np.flatnonzero(last)[np.argsort(-np.nan_to_num(err[last], nan=-np.inf), kind="stable")[:n]]
    ids = dogs.set_index("dog_index")
    return [{"dog_id": str(ids.at[int(r["dog_index"].iat[i]), "dog_id"]), "race_id": str(r["race_id"].iat[i]),
             "race_date": str(day[i]), "error": float(err[i]), "won": bool(won[i] > 0)} for i in idx]
