"""Saturation statistics on hand-built states with known answers; streaming equals in-memory."""

from __future__ import annotations

import numpy as np
import pytest

from gruviz_core import stats
from gruviz_core.errors import ConfigError


def _ragged(sizes, L=2, H=4, seed=0):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    h = np.tanh(rng.normal(scale=1.5, size=(n, L, H))).astype(np.float32)
    step = (np.arange(n) - np.repeat(offsets[:-1], sizes) + 1).astype(np.int32)
    return h, step, offsets


@pytest.mark.parametrize(
    "row, tau, S, F",
    [
        ([0.0, 0.0, 0.0, 0.0], 0.9, 0.0, 0.0),
        ([0.5, -0.5, 0.5, -0.5], 0.9, 2.0, 0.0),
        ([0.95, -0.99, 0.1, 0.0], 0.95, 2.04, 0.5),
        ([0.999, -0.999, 0.999, -0.999], 0.99, 3.996, 1.0),
    ],
)
def test_abs_sum_and_near_boundary(row, tau, S, F):
    h = np.array(row, dtype=np.float32)[None, None, :]  # (1, 1, 4)
    assert stats.abs_sum(h)[0, 0] == pytest.approx(S, abs=1e-5)
    assert stats.near_boundary_fraction(h, tau=tau)[0, 0] == pytest.approx(F)
    rs = stats.row_stats(h, np.array([1]))
    assert rs.s[0, 0] == pytest.approx(S / 4, abs=1e-5)


