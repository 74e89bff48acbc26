"""A fake run directory with the tables and records a published run has, for report tests.

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
import pyarrow as pa

from gruviz_core.exemplars import MIN_RACES
from gruviz_core.results import DogStates, DogStatesSet, RunResults
from gruviz_core.tables import TABLES as SCHEMAS
from reports.build import build_report, heatmap_dog_ids
from reports.model import ReportModel
from storage.layout import STATS_TABLES
from storage.results import read_dog_states, read_history, read_run_results, states_of

__all__ = ["write_run", "write_history", "fake_dog_states", "fake_states_set", "report_of", "EVIL_NAME", "TABLES"]

EVIL_NAME = "<script>alert(1)</script>"
"""A dog name that must show as text and never run."""

TABLES = tuple(f"{'stats' if name in STATS_TABLES else 'eval'}/{name}.parquet" for name in SCHEMAS)
"""Every run table of gruviz_core.tables (the report reads them), relative to the run directory."""

COHORTS = ("settled", "settling", "undecided")

SCENARIOS = ("found", "none", "fragile", "small", "period_small", "in_sample_null", "legacy")
"""What a fake run's evaluation says: a robust association (settled races worse, every check agrees); none
(the Iggy night: the main interval excludes 0, the within-dog and grid checks do not, the market differs as
much: the groups differ in who they are); fragile (the main and within-dog agree, the grid does not); groups
too small to compare; a held-out period too small to compare; a registered model without a training date
(in_sample unknown); and an older night's headline without the page-one record (no rule, no checks)."""

STRATA = ("1", "2-5", "6-10", "11-20", "21-40", "41+", "all")
GROUPS = ("settled", "settling", "undecided")


def _write(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)


