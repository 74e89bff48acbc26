"""Input drift: a night's model inputs against the model set's training window, one row per input column.

For each column the models read (raw, before the normaliser):

- a population stability index, PSI = sum_b (c_b - r_b) ln(c_b / r_b), over the reference's deciles (continuous
  columns) or over the levels (binary, discrete and categorical columns), with half a count added to every bin so an
  empty bin is finite; beside it, for continuous columns, the two-sample Kolmogorov-Smirnov statistic and p-value;
- the share of rows missing (NaN), of finite values the normaliser clips (|x - mean| / std > clip), of rows in the
  unknown level of a categorical column (`track_index` 0: a track not in the vocabulary) and of rows at a level
  never seen in the reference (a track the set was not trained on).

A column is flagged when its PSI exceeds `psi_threshold` on at least `min_rows` rows, or when a share rises by more
than `share_threshold` and by more than `share_z` standard errors (two-proportion z: a rise of one night's sampling
noise is not drift). Counts go with every number. Pure: arrays in, a frame out.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gruviz_core.features import Normaliser, column_index
from gruviz_core.sequences import Sequences

__all__ = ["DriftParams", "DRIFT_COLUMNS", "psi", "input_drift", "sequences_drift", "flagged_inputs"]


@dataclass(frozen=True)
class DriftParams:
    """Thresholds and sizes of the drift check."""

    psi_threshold: float = 0.25
    """PSI above which an input is flagged (the usual reading: < 0.1 stable, 0.1-0.25 some shift, > 0.25 shifted)."""
    share_threshold: float = 0.05
    """Rise (absolute) in a missing, clipped, unknown or unseen share that is flagged."""
    share_z: float = 4.0
    """...and only when the rise is this many standard errors: a night checks about 60 inputs x 4 shares."""
    bins: int = 10
    """Quantile bins of a continuous column, from the reference; a column with at most this many levels is discrete."""
    min_rows: int = 200
    """Fewest current rows for a PSI flag: PSI of fewer rows is mostly sampling noise (about (bins - 1) / n)."""
    max_ref_rows: int = 200_000
    """Reference rows used (a fixed random sample beyond this): quantiles of 200k rows are as good as of millions."""
    seed: int = 0
    """Seed of the reference sample."""


DRIFT_COLUMNS: tuple[str, ...] = (
    "input", "part", "kind", "n_ref", "n_cur", "psi", "ks", "ks_p", "missing_ref", "missing_cur", "clipped_ref",
    "clipped_cur", "unknown_ref", "unknown_cur", "unseen_cur", "n_unseen", "unseen_levels", "flagged", "reason",
)
"""Columns of `input_drift`'s frame (gruviz_core.tables.TABLES['drift'])."""


def psi(ref: np.ndarray, cur: np.ndarray, *, bins: int = 10, discrete: bool | None = None) -> float:
    """Population stability index of `cur` against `ref` (finite values only; NaN when either side has none).

    discrete: bin by level (None: when `ref` and `cur` together have at most `bins` levels); else by the
    reference's quantiles."""
    ref, cur = _finite(ref), _finite(cur)
    if not len(ref) or not len(cur):
        return float("nan")
    if discrete is None:
        discrete = len(np.unique(np.r_[ref, cur])) <= bins
    r, c = _binned_counts(ref, cur, bins, discrete)
    return _psi_counts(r, c)


def input_drift(
    ref: np.ndarray,
    cur: np.ndarray,
    names: Sequence[str],
    *,
    parts: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    clip: float = np.inf,
    categorical: Collection[str] = (),
    unknown_code: float = 0.0,
    params: DriftParams = DriftParams(),
) -> pd.DataFrame:
    """One row per input (DRIFT_COLUMNS). ref: (n_ref, C) raw training-window rows; cur: (n_cur, C) raw rows of
    the night; names: (C,); parts: (C,) 'values' or 'context'; mean, std: the normaliser's, for the clipped share."""
    ref, cur = np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != len(names) or cur.shape[1] != len(names):
        raise ValueError(f"input_drift: ref {ref.shape} and cur {cur.shape} must be (rows, {len(names)})")
    if len(ref) > params.max_ref_rows:
        pick = np.sort(np.random.default_rng(params.seed).choice(len(ref), params.max_ref_rows, replace=False))
        ref = ref[pick]
    parts = list(parts) if parts is not None else ["values"] * len(names)
    rows = []
    for j, name in enumerate(names):
        m = None if mean is None else float(mean[j])
        s = None if std is None else float(std[j])
        rows.append(_column(ref[:, j], cur[:, j], name, parts[j], name in categorical, m, s, clip, unknown_code, params))
    return pd.DataFrame(rows, columns=list(DRIFT_COLUMNS))


