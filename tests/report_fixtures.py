"""A fake run directory with exactly the tables of docs/ARCHITECTURE.md sections 3-4, for report tests.

`write_run(run_dir, ...)` writes `run.json`, `stats/*.parquet`, `stats/summary.json`,
`eval/*.parquet` and `eval/headline.json` with plausible synthetic numbers (no model, no Zarr),
vectorised so that a 100k-dog run takes a few seconds. `fake_dog_states(run_dir)` returns a
loader like `storage.states.open_states(run_dir).dog` for the heatmaps; `report_of(run_dir, ...)`
reads the run through `storage.results` and builds its report as the nightly flow does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gruviz_core.results import DogStates, DogStatesSet, RunResults
from gruviz_core.tables import TABLES as SCHEMAS
from reports.build import build_report, heatmap_dog_ids
from reports.model import ReportModel
from storage.results import read_dog_states, read_history, read_run_results, states_of

__all__ = ["write_run", "write_history", "fake_dog_states", "fake_states_set", "report_of", "EVIL_NAME", "TABLES"]

EVIL_NAME = "<script>alert(1)</script>"
"""A dog name that must show as text and never run."""

TABLES = (
    "stats/dog_step.parquet",
    "stats/dog.parquet",
    "stats/unit.parquet",
    "stats/step.parquet",
    "stats/plateau.parquet",
    "eval/cohort_metrics.parquet",
    "eval/calibration.parquet",
    "eval/status_compare.parquet",
    "eval/status_effect.parquet",
    "eval/dose_response.parquet",
    "eval/sensitivity.parquet",
    "eval/repro.parquet",
    "eval/cka.parquet",
    "eval/resilience.parquet",
    "eval/resilience_contrast.parquet",
    "eval/divergence.parquet",
)
"""Every Parquet table the report reads, relative to the run directory."""

COHORTS = ("saturated", "partial", "unsaturated", "undecided")

SCENARIOS = ("found", "none", "small", "period_small", "zero_saturated", "in_sample_null")
"""What a fake run's evaluation says: an association found (a worse gap for saturated-status races), none
at this size, groups too small to compare, a held-out period too small to compare, a rule that finds no
saturated dog, and a registered model without a training date (in_sample unknown)."""

STRATA = ("1", "2-5", "6-10", "11-20", "21-40", "41+", "all")
GROUPS = ("saturated", "partial", "unsaturated", "undecided")


def _write(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)


def _dogs(n_dogs: int, max_steps: int, rng: np.random.Generator, evil_first: bool, scenario: str) -> pd.DataFrame:
    """One row per dog: career length, plateau, cohort. Long-tailed careers like real data."""
    n_steps = np.clip(np.round(rng.lognormal(2.6, 0.9, n_dogs)), 1, max_steps).astype(np.int64)
    plateau = np.round(rng.normal(18, 6, n_dogs)).clip(6, None).astype(np.int64)
    censored = plateau > n_steps
    level = rng.beta(2, 2, n_dogs)  # how saturated the dog's state ends up, 0..1
    if scenario == "zero_saturated":  # most dogs' tail F is exactly 0, as on the real data
        level = np.where(rng.random(n_dogs) < 0.8, 0.0, rng.uniform(0, 0.2, n_dogs))
    f_after = np.where(censored, np.nan, level)
    cohort = np.where(
        censored, "undecided", np.where(level >= 0.5, "saturated", np.where(level < 0.25, "unsaturated", "partial"))
    )
    names = np.array([f"DOG {i:06d}" for i in range(n_dogs)], dtype=object)
    if evil_first and n_dogs and scenario != "zero_saturated":
        names[0] = EVIL_NAME
        # Make the evil dog the clearest saturated exemplar, so it is on the page.
        n_steps[0], plateau[0], censored[0], level[0], f_after[0], cohort[0] = (
            max_steps,
            12,
            False,
            0.99,
            0.99,
            "saturated",
        )
    if n_dogs > 1:
        # ... and dog 1 the clearest unsaturated one.
        n_steps[1], plateau[1], censored[1], level[1], f_after[1], cohort[1] = (
            max_steps * 2 // 3,
            15,
            False,
            0.01,
            0.01,
            "unsaturated",
        )
    return pd.DataFrame(
        {
            "dog_index": np.arange(n_dogs, dtype=np.int64),
            "dog_id": [f"D{i:06d}" for i in range(n_dogs)],
            "dog_name": names,
            "n_steps": n_steps,
            "plateau": plateau,
            "censored": censored,
            "level": level,
            "f_after": f_after,
            "cohort": cohort,
            "debut_observed": np.arange(n_dogs) % 7 != 3,
        }
    )


def _dog_step(dogs: pd.DataFrame, n_layers: int, rng: np.random.Generator) -> pd.DataFrame:
    n = dogs["n_steps"].to_numpy()
    idx = np.repeat(np.arange(len(dogs)), n)
    start = np.cumsum(n) - n
    step = (np.arange(len(idx)) - np.repeat(start, n) + 1).astype(np.int32)
    level = dogs["level"].to_numpy()[idx]
    tau = dogs["plateau"].to_numpy()[idx] / 3.0
    frames = []
    for layer in range(n_layers):
        s = (0.15 + 0.8 * level * (1 - np.exp(-step / tau)) + rng.normal(0, 0.01, len(idx))).clip(0, 1)
        f095 = (s**3).clip(0, 1)
        frames.append(
            pd.DataFrame(
                {
                    "dog_index": idx.astype(np.int64),
                    "step": step,
                    "layer": np.int32(layer),
                    "abs_sum": (s * 64).astype(np.float32),
                    "s": s.astype(np.float32),
                    "f090": (s**2.5).astype(np.float32),
                    "f095": f095.astype(np.float32),
                    "f099": (s**5).astype(np.float32),
                    "delta": (np.exp(-step / tau) + 0.05).astype(np.float32),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _dog_table(dogs: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    rows = []
    for layer in range(n_layers):
        level = dogs["level"].to_numpy()
        rows.append(
            pd.DataFrame(
                {
                    "dog_index": dogs["dog_index"],
                    "dog_id": dogs["dog_id"],
                    "dog_name": dogs["dog_name"],
                    "n_steps": dogs["n_steps"].astype(np.int32),
                    "layer": np.int32(layer),
                    "plateau_step": pd.array(np.where(dogs["censored"], pd.NA, dogs["plateau"]), dtype="Int32"),
                    "censored": dogs["censored"],
                    "mean_s": (0.15 + 0.6 * level).astype(np.float32),
                    "final_s": (0.15 + 0.8 * level).astype(np.float32),
                    "mean_f095_after": dogs["f_after"].astype(np.float32),
                    "cohort": dogs["cohort"],
                    "cohort_layer": layer == n_layers - 1,
                    "f_tail": np.where(dogs["censored"], np.nan, level**2),
                    "debut_observed": dogs["debut_observed"],
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def _step_table(dogs: pd.DataFrame, n_layers: int, max_steps: int) -> pd.DataFrame:
    """Cohort bands per step, analytic (fast at any size)."""
    n_steps = dogs["n_steps"].to_numpy()
    alive = np.cumsum(np.bincount(n_steps, minlength=max_steps + 2)[::-1])[::-1]  # alive[t] = dogs with >= t steps
    steps = np.arange(1, max_steps + 1)
    rows = []
    for layer in range(n_layers):
        for cohort, lvl in (
            ("all", 0.5),
            ("saturated", 0.8),
            ("partial", 0.4),
            ("unsaturated", 0.1),
            ("undecided", 0.5),
        ):
            share = 1.0 if cohort == "all" else float((dogs["cohort"] == cohort).mean())
            base = 0.15 + 0.8 * lvl * (1 - np.exp(-steps / 6.0))
            rows.append(
                pd.DataFrame(
                    {
                        "layer": np.int32(layer),
                        "step": steps.astype(np.int32),
                        "cohort": cohort,
                        "n": np.round(alive[steps] * share).astype(np.int64),
                        "s_q25": base - 0.08,
                        "s_q50": base,
                        "s_q75": (base + 0.08).clip(0, 1),
                        "f095_q25": ((base - 0.08) ** 3).clip(0, 1),
                        "f095_q50": base**3,
                        "f095_q75": ((base + 0.08) ** 3).clip(0, 1),
                    }
                )
            )
    out = pd.concat(rows, ignore_index=True)
    return out[out["n"] > 0].reset_index(drop=True)


def _plateau_table(dogs: pd.DataFrame, n_layers: int, max_steps: int) -> pd.DataFrame:
    """Kaplan-Meier style share not yet plateaued, per step."""
    t_event = np.where(dogs["censored"], dogs["n_steps"], dogs["plateau"]).astype(np.int64)
    event = ~dogs["censored"].to_numpy()
    ev = np.bincount(t_event[event], minlength=max_steps + 2)
    ends = np.bincount(t_event, minlength=max_steps + 2)
    at_risk = len(dogs) - np.concatenate([[0], np.cumsum(ends)[:-1]])
    steps = np.arange(1, max_steps + 1)
    hazard = np.where(at_risk[steps] > 0, ev[steps] / np.maximum(at_risk[steps], 1), 0.0)
    survival = np.cumprod(1 - hazard)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "layer": np.int32(layer),
                    "step": steps.astype(np.int32),
                    "at_risk": at_risk[steps].astype(np.int64),
                    "plateaued": ev[steps].astype(np.int64),
                    "survival": survival,
                }
            )
            for layer in range(n_layers)
        ],
        ignore_index=True,
    )


def _unit_table(n_layers: int, n_units: int, seeds: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        for layer in range(n_layers):
            variance = rng.gamma(2.0, 0.05, n_units)
            variance[0] = 1e-7  # one dead unit
            mean_abs = rng.uniform(0.1, 0.99, n_units)
            for gate in ("z", "r"):
                left = rng.beta(1, 4, n_units)
                right = rng.beta(1, 4, n_units) * (1 - left)
                rows.append(
                    pd.DataFrame(
                        {
                            "seed": np.int32(seed),
                            "layer": np.int32(layer),
                            "gate": gate,
                            "unit": np.arange(n_units, dtype=np.int32),
                            "left": left,
                            "right": right,
                            "variance": variance,
                            "mean_abs": mean_abs,
                            "dead": variance < 1e-6,
                            "always_saturated": mean_abs > 0.97,
                        }
                    )
                )
    return pd.concat(rows, ignore_index=True)


def _eval_tables(
    dogs: pd.DataFrame, seeds: int, max_steps: int, rng: np.random.Generator, scenario: str
) -> dict[str, pd.DataFrame]:
    counts = dogs["cohort"].value_counts()
    cm, res, cal = [], [], []
    base = {"log_loss": 1.82, "brier": 0.118, "auc": 0.66, "hit_rate": 0.27}
    offset = {"all": 0.0, "saturated": -0.03, "partial": 0.0, "unsaturated": 0.04, "undecided": 0.06}
    for cohort in ("all",) + COHORTS:
        n_dogs = int(len(dogs) if cohort == "all" else counts.get(cohort, 0))
        n_rows = int(dogs["n_steps"].sum() if cohort == "all" else dogs.loc[dogs["cohort"] == cohort, "n_steps"].sum())
        for metric, v in base.items():
            for source, shift in (("model", 0.0), ("model_mean", -0.005), ("market", -0.02), ("uniform", 0.25)):
                sign = -1 if metric in ("auc", "hit_rate") else 1
                value = v + sign * (offset[cohort] + shift) * (v if metric != "log_loss" else 1)
                if source == "uniform" and metric == "auc":
                    value = 0.5
                width = 0.4 / np.sqrt(max(n_dogs, 1))
                cm.append((cohort, metric, value, value - width, value + width, n_dogs, n_rows, source))
        for source, tilt in (("model", 1.0 + offset[cohort]), ("market", 1.0)):
            for b in range(10):
                p = (b + 0.5) / 10 * 0.6
                cal.append((cohort, b, b * 0.06, (b + 1) * 0.06, p, p * tilt, max(n_rows // 10, 1), source))
    res, con = _resilience_rows()
    steps = np.arange(1, max_steps + 1)
    cka = [
        (int(t), a, b, max(200, 1000 - 10 * int(t)), c, c - 0.03, c + 0.03, 0.002 * (a - b), c + 0.1)
        for a in range(seeds)
        for b in range(a + 1, seeds)
        for t in steps[:60]
        for c in [float(0.6 + 0.35 * (1 - np.exp(-t / 10)))]
    ]
    repro = [
        (scope, metric, value, 900)
        for scope in ("all",) + COHORTS
        for metric, value in (("prob_spread", 0.021), ("top_pick_churn", 0.12))
    ] + [("decided", "fleiss_kappa", 0.41, 600), ("saturated", "agreement", 0.55, 120),
         ("partial", "agreement", 0.62, 300), ("unsaturated", "agreement", 0.7, 250)]
    ids = dogs["dog_id"].tolist()
    div = [("A vs B", ids[0], ids[min(1, len(ids) - 1)], int(t), float(np.sqrt(t) * 0.8)) for t in steps[:40]]
    return {
        "eval/cohort_metrics.parquet": pd.DataFrame(
            cm, columns=["cohort", "metric", "value", "lo", "hi", "n_dogs", "n_rows", "source"]
        ),
        "eval/calibration.parquet": pd.DataFrame(
            cal, columns=["cohort", "bin", "lo", "hi", "p_mean", "won_rate", "n", "source"]
        ),
        **_status_tables(scenario),
        "eval/repro.parquet": pd.DataFrame(repro, columns=["scope", "metric", "value", "n"]),
        "eval/cka.parquet": pd.DataFrame(cka, columns=list(SCHEMAS["cka"].names)),
        "eval/resilience.parquet": pd.DataFrame(res, columns=list(SCHEMAS["resilience"].names)),
        "eval/resilience_contrast.parquet": pd.DataFrame(con, columns=list(SCHEMAS["resilience_contrast"].names)),
        "eval/divergence.parquet": pd.DataFrame(div, columns=["pair", "dog_a", "dog_b", "step", "distance"]),
    }


_MAIN = {  # scenario -> (diff, lo, hi, n_dogs_a, n_winners_a): saturated-status races vs unsaturated-status races
    "found": (0.031, 0.012, 0.05, 420, 180),
    "none": (0.004, -0.011, 0.019, 420, 180),
    "small": (0.09, -0.05, 0.23, 24, 9),
    "period_small": (0.031, 0.012, 0.05, 420, 180),
    "zero_saturated": (np.nan, np.nan, np.nan, 0, 0),
    "in_sample_null": (0.031, 0.012, 0.05, 420, 180),
}
_MIN_DOGS, _MIN_WINNERS = 100, 50


def _effect(comparison: str, a: str, b: str, diff, lo, hi, na, nb, wa, wb, note: str = "") -> dict:
    comparable = bool(na >= _MIN_DOGS and nb >= _MIN_DOGS and wa >= _MIN_WINNERS and wb >= _MIN_WINNERS)
    excludes = bool(comparable and np.isfinite(lo) and (lo > 0 or hi < 0))
    return dict(comparison=comparison, metric="gap_vs_market", a=a, b=b, diff=float(diff), lo=float(lo),
                hi=float(hi), n_dogs_a=int(na), n_dogs_b=int(nb), n_winners_a=int(wa), n_winners_b=int(wb),
                comparable=comparable, excludes_zero=excludes, note=note)


def _status_effects(scenario: str) -> list[dict]:
    d, lo, hi, na, wa = _MAIN[scenario]
    return [
        _effect("main", "saturated", "unsaturated", d, lo, hi, na, 900, wa, 400, "status at prediction time, step-matched"),
        _effect("negative_control", "saturated", "unsaturated", 0.002, -0.02, 0.024, 380, 850, 60, 130, "step 1"),
        _effect("within_dog", "after plateau", "before plateau", 0.01, -0.004, 0.024, 300, 300, 120, 110),
        _effect("by_dog_cohort", "saturated", "unsaturated", 0.05, 0.02, 0.08, 400, 880, 170, 390),
        _effect("dose_trend", "s_prev", "slope", 0.08, 0.01, 0.15, 3100, 3100, 5400, 5400, "per unit of s"),
    ]


def _status_tables(scenario: str) -> dict[str, pd.DataFrame]:
    """eval/status_compare, status_effect, dose_response and sensitivity as the evaluate stage writes them."""
    main = _MAIN[scenario]
    rows = []
    for i, stratum in enumerate(STRATA):
        for group in GROUPS:
            if scenario == "zero_saturated" and group == "saturated":
                continue  # the rule finds no saturated dog: no race is scored from a saturated state
            shift = {"saturated": main[0] if np.isfinite(main[0]) else 0.0, "partial": 0.01}.get(group, 0.0)
            n_dogs = {"saturated": main[3], "partial": 600, "unsaturated": 900, "undecided": 700}[group] // (1 + i % 3)
            for metric, v in (("gap_vs_market", 0.02 + shift), ("runner_log_loss", 0.33 + shift),
                              ("brier", 0.1), ("concordance", 0.66), ("hit_rate", 0.27)):
                w = 0.3 / np.sqrt(max(n_dogs, 1))
                rows.append(dict(stratum=stratum, group=group, metric=metric, value=v, lo=v - w, hi=v + w,
                                 n_dogs=n_dogs, n_rows=8 * n_dogs, n_winners=n_dogs // 2, n_eff_dogs=0.8 * n_dogs))
    dose = []
    for k in range(1, 11):
        lo_s = (k - 1) / 10 * 0.8
        v = 0.02 + 0.004 * k * (scenario == "found")
        dose.append(dict(score="s_prev", decile=k, score_lo=lo_s, score_hi=lo_s + 0.08, score_mid=lo_s + 0.04,
                         value=v, lo=v - 0.01, hi=v + 0.01, metric="gap_vs_market", n_rows=3800, n_dogs=900))
    d, lo, hi, na, _ = main
    sens = [dict(param="default", value=np.nan, n_dogs_a=na, n_dogs_b=900, n_rows_a=8 * na, n_rows_b=7200,
                 diff=d, lo=lo, hi=hi, comparable=na >= _MIN_DOGS)]
    for param, values in (("tau", (0.9, 0.99)), ("theta", (0.15, 0.35)), ("w", (3.0, 8.0)),
                          ("delta", (0.01, 0.05)), ("k", (2.0, 5.0))):
        for j, v in enumerate(values):
            n = max(int(na * (1.3 if j == 0 else 0.7)), 0)
            sens.append(dict(param=param, value=v, n_dogs_a=n, n_dogs_b=900, n_rows_a=8 * n, n_rows_b=7200,
                             diff=d, lo=lo - 0.005, hi=hi + 0.005, comparable=n >= _MIN_DOGS))
    return {
        "eval/status_compare.parquet": pd.DataFrame(rows),
        "eval/status_effect.parquet": pd.DataFrame(_status_effects(scenario)),
        "eval/dose_response.parquet": pd.DataFrame(dose),
        "eval/sensitivity.parquet": pd.DataFrame(sens),
    }


def _headline_effect(e: dict) -> dict:
    keys = ("metric", "a", "b", "diff", "lo", "hi", "n_dogs_a", "n_dogs_b", "n_winners_a", "n_winners_b",
            "comparable", "excludes_zero")
    return {k: (None if isinstance(e[k], float) and not np.isfinite(e[k]) else e[k]) for k in keys}


def _honest_headline(scenario: str, model_nll: float) -> dict:
    """The headline keys of the out-of-sample evaluation (DESIGN.md section 6)."""
    eff = {e["comparison"]: e for e in _status_effects(scenario)}
    registered = scenario == "in_sample_null"
    races = 340 if scenario == "period_small" else 5400
    trend = eff["dose_trend"]
    return {
        "period": {
            "start": "2026-06-01", "end": "2026-11-24", "model_cutoff": None if registered else "2026-05-31",
            "early_stop_end": None if registered else "2026-05-31",
            "basis": "registered" if registered else "builtin-split", "races": races, "dogs": 3100,
            "rows": 8 * races, "in_sample": None if registered else False, "min_races": 2000,
            "too_small": races < 2000,
        },
        "race_nll": {"model": model_nll, "model_mean": model_nll - 0.005, "market": 1.80, "uniform": 2.05},
        "main_effect": _headline_effect(eff["main"]),
        "negative_control": _headline_effect(eff["negative_control"]),
        "within_dog": _headline_effect(eff["within_dog"]),
        "dose_trend": {"slope": trend["diff"], "lo": trend["lo"], "hi": trend["hi"], "n_rows": 38000},
        "n_comparisons": 5,
        "plateau_median_km": None if scenario in ("none", "zero_saturated") else 18,
        "rule": RULE,
        "has_market": True,
        "n_boot": 1000,
        "notes": [],
    }


RULE = {
    "name": "plateau-f-abs", "version": 2,
    "params": {"theta": 0.25, "low": 0.05, "tau": 0.95, "w": 5, "delta": 0.02, "k": 3, "scale": "absolute"},
}


def _resilience_rows() -> tuple[list[tuple], list[tuple]]:
    """Resilience rows in which early targets move more than late ones (the notebook's hypothesis holds),
    noise on times is n/a (never observed) and the mildest truncation is a no-op for a third of the cases."""
    res, con = [], []
    buckets = {"t<=5": 2.0, "t 6-15": 1.0, "t>=16": 0.5}
    for scope in ("dog", "feed"):
        for kind, unit in (("drop_last", "latest races removed"), ("noise_time", "noise std"),
                           ("missing", "share of races blanked"), ("truncate", "oldest races removed")):
            for level, sev in enumerate((2.0, 4.0, 8.0), start=1):
                groups = [("all", "all", 1.0), *((b, "all", f) for b, f in buckets.items()),
                          ("all", "not yet", 1.6), ("all", "reached", 0.7)]
                for bucket, plat, f in groups:
                    d = 0.01 * level * f * (2 if scope == "feed" else 1)
                    if kind == "noise_time":
                        res.append((scope, kind, sev, unit, level, bucket, plat, "n/a", 500, 0, None, 0,
                                    *[None] * 9))
                        continue
                    share = 0.66 if (kind == "truncate" and level == 1) else 1.0
                    res.append((scope, kind, sev, unit, level, bucket, plat, "ok", 500, int(500 * share), share, 300,
                                d, d * 0.8, d * 1.2, 4 * d, 3 * d, 5 * d, 20 * d, 18 * d, 22 * d))
                if kind == "noise_time":
                    continue
                for measure, m in (("d_nll", 1), ("flip_rate", 4), ("state_divergence", 20)):
                    a, b = 0.02 * level * m, 0.005 * level * m
                    con.append((scope, kind, sev, level, "early - late", measure, "t<=5/all", "t>=16/all", a, b,
                                a - b, (a - b) * 0.5, (a - b) * 1.5, 400, 150))
                    con.append((scope, kind, sev, level, "before - after plateau", measure, "all/not yet",
                                "all/reached", a, b * 2, a - 2 * b, -0.01, a, 300, 200))
    return res, con


def write_run(
    run_dir: str | Path,
    *,
    n_dogs: int = 60,
    n_layers: int = 1,
    n_units: int = 16,
    seeds: int = 3,
    max_steps: int = 60,
    night: str = "2026-11-25",
    seed: int = 0,
    evil_name: bool = True,
    omit: Iterable[str] = (),
    model_nll: float = 1.82,
    scenario: str = "found",
) -> Path:
    """Write a fake published run directory; `omit` names tables (e.g. 'eval/cka.parquet') to leave out;
    `scenario` (one of SCENARIOS) what its evaluation says."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario {scenario!r}: expected one of {SCENARIOS}")
    run_dir = Path(run_dir)
    rng = np.random.default_rng(seed)
    dogs = _dogs(n_dogs, max_steps, rng, evil_name, scenario)
    tables: dict[str, pd.DataFrame] = {
        "stats/dog_step.parquet": _dog_step(dogs, n_layers, rng),
        "stats/dog.parquet": _dog_table(dogs, n_layers),
        "stats/unit.parquet": _unit_table(n_layers, n_units, seeds, rng),
        "stats/step.parquet": _step_table(dogs, n_layers, max_steps),
        "stats/plateau.parquet": _plateau_table(dogs, n_layers, max_steps),
        **_eval_tables(dogs, seeds, max_steps, rng, scenario),
    }
    omit = set(omit)
    for rel, df in tables.items():
        if rel not in omit:
            _write(df, run_dir / rel)
    counts = {c: int((dogs["cohort"] == c).sum()) for c in COHORTS}
    rule = RULE
    summary = {
        "effective_dim": [round(7.5 + layer, 2) for layer in range(n_layers)],
        "dead_units": n_layers,
        "always_saturated_units": 2 * n_layers,
        "cohort_counts": counts,
        "cohort_layer": n_layers - 1,
        "rule": rule,
    }
    headline = {  # as storage.analysis.evaluate_run writes it (no night: that is in run.json)
        "dogs": n_dogs,
        "obs": int(dogs["n_steps"].sum()),
        "cohort_counts": counts,
        "saturated_share": round(counts["saturated"] / max(n_dogs, 1), 4),
        "exemplars": [{"dog_a": "D000000", "dog_b": "D000001"}],
        **_honest_headline(scenario, model_nll),
    }
    run = {
        "run_id": f"{night}-a1b2c3",
        "night": night,
        "snapshot_id": "snap-9f8e7d6c5b4a",
        "model_set_id": "set-20261120-3seeds",
        "seeds": list(range(seeds)),
        "device": "cpu",
        "code_version": "0.1.0+g1234abc",
        "settings": {"hidden_size": n_units, "num_layers": n_layers},
        "created_at": f"{night}T02:14:00+00:00",
        "cohort_rule": rule,
    }
    for rel, obj in (("stats/summary.json", summary), ("eval/headline.json", headline), ("run.json", run)):
        if rel not in omit:
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / rel).write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")
    (run_dir / "_COMPLETE").write_text("", encoding="utf-8")
    return run_dir


