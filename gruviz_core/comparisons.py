"""Honest cohort comparisons (docs/ARCHITECTURE.md, "What makes a comparison honest"): scored races grouped by the saturation status the
model had when it predicted them, compared within history-length strata, out of sample, with a
bootstrap over dogs and a minimum size below which nothing is compared.

Rows are scored runners (one per dog and race) of the evaluation period only. Every metric is a ratio
of per-dog sums, so a Poisson bootstrap over DOGS is one float32 (B, dog) @ (dog, k) product per group (the
weights are kept as uint8 counts and cast by blocks of replicates as each product needs them: `weighted`):

    gap_vs_market     per-runner log-loss of the model minus the market's on the same runner: the
                      model's own skill gap, fair across groups that differ in who wins
    runner_log_loss   per-runner binary log-loss of the win probability
    brier             squared error of the win probability
    concordance       within-race pairs (winner, loser) ordered correctly, credited to both runners
    hit_rate          top picks (the model's favourite) that won

Race NLL (-log p(winner) per race, what the model is trained on) is a per-race number: `race_nll`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from gruviz_core.errors import ConfigError
from gruviz_core.racing import win_log_loss

__all__ = [
    "RUNNER_METRICS",
    "STRATA",
    "Sizes",
    "RowMetrics",
    "row_metrics",
    "race_nll",
    "stratum_of",
    "FINE_STRATA",
    "fine_stratum_of",
    "bucket_value",
    "label_ranges",
    "bootstrap_weights",
    "poisson1",
    "replicate_blocks",
    "product_dtype",
    "weighted",
    "weighted_mean",
    "group_table",
    "stratified_effect",
    "within_dog_effect",
    "dose_response",
    "effective_dogs",
    "percentile_interval",
    "bootstrap_p",
]

RUNNER_METRICS: tuple[str, ...] = ("gap_vs_market", "runner_log_loss", "brier", "concordance", "hit_rate")
"""Metrics of every group; lower is better for the first three."""

STRATA: tuple[tuple[int, int, str], ...] = (
    (1, 1, "1"), (2, 5, "2-5"), (6, 10, "6-10"), (11, 20, "11-20"), (21, 40, "21-40"), (41, 10**9, "41+"),
)
"""History-length strata on a scored race's step t (the race is predicted from h_{t-1})."""

# columns of the per-dog sums matrix
_N, _GAP, _LL, _BR, _CONC, _PICKS, _HITS, _WIN = range(8)
_COL = {"gap_vs_market": _GAP, "runner_log_loss": _LL, "brier": _BR, "concordance": _CONC}


@dataclass(frozen=True)
class Sizes:
    """Minimum group sizes below which a comparison prints 'too small to compare'."""

    min_dogs: int = 100
    """Dogs with at least one scored race in the group."""
    min_winners: int = 50
    """Winners among the group's scored races."""


@dataclass(frozen=True)
class RowMetrics:
    """Per-row ingredients of every metric, for the rows of the evaluation period."""

    values: np.ndarray
    """(obs, 8) float64 columns n, gap, ll, brier, concordance, is_top, hit, won."""
    has_market: bool
    """Whether gap_vs_market is defined (market prices on every evaluated race)."""

    @cached_property
    def summable(self) -> np.ndarray:
        """(obs, 10) the 8 columns with NaN as 0, then 'has a pair' and 'has a market' flags (made once: every
        group of every comparison sums rows of these)."""
        v = self.values
        return np.concatenate([np.nan_to_num(v), np.isfinite(v[:, [_CONC, _GAP]]).astype(np.float64)], axis=1)


def row_metrics(p: np.ndarray, won: np.ndarray, race: np.ndarray, ref: np.ndarray | None) -> RowMetrics:
    """p, won, race (codes), ref (market probabilities or None): (obs,) -> RowMetrics."""
    p, won = np.asarray(p, dtype=np.float64), np.asarray(won, dtype=np.float64)
    ll = win_log_loss(p, won)
    gap = ll - win_log_loss(ref, won) if ref is not None else np.full(len(p), np.nan)
    out = np.zeros((len(p), 8))
    out[:, _N] = 1.0
    out[:, _GAP], out[:, _LL], out[:, _BR] = gap, ll, (p - won) ** 2
    out[:, _CONC] = _concordance(p, won, race)
    top = _top_pick(p, race)
    out[:, _PICKS], out[:, _HITS], out[:, _WIN] = top, top * won, won
    return RowMetrics(out, ref is not None)