def test_step_change_restarts_at_each_dog_and_uses_carry():
    h = np.array([[3.0, 4.0], [3.0, 4.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)[:, None, :]
    step = np.array([1, 2, 1, 2])
    d = stats.step_change(h, step)[:, 0]
    np.testing.assert_allclose(d, [5.0, 0.0, 1.0, 1.0])
    # a chunk that starts mid-dog compares with the carried row
    d2 = stats.step_change(h[1:2], step[1:2], carry=np.array([[0.0, 0.0]], dtype=np.float32))
    assert d2[0, 0] == pytest.approx(5.0)


def test_gate_counts_fractions_and_merge():
    g = np.array([[0.05, 0.5], [0.95, 0.5], [0.05, 0.91], [0.5, 0.09]], dtype=np.float32)[:, None, :]
    whole = stats.GateCounts().add(g)
    left, right = whole.fractions()
    np.testing.assert_allclose(left[0], [0.5, 0.25])
    np.testing.assert_allclose(right[0], [0.25, 0.25])
    parts = stats.GateCounts().add(g[:1]).merge(stats.GateCounts().add(g[1:]))
    np.testing.assert_array_equal(parts.left, whole.left)
    with pytest.raises(ConfigError):
        stats.GateCounts().fractions()


def test_moments_streaming_equal_in_memory_and_unit_health():
    h, step, offsets = _ragged([7, 1, 30, 12, 5], L=2, H=5)
    h[:, 0, 3] = 0.25  # dead unit
    h[:, 1, 0] = np.where(np.arange(len(h)) % 2, 0.99, -0.97)  # always saturated, still moving
    whole = stats.StateMoments().add(h)
    streamed = stats.StateMoments()
    for a, b in [(0, 3), (3, 20), (20, 21), (21, len(h))]:
        streamed.merge(stats.StateMoments().add(h[a:b]))
    x = h.astype(np.float64)
    for layer in range(2):
        np.testing.assert_allclose(streamed.covariance()[layer], np.cov(x[:, layer].T, bias=True), atol=1e-7)
    np.testing.assert_allclose(streamed.effective_dim(), whole.effective_dim(), rtol=1e-6)
    uh = stats.unit_health(streamed)
    assert uh["dead"][0, 3] and uh["dead"].sum() == 1
    assert uh["always_saturated"][1, 0] and uh["always_saturated"].sum() == 1


@pytest.mark.parametrize(
    "eig, pr",
    [([1, 1, 1, 1], 4.0), ([1, 0, 0, 0], 1.0), ([2, 2, 0, 0], 2.0), ([0, 0, 0, 0], 0.0)],
)
def test_participation_ratio(eig, pr):
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    cov = q @ np.diag(eig) @ q.T
    assert stats.participation_ratio(cov) == pytest.approx(pr)


def _ramp_then_flat(rise, flat):
    return np.concatenate([np.linspace(0.1, 0.8, rise), np.full(flat, 0.8)])


@pytest.mark.parametrize(
    "s, w, delta, k, expected",
    [
        (np.full(10, 0.5), 3, 0.05, 2, 4.0),  # flat from the start: first checkable t = w + 1
        (_ramp_then_flat(10, 10), 3, 0.05, 3, 13.0),  # flat from step 10: s_13 vs s_10 first equal
        (_ramp_then_flat(10, 2), 3, 0.05, 3, np.nan),  # flat too briefly: censored
        (np.linspace(0.1, 0.9, 30), 2, 0.01, 2, np.nan),  # always rising: no plateau
        (np.full(4, 0.5), 3, 0.05, 2, np.nan),  # too short to complete one window
        (np.full(5, 0.5), 3, 0.05, 2, 4.0),  # exactly w + k steps: one window
        (np.array([0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9]), 1, 0.05, 2, 2.0),
    ],
)
def test_plateau_step_table(s, w, delta, k, expected):
    got = stats.plateau_step(s, w=w, delta=delta, k=k)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == expected


def _plateau_by_definition(s: np.ndarray, w: int, delta: float, k: int) -> float:
    """T* of one dog by the definition, step by step: the first t >= w with r_t .. r_(t+k-1) all < delta."""
    r = [abs(s[t - 1] - s[t - 1 - w]) / max(abs(s[t - 1 - w]), 1e-6) if t > w else np.nan
         for t in range(1, len(s) + 1)]
    for t in range(w, len(s) - k + 2):
        if all(r[u - 1] < delta for u in range(t, t + k)):
            return float(t)
    return np.nan


def test_plateau_steps_ragged_equals_per_dog():
    rng = np.random.default_rng(3)
    series = [_ramp_then_flat(int(r), int(f)) + rng.normal(scale=0.003, size=int(r + f))
              for r, f in rng.integers(1, 25, size=(40, 2))]
    series[5] = series[17] = series[-1] = np.zeros(0)  # dogs without rows, in the middle and last
    series[9] = np.full(3, 0.5)  # shorter than w + k
    s = np.concatenate(series)
    sizes = np.array([len(x) for x in series])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    step = np.concatenate([np.arange(1, n + 1) for n in sizes])
    for w, delta, k in ((4, 0.02, 3), (1, 0.05, 1), (3, 0.01, 5)):
        got = stats.plateau_steps(s, step, offsets, w=w, delta=delta, k=k)
        want = [_plateau_by_definition(x, w, delta, k) for x in series]
        assert np.isfinite(want).sum() > 5
        np.testing.assert_array_equal(got, want)


def test_plateau_rejects_bad_params():
    with pytest.raises(ConfigError):
        stats.plateau_step(np.ones(5), w=0, delta=0.1, k=1)


def test_row_stats_streaming_equal_in_memory():
    h, step, offsets = _ragged([9, 1, 14, 3, 22], L=2, H=6, seed=5)
    whole = stats.row_stats(h, step)
    parts, carry = [], None
    for a, b in [(0, 4), (4, 10), (10, 11), (11, 30), (30, len(h))]:
        rs = stats.row_stats(h[a:b], step[a:b], carry)
        parts.append(rs)
        carry = h[b - 1]
    for name in ("abs_sum", "s", "f", "delta"):
        np.testing.assert_allclose(np.concatenate([getattr(p, name) for p in parts]), getattr(whole, name))


def test_plateau_steps_over_whole_dogs_a_block_at_a_time_are_the_whole_answer(monkeypatch):
    """plateau_steps works on about _PLATEAU_ROWS rows of whole dogs at a time (bounded temporaries on 19M
    rows): the same T* as all rows at once, dogs without rows (first, last) included."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 60, 3000)
    sizes[:3] = sizes[-2:] = 0
    offsets = np.r_[0, np.cumsum(sizes)]
    step = np.concatenate([np.arange(1, n + 1) for n in sizes])
    s = (np.abs(np.cumsum(rng.normal(0, 1, offsets[-1]))) / 100 + 1).astype(np.float32)
    whole = stats.plateau_steps(s, step, offsets, w=5, delta=0.05, k=3)
    assert 0 < np.isfinite(whole).sum() < len(sizes)
    monkeypatch.setattr(stats, "_PLATEAU_ROWS", 97)
    np.testing.assert_array_equal(stats.plateau_steps(s, step, offsets, w=5, delta=0.05, k=3), whole)
    np.testing.assert_array_equal(stats.plateau_steps(s.astype(np.float64), step, offsets, w=5, delta=0.05, k=3),
                                  whole)
