"""Resilience to data issues: perturb dogs' histories, re-run the models, measure what moves.

For each sampled dog the target is its last race T. Its history (races 1..T-1, the normalised
`values` rows) is perturbed; the target's context row is kept. The model scores race T from the
state after the (perturbed) history, exactly as in extraction.

Approximation (documented in the report): a race's other runners keep their stored, unperturbed
scores; only the sampled dog's score changes. So the win probability, the loss and the top pick
of race T are those of "this dog's form data was corrupted, nobody else's".

Measures per (perturbation, severity, cohort, position):
  d_loss            mean change of the dog's win log-loss on race T
  flip_rate         share of races whose top pick changed
  state_divergence  mean ||h_pert - h_orig|| of the top layer's state before race T
`position` is where a single-race perturbation hit: 'early' (first half of the history), 'late'
(second half), or 'all' for perturbations spread over the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gruviz_core.model import LoadedModel
from gruviz_core.sequences import pad_batch

__all__ = [
    "Perturbation",
    "DEFAULT_PERTURBATIONS",
    "feature_groups",
    "perturb_history",
    "final_scores",
    "race_effects",
    "pair_divergence",
]


@dataclass(frozen=True)
class Perturbation:
    """One kind of data issue at one severity."""

    kind: str
    """drop_last, drop_random, shuffle_recent, noise_time, noise_price, missing, duplicate, truncate."""
    severity: float
    """Races dropped/shuffled/duplicated/kept, noise std (normalised units) or share of rows blanked."""


DEFAULT_PERTURBATIONS: tuple[Perturbation, ...] = (
    *(Perturbation("drop_last", n) for n in (1, 2, 4)),
    *(Perturbation("drop_random", n) for n in (1, 2, 4)),
    *(Perturbation("shuffle_recent", n) for n in (3, 5, 10)),
    *(Perturbation("noise_time", s) for s in (0.1, 0.5, 1.0)),
    *(Perturbation("noise_price", s) for s in (0.1, 0.5, 1.0)),
    *(Perturbation("missing", f) for f in (0.1, 0.3, 0.6)),
    *(Perturbation("duplicate", n) for n in (1, 2, 3)),
    *(Perturbation("truncate", n) for n in (20, 10, 5, 2)),
)
"""Every data issue of DESIGN.md section 6 at three or four severities."""

_TIME_WORDS = ("time", "sectional")
_PRICE_WORDS = ("price", "implied", "market", "bsp", "odds")


@dataclass(frozen=True)
class FeatureGroups:
    """Column positions the perturbations touch, found from the feature names."""

    time: np.ndarray
    """Columns of run/sectional time features."""
    price: np.ndarray
    """Columns of price features."""
    value_flag: tuple[tuple[int, int], ...]
    """(value column, its missing-flag column or -1) for every nullable input."""


def feature_groups(names: Sequence[str]) -> FeatureGroups:
    """Time, price and (value, missing flag) columns from feature names like 'time_z', 'time_missing'."""
    names = [str(n) for n in names]
    flags = {i for i, n in enumerate(names) if n.endswith("_missing")}
    is_val = [i for i in range(len(names)) if i not in flags]
    time = np.array([i for i in is_val if any(w in names[i] for w in _TIME_WORDS)], dtype=np.int64)
    price = np.array([i for i in is_val if any(w in names[i] for w in _PRICE_WORDS)], dtype=np.int64)
    pairs = []
    for i in is_val:
        stem = names[i].rsplit("_", 1)[0]
        flag = next((j for j in (i + 1,) if j in flags), None)  # features.py puts the flag right after
        if flag is None:
            flag = next((j for j in flags if names[j] == f"{stem}_missing"), -1)
        if flag != -1:
            pairs.append((i, flag))
    return FeatureGroups(time, price, tuple(pairs))


def perturb_history(
    hist: np.ndarray, p: Perturbation, groups: FeatureGroups, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """A perturbed copy of one dog's history rows (T-1, F) and where it hit ('early'|'late'|'all')."""
    n = len(hist)
    k = int(p.severity)
    if p.kind == "drop_last":
        return hist[: max(0, n - k)], "late"
    if p.kind == "drop_random":
        drop = rng.choice(n, size=min(k, n), replace=False) if n else np.array([], dtype=int)
        return np.delete(hist, drop, axis=0), _where(drop, n)
    if p.kind == "shuffle_recent":
        out = hist.copy()
        m = min(k, n)
        if m > 1:
            out[n - m:] = out[n - m:][rng.permutation(m)]
        return out, "late"
    if p.kind in ("noise_time", "noise_price"):
        cols = groups.time if p.kind == "noise_time" else groups.price
        out = hist.copy()
        if len(cols) and n:
            out[:, cols] += rng.normal(scale=p.severity, size=(n, len(cols))).astype(hist.dtype)
        return out, "all"
    if p.kind == "missing":
        out = hist.copy()
        rows = np.flatnonzero(rng.random(n) < p.severity)
        for v, f in groups.value_flag:
            out[rows, v] = 0.0
            out[rows, f] = 1.0
        return out, "all"
    if p.kind == "duplicate":
        at = np.sort(rng.choice(n, size=min(k, n), replace=False)) if n else np.array([], dtype=int)
        return np.insert(hist, at + 1, hist[at], axis=0), _where(at, n)
    if p.kind == "truncate":
        return hist[max(0, n - k):], "early"
    raise ValueError(f"unknown perturbation kind {p.kind!r}")