def race_nll(p: np.ndarray, won: np.ndarray, race: np.ndarray) -> float:
    """Mean over races of -log p(winner) (dead heats: the winners' mean). (obs,) -> float."""
    n = int(race.max()) + 1 if len(race) else 0
    if n == 0:
        return float("nan")
    term = np.where(won > 0, -np.log(np.clip(p, 1e-12, 1.0)), 0.0)
    winners = np.bincount(race, weights=won, minlength=n)
    ok = winners > 0
    return float(np.mean(np.bincount(race, weights=term, minlength=n)[ok] / winners[ok]))


def _top_pick(p: np.ndarray, race: np.ndarray) -> np.ndarray:
    order = np.lexsort((-p, race))
    first = np.ones(len(order), dtype=bool)
    first[1:] = race[order][1:] != race[order][:-1]
    out = np.zeros(len(p))
    out[order[first]] = 1.0
    return out


def _concordance(p: np.ndarray, won: np.ndarray, race: np.ndarray) -> np.ndarray:
    """Per runner: the share of its (winner, loser) pairs in its race that p orders correctly (ties 1/2);
    a winner is paired with every loser, a loser with every winner. NaN for runners with no pair."""
    n = int(race.max()) + 1 if len(race) else 0
    out = np.full(len(p), np.nan)
    if n == 0:
        return out
    w = (np.asarray(won) > 0).astype(np.float64)
    order = np.lexsort((p, race))  # by race, then ascending p
    rs, ps, ws = race[order], p[order], w[order]
    new = np.ones(len(rs), dtype=bool)
    new[1:] = (rs[1:] != rs[:-1]) | (ps[1:] != ps[:-1])
    grp = np.cumsum(new) - 1  # tie group (race, p)
    gl, gw = np.bincount(grp, weights=1 - ws), np.bincount(grp, weights=ws)
    cl, cw = np.cumsum(gl) - gl, np.cumsum(gw) - gw  # losers / winners in earlier groups (all races)
    first_grp = grp[np.searchsorted(rs, np.arange(n), side="left").clip(max=len(rs) - 1)]
    base_l, base_w = cl[first_grp], cw[first_grp]
    n_win, n_lose = np.bincount(rs, weights=ws, minlength=n), np.bincount(rs, weights=1 - ws, minlength=n)
    losers_below = cl[grp] - base_l[rs]
    losers_tied = gl[grp] - (1 - ws)
    winners_above = n_win[rs] - (cw[grp] + gw[grp] - base_w[rs])
    winners_tied = gw[grp] - ws
    with np.errstate(invalid="ignore", divide="ignore"):
        val = np.where(ws > 0, (losers_below + 0.5 * losers_tied) / n_lose[rs],
                       (winners_above + 0.5 * winners_tied) / n_win[rs])
    has_pair = np.where(ws > 0, n_lose[rs] > 0, n_win[rs] > 0)
    out[order] = np.where(has_pair, val, np.nan)
    return out


FINE_STRATA: tuple[tuple[int, int, str], ...] = (
    *((t, t, str(t)) for t in range(1, 31)), *((t, t + 4, f"{t}-{t + 4}") for t in range(31, 61, 5)),
    (61, 80, "61-80"), (81, 120, "81-120"), (121, 10**9, "121+"),
)
"""Strata for comparing groups whose membership changes with step (settled vs settling): single steps up to
30, then 5-step bins to 60, then wider; coarse strata let settled rows sit at later steps than settling ones."""


def stratum_of(step: np.ndarray) -> np.ndarray:
    """(obs,) 1-based step -> (obs,) stratum label."""
    return label_ranges(step, STRATA)


