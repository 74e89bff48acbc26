"""What the state knows: linear probes from the hidden state to quantities a modeller can name.

`known_quantities(runs)` computes, per row of the canonical runs (in `features.clean_runs` order, the
sequences' row order), what is known once that race is run and before the dog's next one: starts so
far, shrunk win rate, recent finishing positions, the gap before the race, its box, distance and grade,
whether it won or placed, a track change, the market's view of that race and of the *next* race (never
a model input at that step). Quantities come from the runs, never from the states; one the source does
not carry is all-NaN (`absent_quantities` names it), never zero.

`probe_scores(h, quantities, dog, step)` fits, per layer and quantity, a ridge probe from the full state
h_t to the quantity, out of sample with folds split by dog (`dog_folds`), and scores it (R², or AUC for
binary quantities) on all rows and by race-count bucket, with a bootstrap interval over dogs. Beside
each score is its control task (Hewitt and Liang 2019): the same probe on the quantity shuffled among
dogs at the same race count (`control_shuffle`), so selectivity = score - control is what the state
holds about the dog beyond its race count. `unit_correlations` gives each unit's Spearman correlation
with each quantity; `seed_agreement` whether seeds agree.

Binary quantities get the ridge probe on the 0/1 label (least squares on a 0/1 label is Fisher's
discriminant direction), refined by `ProbeParams.logistic_steps` Newton steps of a ridge-penalised
logistic regression, and scored by AUC.

Cost: the caller samples dogs (`sample_dogs`), and unit correlations use at most 5,000 of their rows. Each fold's
Gram matrix is formed once over every row and shared by all quantities (less the rows a quantity misses), and the
caller may stack seeds as layers so the targets, folds, controls and bootstrap draws are made once. On the Iggy run
(497,574 rows, 3 seeds of 64 units, one core) the probe stage took about 2.2-2.7 s at 1,000 dogs (17,600 rows)
and 3.5-3.7 s at 1,500, against evaluate's 9.5 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gruviz_core.errors import ConfigError
from gruviz_core.features import clean_runs
from gruviz_core.grades import grade_table
from gruviz_core.racing import race_codes

__all__ = [
    "Quantity", "QUANTITIES", "BUCKETS", "ProbeParams", "known_quantities", "absent_quantities", "align_rows",
    "sample_dogs", "dog_folds", "control_shuffle", "bucket_of", "probe_scores", "unit_correlations",
    "seed_agreement", "unit_labels",
]


@dataclass(frozen=True)
class Quantity:
    """One quantity a probe is asked to read off the state."""

    name: str
    """Column name in `known_quantities`."""
    binary: bool
    """0/1: scored by AUC; else by R²."""
    doc: str
    """What it is, in words (the report's label)."""


QUANTITIES: tuple[Quantity, ...] = (
    Quantity("starts", False, "races run so far"),
    Quantity("win_rate", False, "win rate so far, shrunk towards 1 in 8"),
    Quantity("mean_pos_3", False, "mean finishing position over the last 3 races"),
    Quantity("mean_pos_5", False, "mean finishing position over the last 5 races"),
    Quantity("log_days_since", False, "log(1 + days) between the last two races"),
    Quantity("last_box", False, "box of the last race"),
    Quantity("last_distance_m", False, "distance of the last race (m)"),
    Quantity("grade_level", False, "grade level of the last race (lower = better class)"),
    Quantity("last_won", True, "won the last race"),
    Quantity("last_placed", True, "placed in the last race"),
    Quantity("track_change", True, "the last race was at a different track from the one before"),
    Quantity("market_last", False, "market's implied win probability in the last race"),
    Quantity("market_next", False, "market's implied win probability in the next race (never a model input here)"),
)
"""Every quantity `known_quantities` computes, in display order."""

BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("all", 1, 1 << 30), ("1", 1, 1), ("2-5", 2, 5), ("6-10", 6, 10), ("11-20", 11, 20), ("21+", 21, 1 << 30),
)
"""(label, first race count, last race count) of the race-count buckets scores are reported in."""

