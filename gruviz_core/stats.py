"""Saturation statistics of GRU hidden states (DESIGN.md section 5), streaming-friendly.

Three kinds of saturation, never mixed:

- magnitude saturation: |h| near 1 (`abs_sum`, `near_boundary_fraction`, `plateau_steps`);
- gate saturation: z/r activations near 0 or 1 (`GateCounts`);
- spectral: the effective dimension of the state covariance (`StateMoments.effective_dim`).

Rows follow the store's flat ragged layout: every step of every dog one row, `step` 1-based
within its dog. Per-row functions work on one chunk of rows; accumulators are mergeable so a
scan over shard-aligned chunks gives the same answer as one pass over everything in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gruviz_core.errors import ConfigError

__all__ = [
    "TAUS",
    "abs_sum",
    "near_boundary_fraction",
    "step_change",
    "RowStats",
    "row_stats",
    "GateCounts",
    "StateMoments",
    "participation_ratio",
    "UnitHealthParams",
    "unit_health",
    "relative_change",
    "plateau_steps",
    "plateau_step",
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
    return np.sqrt(np.einsum("nlh,nlh->nl", d, d).astype(np.float64))


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


def row_stats(
    h: np.ndarray, step: np.ndarray, carry: np.ndarray | None = None, *, taus: tuple[float, ...] = TAUS
) -> RowStats:
    """Magnitude statistics of a chunk. h: (n, L, H) float32, step: (n,) -> RowStats."""
    a = np.abs(h)
    H = h.shape[-1]
    total = a.sum(axis=-1).astype(np.float64)  # (n, L); 64-128 float32 terms, pairwise: exact enough
    f = np.stack([np.count_nonzero(a >= t, axis=-1) for t in taus], axis=-1).astype(np.float32) / H  # (n, L, K)
    return RowStats(abs_sum=total, s=total / H, f=f, delta=step_change(h, step, carry))


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

    def add(self, g: np.ndarray) -> "GateCounts":
        """Count a chunk of activations g: (n, L, H); NaN rows count as neither."""
        left = (g < self.lo).sum(axis=0, dtype=np.int64)
        right = (g > self.hi).sum(axis=0, dtype=np.int64)
        self.left = left if self.left is None else self.left + left
        self.right = right if self.right is None else self.right + right
        self.n += int(g.shape[0])
        return self

    def merge(self, other: "GateCounts") -> "GateCounts":
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

    def add(self, h: np.ndarray) -> "StateMoments":
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

    def merge(self, other: "StateMoments") -> "StateMoments":
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
    out = np.full_like(s, np.nan)
    if len(s) > w:
        ok = np.asarray(step)[w:] > w
        ref = s[:-w]
        r = np.abs(s[w:] - ref) / np.maximum(np.abs(ref), eps)
        out[w:][ok] = r[ok]
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
    n_dogs = len(offsets) - 1
    out = np.full(n_dogs, np.nan)
    if len(s) == 0:
        return out
    step = np.asarray(step)
    below = relative_change(s, step, w=w) < delta  # NaN compares False
    cs = np.concatenate([[0], np.cumsum(below, dtype=np.int64)])
    n = len(s)
    i = np.arange(n)
    end = i + k  # exclusive end of the k-window
    sizes = np.diff(offsets)
    dog = np.repeat(np.arange(n_dogs), sizes)
    last_row = offsets[1:][dog]  # exclusive end of the row's dog
    fits = end <= last_row
    window_ok = np.zeros(n, dtype=bool)
    window_ok[fits] = (cs[end[fits]] - cs[i[fits]]) == k
    hit = np.flatnonzero(window_ok & (step >= w))
    if len(hit):
        d, first = np.unique(dog[hit], return_index=True)
        out[d] = step[hit[first]]
    return out


def plateau_step(s: np.ndarray, *, w: int, delta: float, k: int) -> float:
    """T* of one dog's series s: (T,) -> 1-based step, or NaN when none (censored)."""
    s = np.asarray(s, dtype=np.float64)
    return float(plateau_steps(s, np.arange(1, len(s) + 1), np.array([0, len(s)]), w=w, delta=delta, k=k)[0])