def fine_stratum_of(step: np.ndarray) -> np.ndarray:
    """(obs,) 1-based step -> (obs,) FINE_STRATA label."""
    return label_ranges(step, FINE_STRATA)


def label_ranges(step: np.ndarray, ranges: tuple[tuple[int, int, str], ...]) -> np.ndarray:
    """(n,) steps -> (n,) the label of the inclusive (lo, hi, label) range each falls in (None if none)."""
    step = np.asarray(step)
    out = np.empty(len(step), dtype=object)
    for lo, hi, name in ranges:
        out[(step >= lo) & (step <= hi)] = name
    return out


def bootstrap_weights(n_dogs: int, n_boot: int, seed: int) -> np.ndarray:
    """(B, dog) uint8 Poisson(1) weights (0..15: exact in any float type, a quarter of float32's bytes);
    the same seed gives the same weights. Consumers cast the columns they use (`weighted`)."""
    if n_boot < 1:
        raise ConfigError(f"bootstrap: n_boot must be >= 1 (GRUVIZ_BOOTSTRAP), got {n_boot}")
    return poisson1(np.random.default_rng(seed), (n_boot, n_dogs))


_POISSON1_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1, dtype=np.float64)) for k in range(16)])
"""P(X <= k) of Poisson(1), k = 0..15 (P(X > 15) < 1e-13)."""


_POISSON1_LUT = np.searchsorted(_POISSON1_CDF[:-1] * 65536, np.arange(65536) + 0.5, side="right").astype(np.uint8)
"""Poisson(1) value of each 16-bit uniform (the middle of its 1/65536 slice): every P(X = k) within 1/65536."""