WIN_PRIOR_RUNS = 4.0
"""The win rate so far is shrunk towards WIN_PRIOR_RATE as if the dog had this many earlier runs at that rate."""
WIN_PRIOR_RATE = 1.0 / 8.0
"""The win rate a dog with no runs is assumed to have (one in a field of 8)."""
MIN_ROWS = 20
"""Fewest rows (and, for a binary quantity, of each class) a score is computed on; NaN below."""


@dataclass(frozen=True)
class ProbeParams:
    """How the probes are fitted and scored."""

    folds: int = 5
    """Folds of the out-of-sample fit; each dog's rows all lie in one fold."""
    alpha: float = 1e-2
    """Ridge penalty per training row on the standardised state (the intercept is not penalised)."""
    logistic_steps: int = 1
    """Newton steps of the logistic probe for binary quantities, from the ridge solution (0: ridge only); on Iggy a
    second step moves no AUC by more than 0.0007."""
    n_boot: int = 100
    """Bootstrap replicates over dogs of each interval (the intervals are secondary: on Iggy 100 instead of 200
    changed their widths by a median factor of 0.97)."""
    level: float = 0.95
    """Interval coverage."""
    seed: int = 0
    """Seed of the folds, the control shuffle and the bootstrap (the same for every seed of the model)."""
    unit_rows: int = 5_000
    """Most rows the units' rank correlations are computed on (drawn at random; ranking costs most there)."""


# ---------------------------------------------------------------- quantities from the runs


def known_quantities(runs: pd.DataFrame) -> pd.DataFrame:
    """Canonical runs -> one row per run in `clean_runs` order: dog_id, race_id, step and every QUANTITIES column
    (float64; NaN where unknown, all-NaN where the source does not carry it)."""
    df = clean_runs(runs)
    n = len(df)
    dog = df["dog_id"].to_numpy(dtype=object)
    first = np.r_[True, dog[1:] != dog[:-1]] if n else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else np.zeros(0, np.int64)
    step = (np.arange(n) - start + 1).astype(np.int64)
    won = _num(df["won"])
    pos = _num(df["finish_pos"])
    days = df["race_date"].to_numpy("datetime64[D]").astype("datetime64[D]")
    gap = (days - np.r_[days[:1], days[:-1]]).astype("timedelta64[D]").astype(np.float64) if n else np.zeros(0)
    gap[first | np.isnat(days) | np.isnat(np.r_[days[:1], days[:-1]])] = np.nan
    track = df["track"].astype("string").fillna("").to_numpy(dtype=object)
    prev_track = np.r_[track[:1], track[:-1]] if n else track
    change = np.where(first | (track == "") | (prev_track == ""), np.nan, (track != prev_track).astype(np.float64))
    market = _implied(df)
    nxt = np.r_[market[1:], np.nan] if n else market
    last = np.r_[first[1:], True] if n else first
    q = {
        "starts": step.astype(np.float64),
        "win_rate": (_cum_within(np.nan_to_num(won), start) + WIN_PRIOR_RUNS * WIN_PRIOR_RATE) / (step + WIN_PRIOR_RUNS),
        "mean_pos_3": _window_mean(pos, start, 3),
        "mean_pos_5": _window_mean(pos, start, 5),
        "log_days_since": np.log1p(np.clip(gap, 0.0, None)),
        "last_box": _num(df["box"]),
        "last_distance_m": _num(df["distance_m"]),
        "grade_level": grade_table(df["grade"])["level"].to_numpy(np.float64),
        "last_won": won,
        "last_placed": _num(df["placed"]),
        "track_change": change,
        "market_last": market,
        "market_next": np.where(last, np.nan, nxt),
    }
    out = pd.DataFrame({"dog_id": dog.astype(str), "race_id": df["race_id"].astype(str).to_numpy(), "step": step})
    for spec in QUANTITIES:
        out[spec.name] = np.asarray(q[spec.name], dtype=np.float64)
    return out


def absent_quantities(quantities: pd.DataFrame) -> list[str]:
    """The QUANTITIES columns that are missing or all-NaN (the source does not carry them)."""
    return [s.name for s in QUANTITIES if s.name not in quantities or not np.isfinite(quantities[s.name]).any()]