def write_history(root: str | Path, nights: Iterable[str], **kwargs) -> list[Path]:
    """Small previous runs under root/<night>/ (only run.json, headline.json needed by the trend)."""
    out = []
    for i, night in enumerate(nights):
        out.append(
            write_run(
                Path(root) / night, n_dogs=20, night=night, seed=100 + i, model_nll=1.85 - 0.01 * i, **kwargs
            )
        )
    return out


def fake_dog_states(run_dir: str | Path) -> Callable[..., DogStates]:
    """A loader like `open_states(run_dir).dog`: states that saturate as the dog's cohort says."""
    dog = pd.read_parquet(Path(run_dir) / "stats" / "dog.parquet")
    dog = dog[dog["layer"] == dog["layer"].max()].set_index("dog_id")
    settings = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))["settings"]
    n_layers, n_units = int(settings["num_layers"]), int(settings["hidden_size"])

    def load(dog_id: str, seed: int = 0) -> DogStates:
        if dog_id not in dog.index:
            raise KeyError(f"dog {dog_id!r} is not in {run_dir}")
        row = dog.loc[dog_id]
        t = int(row["n_steps"])
        digest = int(hashlib.sha256(f"{dog_id}/{seed}".encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng(digest)
        gain = 0.3 + 3.0 * float(row["final_s"])
        walk = np.cumsum(rng.normal(0, 1, (t, n_layers, n_units)), axis=0) / np.sqrt(np.arange(1, t + 1))[:, None, None]
        ramp = (1 - np.exp(-np.arange(1, t + 1) / 6.0))[:, None, None]
        h = np.tanh(gain * ramp * (walk + np.sign(rng.normal(0, 1, (1, n_layers, n_units))))).astype(np.float32)
        z = (1 / (1 + np.exp(-rng.normal(0, 2, (t, n_layers, n_units))))).astype(np.float32)
        r = (1 / (1 + np.exp(-rng.normal(0, 2, (t, n_layers, n_units))))).astype(np.float32)
        dates = np.datetime64("2024-01-01") + np.arange(t) * 9
        return DogStates(
            dog_index=int(row["dog_index"]),
            dog_id=dog_id,
            dog_name=str(row["dog_name"]),
            race_date=dates.astype("datetime64[D]"),
            race_id=np.array([f"R{dog_id}-{k}" for k in range(t)]),
            step=np.arange(1, t + 1, dtype=np.int32),
            score=np.zeros(t, np.float32),
            h=h,
            z=z,
            r=r,
        )

    return load


def fake_states_set(run_dir: str | Path, ids: Sequence[str]) -> DogStatesSet:
    """The fake states of the given dogs, as `storage.results.read_dog_states` returns real ones."""
    load = fake_dog_states(run_dir)
    return states_of(load, ids)


def report_of(
    run_dir: str | Path,
    *,
    history: Iterable[str | Path] = (),
    watchlist: Sequence[str] = (),
    data_quality: dict | None = None,
    states: str = "fake",
) -> ReportModel:
    """The run's report as the nightly flow builds it; states 'fake' (fake_dog_states) or 'real' (the store)."""
    results: RunResults = read_run_results(run_dir)
    ids = heatmap_dog_ids(results, watchlist)
    dogs = fake_states_set(run_dir, ids) if states == "fake" else read_dog_states(run_dir, ids)
    return build_report(
        results, history=read_history(history), dogs=dogs, watchlist=watchlist, data_quality=data_quality
    )