def _where(rows: np.ndarray, n: int) -> str:
    """'early'/'late' for one race hit in the first/second half of the history, else 'all'."""
    if len(rows) != 1:
        return "all"
    return "early" if rows[0] < n / 2 else "late"


def final_scores(
    model: LoadedModel, hists: Sequence[np.ndarray], target_x: np.ndarray, target_ctx: np.ndarray,
    *, batch: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Score of each target race after its history, and the top-layer state before it.

    hists: per dog (n_i, F) rows; target_x: (B, F), target_ctx: (B, C) -> scores (B,), state (B, H).
    """
    H = model.gru.hidden_size
    order = np.argsort([len(h) for h in hists], kind="stable")  # similar lengths per batch: less padding
    scores = np.zeros(len(hists), dtype=np.float32)
    states = np.zeros((len(hists), H), dtype=np.float32)
    for a in range(0, len(hists), batch):
        pick = order[a:a + batch]
        hs = [hists[i] for i in pick]
        lens = np.array([len(h) for h in hs], dtype=np.int64)
        rows = np.concatenate([np.concatenate([h, target_x[i: i + 1]]) for i, h in zip(pick, hs)])
        offsets = np.concatenate([[0], np.cumsum(lens + 1)])
        ctx_rows = np.zeros((len(rows), target_ctx.shape[1]), dtype=np.float32)
        ctx_rows[offsets[1:] - 1] = target_ctx[pick]
        dogs = np.arange(len(hs))
        x, _ = pad_batch(rows.astype(np.float32), offsets, dogs)
        c, _ = pad_batch(ctx_rows, offsets, dogs)
        with torch.inference_mode():
            out = model.run(torch.from_numpy(x), torch.from_numpy(c))
        b = np.arange(len(hs))
        scores[pick] = out.scores.float().numpy()[b, lens]
        g = out.gru_output.float().numpy()
        has = lens > 0
        states[pick[has]] = g[b[has], lens[has] - 1]
    return scores, states


def race_effects(
    s_orig: np.ndarray, s_pert: np.ndarray, others_lse: np.ndarray, others_max: np.ndarray, won: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Change of log-loss and top-pick flip when only this dog's score moves. All (B,) -> (B,), (B,).

    others_lse: log-sum-exp of the other runners' scores; others_max: their highest score.
    """
    def _ll(s):
        logp = s - np.logaddexp(s, others_lse)
        p = np.exp(logp)
        return -(won * logp + (1 - won) * np.log1p(-np.clip(p, 0, 1 - 1e-12)))

    flip = (s_orig > others_max) != (s_pert > others_max)
    return _ll(s_pert) - _ll(s_orig), flip


def pair_divergence(h_a: np.ndarray, h_b: np.ndarray) -> np.ndarray:
    """||h_a(t) - h_b(t)|| over all layers and units, both from the same initial state. (Ta, L, H), (Tb, L, H) -> (min T,)."""
    t = min(len(h_a), len(h_b))
    d = (h_a[:t] - h_b[:t]).reshape(t, -1)
    return np.sqrt((d.astype(np.float64) ** 2).sum(axis=1))