def align_rows(quantities: pd.DataFrame, dog_id: np.ndarray, race_id: np.ndarray) -> pd.DataFrame:
    """`quantities` (from `known_quantities`) reordered to the rows (dog_id[i], race_id[i]) of a states store;
    a row the runs lack gets NaN everywhere. (rows,) -> DataFrame of len(rows), index 0..rows-1."""
    dog_id, race_id = np.asarray(dog_id, dtype=object).astype(str), np.asarray(race_id, dtype=object).astype(str)
    if len(quantities) == len(dog_id) and np.array_equal(quantities["dog_id"].to_numpy(dtype=str), dog_id) \
            and np.array_equal(quantities["race_id"].to_numpy(dtype=str), race_id):
        return quantities.reset_index(drop=True)
    key = pd.MultiIndex.from_arrays([quantities["dog_id"].astype(str), quantities["race_id"].astype(str)])
    q = quantities[~key.duplicated()].set_index(key[~key.duplicated()])
    out = q.reindex(pd.MultiIndex.from_arrays([dog_id, race_id])).reset_index(drop=True)
    out["dog_id"], out["race_id"] = dog_id, race_id
    return out


def _num(s: pd.Series) -> np.ndarray:
    return s.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _cum_within(x: np.ndarray, start: np.ndarray) -> np.ndarray:
    """(n,) running sum of x within each dog (rows start[i]..i)."""
    c = np.cumsum(x)
    return c - np.r_[0.0, c][start]


def _window_mean(x: np.ndarray, start: np.ndarray, k: int) -> np.ndarray:
    """(n,) mean of the known values of x over the dog's last k rows up to and including each row; NaN if none."""
    ok = np.isfinite(x)
    cs = np.r_[0.0, np.cumsum(np.where(ok, x, 0.0))]
    cn = np.r_[0, np.cumsum(ok)]
    i = np.arange(len(x))
    lo = np.maximum(i - k + 1, start)
    n = cn[i + 1] - cn[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (cs[i + 1] - cs[lo]) / n, np.nan)


