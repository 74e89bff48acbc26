"""Saturation statistics of GRU hidden states (magnitude, gate and spectral saturation), streaming-friendly.

Three kinds of saturation, never mixed:

- magnitude saturation: |h| near 1 (`abs_sum`, `near_boundary_fraction`, `plateau_steps`);
- gate saturation: z/r activations near 0 or 1 (`GateCounts`);
- spectral: the effective dimension of the state covariance (`StateMoments.effective_dim`).

Rows follow the store's flat ragged layout: every step of every dog one row, `step` 1-based
within its dog. Per-row functions work on one chunk of rows; accumulators are mergeable so a
scan over shard-aligned chunks gives the same answer as one pass over everything in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gruviz_core import cohorts as co
from gruviz_core.cohorts import CohortRule
from gruviz_core.errors import ConfigError
from gruviz_core.sequences import ROW_SUMMARY, whole_group_ranges

__all__ = [
    "TAUS",
    "abs_sum",
    "near_boundary_fraction",
    "step_change",
    "RowStats",
    "row_stats",
    "row_summary",
    "GateCounts",
    "StateMoments",
    "UnitAccumulators",
    "participation_ratio",
    "UnitHealthParams",
    "unit_health",
    "relative_change",
    "plateau_steps",
    "plateau_step",
    "TAU_COLUMNS",
    "SeedScan",
    "scan_seed",
    "dog_layer_table",
    "kaplan_meier",
    "step_quartiles",
    "unit_table",
    "population_curve",
    "median_by_race",
    "magnitude_summary",
    "km_median",
]

TAUS: tuple[float, ...] = (0.9, 0.95, 0.99)
"""Near-boundary thresholds reported everywhere (columns f090, f095, f099)."""


def abs_sum(h: np.ndarray) -> np.ndarray:
    """Abs-sum S = sum_i |h_i|. h: (n, L, H) -> (n, L) float64."""
    return np.abs(h).sum(axis=-1, dtype=np.float64)


def near_boundary_fraction(h: np.ndarray, *, tau: float = 0.95) -> np.ndarray:
    """Share of units with |h| >= tau. h: (n, L, H) -> (n, L)."""
    return (np.abs(h) >= tau).mean(axis=-1)


def step_change(h: np.ndarray, step: np.ndarray, carry: np.ndarray | None = None) -> np.ndarray:
    """delta = ||h_t - h_{t-1}||_2 with h_0 = 0. h: (n, L, H), step: (n,) 1-based -> (n, L).

    `carry` (L, H) is the last row of the previous chunk; it is used when the chunk's first
    row continues a dog (step > 1). Without it such a row is compared with zeros.
    """
    d = np.array(h, dtype=np.float32, copy=True)  # (n, L, H): h_t - h_{t-1}
    if len(h):
        d[1:] -= h[:-1]
        if carry is not None:
            d[0] -= carry
        first = np.flatnonzero(np.asarray(step) <= 1)
        d[first] = h[first]  # a dog's first step starts from h_0 = 0
    return np.sqrt(np.einsum("nlh,nlh->nl", d, d).astype(np.float64))  # 64-128 float32 terms: exact enough


@dataclass(frozen=True)
class RowStats:
    """Per-row, per-layer magnitude statistics of one chunk."""

    abs_sum: np.ndarray
    """(n, L) float64: S = sum_i |h_i|."""
    s: np.ndarray
    """(n, L) float64: S / H, in [0, 1)."""
    f: np.ndarray
    """(n, L, len(taus)) float32: near-boundary fraction F_tau for each tau."""
    delta: np.ndarray
    """(n, L) float64: step change ||h_t - h_{t-1}||_2."""
    max_abs: np.ndarray
    """(n, L) float32: max_i |h_i| (magnitude saturation without a threshold)."""
    move: np.ndarray
    """(n, L) float64: relative movement m = ||h_t - h_{t-1}|| / ||h_t|| (NaN where h_t = 0)."""
    write: np.ndarray | None
    """(n, L) float32: write fraction u = 1 - mean_i z_i, the share of the state this race rewrites
    (PyTorch's z -> 1 keeps the old state); None without gates."""


def row_stats(
    h: np.ndarray, step: np.ndarray, carry: np.ndarray | None = None, *, taus: tuple[float, ...] = TAUS,
    z: np.ndarray | None = None,
) -> RowStats:
    """Per-row summaries of a chunk (DESIGN section 5). h, z: (n, L, H) float32, step: (n,) -> RowStats."""
    a = np.abs(h)
    H = h.shape[-1]
    total = a.sum(axis=-1).astype(np.float64)  # (n, L); 64-128 float32 terms, pairwise: exact enough
    f = np.stack([np.count_nonzero(a >= t, axis=-1) for t in taus], axis=-1).astype(np.float32) / H  # (n, L, K)
    delta = step_change(h, step, carry)
    norm = np.sqrt(np.einsum("nlh,nlh->nl", h, h).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        move = np.where(norm > 0, delta / norm, np.nan)
    write = None if z is None else (1.0 - z.mean(axis=-1, dtype=np.float32)).astype(np.float32)
    return RowStats(abs_sum=total, s=total / H, f=f, delta=delta, max_abs=a.max(axis=-1, initial=0.0),
                    move=move, write=write)


def row_summary(h: np.ndarray, z: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """The stored per-row summaries (gruviz_core.sequences.ROW_SUMMARY) of whole dogs, rows dog by dog.

    h, z: (n, L, H) float32 (the states an extraction batch holds), lengths: (D,) steps of each dog,
    summing to n; a dog's first row moves from h_0 = 0. -> {name: (n, L) float32}."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if int(lengths.sum()) != len(h):
        raise ConfigError(f"row_summary: lengths sum to {int(lengths.sum())}, h has {len(h)} rows; pass whole dogs")
    step = np.arange(len(h)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1  # (n,) 1-based
    r = row_stats(h, step, z=z)
    out = {"s": r.s, **{c: r.f[:, :, i] for i, c in enumerate(TAU_COLUMNS)}, "max_abs": r.max_abs,
           "move": r.move, "write": r.write, "delta": r.delta}
    return {name: np.ascontiguousarray(out[name], dtype=np.float32) for name in ROW_SUMMARY}


@dataclass
class GateCounts:
    """Counts of gate activations near 0 (left) and 1 (right) per unit; mergeable.

    PyTorch's update gate z -> 1 means "keep the old state", so right-saturated z units are
    the ones that stop listening to new races.
    """

    n: int = 0
    """Rows counted."""
    left: np.ndarray | None = None
    """(L, H) int64: rows with activation < lo."""
    right: np.ndarray | None = None
    """(L, H) int64: rows with activation > hi."""
    lo: float = 0.1
    """Left threshold (Karpathy, Johnson, Fei-Fei 2015)."""
    hi: float = 0.9
    """Right threshold."""

    def add(self, g: np.ndarray) -> GateCounts:
        """Count a chunk of activations g: (n, L, H); NaN rows count as neither."""
        left = (g < self.lo).sum(axis=0, dtype=np.int64)
        right = (g > self.hi).sum(axis=0, dtype=np.int64)
        self.left = left if self.left is None else self.left + left
        self.right = right if self.right is None else self.right + right
        self.n += int(g.shape[0])
        return self

    def merge(self, other: GateCounts) -> GateCounts:
        if other.left is None:
            return self
        if self.left is None:
            self.left, self.right, self.n = other.left.copy(), other.right.copy(), other.n
            return self
        self.left, self.right, self.n = self.left + other.left, self.right + other.right, self.n + other.n
        return self

    def fractions(self) -> tuple[np.ndarray, np.ndarray]:
        """(left, right) fractions of rows, each (L, H)."""
        if self.left is None or self.n == 0:
            raise ConfigError("GateCounts.fractions: no rows counted; feed at least one chunk with add()")
        return self.left / self.n, self.right / self.n


@dataclass
class StateMoments:
    """Streaming mean, covariance, mean |h| and saturation counts per layer; mergeable (Chan et al.).

    Covariances are merged pairwise from (n, mean, M2) so a scan chunk by chunk equals the
    in-memory result up to float64 rounding, without the cancellation of raw sums of squares.
    """

    sat_tau: float = 0.95
    """|h| >= sat_tau counts as saturated for the always-saturated test."""
    n: int = 0
    mean: np.ndarray | None = None
    """(L, H) float64."""
    m2: np.ndarray | None = None
    """(L, H, H) float64: sum of centred cross-products."""
    abs_total: np.ndarray | None = None
    """(L, H) float64: sum of |h|."""
    sat_count: np.ndarray | None = None
    """(L, H) int64: rows with |h| >= sat_tau."""

    def add(self, h: np.ndarray) -> StateMoments:
        """Fold in a chunk h: (n, L, H)."""
        if len(h) == 0:
            return self
        L, H = h.shape[1:]
        mean, m2 = np.empty((L, H)), np.empty((L, H, H))
        for layer in range(L):
            x = h[:, layer, :]  # (n, H)
            mean[layer] = x.mean(axis=0, dtype=np.float64)
            m2[layer] = _centred_gram(x, mean[layer])
        a = np.abs(h)
        part = StateMoments(
            sat_tau=self.sat_tau, n=len(h), mean=mean, m2=m2,
            abs_total=a.sum(axis=0, dtype=np.float64), sat_count=(a >= self.sat_tau).sum(axis=0, dtype=np.int64),
        )
        return self.merge(part)

    def merge(self, other: StateMoments) -> StateMoments:
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.copy(), other.m2.copy()
            self.abs_total, self.sat_count = other.abs_total.copy(), other.sat_count.copy()
            return self
        n = self.n + other.n
        d = other.mean - self.mean  # (L, H)
        self.m2 = self.m2 + other.m2 + d[:, :, None] * d[:, None, :] * (self.n * other.n / n)
        self.mean = self.mean + d * (other.n / n)
        self.abs_total = self.abs_total + other.abs_total
        self.sat_count = self.sat_count + other.sat_count
        self.n = n
        return self

    def covariance(self) -> np.ndarray:
        """(L, H, H) population covariance."""
        if self.n == 0:
            raise ConfigError("StateMoments.covariance: no rows; feed at least one chunk with add()")
        return self.m2 / self.n

    def variance(self) -> np.ndarray:
        """(L, H) per-unit variance."""
        return np.diagonal(self.covariance(), axis1=1, axis2=2).copy()

    def effective_dim(self) -> np.ndarray:
        """(L,) participation ratio of each layer's state covariance, in [1, H] (0 if all dead)."""
        return np.array([participation_ratio(c) for c in self.covariance()])


_GRAM_BLOCK = 16384
"""Rows per float32 product: centred values in (-2, 2) summed over 16k rows keep ~1e-6 relative
error, while float64 products run 6x slower on 2 cores; blocks are summed in float64."""


def _centred_gram(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """sum_n (x_n - mean)(x_n - mean)^T in float64 from float32 BLAS blocks. x: (n, H) -> (H, H)."""
    m = mean.astype(np.float32)
    out = np.zeros((x.shape[1], x.shape[1]))
    for a in range(0, len(x), _GRAM_BLOCK):
        xc = np.ascontiguousarray(x[a:a + _GRAM_BLOCK], dtype=np.float32) - m
        out += (xc.T @ xc).astype(np.float64)
    return out


@dataclass
class UnitAccumulators:
    """Per-unit accumulators of one seed's states: gate saturation of z and r, and the state moments (effective
    dimension, unit health); mergeable, so blocks fold their own rows and the stats stage merges the blocks'."""

    z: GateCounts = field(default_factory=GateCounts)
    """Update-gate saturation counts."""
    r: GateCounts = field(default_factory=GateCounts)
    """Reset-gate saturation counts."""
    moments: StateMoments = field(default_factory=StateMoments)
    """Mean, covariance, mean |h| and saturation counts of h."""

    def add(self, h: np.ndarray, z: np.ndarray, r: np.ndarray) -> UnitAccumulators:
        """Fold in rows h, z, r: (n, L, H) float32."""
        if len(h):
            self.moments.add(h)
            self.z.add(z)
            self.r.add(r)
        return self

    def merge(self, other: UnitAccumulators) -> UnitAccumulators:
        self.moments.merge(other.moments)
        self.z.merge(other.z)
        self.r.merge(other.r)
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for storage (no rows: just n = 0)."""
        m = self.moments
        out = {"n": np.array(m.n, np.int64), "sat_tau": np.array(m.sat_tau),
               "gate_lo": np.array([self.z.lo, self.r.lo]), "gate_hi": np.array([self.z.hi, self.r.hi])}
        if m.n:
            out.update(mean=m.mean, m2=m.m2, abs_total=m.abs_total, sat_count=m.sat_count, z_left=self.z.left,
                       z_right=self.z.right, r_left=self.r.left, r_right=self.r.right)
        return out

    @classmethod
    def from_arrays(cls, d: Mapping[str, np.ndarray]) -> UnitAccumulators:
        """The inverse of `to_arrays`."""
        n, (zlo, rlo), (zhi, rhi) = int(d["n"]), d["gate_lo"], d["gate_hi"]
        out = cls(z=GateCounts(lo=float(zlo), hi=float(zhi)), r=GateCounts(lo=float(rlo), hi=float(rhi)),
                  moments=StateMoments(sat_tau=float(d["sat_tau"])))
        if n:
            out.moments.n, out.moments.mean, out.moments.m2 = n, np.asarray(d["mean"]), np.asarray(d["m2"])
            out.moments.abs_total, out.moments.sat_count = np.asarray(d["abs_total"]), np.asarray(d["sat_count"])
            out.z.n = out.r.n = n
            out.z.left, out.z.right = np.asarray(d["z_left"]), np.asarray(d["z_right"])
            out.r.left, out.r.right = np.asarray(d["r_left"]), np.asarray(d["r_right"])
        return out


def participation_ratio(cov: np.ndarray) -> float:
    """(sum lambda)^2 / sum lambda^2 of a covariance (H, H); equals tr(C)^2 / ||C||_F^2."""
    tr = float(np.trace(cov))
    fro2 = float((cov * cov).sum())
    return tr * tr / fro2 if fro2 > 0 else 0.0


@dataclass(frozen=True)
class UnitHealthParams:
    """Thresholds of the unit-health table."""

    dead_eps: float = 1e-6
    """A unit whose state variance is below this never moves: dead."""
    sat_share: float = 0.95
    """A unit with |h| >= StateMoments.sat_tau on at least this share of rows is always saturated."""


def unit_health(m: StateMoments, params: UnitHealthParams = UnitHealthParams()) -> dict[str, np.ndarray]:
    """Per unit: variance, mean_abs, dead, always_saturated, each (L, H)."""
    var = m.variance()
    return {
        "variance": var,
        "mean_abs": m.abs_total / m.n,
        "dead": var < params.dead_eps,
        "always_saturated": (m.sat_count / m.n) >= params.sat_share,
    }


def relative_change(s: np.ndarray, step: np.ndarray, *, w: int, eps: float = 1e-6) -> np.ndarray:
    """r_t = |s_t - s_{t-w}| / max(|s_{t-w}|, eps) on flat ragged rows; NaN where t <= w.

    s: (obs,) or (obs, L) with each dog's rows contiguous, step: (obs,) 1-based -> same shape as s.
    At t = w the reference would be the initial state (s_0 = 0), which is not a plateau.
    """
    s = np.asarray(s, dtype=np.float64)
    out = np.empty_like(s)
    out[:w] = np.nan
    if len(s) > w:
        ref = s[:-w]
        r = np.subtract(s[w:], ref, out=out[w:])
        np.abs(r, out=r)
        r /= np.maximum(np.abs(ref), eps)
        r[np.asarray(step)[w:] <= w] = np.nan
    return out


def plateau_steps(
    s: np.ndarray, step: np.ndarray, offsets: np.ndarray, *, w: int, delta: float, k: int
) -> np.ndarray:
    """Plateau step T* per dog: first t >= w with r_t, ..., r_{t+k-1} all < delta; NaN if none.

    s: (obs,) flat ragged per-step mean |h| of one layer, step: (obs,), offsets: (dog + 1,)
    -> (dog,) float64 (1-based step, NaN when no plateau was observed: right-censored).
    A dog needs at least w + k steps for one complete check (see `cohorts.min_steps`).
    """
    if w < 1 or k < 1 or delta <= 0:
        raise ConfigError(f"plateau: need w >= 1, k >= 1, delta > 0; got w={w}, k={k}, delta={delta}")
    offsets = np.asarray(offsets, np.int64)
    n_dogs = len(offsets) - 1
    out = np.full(n_dogs, np.nan)
    if len(s) == 0:
        return out
    s, step = np.asarray(s), np.asarray(step)
    # whole dogs about _PLATEAU_ROWS rows at a time: every dog's answer is its own rows' (~100 bytes of
    # temporaries a row, 2 GB at once on 19M rows)
    ranges = whole_group_ranges(offsets, _PLATEAU_ROWS)
    cut = np.searchsorted(offsets, [a for a, _ in ranges], side="left")  # first dog of each (empty dogs included)
    for d0, d1 in zip(cut, [*cut[1:], n_dogs]):
        a, b = offsets[d0], offsets[d1]
        out[d0:d1] = _plateau_steps(s[a:b], step[a:b], offsets[d0:d1 + 1] - a, w=w, delta=delta, k=k)
    return out


_PLATEAU_ROWS = 1 << 20
"""Rows of whole dogs that plateau_steps works on at a time."""


def _plateau_steps(s: np.ndarray, step: np.ndarray, offsets: np.ndarray, *, w: int, delta: float, k: int) -> np.ndarray:
    n_dogs, n = len(offsets) - 1, len(s)
    out = np.full(n_dogs, np.nan)
    if n < k:
        return out
    below = relative_change(s, step, w=w) < delta  # NaN compares False
    cs = np.zeros(n + 1, np.int64)
    np.cumsum(below, out=cs[1:])
    m = n - k + 1  # rows i whose window i .. i + k - 1 lies within the rows
    ok = (cs[k:] - cs[:m]) == k  # every r in the window below delta
    ok &= np.arange(k, n + 1) <= np.repeat(offsets[1:], np.diff(offsets))[:m]  # ... and within the row's dog
    ok &= step[:m] >= w
    hit = np.flatnonzero(ok)
    if len(hit):
        dog = np.searchsorted(offsets, hit, "right") - 1  # a dog without rows shares its start with the next
        d, first = np.unique(dog, return_index=True)
        out[d] = step[hit[first]]
    return out


def plateau_step(s: np.ndarray, *, w: int, delta: float, k: int) -> float:
    """T* of one dog's series s: (T,) -> 1-based step, or NaN when none (censored)."""
    s = np.asarray(s, dtype=np.float64)
    return float(plateau_steps(s, np.arange(1, len(s) + 1), np.array([0, len(s)]), w=w, delta=delta, k=k)[0])


# ------------------------------------------------------------------ the stats stage's tables
# The extraction blocks store every row's summaries and their per-unit accumulators
# (`SeedScan.from_summaries`); `scan_seed` computes the same from decoded states (a check, and
# runs without summaries). The tables below are built from a SeedScan, never from whole states.

TAU_COLUMNS = tuple(f"f{int(round(t * 100)):03d}" for t in TAUS)  # f090, f095, f099
"""Column name of F_tau for each stored tau."""


class SeedScan:
    """What one streaming pass over a seed's states leaves: per-row scalars and per-unit accumulators."""

    def __init__(self, n_obs: int, n_layers: int, *, full: bool):
        self.s = np.full((n_obs, n_layers), np.nan, dtype=np.float32)
        """(obs, L) mean |h|."""
        self.f = np.full((n_obs, n_layers, len(TAUS)), np.nan, dtype=np.float32)
        """(obs, L, tau) near-boundary fractions."""
        self.abs_sum = np.full((n_obs, n_layers), np.nan, dtype=np.float32) if full else None
        self.delta = np.full((n_obs, n_layers), np.nan, dtype=np.float32) if full else None
        self.max_abs = np.full((n_obs, n_layers), np.nan, dtype=np.float32)
        """(obs, L) max |h|."""
        self.move = np.full((n_obs, n_layers), np.nan, dtype=np.float32)
        """(obs, L) relative movement ||h_t - h_{t-1}|| / ||h_t||."""
        self.write = np.full((n_obs, n_layers), np.nan, dtype=np.float32)
        """(obs, L) write fraction 1 - mean z."""
        self.gates = {"z": GateCounts(), "r": GateCounts()}
        self.moments = StateMoments()
        self.bytes_scanned = 0
        self.rows_missing = 0

    @classmethod
    def from_summaries(cls, rows: Mapping[str, np.ndarray], units: UnitAccumulators, n_units: int) -> SeedScan:
        """The scan of a seed from its stored per-row summaries ({ROW_SUMMARY name: (obs, L) float32}) and its
        merged per-unit accumulators; no state is decoded. Rows never written (NaN) count as missing."""
        s = np.asarray(rows["s"], dtype=np.float32)
        out = cls(0, s.shape[1] if s.ndim == 2 else 0, full=False)
        out.s = s
        out.f = np.stack([np.asarray(rows[c], np.float32) for c in TAU_COLUMNS], axis=-1)
        out.abs_sum = s * np.float32(n_units)
        out.delta, out.max_abs = np.asarray(rows["delta"], np.float32), np.asarray(rows["max_abs"], np.float32)
        out.move, out.write = np.asarray(rows["move"], np.float32), np.asarray(rows["write"], np.float32)
        out.gates, out.moments = {"z": units.z, "r": units.r}, units.moments
        out.rows_missing = int((~np.isfinite(s).all(axis=1)).sum()) if s.size else 0
        return out


def scan_seed(chunks, step: np.ndarray, n_obs: int, n_layers: int, *, full: bool = True) -> SeedScan:
    """Fold an iterator of shard-aligned chunks (.start .stop .h .z .r, (n, L, H)) in row order."""
    out = SeedScan(n_obs, n_layers, full=full)
    carry = None
    for c in chunks:
        a, b = c.start, c.stop
        r = row_stats(c.h, step[a:b], carry, z=c.z)
        out.s[a:b], out.f[a:b] = r.s, r.f
        out.max_abs[a:b], out.move[a:b], out.write[a:b] = r.max_abs, r.move, r.write
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


def dog_layer_table(scan: SeedScan, step, offsets, rule: CohortRule, layer: int) -> dict[str, np.ndarray]:
    """Per dog for one layer: plateau, censoring, tail F per tau, cohort."""
    s = scan.s[:, layer].astype(np.float64)
    plateau = plateau_steps(s, step, offsets, w=rule.w, delta=rule.delta, k=rule.k)
    start = co.tail_start(plateau, rule)
    n_steps = np.diff(offsets)
    tails = {t: co.tail_mean(scan.f[:, layer, i], step, offsets, start) for i, t in enumerate(TAUS)}
    f_rule = tails[rule.tau]
    dog = np.repeat(np.arange(len(n_steps)), n_steps)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_s = np.bincount(dog, weights=s, minlength=len(n_steps)) / np.maximum(n_steps, 1)
    final_s = np.where(n_steps > 0, s[np.maximum(offsets[1:] - 1, 0)], np.nan) if len(s) else np.full(len(n_steps), np.nan)
    return {
        "plateau_step": plateau, "n_steps": n_steps, "mean_s": mean_s, "final_s": final_s,
        **{f"mean_{c}_after": tails[t] for c, t in zip(TAU_COLUMNS, TAUS)},
        "f_tail": f_rule, "cohort": co.assign_cohorts(plateau, n_steps, f_rule, rule),
        "thresholds": co.resolve_thresholds(plateau, n_steps, f_rule, rule),
    }


def kaplan_meier(plateau: np.ndarray, n_steps: np.ndarray, rule: CohortRule) -> pd.DataFrame:
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


def step_quartiles(scan: SeedScan, step, dog_cohort_row, layer: int) -> pd.DataFrame:
    """Quartiles of s and F_0.95 by step: every dog ("all"), then each cohort (sorted); the cohorts' come from
    one groupby over (cohort, step), the same values per group as a groupby per cohort, in one sort."""
    df = pd.DataFrame({"step": step, "cohort": dog_cohort_row, "s": scan.s[:, layer], "f": scan.f[:, layer, 1]})
    qs = [0.25, 0.5, 0.75]

    def part(name, q: pd.DataFrame, n: np.ndarray, steps: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({
            "layer": layer, "step": steps, "cohort": name, "n": n,
            "s_q25": q[("s", 0.25)].to_numpy(), "s_q50": q[("s", 0.5)].to_numpy(), "s_q75": q[("s", 0.75)].to_numpy(),
            "f095_q25": q[("f", 0.25)].to_numpy(), "f095_q50": q[("f", 0.5)].to_numpy(),
            "f095_q75": q[("f", 0.75)].to_numpy(),
        })

    g = df.groupby("step")
    q = g[["s", "f"]].quantile(qs).unstack()
    parts = [part("all", q, g.size().to_numpy(), q.index.to_numpy())]
    gc = df.groupby(["cohort", "step"], sort=True, observed=True)
    qc, nc = gc[["s", "f"]].quantile(qs).unstack(), gc.size()
    cohort = qc.index.get_level_values(0)
    for name in cohort.unique():
        rows = np.flatnonzero(cohort == name)
        parts.append(part(name, qc.iloc[rows], nc.iloc[rows].to_numpy(),
                          qc.index.get_level_values(1)[rows].to_numpy()))
    return pd.concat(parts, ignore_index=True)


def unit_table(seed: int, scan: SeedScan, health: dict) -> pd.DataFrame:
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




def population_curve(s: np.ndarray, step: np.ndarray, *, min_dogs: int = 50, tail: tuple[int, int] = (41, 60)) -> dict:
    """The parameter-light description of the abs-sum plateau: the median s by race, its long-run level and
    the races by which the median reaches 90% and 95% of it.

    s, step: (obs,) one layer's s and 1-based step. The level is the mean of the per-race medians over races
    `tail` (or the last 10 races with at least `min_dogs` dogs when fewer reach them).
    -> {level, race_90, race_95, median_by_race: [(race, median_s, n)]} (None values when no race has min_dogs)."""
    df = pd.DataFrame({"step": np.asarray(step), "s": np.asarray(s, np.float64)}).dropna()
    g = df.groupby("step")["s"]
    med = pd.DataFrame({"median": g.median(), "n": g.size()})
    med = med[med["n"] >= min_dogs]
    if med.empty:
        return {"level": None, "race_90": None, "race_95": None, "median_by_race": []}
    in_tail = med.loc[(med.index >= tail[0]) & (med.index <= tail[1]), "median"]
    level = float(in_tail.mean() if len(in_tail) >= 5 else med["median"].iloc[-10:].mean())

    def _first(share: float) -> int | None:
        hit = med.index[med["median"].to_numpy() >= share * level]
        return int(hit[0]) if len(hit) else None

    return {"level": level, "race_90": _first(0.9), "race_95": _first(0.95),
            "median_by_race": [(int(t), float(m), int(n)) for t, m, n in zip(med.index, med["median"], med["n"])]}


def median_by_race(x: np.ndarray, step: np.ndarray, races: tuple[int, ...]) -> list[tuple[int, float | None, int]]:
    """[(race, median of x over rows at that step, rows)] for each race asked for (None when no row). x, step: (obs,)."""
    x, step = np.asarray(x, np.float64), np.asarray(step)
    out = []
    for t in races:
        v = x[(step == t) & np.isfinite(x)]
        out.append((int(t), float(np.median(v)) if len(v) else None, int(len(v))))
    return out


def magnitude_summary(max_abs: np.ndarray, f090: np.ndarray, f095: np.ndarray) -> dict:
    """Magnitude (tanh) saturation in numbers: the largest |h| in any state, the 99th percentile of a state's
    largest unit, and the shares of states with any unit at or above 0.9 and 0.95. (obs,) each -> dict."""
    m = np.asarray(max_abs, np.float64)
    ok = np.isfinite(m)
    if not ok.any():
        return {"max_abs": None, "q99_max_abs": None, "share_states_any_090": None, "share_states_any_095": None,
                "n_states": 0}
    return {"max_abs": float(m[ok].max()), "q99_max_abs": float(np.quantile(m[ok], 0.99)),
            "share_states_any_090": float(np.mean(np.asarray(f090)[ok] > 0)),
            "share_states_any_095": float(np.mean(np.asarray(f095)[ok] > 0)), "n_states": int(ok.sum())}


def km_median(plateau: np.ndarray, n_steps: np.ndarray, rule: CohortRule) -> int | None:
    """Kaplan-Meier median time to plateau (the first step where the share not yet plateaued is <= 0.5)."""
    km = kaplan_meier(plateau, n_steps, rule)
    below = km[km["survival"] <= 0.5]
    return int(below["step"].min()) if len(below) else None