def sequences_drift(
    seqs: Sequences, norm: Normaliser, ref_rows: np.ndarray, cur_rows: np.ndarray, params: DriftParams = DriftParams(),
) -> pd.DataFrame:
    """`input_drift` of every column a model set reads (its normaliser's names, values then context), raw rows
    `ref_rows` (the training window) against `cur_rows` (the night's); both (obs,) bool or row positions."""
    fi = column_index(seqs.feature_names, norm.feature_names, what="drift: model set features")
    ci = column_index(seqs.context_names, norm.context_names, what="drift: model set context")
    ref_rows, cur_rows = _positions(ref_rows), _positions(cur_rows)
    if len(ref_rows) > params.max_ref_rows:  # sample positions before gathering: no full-size copy of the window
        ref_rows = np.sort(np.random.default_rng(params.seed).choice(ref_rows, params.max_ref_rows, replace=False))
    ref = np.concatenate([seqs.values[ref_rows][:, fi], seqs.context[ref_rows][:, ci]], axis=1)  # (n_ref, F + C)
    cur = np.concatenate([seqs.values[cur_rows][:, fi], seqs.context[cur_rows][:, ci]], axis=1)  # (n_cur, F + C)
    names = [*norm.feature_names, *norm.context_names]
    parts = ["values"] * len(fi) + ["context"] * len(ci)
    keep = _distinct_columns(ref, cur, names)
    def pick(xs: Sequence) -> list:
        return [xs[j] for j in keep]

    return input_drift(
        ref[:, keep], cur[:, keep], pick(names), parts=pick(parts), mean=pick([*norm.values_mean, *norm.context_mean]),
        std=pick([*norm.values_std, *norm.context_std]), clip=norm.clip, categorical=set(norm.categorical),
        params=params,
    )


def _distinct_columns(ref: np.ndarray, cur: np.ndarray, names: Sequence[str]) -> list[int]:
    """Positions of the columns to check: a context column equal to the values column of its name (box, distance,
    days since, grade: the same input read twice) is checked once, as the values column."""
    first: dict[str, int] = {}
    keep = []
    for j, name in enumerate(names):
        i = first.setdefault(name, j)
        if i != j and np.array_equal(ref[:, i], ref[:, j], equal_nan=True) and \
                np.array_equal(cur[:, i], cur[:, j], equal_nan=True):
            continue
        keep.append(j)
    return keep


def _positions(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows)
    return np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)


def flagged_inputs(table: pd.DataFrame) -> list[str]:
    """'<input> (<reason>)' of every flagged row, largest PSI first."""
    hit = table[table["flagged"].astype(bool)].sort_values("psi", ascending=False, na_position="last")
    return [f"{r.input} ({r.reason})" for r in hit.itertuples()]


# ---------------------------------------------------------------- one column


def _column(ref, cur, name, part, categorical, mean, std, clip, unknown_code, p: DriftParams) -> dict:
    fr, fc = _finite(ref), _finite(cur)
    levels = np.unique(np.r_[fr, fc])
    if categorical:
        kind = "categorical"
    elif len(levels) and np.isin(levels, (0.0, 1.0)).all():
        kind = "binary"
    elif len(np.unique(fr)) <= p.bins and len(levels) <= 2 * p.bins:
        kind = "discrete"
    else:
        kind = "continuous"
    if not (len(fr) and len(fc)):
        value = float("nan")
    elif categorical:
        value = _psi_counts(*_top_level_counts(fr, fc, p.bins))
    else:
        value = _psi_counts(*_binned_counts(fr, fc, p.bins, kind != "continuous"))
    ks, ks_p = float("nan"), float("nan")
    if kind == "continuous" and len(fr) and len(fc):
        from scipy import stats as sps  # here: 0.7 s to import, and only continuous columns need it

        res = sps.ks_2samp(fr, fc)
        ks, ks_p = float(res.statistic), float(res.pvalue)
    row = {
        "input": name, "part": part, "kind": kind, "n_ref": int(len(ref)), "n_cur": int(len(cur)),
        "psi": value, "ks": ks, "ks_p": ks_p,
        "missing_ref": _share(np.isnan(ref), len(ref)),
        "missing_cur": _share(np.isnan(cur), len(cur)),
        "clipped_ref": float("nan"), "clipped_cur": float("nan"),
        "unknown_ref": float("nan"), "unknown_cur": float("nan"),
        "unseen_cur": float("nan"), "n_unseen": 0, "unseen_levels": "",
    }
    if categorical:
        row["unknown_ref"] = _share(ref == unknown_code, len(ref))
        row["unknown_cur"] = _share(cur == unknown_code, len(cur))
        seen = np.unique(fr)
        unseen = np.isfinite(cur) & ~np.isin(cur, seen) & (cur != unknown_code)
        row["unseen_cur"] = _share(unseen, len(cur))
        new = np.unique(cur[unseen])
        row["n_unseen"] = int(len(new))
        row["unseen_levels"] = ",".join(f"{v:g}" for v in new[:20])
    elif mean is not None and std is not None and np.isfinite(clip) and kind != "binary":
        row["clipped_ref"] = _clipped(ref, mean, std, clip)
        row["clipped_cur"] = _clipped(cur, mean, std, clip)
    reasons = _reasons(row, p)
    row["flagged"] = bool(reasons)
    row["reason"] = "; ".join(reasons)
    return row