def _implied(df: pd.DataFrame) -> np.ndarray:
    """(n,) the dog's implied win probability (1 / BSP, else 1 / SP) renormalised over its race's priced runners."""
    bsp, sp = _num(df["bsp_decimal"]), _num(df["sp_decimal"])
    price = np.where(np.isfinite(bsp) & (bsp > 1.0), bsp, sp)
    p = np.where(np.isfinite(price) & (price > 1.0), 1.0 / price, np.nan)
    if not len(p):
        return p
    race = race_codes(df["race_id"].to_numpy(dtype=object))
    ok = np.isfinite(p)
    tot = np.bincount(race, weights=np.where(ok, p, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, p / tot[race], np.nan)


# ---------------------------------------------------------------- sampling, folds, control


def sample_dogs(row_size: np.ndarray, budget: int, seed: int = 0, *, shard_rows: int | None = None,
                shards: int = 4) -> np.ndarray:
    """(k,) sorted indices of at most `budget` dogs with at least one row, drawn without replacement. With
    `shard_rows` (rows per shard of the store, dogs in store order), the dogs come from `shards` shards drawn at
    random (budget / shards dogs from each, those whose first row lies in it), so a reader decompresses those
    shards only; the store's dog order (by id) is assumed unrelated to what is probed."""
    row_size = np.asarray(row_size)
    have = np.flatnonzero(row_size > 0)
    if budget <= 0 or len(have) <= budget:
        return have
    rng = np.random.default_rng(seed)
    if not shard_rows:
        return np.sort(rng.choice(have, size=budget, replace=False))
    first = (np.cumsum(row_size) - row_size)[have] // shard_rows  # (dogs,) shard of each dog's first row
    quota, out = -(-budget // shards), []
    for sh in rng.permutation(np.unique(first)):
        want = budget - sum(len(o) for o in out)
        if want <= 0:
            break
        pool = have[first == sh]
        out.append(rng.choice(pool, size=min(len(pool), quota, want), replace=False))
    got = np.concatenate(out)
    if len(got) < budget:  # shards too small for the quota: the rest from anywhere
        rest = np.setdiff1d(have, got)
        got = np.concatenate([got, rng.choice(rest, size=budget - len(got), replace=False)])
    return np.sort(got)


def dog_folds(dog: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(rows,) fold 0..k-1 of each row: dogs are dealt to folds at random, so a dog's rows share one fold."""
    if k < 2:
        raise ConfigError(f"probes: folds must be >= 2, got {k}")
    codes, dogs = _codes(dog)
    fold_of_dog = np.random.default_rng(seed).permutation(len(dogs)) % k
    return fold_of_dog[codes]


def control_shuffle(y: np.ndarray, step: np.ndarray, seed: int = 0) -> np.ndarray:
    """(rows,) the control task's target: y's known values permuted among rows at the same race count (so
    among dogs, one row per dog at a step), missing values left where they are."""
    y = np.asarray(y, dtype=np.float64)
    out = y.copy()
    ok = np.flatnonzero(np.isfinite(y))
    rng = np.random.default_rng(seed)
    order = ok[np.lexsort((rng.random(len(ok)), np.asarray(step)[ok]))]  # random order within each step
    by_step = ok[np.argsort(np.asarray(step)[ok], kind="stable")]  # the same steps, in row order
    out[by_step] = y[order]
    return out


def bucket_of(step: np.ndarray) -> np.ndarray:
    """(rows,) the race-count bucket label of each step (BUCKETS, without 'all')."""
    step = np.asarray(step)
    out = np.empty(len(step), dtype=object)
    for label, lo, hi in BUCKETS[1:]:
        out[(step >= lo) & (step <= hi)] = label
    return out


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.astype(np.int64), uniq


# ---------------------------------------------------------------- probes


def probe_scores(
    h: np.ndarray, quantities: pd.DataFrame, dog: np.ndarray, step: np.ndarray, params: ProbeParams = ProbeParams(),
    *, names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Out-of-sample probe scores from the state to each quantity, per layer and bucket.

    h: (rows, L, H) states; quantities: (rows, ...) QUANTITIES columns; dog, step: (rows,).
    -> one row per layer, quantity and bucket: quantity, metric ('r2' or 'auc'), layer, bucket, score, lo,
    hi, control, control_lo, control_hi, selectivity, sel_lo, sel_hi, n_dogs, n_rows, note."""
    h = np.asarray(h, dtype=np.float32)
    if h.ndim != 3 or len(h) != len(quantities) or len(dog) != len(h) or len(step) != len(h):
        raise ConfigError(f"probe_scores: h {h.shape}, quantities {len(quantities)}, dog {len(dog)}, step "
                          f"{len(step)}: expected h (rows, layer, unit) and the same rows everywhere")
    specs = [s for s in QUANTITIES if names is None or s.name in names]
    dog_code, _ = _codes(dog)
    step = np.asarray(step, dtype=np.int64)
    fold = dog_folds(dog, params.folds, params.seed)
    boot = _boot_weights(int(dog_code.max()) + 1 if len(dog_code) else 0, params)
    buckets = bucket_of(step)
    absent = set(absent_quantities(quantities))
    targets = {}
    for i, s in enumerate(specs):
        if s.name in absent:
            continue
        y = quantities[s.name].to_numpy(np.float64)
        targets[s.name] = (y, control_shuffle(y, step, params.seed + 1 + i))
    rows = []
    for layer in range(h.shape[1]):
        preds = _fit_predict(_standardise(h[:, layer, :]), targets, fold, params, {s.name: s.binary for s in specs})
        for s in specs:
            if s.name in absent:
                rows.append(_row(s, layer, "all", note="absent: the source does not carry it"))
                continue
            y, yc = targets[s.name]
            p, pc = preds[s.name]
            for label, lo, hi in BUCKETS:
                m = np.isfinite(y) & (step >= lo) & (step <= hi) if label == "all" else np.isfinite(y) & (buckets == label)
                base, base_c = _fold_means(y, m, fold, params.folds), _fold_means(yc, m, fold, params.folds)
                rows.append(_scored(s, layer, label, (y[m], p[m], base), (yc[m], pc[m], base_c), dog_code[m], boot,
                                    params))
    return pd.DataFrame(rows, columns=list(_COLUMNS))


_COLUMNS = ("quantity", "metric", "layer", "bucket", "score", "lo", "hi", "control", "control_lo", "control_hi",
            "selectivity", "sel_lo", "sel_hi", "n_dogs", "n_rows", "note")


def _row(s: Quantity, layer: int, bucket: str, *, n_dogs: int = 0, n_rows: int = 0, note: str = "", **vals) -> dict:
    out = {"quantity": s.name, "metric": "auc" if s.binary else "r2", "layer": layer, "bucket": bucket,
           "n_dogs": n_dogs, "n_rows": n_rows, "note": note}
    for c in _COLUMNS[4:13]:
        out[c] = float(vals.get(c, np.nan))
    return out


def _standardise(x: np.ndarray) -> np.ndarray:
    """(rows, H) -> (rows, H + 1) float64: columns centred and scaled (constant ones left at 0), then an intercept.
    Uses no label, so standardising over all rows leaks nothing into the folds."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 1e-8, sd, 1.0)
    return np.hstack([z, np.ones((len(z), 1))])


def _fit_predict(
    x: np.ndarray, targets: dict[str, tuple[np.ndarray, np.ndarray]], fold: np.ndarray, params: ProbeParams,
    binary: dict[str, bool],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (out-of-fold prediction of y, of its control)}: ridge per fold. One Gram matrix per fold over every
    row; a quantity's rows are those rows less its missing ones (whose Gram is subtracted), and quantities sharing
    a missing-value pattern share one Cholesky factor per fold."""
    k, d = params.folds, x.shape[1]
    pen = np.eye(d)
    pen[-1, -1] = 0.0  # the intercept
    fold_rows = [np.flatnonzero(fold == f) for f in range(k)]
    grams = np.stack([x[r].T @ x[r] for r in fold_rows])  # (k, d, d)
    groups: dict[bytes, list[str]] = {}
    for name, (y, _) in targets.items():
        groups.setdefault(np.packbits(np.isfinite(y)).tobytes(), []).append(name)
    out = {}
    for names in groups.values():
        ok = np.isfinite(targets[names[0]][0])
        g = grams.copy()
        if not ok.all():
            for f, r in enumerate(fold_rows):
                miss = r[~ok[r]]
                g[f] -= x[miss].T @ x[miss]
        ys = np.column_stack([np.where(ok, v, 0.0) for n in names for v in targets[n]])  # (rows, 2 * names)
        cross = np.stack([x[r].T @ ys[r] for r in fold_rows])  # (k, d, 2 * names); missing rows add 0
        n_ok = np.array([int(ok[r].sum()) for r in fold_rows])
        pred = np.full(ys.shape, np.nan)
        logit = [c for j, n in enumerate(names) if binary[n] for c in (2 * j, 2 * j + 1)]
        for f, r in enumerate(fold_rows):
            n_train = int(n_ok.sum() - n_ok[f])
            test = r[ok[r]]
            if n_train < d or not len(test):
                continue
            gram = g.sum(axis=0) - g[f]
            w = np.linalg.solve(gram + params.alpha * n_train * pen, cross.sum(axis=0) - cross[f])
            if logit and params.logistic_steps:
                train = np.flatnonzero(ok & (fold != f))
                w[:, logit] = _logistic(x[train], ys[train][:, logit], w[:, logit], gram,
                                        params.alpha * n_train * pen, params.logistic_steps)
            pred[test] = x[test] @ w
        for j, n in enumerate(names):
            out[n] = (np.where(ok, pred[:, 2 * j], np.nan), np.where(ok, pred[:, 2 * j + 1], np.nan))
    return out


def _logistic(x: np.ndarray, y: np.ndarray, w0: np.ndarray, gram: np.ndarray, pen: np.ndarray,
              steps: int) -> np.ndarray:
    """Ridge-penalised logistic regression of 0/1 columns y (rows, k) on x (rows, d), from the least-squares
    w0 (d, k) moved to logit units, by Böhning's bound: Newton steps with the fixed Hessian gram / 4 + pen
    (gram = x.T @ x), which never overshoot, so each step costs one pass over x instead of a new Hessian."""
    pbar = np.clip(y.mean(axis=0), 1e-6, 1 - 1e-6)  # (k,)
    scale = 1.0 / (pbar * (1.0 - pbar))  # d logit / d p at the mean rate
    w = w0 * scale
    w[-1] = np.log(pbar / (1.0 - pbar)) - scale * ((x @ w0).mean(axis=0) - w0[-1])
    chol = np.linalg.cholesky(gram / 4.0 + pen + 1e-9 * np.eye(len(gram)))
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + pen @ w
        w = w - np.linalg.solve(chol.T, np.linalg.solve(chol, grad))
    return w


def _boot_weights(n_dogs: int, params: ProbeParams) -> np.ndarray:
    """(n_boot, n_dogs) how many times each dog is drawn in each bootstrap replicate."""
    rng = np.random.default_rng(params.seed + 7919)
    if n_dogs == 0:
        return np.zeros((params.n_boot, 0))
    return rng.multinomial(n_dogs, np.full(n_dogs, 1.0 / n_dogs), size=params.n_boot).astype(np.float64)


def _fold_means(y: np.ndarray, m: np.ndarray, fold: np.ndarray, k: int) -> np.ndarray:
    """(m.sum(),) the baseline of each row in m: the mean of y over the rows in m outside its fold (what a probe
    that knows nothing of the state predicts for the bucket)."""
    f = fold[m]
    s, n = np.bincount(f, weights=y[m], minlength=k), np.bincount(f, minlength=k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((s.sum() - s) / (n.sum() - n))[f]


def _scored(
    s: Quantity, layer: int, bucket: str, task: tuple[np.ndarray, ...], control: tuple[np.ndarray, ...],
    dog: np.ndarray, boot: np.ndarray, params: ProbeParams,
) -> dict:
    """One table row: the score, its control's and the selectivity with bootstrap intervals over the bucket's dogs.
    task, control: (y, out-of-fold prediction, baseline) of the rows."""
    ok = np.isfinite(task[1]) & np.isfinite(control[1]) & np.isfinite(task[2]) & np.isfinite(control[2])
    task, control, dog = tuple(a[ok] for a in task), tuple(a[ok] for a in control), dog[ok]
    y, yc = task[0], control[0]
    n_dogs, n_rows = int(np.count_nonzero(np.bincount(dog))) if len(dog) else 0, len(y)
    few = n_rows < MIN_ROWS or (s.binary and min((y == 1).sum(), (y == 0).sum(), (yc == 1).sum(), (yc == 0).sum())
                                < MIN_ROWS // 2) or (not s.binary and np.ptp(y) == 0)
    if few:
        return _row(s, layer, bucket, n_dogs=n_dogs, n_rows=n_rows, note="too few rows to score")
    score_fn = _auc if s.binary else _r2
    a, ac = score_fn(*task), score_fn(*control)
    ba, bc = score_fn(*task, dog=dog, boot=boot), score_fn(*control, dog=dog, boot=boot)
    q = ((1 - params.level) / 2, (1 + params.level) / 2)
    lo, hi = np.nanquantile(ba, q)
    clo, chi = np.nanquantile(bc, q)
    slo, shi = np.nanquantile(ba - bc, q)
    return _row(s, layer, bucket, n_dogs=n_dogs, n_rows=n_rows, score=a, lo=lo, hi=hi, control=ac, control_lo=clo,
                control_hi=chi, selectivity=a - ac, sel_lo=slo, sel_hi=shi)


def _r2(y: np.ndarray, p: np.ndarray, base: np.ndarray, dog: np.ndarray | None = None, boot: np.ndarray | None = None):
    """Out-of-sample R² = 1 - SSE(probe) / SSE(baseline), the baseline being each row's training-fold mean (so a
    probe that learned nothing scores about 0, however unevenly a quantity spreads over the folds' dogs); with dog
    (rows,) codes 0..dogs-1 and boot (n_boot, dogs) draws, each replicate's R² (n_boot,) from per-dog sums."""
    e, e0 = (y - p) ** 2, (y - base) ** 2
    if boot is None:
        return 1.0 - float(e.sum()) / float(e0.sum()) if e0.sum() > 0 else np.nan
    d = boot.shape[1]
    sse, sse0 = (boot @ np.column_stack([np.bincount(dog, weights=v, minlength=d) for v in (e, e0)])).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sse0 > 0, 1.0 - sse / sse0, np.nan)


def _auc(y: np.ndarray, p: np.ndarray, base: np.ndarray | None = None, dog: np.ndarray | None = None,
         boot: np.ndarray | None = None):
    """AUC of scores p for 0/1 labels y (ties count a half). With dog (rows,) codes 0..dogs-1 and boot (n_boot, dogs)
    draws, each replicate's AUC (n_boot,) from its linearisation: each row's placement value (the share of the
    other class it outranks) summed per dog and reweighted (the clustered DeLong estimate, Obuchowski 1997),
    which costs one pass over the dogs per replicate instead of a new ranking."""
    pos, neg = y == 1, y == 0
    sp, sn = np.sort(p[pos]), np.sort(p[neg])
    v10 = (np.searchsorted(sn, p[pos], "left") + np.searchsorted(sn, p[pos], "right")) / (2.0 * len(sn))
    auc = float(v10.mean())
    if boot is None:
        return auc
    v01 = 1.0 - (np.searchsorted(sp, p[neg], "left") + np.searchsorted(sp, p[neg], "right")) / (2.0 * len(sp))
    d = boot.shape[1]
    per_dog = np.column_stack([np.bincount(dog[pos], weights=v10, minlength=d), np.bincount(dog[pos], minlength=d),
                               np.bincount(dog[neg], weights=v01, minlength=d), np.bincount(dog[neg], minlength=d)])
    s10, n1, s01, n0 = (boot @ per_dog).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return s10 / n1 + s01 / n0 - auc


# ---------------------------------------------------------------- units


def unit_correlations(
    h: np.ndarray, quantities: pd.DataFrame, *, names: Sequence[str] | None = None, max_rows: int | None = 5_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Spearman correlation of every unit with every quantity over the rows where it is known; on at most
    `max_rows` rows drawn at random (a rho's standard error is then at most about 0.014), since ranking costs most
    here.

    h: (rows, L, H) -> one row per layer, unit and quantity: layer, unit, quantity, rho, n_rows, rank (1 = the
    unit with the largest |rho| for that quantity in its layer)."""
    h = np.asarray(h, dtype=np.float32)
    if max_rows is not None and len(h) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(h), size=max_rows, replace=False))
        h, quantities = h[keep], quantities.iloc[keep].reset_index(drop=True)
    n, L, H = h.shape
    specs = [q for q in QUANTITIES if (names is None or q.name in names) and q.name not in absent_quantities(quantities)]
    groups: dict[bytes, list[str]] = {}
    for sp in specs:
        y = quantities[sp.name].to_numpy(np.float64)
        ok = np.isfinite(y)
        if ok.sum() >= MIN_ROWS and np.ptp(y[ok]) > 0:
            groups.setdefault(np.packbits(ok).tobytes(), []).append(sp.name)
    out = []
    for layer in range(L):
        x = h[:, layer, :]
        order = np.argsort(x, axis=0, kind="stable")  # (rows, H)
        xs = np.take_along_axis(x, order, axis=0)
        inv = np.empty_like(order)
        np.put_along_axis(inv, order, np.broadcast_to(np.arange(n)[:, None], order.shape), axis=0)
        for names_ in groups.values():
            ok = np.isfinite(quantities[names_[0]].to_numpy(np.float64))
            rx = np.take_along_axis(_subset_ranks(xs, ok[order]), inv, axis=0)[ok]  # (known rows, H), row order
            for name in names_:
                rho = _pearson_cols(rx, _ranks(quantities[name].to_numpy(np.float64)[ok]))
                rank = np.empty(H, np.int64)
                rank[np.argsort(-np.nan_to_num(np.abs(rho), nan=-1.0), kind="stable")] = np.arange(1, H + 1)
                out.append(pd.DataFrame({"layer": layer, "unit": np.arange(H), "quantity": name, "rho": rho,
                                         "n_rows": int(ok.sum()), "rank": rank}))
    order_q = {sp.name: i for i, sp in enumerate(QUANTITIES)}
    cols = ["layer", "unit", "quantity", "rho", "n_rows", "rank"]
    if not out:
        return pd.DataFrame(columns=cols)
    t = pd.concat(out, ignore_index=True)[cols]
    return t.sort_values(["layer", "quantity", "unit"], key=lambda c: c.map(order_q) if c.name == "quantity" else c,
                         kind="stable").reset_index(drop=True)


def _ranks(y: np.ndarray) -> np.ndarray:
    """(n,) average ranks (1-based) of y, ties sharing their mean rank: scipy.stats.rankdata's, without importing
    scipy.stats (0.7 s of the nightly's start)."""
    order = np.argsort(y, kind="stable")
    out = np.empty(len(y), np.float64)
    out[order] = _subset_ranks(y[order][:, None], np.ones((len(y), 1), bool))[:, 0]
    return out


def _subset_ranks(xs: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(rows, H) average ranks (1-based) among the kept rows of each column of the sorted values xs; ties share
    their mean rank."""
    n = len(xs)
    c = np.cumsum(keep, axis=0)  # kept rows up to and including each position
    new = np.ones(xs.shape, bool)
    new[1:] = xs[1:] != xs[:-1]
    idx = np.arange(n)[:, None]
    first = np.maximum.accumulate(np.where(new, idx, 0), axis=0)
    end = np.ones(xs.shape, bool)
    end[:-1] = new[1:]
    last = np.minimum.accumulate(np.where(end, idx, n - 1)[::-1], axis=0)[::-1]
    before = np.where(first > 0, np.take_along_axis(c, np.maximum(first - 1, 0), axis=0), 0)
    upto = np.take_along_axis(c, last, axis=0)
    return (before + 1 + upto) / 2.0


def _pearson_cols(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(H,) Pearson correlation of each column of x (rows, H) with y (rows,); NaN for a constant column."""
    xc = x - x.mean(axis=0)
    yc = y - y.mean()
    den = np.sqrt((xc * xc).sum(axis=0) * float(yc @ yc))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (yc @ xc) / den, np.nan)


# ---------------------------------------------------------------- across seeds, labels


def seed_agreement(probes: pd.DataFrame, atlas: pd.DataFrame, *, threshold: float = 0.5) -> pd.DataFrame:
    """Whether seeds agree, per layer and quantity: the probe score on all rows of each seed (min, max) and how
    many seeds have a unit with |rho| >= threshold. probes: the probes table; atlas: the unit_atlas table.
    -> layer, quantity, metric, n_seeds, score_min, score_max, seeds_with_unit, best_rho_min."""
    p = probes[(probes["bucket"] == "all") & np.isfinite(probes["score"].astype(float))]
    s = p.groupby(["layer", "quantity", "metric"], sort=False).agg(
        n_seeds=("seed", "nunique"), score_min=("score", "min"), score_max=("score", "max")).reset_index()
    if atlas is None or not len(atlas):
        return s.assign(seeds_with_unit=0, best_rho_min=np.nan)
    best = atlas.assign(a=atlas["rho"].abs()).groupby(["layer", "quantity", "seed"])["a"].max().reset_index()
    u = best.groupby(["layer", "quantity"]).agg(
        seeds_with_unit=("a", lambda a: int((a >= threshold).sum())), best_rho_min=("a", "min")).reset_index()
    out = s.merge(u, on=["layer", "quantity"], how="left")
    out["seeds_with_unit"] = out["seeds_with_unit"].fillna(0).astype(np.int64)
    return out


def unit_labels(atlas: pd.DataFrame, *, seed: int, layer: int) -> dict[int, tuple[str, float]]:
    """{unit: (the quantity it tracks best, its rho)} of one seed and layer of the unit_atlas table."""
    a = atlas[(atlas["seed"] == seed) & (atlas["layer"] == layer)]
    a = a.assign(a=a["rho"].abs()).dropna(subset=["a"]).sort_values(["unit", "a"], ascending=[True, False])
    top = a.drop_duplicates("unit")
    return {int(u): (str(q), float(r)) for u, q, r in zip(top["unit"], top["quantity"], top["rho"])}