def _dogs(n_dogs: int, max_steps: int, rng: np.random.Generator, evil_first: bool, scenario: str) -> pd.DataFrame:
    """One row per dog: career length, plateau, cohort. Long-tailed careers like real data."""
    n_steps = np.clip(np.round(rng.lognormal(2.6, 0.9, n_dogs)), 1, max_steps).astype(np.int64)
    plateau = np.round(rng.normal(18, 6, n_dogs)).clip(6, None).astype(np.int64)
    censored = plateau > n_steps
    level = rng.beta(2, 2, n_dogs)  # how saturated the dog's state ends up, 0..1
    f_after = np.where(censored, np.nan, level * 0.05)
    cohort = np.where(~censored, "settled", np.where(n_steps >= 8, "settling", "undecided"))
    names = np.array([f"DOG {i:06d}" for i in range(n_dogs)], dtype=object)
    if n_dogs > 1:
        # Dog 0 (the evil name) the typical settled dog and dog 1 the typical settling one, so both are on the
        # page (gruviz_core.exemplars): the median level of their status, the longest careers.
        for i, status, t in ((0, "settled", max_steps), (1, "settling", max_steps * 2 // 3)):
            same = np.flatnonzero((cohort == status) & (n_steps >= MIN_RACES) & (np.arange(n_dogs) > 1))
            if len(same) % 2:  # an even count with dog i, so that dog i alone sits on the median
                n_steps[same[np.argmin(level[same])]] = MIN_RACES - 1
                same = same[n_steps[same] >= MIN_RACES]
            level[i] = float(np.median(level[same])) if len(same) else 0.5
            n_steps[i], cohort[i], censored[i] = t, status, status != "settled"
            plateau[i] = 12 if status == "settled" else t + 1
            f_after[i] = np.nan if censored[i] else level[i] * 0.05
        if evil_first:
            names[0] = EVIL_NAME
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
                    "max_abs": (0.4 + 0.55 * s).clip(0, 0.99).astype(np.float32),
                    "move": (0.2 + 0.5 * np.exp(-(step - 1) / 4.0)).astype(np.float32),
                    "write": (0.34 + 0.18 * np.exp(-(step - 1) / 6.0)).astype(np.float32),
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
        for cohort, lvl in (("all", 0.5), ("settled", 0.45), ("settling", 0.55), ("undecided", 0.5)):
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
    offset = {"all": 0.0, "settled": -0.01, "settling": 0.01, "undecided": 0.06}
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
    repro = _repro_rows()
    ids = dogs["dog_id"].tolist()
    div = [("A vs B", ids[0], ids[min(1, len(ids) - 1)], int(t), float(np.sqrt(t) * 0.8)) for t in steps[:40]]
    return {
        "eval/cohort_metrics.parquet": pd.DataFrame(
            cm, columns=list(SCHEMAS["cohort_metrics"].names)
        ),
        "eval/calibration.parquet": pd.DataFrame(
            cal, columns=list(SCHEMAS["calibration"].names)
        ),
        **_status_tables(scenario),
        "eval/repro.parquet": pd.DataFrame(repro, columns=list(SCHEMAS["repro"].names)),
        "eval/cka.parquet": pd.DataFrame(cka, columns=list(SCHEMAS["cka"].names)),
        "eval/resilience.parquet": _frame("resilience", res),
        "eval/resilience_contrast.parquet": _frame("resilience_contrast", con),
        "eval/divergence.parquet": pd.DataFrame(div, columns=list(SCHEMAS["divergence"].names)),
    }


def _repro_rows() -> list[tuple]:
    """eval/repro rows as gruviz_core.evaluate.repro_table writes them: kappa not estimable at race 15."""
    nan = float("nan")
    rows = []
    for metric, base, unit, n in (("prob_spread", 0.013, "runners", 9000), ("rel_spread", 0.11, "runners", 9000),
                                  ("top_pick_churn", 0.137, "races", 1200)):
        rows.append((metric, "all", "all", nan, base, base * 0.95, base * 1.05, n, unit, ""))
        for i, b in enumerate(("1", "2-5", "6-10", "11-20", "21-40", "41+")):
            v = base * (1.1 - 0.03 * i)
            rows.append((metric, "race_count", b, nan, v, v * 0.9, v * 1.1, n // 6, unit, ""))
        for s, v in (("settled", base * 0.98), ("settling", base), ("undecided", base * 1.05)):
            rows.append((metric, "status", s, nan, v, v * 0.9, v * 1.1, n // 3, unit, ""))
        rows.append((metric, "status", "settled - settling", nan, -0.02 * base, -0.1 * base, 0.06 * base, n // 2,
                     unit, "not matched on race count"))
    for j, v in enumerate((1.6676, 1.6652, 1.6689)):
        rows.append(("race_nll", "model", f"seed {j}", nan, v, nan, nan, 5400, "races", ""))
    rows += [("race_nll", "model", "ensemble", nan, 1.6635, nan, nan, 5400, "races", ""),
             ("race_nll", "model", "mean seed", nan, 1.6672, nan, nan, 5400, "races", ""),
             ("race_nll", "model", "ensemble - mean seed", nan, -0.0037, -0.0049, -0.0026, 5400, "races", "")]
    rows.append(("fleiss_kappa", "step", "settled/settling", 15.0, nan, nan, nan, 2400, "dogs",
                 "not estimable: one label (settling) covers 97.10% of the 2,400 decided dogs' labels"))
    rows += [("agreement", "step", "settled", 15.0, 0.41, nan, nan, 120, "dogs", ""),
             ("agreement", "step", "settling", 15.0, 0.98, nan, nan, 2390, "dogs", "")]
    for t, k in ((20, 0.52), (25, 0.57), (30, 0.61)):
        rows.append(("fleiss_kappa", "step", "settled/settling", float(t), k, k - 0.04, k + 0.04, 2000 - 10 * t,
                     "dogs", ""))
        rows += [("agreement", "step", "settled", float(t), k + 0.1, nan, nan, 600, "dogs", ""),
                 ("agreement", "step", "settling", float(t), k + 0.25, nan, nan, 1500, "dogs", "")]
    return rows


_MAIN = {  # scenario -> (diff, lo, hi, n_dogs_a, n_winners_a): settled-status races minus settling-status races
    "found": (0.031, 0.012, 0.05, 1731, 900),
    "none": (-0.0099, -0.0178, -0.0022, 1731, 900),
    "fragile": (0.021, 0.004, 0.038, 1731, 900),
    "small": (0.09, -0.05, 0.23, 24, 9),
    "period_small": (0.031, 0.012, 0.05, 1731, 900),
    "in_sample_null": (0.031, 0.012, 0.05, 1731, 900),
    "legacy": (0.031, 0.012, 0.05, 1731, 900),
}
_WITHIN = {"found": (0.028, 0.01, 0.046), "none": (-0.0003, -0.0126, 0.0115), "fragile": (0.02, 0.003, 0.037)}
_MIN_DOGS, _MIN_WINNERS = 100, 50


def _effect(comparison: str, a: str, b: str, diff, lo, hi, na, nb, wa, wb, note: str = "",
            metric: str = "gap_vs_market") -> dict:
    comparable = bool(na >= _MIN_DOGS and nb >= _MIN_DOGS and wa >= _MIN_WINNERS and wb >= _MIN_WINNERS)
    excludes = bool(comparable and np.isfinite(lo) and (lo > 0 or hi < 0))
    return dict(comparison=comparison, metric=metric, a=a, b=b, diff=float(diff), lo=float(lo),
                hi=float(hi), n_dogs_a=int(na), n_dogs_b=int(nb), n_winners_a=int(wa), n_winners_b=int(wb),
                n_runners_a=int(8 * na), n_runners_b=int(8 * nb), comparable=comparable, excludes_zero=excludes,
                note=note)


def _status_effects(scenario: str) -> list[dict]:
    d, lo, hi, na, wa = _MAIN[scenario]
    w = _WITHIN.get(scenario, (0.01, -0.004, 0.024))
    return [
        _effect("main", "settled", "settling", d, lo, hi, na, 3723, wa, 1800, "status at prediction time, step-matched"),
        _effect("negative_control", "step 1", "step 2", 0.002, -0.02, 0.024, 3100, 2900, 600, 580, "h_0 = 0"),
        _effect("within_dog", "after plateau", "before plateau", *w, 884, 884, 400, 420, "step fixed effects"),
    ]


def _status_tables(scenario: str) -> dict[str, pd.DataFrame]:
    """eval/status_compare, status_effect, dose_response and sensitivity as the evaluate stage writes them."""
    main = _MAIN[scenario]
    rows = []
    for i, stratum in enumerate(STRATA):
        for group in GROUPS:
            shift = main[0] if group == "settled" else 0.0
            n_dogs = {"settled": main[3], "settling": 3723, "undecided": 700}[group] // (1 + i % 3)
            for metric, v in (("gap_vs_market", 0.03 + shift), ("runner_log_loss", 0.33 + shift),
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
    sens = [dict(param="default", value=np.nan, n_dogs_a=p["n_dogs_a"], n_dogs_b=p["n_dogs_b"],
                 n_rows_a=8 * p["n_dogs_a"], n_rows_b=8 * p["n_dogs_b"], diff=p["diff"], lo=p["lo"], hi=p["hi"],
                 comparable=p["comparable"]) for p in [_effect("main", "", "", *main[:3], main[3], 3723, main[4], 1800)]]
    for g in _grid(scenario):
        sens.append(dict(param=g["param"], value=g["value"], n_dogs_a=g["n_dogs_a"], n_dogs_b=g["n_dogs_b"],
                         n_rows_a=8 * g["n_dogs_a"], n_rows_b=8 * g["n_dogs_b"], diff=g["diff"], lo=g["lo"],
                         hi=g["hi"], comparable=g["comparable"]))
    return {
        "eval/status_compare.parquet": pd.DataFrame(rows),
        "eval/status_effect.parquet": pd.DataFrame(_status_effects(scenario)).drop(columns=["n_runners_a", "n_runners_b"]),
        "eval/dose_response.parquet": pd.DataFrame(dose),
        "eval/sensitivity.parquet": pd.DataFrame(sens),
    }


def _grid(scenario: str) -> list[dict]:
    """The main effect at each move of (w, delta, k): every interval excludes 0 when found, 1 of 6 when none."""
    d, lo, hi, na, wa = _MAIN[scenario]
    out = []
    for j, (param, value) in enumerate((("w", 3), ("w", 8), ("delta", 0.1), ("delta", 0.02), ("k", 2), ("k", 5))):
        shift = {"found": 0.0, "none": 0.008 if j else 0.0, "fragile": 0.02 * (j % 2)}.get(scenario, 0.0)
        n = max(int(na * (1.3 if j % 2 == 0 else 0.7)), 0)
        e = _effect("grid", "settled", "settling", d + shift, lo + shift, hi + shift, n, 3700, wa, 1800)
        out.append(dict(param=param, value=value, **{k: e[k] for k in ("diff", "lo", "hi", "comparable",
                                                                          "n_dogs_a", "n_dogs_b")}))
    return out


def _headline_effect(e: dict) -> dict:
    keys = ("metric", "a", "b", "diff", "lo", "hi", "n_dogs_a", "n_dogs_b", "n_winners_a", "n_winners_b",
            "n_runners_a", "n_runners_b", "comparable", "excludes_zero")
    return {k: (None if isinstance(e[k], float) and not np.isfinite(e[k]) else e[k]) for k in keys}


_GAP = (("1", 0.077, 0.061, 0.095), ("2-5", 0.046, 0.039, 0.053), ("6-10", 0.038, 0.032, 0.044),
        ("11-20", 0.035, 0.031, 0.039), ("21-40", 0.032, 0.030, 0.035), ("41+", 0.028, 0.025, 0.031))
_S_BY_RACE = (0.131, 0.17, 0.2, 0.225, 0.246, 0.26, 0.27, 0.278, 0.282, 0.286)


def _page_one(scenario: str) -> dict:
    """The page-one record of the headline (eval/headline.json): the rule, the checks, what saturation means."""
    eff = {e["comparison"]: e for e in _status_effects(scenario)}
    main = _headline_effect(eff["main"])
    grid = _grid(scenario)
    market_ll = {"found": (0.002, -0.01, 0.014), "fragile": (0.004, -0.009, 0.017)}.get(scenario, (-0.061, -0.075, -0.047))
    comp = {
        "market_log_loss": _headline_effect(_effect("composition", "settled", "settling", *market_ll, 1731, 3723, 900,
                                                    1800, metric="market_log_loss")),
        "market_win_rate": _headline_effect(_effect("composition", "settled", "settling", 0.011, 0.004, 0.018, 1731,
                                                    3723, 900, 1800, metric="market_win_rate")),
    }
    comp["flagged"] = scenario not in ("found", "fragile")
    family = [("main", main), ("within_dog", _headline_effect(eff["within_dog"]))]
    family += [(f"grid {g['param']}={g['value']}", g) for g in grid]
    tested = [(n, e) for n, e in family if e["comparable"]]
    holm = [{"name": n, "p_adj": 0.01 if e["lo"] > 0 or e["hi"] < 0 else 0.6,
             "excludes_zero": bool(e["lo"] > 0 or e["hi"] < 0)} for n, e in tested]
    kind = {"found": "robust", "none": "none", "fragile": "fragile"}.get(scenario, "robust")
    if not main["comparable"]:
        kind = "not_comparable"
    races = list(range(1, 61))
    s_by_race = [*(_S_BY_RACE), *(0.286 + 0.04 * (1 - np.exp(-(t - 10) / 6)) for t in races[10:])]
    return {
        "rule": {"name": "plateau-s", "version": 1, "params": {"w": 5, "delta": 0.05, "k": 3, "layer": 0}},
        "main_effect": main,
        "within_dog": _headline_effect(eff["within_dog"]),
        "negative_control": _headline_effect(eff["negative_control"]),
        "grid": grid,
        "composition": comp,
        "magnitude": {"max_abs": 0.986, "q99_max_abs": 0.954, "share_states_any_095": 0.0013,
                      "share_states_any_090": 0.011, "n_states": 497574, "tanh_comparable": False},
        "plateau": {
            "level": 0.325, "race_90": 12, "race_95": 16,
            "s_by_race": [{"race": t, "median_s": round(float(v), 4)} for t, v in zip(races, s_by_race)],
            "km_median": 21,
            "km_grid": [{"param": "delta", "value": 0.1, "median": 14}, {"param": "delta", "value": 0.02, "median": 53},
                        {"param": "w", "value": 3, "median": 17}, {"param": "w", "value": 8, "median": 26},
                        {"param": "k", "value": 2, "median": 17}, {"param": "k", "value": 5, "median": 33}],
        },
        "reliance": {
            "write_by_race": [{"race": t, "median_write": round(0.34 + 0.18 * np.exp(-(t - 1) / 6), 4)} for t in races],
            "move_by_race": [{"race": t, "median_move": round(0.2 + 0.5 * np.exp(-(t - 1) / 4), 4)} for t in races],
        },
        "dose": [
            {"score": "write_prev", "slope_per_sd": 0.0021, "lo": -0.0008, "hi": 0.005, "n_runners": 51175,
             "comparable": True},
            {"score": "move_prev", "slope_per_sd": 0.0034, "lo": 0.0009, "hi": 0.0059, "n_runners": 51175,
             "comparable": True},
            {"score": "s_prev", "slope_per_sd": -0.0011, "lo": -0.004, "hi": 0.0018, "n_runners": 51175,
             "comparable": True},
        ],
        "gap_by_race_count": [{"bucket": b, "diff": d, "lo": lo, "hi": hi, "n_runners": 4000 * (i + 1),
                               "n_dogs": 3000 - 300 * i} for i, (b, d, lo, hi) in enumerate(_GAP)],
        "ensemble": {"race_nll": 1.6635, "by_seed": [1.6676, 1.6652, 1.6689], "ensemble_minus_mean_seed": -0.0037},
        "race_nll": {"model_mean": 1.6635, "model": 1.6676, "market": 1.4712, "uniform": 1.9536, "rated": 1.6396},
        "scope": {"dogs": 11983, "debut_dogs": 6863, "runners": 88551, "debut_runners": 51175, "races": 12393},
        "verdict": {"kind": kind, "family": [n for n, _ in tested], "n_intervals": len(tested), "holm": holm},
        "resilience_latest": {
            "perturbation": "drop_last", "early": "t<=5", "late": "t>=16", "sensitive": True, "harmed": False,
            "held_out": {
                "flip_rate": {"early": 0.119, "late": 0.037, "diff": 0.082, "lo": 0.063, "hi": 0.101},
                "abs_dlogp": {"early": 0.21, "late": 0.09, "diff": 0.12, "lo": 0.1, "hi": 0.14},
                "state_divergence": {"early": 0.61, "late": 0.39, "diff": 0.22, "lo": 0.2, "hi": 0.25},
                "d_nll": {"early": 0.0076, "late": 0.0034, "diff": 0.004, "lo": -0.006, "hi": 0.014},
            },
            "within_dog": {"flip_rate": {"early": 0.1, "late": 0.04, "diff": 0.06, "lo": 0.05, "hi": 0.07}},
        },
        "repro": {"churn": 0.13, "spread": 0.011, "kappa": "not estimable"},
    }


def _honest_headline(scenario: str, model_nll: float) -> dict:
    """The headline keys of the out-of-sample evaluation (DESIGN.md section 6)."""
    registered = scenario == "in_sample_null"
    races = 340 if scenario == "period_small" else 5400
    head = {
        "period": {
            "start": "2026-06-01", "end": "2026-11-24", "model_cutoff": None if registered else "2026-05-31",
            "early_stop_end": None if registered else "2026-05-31",
            "basis": "registered" if registered else "builtin-split", "races": races, "dogs": 3100,
            "rows": 8 * races, "in_sample": None if registered else False, "min_races": 2000,
            "too_small": races < 2000,
        },
        "has_market": True,
        "n_boot": 1000,
        "notes": [],
    }
    if scenario == "legacy":  # an older night: race NLL of seed 0 and the main effect only
        eff = {e["comparison"]: e for e in _status_effects(scenario)}
        return {**head, "race_nll": {"model": model_nll, "market": 1.80, "uniform": 2.05},
                "main_effect": _headline_effect(eff["main"]), "rule": {"name": "plateau-f-abs", "version": 2}}
    one = _page_one(scenario)
    one["race_nll"] = {**one["race_nll"], "model": model_nll, "model_mean": round(model_nll - 0.004, 4)}
    return {**head, **one}


RULE = {"name": "plateau-s", "version": 1, "params": {"w": 5, "delta": 0.05, "k": 3, "layer": 0}}


def _frame(name: str, rows: list[dict]) -> pd.DataFrame:
    """Rows as the table `name` of gruviz_core.tables: a column the rows do not give gets a neutral value of its
    kind (0, NaN, '' or False), so the fixture follows the schema as it grows."""
    schema = SCHEMAS[name]
    neutral = {"int": 0, "float": np.nan, "str": "", "bool": False}
    out = {}
    for f in schema:
        t = f.type
        kind = ("bool" if pa.types.is_boolean(t) else "int" if pa.types.is_integer(t)
                else "float" if pa.types.is_floating(t) else "str")
        out[f.name] = [r.get(f.name, neutral[kind]) for r in rows]
    return pd.DataFrame(out)


def _resilience_rows() -> tuple[list[dict], list[dict]]:
    """Resilience rows in which early targets move more than late ones (the notebook's hypothesis holds),
    noise on times is n/a (never observed) and the mildest truncation is a no-op for a third of the cases."""
    res, con = [], []
    buckets = {"t<=5": 2.0, "t 6-15": 1.0, "t>=16": 0.5}
    measures = ("d_nll", "flip_rate", "abs_dlogp", "kl", "state_divergence")
    for scope in ("dog", "within-dog", "feed"):
        for kind, family, unit in (("drop_last", "latest", "latest race removed"),
                                   ("noise_time", "noise", "noise std"),
                                   ("missing", "structural", "share of races blanked"),
                                   ("truncate", "structural", "share of the history removed")):
            for level, sev in enumerate((0.1, 0.25, 0.5), start=1):
                for bucket, f in (("all", 1.0), *buckets.items()):
                    d = 0.01 * level * f * (2 if scope == "feed" else 1)
                    base = dict(scope=scope, perturbation=kind, family=family, severity=sev, severity_unit=unit,
                                level=level, bucket=bucket, n_cases=500, n_dogs=300)
                    if kind == "noise_time":
                        res.append({**base, "status": "n/a"})
                        continue
                    share = 0.66 if (kind == "truncate" and level == 1) else 1.0
                    row = {**base, "status": "ok", "n_changed": int(500 * share), "changed_share": share,
                           "damage_share": sev}
                    for k, m in zip(measures, (1, 4, 6, 2, 20)):
                        v = d * m if (k != "d_nll" or scope != "within-dog") else np.nan
                        row.update({k: v, f"{k}_lo": v * 0.8, f"{k}_hi": v * 1.2})
                    res.append(row)
                if kind == "noise_time":
                    continue
                for measure, m in zip(measures, (1, 4, 6, 2, 20)):
                    if measure == "d_nll" and scope == "within-dog":
                        continue
                    a, b = 0.02 * level * m, 0.005 * level * m
                    con.append(dict(scope=scope, perturbation=kind, family=family, severity=sev, level=level,
                                    contrast="early - late", measure=measure,
                                    role="harm" if measure == "d_nll" else "sensitivity", a="t<=5", b="t>=16",
                                    value_a=a, value_b=b, diff=a - b, lo=(a - b) * 0.5, hi=(a - b) * 1.5, n_a=400,
                                    n_b=150, n_dogs_a=300, n_dogs_b=120, n_boot=1000, reading="early more"))
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
    summary = {  # gruviz_core.results.StatsSummary's fields
        "n_dogs": n_dogs, "n_obs": int(dogs["n_steps"].sum()), "n_layers": n_layers, "n_units": n_units,
        "seeds": list(range(seeds)),
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