def _reasons(row: dict, p: DriftParams) -> list[str]:
    out: list[str] = []
    if row["n_cur"] < p.min_rows:  # counted and shown, never flagged: one clipped row of three is not a feed change
        return out
    if row["psi"] > p.psi_threshold:
        out.append(f"PSI {row['psi']:.2f} > {p.psi_threshold:g}")
    for what in ("missing", "clipped", "unknown"):
        a, b = row[f"{what}_ref"], row[f"{what}_cur"]
        if _rose(a, b, row["n_ref"], row["n_cur"], p):
            out.append(f"{what} {a:.1%} -> {b:.1%}")
    if _rose(0.0, row["unseen_cur"], row["n_ref"], row["n_cur"], p):
        out.append(f"{row['n_unseen']} level(s) not seen in training on {row['unseen_cur']:.1%} of rows")
    return out


def _rose(a: float, b: float, n_a: int, n_b: int, p: DriftParams) -> bool:
    """Whether share b (of n_b rows) exceeds share a (of n_a) by share_threshold and by share_z standard errors."""
    if not (np.isfinite(a) and np.isfinite(b)) or b - a <= p.share_threshold or n_b == 0:
        return False
    pooled = (a * n_a + b * n_b) / max(n_a + n_b, 1)
    se = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / max(n_a, 1) + 1 / n_b))
    return (b - a) / se > p.share_z


def _binned_counts(ref: np.ndarray, cur: np.ndarray, bins: int, discrete: bool) -> tuple[np.ndarray, np.ndarray]:
    """(k,) counts of ref and cur in the same bins: by level (discrete), else by the reference's quantiles."""
    if discrete:
        levels = np.unique(np.r_[ref, cur])
        return (np.bincount(np.searchsorted(levels, ref), minlength=len(levels)),
                np.bincount(np.searchsorted(levels, cur), minlength=len(levels)))
    edges = np.unique(np.quantile(ref, np.arange(1, bins) / bins))
    k = len(edges) + 1
    return (np.bincount(np.searchsorted(edges, ref, side="right"), minlength=k),
            np.bincount(np.searchsorted(edges, cur, side="right"), minlength=k))


def _top_level_counts(ref: np.ndarray, cur: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bins,) counts over the reference's `bins - 1` most frequent levels and one bin for every other level: PSI
    over 80 tracks of a few hundred rows would be mostly the sampling noise of the rare ones."""
    levels, counts = np.unique(ref, return_counts=True)
    top = np.sort(levels[np.argsort(-counts, kind="stable")[: bins - 1]])

    def binned(x: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(top, x).clip(max=len(top) - 1)
        return np.bincount(np.where(top[pos] == x, pos, len(top)), minlength=len(top) + 1)

    return binned(ref), binned(cur)


def _psi_counts(r: np.ndarray, c: np.ndarray) -> float:
    """PSI of two count vectors over the same bins, half a count added to each bin."""
    pr = (r + 0.5) / (r.sum() + 0.5 * len(r))
    pc = (c + 0.5) / (c.sum() + 0.5 * len(c))
    return float(np.sum((pc - pr) * np.log(pc / pr)))


def _clipped(x: np.ndarray, mean: float, std: float, clip: float) -> float:
    """Share of the finite or infinite values that the normaliser clips (|x - mean| / std > clip)."""
    seen = ~np.isnan(x)
    if not seen.any():
        return float("nan")
    with np.errstate(invalid="ignore", over="ignore"):
        z = np.abs((x[seen] - mean) / (std if std else 1.0))
    return float(np.mean(z > clip))


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


def _share(mask: np.ndarray, n: int) -> float:
    return float(np.count_nonzero(mask) / n) if n else float("nan")