def poisson1(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 Poisson(1) draws by a 16-bit inverse-CDF table: about 7x faster than rng.poisson."""
    return _POISSON1_LUT[rng.integers(0, 65536, size=shape, dtype=np.uint16)]


_BLOCK_BYTES = 1 << 26
"""Largest float copy of bootstrap weights made at a time (64 MB): (B, dog) float32 is 4 GB at 1M dogs."""


def replicate_blocks(weights: np.ndarray, cols: np.ndarray | None = None, *, dtype=np.float32):
    """Yield (rows, w): w = weights[rows][:, cols] as `dtype`, rows a slice of replicates, at most _BLOCK_BYTES
    a block (all rows at once when that fits, as small runs do). Blocks are multiples of 16 replicates of tens
    of MB, so OpenBLAS (one thread) computes each replicate's product as on the whole matrix, bit for bit
    (tests/test_comparisons.py; at several threads it may split a whole float32 product otherwise)."""
    w = np.asarray(weights)
    n_b = w.shape[0]
    n_c = w.shape[1] if cols is None else (int(np.count_nonzero(cols)) if np.asarray(cols).dtype == bool else len(cols))
    per = max(16, _BLOCK_BYTES // max(n_c * np.dtype(dtype).itemsize, 1) // 16 * 16)
    for a in range(0, n_b, per) if n_b > per else (0,):
        part = w[a: a + per] if n_b > per else w
        part = part if cols is None else part[:, cols]
        yield slice(a, a + len(part)), part.astype(dtype, copy=False)


def product_dtype(weights: np.ndarray) -> np.dtype:
    """The float type products of these weights run in: their own when float, float32 for uint8 counts."""
    w = np.asarray(weights)
    return w.dtype if w.dtype.kind == "f" else np.dtype(np.float32)


def weighted(weights: np.ndarray, x: np.ndarray, cols: np.ndarray | None = None, *, dtype=np.float32) -> np.ndarray:
    """weights[:, cols] @ x in `dtype` by blocks of replicates (replicate_blocks): the same numbers as the whole
    product without its float copy of the weights. weights: (B, dog); x: (cols,) or (cols, k) -> (B,) or (B, k)."""
    x = np.asarray(x).astype(dtype, copy=False)
    if x.ndim == 1 and cols is not None and np.dtype(dtype) == np.float32:
        # a column selection is Fortran-ordered, and OpenBLAS's float32 matrix-vector product on one gives other
        # last bits for some replicates when cut into blocks: whole (no caller needs it at scale)
        return np.asarray(weights)[:, cols].astype(dtype) @ x
    out = np.empty((np.asarray(weights).shape[0], *x.shape[1:]), dtype)
    for rows, w in replicate_blocks(weights, cols, dtype=dtype):
        np.matmul(w, x, out=out[rows])
    return out


def effective_dogs(rows_per_dog: np.ndarray) -> float:
    """Kish effective number of dogs when each dog contributes rows_per_dog correlated rows."""
    r = np.asarray(rows_per_dog, dtype=np.float64)
    r = r[r > 0]
    return float(r.sum() ** 2 / np.sum(r**2)) if len(r) else 0.0


def _dog_sums(rm: RowMetrics, dog: np.ndarray, keep: np.ndarray, n_dogs: int) -> np.ndarray:
    """(dog, 8) sums over the kept rows; NaN values (no market, no pair) count as 0 with their own n below."""
    v = rm.summable[keep]
    d = dog[keep]
    out = np.zeros((n_dogs, 10))
    for j in range(10):
        out[:, j] = np.bincount(d, weights=v[:, j], minlength=n_dogs)
    return out


def _metric(sums: np.ndarray, name: str) -> np.ndarray:
    """Metric from summed columns; sums (..., 10) -> (...)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if name == "hit_rate":
            return sums[..., _HITS] / sums[..., _PICKS]
        if name == "concordance":
            return sums[..., _CONC] / sums[..., 8]
        if name == "gap_vs_market":
            return sums[..., _GAP] / sums[..., 9]
        if name == "win_rate":
            return sums[..., _WIN] / sums[..., _N]
        return sums[..., _COL[name]] / sums[..., _N]


def percentile_interval(reps: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of bootstrap replicates (NaN replicates dropped; NaNs if fewer than 2)."""
    reps = reps[np.isfinite(reps)]
    if len(reps) < 2:
        return float("nan"), float("nan")
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass(frozen=True)
class _Group:
    point: np.ndarray  # (10,) summed columns
    reps: np.ndarray  # (B, 10)
    n_dogs: int
    n_eff: float


def _group(sums: np.ndarray, weights: np.ndarray) -> _Group:
    used = sums[:, _N] > 0
    return _Group(sums.sum(axis=0), weighted(weights, sums[used], used).astype(np.float64),
                  int(used.sum()), effective_dogs(sums[:, _N]))


def _metrics_of(rm: RowMetrics) -> tuple[str, ...]:
    return RUNNER_METRICS if rm.has_market else RUNNER_METRICS[1:]


def group_table(
    rm: RowMetrics, dog: np.ndarray, group: np.ndarray, stratum: np.ndarray, weights: np.ndarray,
    *, groups: tuple[str, ...], n_dogs: int,
) -> pd.DataFrame:
    """Every metric per (stratum, group) and per group over all strata, with 95% intervals.
    -> columns stratum, group, metric, value, lo, hi, n_dogs, n_rows, n_winners, n_eff_dogs."""
    out = []
    for st in [*[s for _, _, s in STRATA], "all"]:
        in_st = np.ones(len(dog), bool) if st == "all" else stratum == st
        for g in groups:
            keep = in_st & (group == g)
            if not keep.any():
                continue
            grp = _group(_dog_sums(rm, dog, keep, n_dogs), weights)
            for m in _metrics_of(rm):
                lo, hi = percentile_interval(_metric(grp.reps, m))
                out.append((st, g, m, float(_metric(grp.point, m)), lo, hi, grp.n_dogs, int(grp.point[_N]),
                            int(grp.point[_WIN]), grp.n_eff))
    cols = ["stratum", "group", "metric", "value", "lo", "hi", "n_dogs", "n_rows", "n_winners", "n_eff_dogs"]
    return pd.DataFrame(out, columns=cols)


def bucket_value(rm: RowMetrics, dog: np.ndarray, keep: np.ndarray, weights: np.ndarray, *, metric: str,
                 n_dogs: int) -> dict:
    """`metric` over the kept rows with its 95% interval (bootstrap over dogs) and sizes.
    -> {value, lo, hi, n_rows, n_dogs, n_winners}."""
    g = _group(_dog_sums(rm, dog, keep, n_dogs), weights)
    lo, hi = percentile_interval(_metric(g.reps, metric))
    v = float(_metric(g.point, metric)) if g.point[_N] > 0 else float("nan")
    return {"value": v, "lo": lo, "hi": hi, "n_rows": int(g.point[_N]), "n_dogs": g.n_dogs,
            "n_winners": int(round(g.point[_WIN]))}


def stratified_effect(
    rm: RowMetrics, dog: np.ndarray, group: np.ndarray, stratum: np.ndarray, weights: np.ndarray,
    *, a: str, b: str, metric: str, n_dogs: int, sizes: Sizes = Sizes(),
) -> dict:
    """Difference a - b of `metric` averaged over strata where both groups have rows, weighted by the rows
    of a and b there (a group that just raced more is not credited for it); bootstrap over dogs.
    -> {metric, a, b, diff, lo, hi, n_dogs_a, n_dogs_b, n_winners_a, n_winners_b, comparable, excludes_zero}."""
    ia, ib = group == a, group == b
    diffs, reps, wts = [], [], []
    for st in pd.unique(stratum[ia | ib]):
        s = stratum == st
        if not (ia & s).any() or not (ib & s).any():
            continue
        ga, gb = _group(_dog_sums(rm, dog, ia & s, n_dogs), weights), _group(_dog_sums(rm, dog, ib & s, n_dogs), weights)
        d = _metric(ga.point, metric) - _metric(gb.point, metric)
        if not np.isfinite(d):
            continue
        diffs.append(d)
        reps.append(_metric(ga.reps, metric) - _metric(gb.reps, metric))
        wts.append(ga.point[_N] + gb.point[_N])
    sa, sb = _dog_sums(rm, dog, ia, n_dogs), _dog_sums(rm, dog, ib, n_dogs)
    return _effect_record(metric, a, b, diffs, reps, wts, sa, sb, sizes)


def _effect_record(metric, a, b, diffs, reps, wts, sa, sb, sizes: Sizes) -> dict:
    na, nb = int((sa[:, _N] > 0).sum()), int((sb[:, _N] > 0).sum())
    wa, wb = int(round(sa[:, _WIN].sum())), int(round(sb[:, _WIN].sum()))
    comparable = min(na, nb) >= sizes.min_dogs and min(wa, wb) >= sizes.min_winners and bool(diffs)
    rec = {"metric": metric, "a": a, "b": b, "diff": None, "lo": None, "hi": None, "n_dogs_a": na, "n_dogs_b": nb,
           "n_winners_a": wa, "n_winners_b": wb, "n_runners_a": int(sa[:, _N].sum()), "n_runners_b": int(sb[:, _N].sum()),
           "comparable": bool(comparable), "excludes_zero": False, "p_value": None}
    if diffs:
        w = np.asarray(wts) / np.sum(wts)
        point = float(np.sum(w * np.asarray(diffs)))
        r = (w[:, None] * np.stack(reps)).sum(axis=0)
        lo, hi = percentile_interval(r)
        rec.update(diff=point, lo=lo, hi=hi, excludes_zero=bool(comparable and np.isfinite(lo) and (lo > 0 or hi < 0)),
                   p_value=bootstrap_p(r))
    return rec


def bootstrap_p(reps: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value of 'the difference is 0': twice the smaller tail share of replicates
    on either side of 0 (at least 1/B). None without replicates."""
    r = np.asarray(reps, np.float64)
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return None
    tail = min(np.mean(r <= 0), np.mean(r >= 0))
    return float(min(1.0, max(2 * tail, 1.0 / len(r))))


def within_dog_effect(
    rm: RowMetrics, dog: np.ndarray, after: np.ndarray, weights: np.ndarray, *, metric: str, n_dogs: int,
    sizes: Sizes = Sizes(),
) -> dict:
    """The same dogs' races after vs before their plateau: the mean over dogs with both of (metric after -
    metric before), bootstrap over dogs. after: (obs,) bool plateau reached by the race before."""
    sa, sb = _dog_sums(rm, dog, after, n_dogs), _dog_sums(rm, dog, ~after, n_dogs)
    both = (sa[:, _N] > 0) & (sb[:, _N] > 0)
    d = _metric(sa[both], metric) - _metric(sb[both], metric)
    ok = np.isfinite(d)
    idx, d = np.flatnonzero(both)[ok], d[ok]
    rec = {"metric": metric, "a": "after plateau", "b": "before plateau", "diff": None, "lo": None, "hi": None,
           "n_dogs_a": len(idx), "n_dogs_b": len(idx), "n_winners_a": int(round(sa[idx, _WIN].sum())),
           "n_winners_b": int(round(sb[idx, _WIN].sum())), "excludes_zero": False,
           "comparable": bool(len(idx) >= sizes.min_dogs
                              and min(sa[idx, _WIN].sum(), sb[idx, _WIN].sum()) >= sizes.min_winners)}
    if len(idx):
        reps = weighted_mean(weights, d, idx)
        lo, hi = percentile_interval(reps)
        rec.update(diff=float(d.mean()), lo=lo, hi=hi,
                   excludes_zero=bool(rec["comparable"] and np.isfinite(lo) and (lo > 0 or hi < 0)))
    return rec


def weighted_mean(weights: np.ndarray, x: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(B,) (w @ x) / w.sum(axis=1) in float64 with w = weights[:, cols], by blocks of replicates.
    weights: (B, dog); x: (cols,) float64."""
    out = np.empty(np.asarray(weights).shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        for rows, w in replicate_blocks(weights, cols, dtype=np.float64):
            out[rows] = (w @ x) / w.sum(axis=1)
    return out


def dose_response(
    rm: RowMetrics, dog: np.ndarray, score: np.ndarray, keep: np.ndarray, weights: np.ndarray,
    *, metric: str, n_dogs: int, n_bins: int = 10,
) -> tuple[pd.DataFrame, dict]:
    """The metric by decile of a continuous saturation score (rows `keep`), with intervals, and the trend:
    the slope of the decile values on the deciles' mean score (least squares weighted by rows), bootstrapped.
    -> (table: decile, score_lo, score_hi, score_mid, value, lo, hi, metric, n_rows, n_dogs; trend dict)."""
    x = np.asarray(score, dtype=np.float64)
    keep = keep & np.isfinite(x)
    cols = ["decile", "score_lo", "score_hi", "score_mid", "value", "lo", "hi", "metric", "n_rows", "n_dogs"]
    if keep.sum() < n_bins:
        return pd.DataFrame(columns=cols), {"slope": None, "lo": None, "hi": None, "n_rows": int(keep.sum())}
    edges = np.unique(np.quantile(x[keep], np.linspace(0, 1, n_bins + 1)))
    b = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    rows, mids, vals, reps, ns = [], [], [], [], []
    for i in range(len(edges) - 1):
        k = keep & (b == i)
        if not k.any():
            continue
        g = _group(_dog_sums(rm, dog, k, n_dogs), weights)
        v, r = float(_metric(g.point, metric)), _metric(g.reps, metric)
        lo, hi = percentile_interval(r)
        mid = float(x[k].mean())
        rows.append((i + 1, float(edges[i]), float(edges[i + 1]), mid, v, lo, hi, metric, int(g.point[_N]), g.n_dogs))
        mids.append(mid), vals.append(v), reps.append(r), ns.append(g.point[_N])
    table = pd.DataFrame(rows, columns=cols)
    trend = {"slope": None, "lo": None, "hi": None, "n_rows": int(keep.sum())}
    if len(mids) >= 3:
        X, W = np.asarray(mids), np.asarray(ns)
        xc = X - np.average(X, weights=W)
        denom = np.sum(W * xc**2)
        if denom > 0:
            slope = float(np.sum(W * xc * np.asarray(vals)) / denom)
            r = (W * xc) @ np.nan_to_num(np.stack(reps)) / denom
            lo, hi = percentile_interval(r)
            trend = {"slope": slope, "lo": lo, "hi": hi, "n_rows": int(keep.sum())}
    return table, trend
