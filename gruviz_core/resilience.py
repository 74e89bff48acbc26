"""Resilience to data issues: perturb the history before a target race, re-score the race, measure what moves.

Targets sit at several steps t of a dog's career (TARGET_STEPS, where the dog has them), so early and
late predictions are both perturbed. The history before t (rows 1..t-1, the normalised `values`) is
damaged; the target's own context row is kept; the model scores race t from the state after the
damaged history, exactly as in extraction.

Two scopes:
  dog   this dog's data corrupted, nobody else's: the race's other runners keep their stored scores,
        so the re-scored race softmax is exact for that fault (not an approximation).
  feed  a feed-level fault: every runner of the target race gets the same kind of damage to its own
        history, and the whole race is re-scored.

Measures per case (averaged over the seed models), then per group with a bootstrap over dogs:
  d_nll             change of the race's NLL, -log softmax(winner), perturbed minus original
  flip_rate         share of races whose top pick changed
  state_divergence  ||h_pert - h_orig|| of the top layer's state before race t
Cases whose input the perturbation did not change (nothing to drop, no observed value to blank) are
no-ops: counted (`changed_share`) and left out of the means. Severity grows with the damage for
every kind (`SEVERITY_UNITS`); draws are shared across severities of a kind, so on a fixed dog a
bigger severity damages a superset of what a smaller one does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from gruviz_core.comparisons import label_ranges
from gruviz_core.errors import ConfigError
from gruviz_core.model import LoadedModel

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Perturbation",
    "DEFAULT_PERTURBATIONS",
    "TARGET_STEPS",
    "STEP_BUCKETS",
    "SEVERITY_UNITS",
    "FeatureGroups",
    "Draws",
    "Cases",
    "feature_groups",
    "draws_for",
    "perturb_history",
    "kinds_seen",
    "final_scores",
    "race_nll_change",
    "bucket_of",
    "target_cases",
    "case_effects",
    "feed_effects",
    "summarise",
    "contrasts",
    "pair_divergence",
    "others_in_race",
    "subsample_cases",
    "MEASURES",
    "RESILIENCE_COLUMNS",
    "CONTRAST_COLUMNS",
]


@dataclass(frozen=True)
class Perturbation:
    """One kind of data issue at one severity (bigger severity = more damage, for every kind)."""

    kind: str
    """drop_last, drop_random, shuffle_recent, noise_time, noise_price, missing, duplicate, truncate."""
    severity: float
    """Amount of damage in the kind's unit (SEVERITY_UNITS)."""

    @property
    def unit(self) -> str:
        return SEVERITY_UNITS[self.kind]


SEVERITY_UNITS: dict[str, str] = {
    "drop_last": "latest races removed",
    "drop_random": "races removed at random",
    "shuffle_recent": "latest races put out of order",
    "noise_time": "noise std on observed times (normalised units)",
    "noise_price": "noise std on observed prices (normalised units)",
    "missing": "share of races blanked (observed values only)",
    "duplicate": "races duplicated",
    "truncate": "oldest races removed",
}
"""Kind -> what its severity counts."""

DEFAULT_PERTURBATIONS: tuple[Perturbation, ...] = (
    *(Perturbation("drop_last", n) for n in (1, 2, 4)),
    *(Perturbation("drop_random", n) for n in (1, 2, 4)),
    *(Perturbation("shuffle_recent", n) for n in (2, 4, 8)),
    *(Perturbation("noise_time", s) for s in (0.1, 0.5, 1.0)),
    *(Perturbation("noise_price", s) for s in (0.1, 0.5, 1.0)),
    *(Perturbation("missing", f) for f in (0.1, 0.3, 0.6)),
    *(Perturbation("duplicate", n) for n in (1, 2, 4)),
    *(Perturbation("truncate", n) for n in (2, 4, 8)),
)
"""Every data issue the resilience panel covers, at three severities, mildest first."""

TARGET_STEPS: tuple[int, ...] = (3, 5, 8, 12, 20, 30, 50)
"""Steps t whose race is re-scored after its history (races 1..t-1) is damaged."""

STEP_BUCKETS: tuple[tuple[int, int, str], ...] = ((1, 5, "t<=5"), (6, 15, "t 6-15"), (16, 10**9, "t>=16"))
"""Target-step buckets; the first is 'early', the last 'late' in the contrasts."""

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
    """(value column, its missing-flag column) for every nullable input."""

    def flag_of(self, col: int) -> int:
        """The missing-flag column of a value column, -1 if it has none."""
        return next((f for v, f in self.value_flag if v == col), -1)


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
        flag = i + 1 if i + 1 in flags else -1  # features.py puts the flag right after its value
        if flag == -1:
            flag = next((j for j in flags if names[j] == f"{stem}_missing"), -1)
        if flag != -1:
            pairs.append((i, flag))
    return FeatureGroups(time, price, tuple(pairs))


@dataclass(frozen=True)
class Draws:
    """Random draws of one history, shared by every severity of a kind (so damage is nested)."""

    u: np.ndarray
    """(n,) uniforms: rows with u < share are blanked by 'missing'."""
    order: np.ndarray
    """(n,) a permutation: 'drop_random'/'duplicate' with severity k hit its first k rows."""
    z: np.ndarray
    """(n, F) standard normals: 'noise_*' adds severity * z on observed cells."""


def draws_for(n: int, n_features: int, rng: np.random.Generator) -> Draws:
    """Draws for a history of n rows."""
    return Draws(rng.random(n), rng.permutation(n), rng.standard_normal((n, n_features)).astype(np.float32))


def perturb_history(hist: np.ndarray, p: Perturbation, groups: FeatureGroups, d: Draws) -> tuple[np.ndarray, float]:
    """A damaged copy of one history (n, F) and the damage done (rows or cells touched, or total noise).

    Damage 0 means the input did not change (a no-op). Values are normalised: a missing value is 0
    with its flag 1, so noise and blanking touch only cells whose flag is 0 (what the model saw).
    """
    n, k = len(hist), int(p.severity)
    if p.kind == "drop_last":
        m = min(k, n)
        return hist[: n - m], float(m)
    if p.kind == "truncate":
        m = min(k, n)
        return hist[m:], float(m)
    if p.kind == "drop_random":
        hit = d.order[: min(k, n)]
        return np.delete(hist, hit, axis=0), float(len(hit))
    if p.kind == "duplicate":
        hit = np.sort(d.order[: min(k, n)])
        return np.insert(hist, hit + 1, hist[hit], axis=0), float(len(hit))
    if p.kind == "shuffle_recent":  # the latest m races rotated: the newest moved back m-1 places
        m = min(k, n)
        out = hist.copy()
        if m > 1:
            out[n - m:] = np.roll(hist[n - m:], 1, axis=0)
        return out, float(np.any(out != hist, axis=1).sum())
    if p.kind in ("noise_time", "noise_price"):
        cols = groups.time if p.kind == "noise_time" else groups.price
        out = hist.copy()
        seen = _observed(hist, cols, groups)  # (n, len(cols))
        if not seen.any():
            return out, 0.0
        out[:, cols] += np.where(seen, p.severity * d.z[:, cols], 0.0).astype(hist.dtype)
        return out, float(np.abs(p.severity * d.z[:, cols][seen]).sum())
    if p.kind == "missing":
        out = hist.copy()
        rows = d.u < p.severity
        cells = 0
        for v, f in groups.value_flag:
            hit = rows & (hist[:, f] == 0)
            out[hit, v] = 0.0
            out[hit, f] = 1.0
            cells += int(hit.sum())
        return out, float(cells)
    raise ConfigError(f"unknown perturbation kind {p.kind!r}; expected one of {', '.join(SEVERITY_UNITS)}")


def _observed(hist: np.ndarray, cols: np.ndarray, groups: FeatureGroups) -> np.ndarray:
    """(n, len(cols)) bool: the value was observed (its missing flag is 0, or it has no flag)."""
    out = np.ones((len(hist), len(cols)), dtype=bool)
    for j, c in enumerate(cols):
        f = groups.flag_of(int(c))
        if f >= 0:
            out[:, j] = hist[:, f] == 0
    return out


def kinds_seen(values: np.ndarray | Callable[[int], np.ndarray], groups: FeatureGroups) -> dict[str, bool]:
    """Whether the model ever saw the inputs each kind damages, from the normalised training rows (obs, F),
    or a function giving column c of them (computed on demand).

    A kind whose columns are missing on every training row (e.g. times on the Iggy files) damaged
    weights that never saw data: it is reported 'n/a', not as a number.
    """
    column = values if callable(values) else (lambda c: values[:, c])

    def _seen(c: int) -> bool:  # observed on some row: its missing flag is 0 there, or it has no flag
        f = groups.flag_of(c)
        x = column(f if f >= 0 else c)
        return bool(len(x) and (f < 0 or (x == 0).any()))

    def _any_seen(cols: np.ndarray) -> bool:
        return any(_seen(int(c)) for c in cols)

    out = {k: True for k in SEVERITY_UNITS}
    out["noise_time"] = _any_seen(groups.time)
    out["noise_price"] = _any_seen(groups.price)
    out["missing"] = _any_seen(np.array([v for v, _ in groups.value_flag], dtype=np.int64))
    return out


def final_scores(
    model: LoadedModel, hists: Sequence[np.ndarray], target_x: np.ndarray, target_ctx: np.ndarray,
    *, batch: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Score of each target race after its history, and the top-layer state before it.

    hists: per case (n_i, F) rows; target_x: (B, F), target_ctx: (B, C) -> scores (B,), state (B, H).
    """
    H, F, C = model.gru.hidden_size, target_x.shape[1], target_ctx.shape[1]
    lens = np.array([len(h) for h in hists], dtype=np.int64)
    order = np.argsort(lens, kind="stable")  # similar lengths per batch: less padding
    scores = np.zeros(len(hists), dtype=np.float32)
    states = np.zeros((len(hists), H), dtype=np.float32)
    for a in range(0, len(hists), batch):
        pick = order[a:a + batch]
        ln = lens[pick]
        T = int(ln.max()) + 1
        x = np.zeros((len(pick), T, F), dtype=np.float32)
        c = np.zeros((len(pick), T, C), dtype=np.float32)
        for b, i in enumerate(pick):
            x[b, : ln[b]] = hists[i]
        b = np.arange(len(pick))
        x[b, ln] = target_x[pick]
        c[b, ln] = target_ctx[pick]
        with torch.inference_mode():
            out = model.run(torch.from_numpy(x), torch.from_numpy(c))
        scores[pick] = out.scores.float().numpy()[b, ln]
        g = out.gru_output.float().numpy()
        has = ln > 0
        states[pick[has]] = g[b[has], ln[has] - 1]
    return scores, states


def race_nll_change(s0: np.ndarray, s1: np.ndarray, others_lse: np.ndarray, won: np.ndarray) -> np.ndarray:
    """Change of the race NLL (-log softmax of the winner) when only this runner's score moves s0 -> s1.

    others_lse: log-sum-exp of the other runners' scores; won: 1 if this runner won. All (B,) -> (B,).
    """
    return np.logaddexp(s1, others_lse) - np.logaddexp(s0, others_lse) - won * (s1 - s0)


def bucket_of(step: np.ndarray) -> np.ndarray:
    """(n,) target steps -> (n,) STEP_BUCKETS label."""
    return label_ranges(step, STEP_BUCKETS)


@dataclass(frozen=True)
class Cases:
    """Target races of the sampled dogs: one per (dog, target step) with a scored race."""

    dog: np.ndarray
    """(n,) dog index."""
    step: np.ndarray
    """(n,) target step t (1-based)."""
    row: np.ndarray
    """(n,) row of the target race."""
    plateau_reached: np.ndarray
    """(n,) bool: the dog's plateau was confirmed by step t-1 (plateau_step + k - 1 <= t - 1)."""


def target_cases(
    offsets: np.ndarray, ok: np.ndarray, plateau_step: np.ndarray, k: int, *, sample_dogs: int, seed: int,
    steps: Sequence[int] = TARGET_STEPS,
) -> Cases:
    """Sample dogs with at least one target race among `ok` rows (obs,), and every such target of theirs.

    offsets: (dog + 1,); plateau_step: (dog,) 1-based first plateau step or NaN; k: the rule's
    confirmation window, so the plateau is known at t only from steps before t.
    """
    n_steps = np.diff(offsets)
    steps = np.array(sorted(set(int(s) for s in steps if s >= 2)), dtype=np.int64)
    has = (n_steps[:, None] >= steps[None, :])
    rows = offsets[:-1, None] + steps[None, :] - 1
    has &= ok[np.minimum(rows, len(ok) - 1)] if len(ok) else False
    cand = np.flatnonzero(has.any(axis=1))
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(cand, size=min(sample_dogs, len(cand)), replace=False))
    d, j = np.nonzero(has[pick])
    dog, step = pick[d], steps[j]
    reached = np.asarray(plateau_step, dtype=np.float64)[dog] + k - 1 <= step - 1  # NaN -> False
    return Cases(dog, step, offsets[dog] + step - 1, reached)


def subsample_cases(cases: Cases, per_step: int, seed: int) -> Cases:
    """At most `per_step` cases of each target step, drawn at random (the feed scope re-scores whole races)."""
    rng = np.random.default_rng([seed, 2])
    keep = np.concatenate([rng.permutation(np.flatnonzero(cases.step == t))[:per_step] for t in np.unique(cases.step)]
                          ) if len(cases.step) else np.zeros(0, np.int64)
    keep = np.sort(keep)
    return Cases(cases.dog[keep], cases.step[keep], cases.row[keep], cases.plateau_reached[keep])


def case_effects(
    models: Sequence[LoadedModel], values: np.ndarray, context: np.ndarray, offsets: np.ndarray, cases: Cases,
    others: Sequence[tuple[np.ndarray, np.ndarray]], won: np.ndarray, perturbations: Sequence[Perturbation],
    groups: FeatureGroups, seen: dict[str, bool], *, seed: int,
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Scope 'dog': {perturbation index: (changed (n,), d_nll, flip, divergence (n,))}, seed-averaged.

    others: per model, (log-sum-exp, max) of the other runners' stored scores in each case's race (n,);
    won: (n,) whether the case's dog won. Perturbations of kinds not seen are absent.
    """
    items = _Items(np.asarray(offsets)[cases.dog].astype(np.int64), np.asarray(cases.row, np.int64))
    base, pert = _rescore(models, values, context, items, perturbations, groups, seen, seed=seed, salt=0)
    out = {}
    for j, (dmg, per_model) in pert.items():
        ch = np.flatnonzero(dmg > 0)
        acc = np.zeros((3, len(dmg)))
        for (lse, mx), (s0, h0), (s1, h1) in zip(others, base, per_model):
            acc[0, ch] += race_nll_change(s0[ch].astype(np.float64), s1.astype(np.float64), lse[ch], won[ch])
            acc[1, ch] += ((s0[ch] > mx[ch]) != (s1 > mx[ch])).astype(np.float64)
            acc[2, ch] += np.linalg.norm(h1 - h0[ch], axis=1)
        out[j] = (dmg > 0, *(acc / len(models)))
    return out


def feed_effects(
    models: Sequence[LoadedModel], values: np.ndarray, context: np.ndarray, offsets: np.ndarray,
    row_dog: np.ndarray, row_race: np.ndarray, ok: np.ndarray, won: np.ndarray, cases: Cases,
    perturbations: Sequence[Perturbation], groups: FeatureGroups, seen: dict[str, bool], *, seed: int,
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Scope 'feed': every valid runner of each case's race damaged, the race re-scored from scratch.

    row_dog, row_race, ok, won: (obs,) per row. Same output as `case_effects`; the divergence is the
    case dog's own state.
    """
    by_race = _rows_by_race(row_race, ok)
    runners = [by_race[row_race[r]] for r in cases.row]  # each case's race rows, its own row included
    flat_rows = np.concatenate(runners).astype(np.int64) if runners else np.zeros(0, np.int64)
    case_of = np.repeat(np.arange(len(runners)), [len(x) for x in runners])
    items = _Items(np.asarray(offsets)[row_dog[flat_rows]].astype(np.int64), flat_rows)
    base, pert = _rescore(models, values, context, items, perturbations, groups, seen, seed=seed, salt=1)
    own = flat_rows == cases.row[case_of]
    w = won[flat_rows]
    n = len(runners)
    out = {}
    for j, (dmg, per_model) in pert.items():
        changed = np.bincount(case_of, weights=dmg, minlength=n) > 0
        ch = np.flatnonzero(dmg > 0)
        acc = np.zeros((3, n))
        for (s0, h0), (s1c, h1c) in zip(base, per_model):
            s1, h1 = s0.copy(), h0.copy()
            s1[ch], h1[ch] = s1c, h1c
            nll0, top0 = _race_nll_top(s0, case_of, w, n)
            nll1, top1 = _race_nll_top(s1, case_of, w, n)
            acc[0] += (nll1 - nll0) / len(models)
            acc[1] += (top0 != top1) / len(models)
            acc[2][case_of[own]] += np.linalg.norm(h1[own] - h0[own], axis=1) / len(models)
        out[j] = (changed, *np.where(changed, acc, 0.0))
    return out


def _rows_by_race(race: np.ndarray, ok: np.ndarray) -> dict[int, np.ndarray]:
    rows = np.flatnonzero(ok)
    order = rows[np.argsort(race[rows], kind="stable")]
    cut = np.flatnonzero(np.diff(race[order])) + 1
    return {int(race[g[0]]): g for g in np.split(order, cut) if len(g)}


def _race_nll_top(s: np.ndarray, grp: np.ndarray, won: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group of rows: NLL of the winner under the softmax, and the position of the top score."""
    s = s.astype(np.float64)
    top = np.full(n, -np.inf)
    np.maximum.at(top, grp, s)
    lse = np.log(np.bincount(grp, weights=np.exp(s - top[grp]), minlength=n)) + top
    nll = -np.bincount(grp, weights=won * (s - lse[grp]), minlength=n)
    first = np.full(n, len(s))
    np.minimum.at(first, grp, np.where(s == top[grp], np.arange(len(s)), len(s)))
    return nll, first


# ------------------------------------------------------------------ batched re-scoring
#
# Every damaged history shares its first rows with the original: the GRU state up to the first
# changed row is the original one. So each dog's original trajectory is computed once (all layers,
# every step), and each (case, perturbation) re-runs only its suffix from the first changed row,
# starting from the original state there: one packed GRU pass per perturbation over every affected
# case, no per-dog Python loop. drop_last costs no GRU step at all, shuffle_recent only its last
# rows. The target race is then scored from the final state through the model's own module
# (its GRU output replaced by the known states), so any head is scored as in extraction; a model
# whose GRU does not read the features directly (or whose module cannot be hooked) is detected on
# a sample and re-scored with `final_scores` instead.


@dataclass(frozen=True)
class _Items:
    """Histories to re-score: item i is the history values[start_i : row_i] before target row row_i."""

    start: np.ndarray
    """(n,) first history row (the dog's first row)."""
    row: np.ndarray
    """(n,) the target row."""

    @property
    def n(self) -> np.ndarray:
        return self.row - self.start


@dataclass(frozen=True)
class _Damaged:
    """Every item's history under one perturbation, as what must be re-run after the shared prefix."""

    damage: np.ndarray
    """(n,) damage done (0: a no-op)."""
    first: np.ndarray
    """(n,) first position of the damaged history that may differ (its rows before equal the original's)."""
    length: np.ndarray
    """(n,) length of the damaged history."""
    seq_item: np.ndarray
    """(m,) item of each suffix row (positions >= first of changed items), item-major, in order."""
    rows: np.ndarray
    """(m, F) float32 the suffix rows' values."""


class _FlatDraws:
    """Draws of every item's history at once (flat over items' rows), shared by every severity of a kind."""

    def __init__(self, items: _Items, values: np.ndarray, groups: FeatureGroups, seed: int, salt: int):
        n = items.n
        self.item = np.repeat(np.arange(len(n)), n)
        self.cum = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
        self.j = np.arange(len(self.item)) - self.cum[self.item]  # local position
        self.src = items.start[self.item] + self.j  # global row
        rng = np.random.default_rng([seed, salt])
        self.u = rng.random(len(self.item))
        key = rng.random(len(self.item))
        order = np.lexsort((key, self.item))
        self.rank = np.empty(len(order), np.int64)
        self.rank[order] = np.arange(len(order)) - self.cum[self.item[order]]  # a random order within each item
        self.noise_cols = np.union1d(groups.time, groups.price).astype(np.int64)
        self.z = rng.standard_normal((len(self.item), len(self.noise_cols)), dtype=np.float32)


def _damage_flat(values: np.ndarray, items: _Items, p: Perturbation, groups: FeatureGroups, d: _FlatDraws) -> _Damaged:
    """`perturb_history` of every item at once (same kinds, severities and damage units)."""
    n = items.n
    n_items = len(n)
    k = int(p.severity)
    m = np.minimum(k, n)  # per item
    j, it = d.j, d.item
    big = np.iinfo(np.int64).max

    def _first(mask: np.ndarray, shift: int = 0) -> np.ndarray:
        out = np.full(n_items, big)
        np.minimum.at(out, it[mask], j[mask] + shift)
        return np.minimum(out, n + (shift if shift else 0))

    src, vals = d.src, None  # damaged history as global rows (index kinds) or values (value kinds)
    if p.kind == "drop_last":
        keep = j < (n - m)[it]
        src, item_of, damage, first = src[keep], it[keep], m.astype(np.float64), n - m
    elif p.kind == "truncate":
        keep = j >= m[it]
        src, item_of, damage, first = src[keep], it[keep], m.astype(np.float64), np.where(m > 0, 0, n)
    elif p.kind == "drop_random":
        hit = d.rank < m[it]
        src, item_of, damage, first = src[~hit], it[~hit], m.astype(np.float64), _first(hit)
    elif p.kind == "duplicate":
        hit = d.rank < m[it]
        reps = 1 + hit.astype(np.int64)
        src, item_of, damage, first = np.repeat(src, reps), np.repeat(it, reps), m.astype(np.float64), _first(hit, 1)
    elif p.kind == "shuffle_recent":  # the latest m races rotated: the newest moved back m-1 places
        mm = m[it]
        nn = n[it]
        tail = (mm > 1) & (j >= nn - mm)
        loc = np.where(tail & (j == nn - mm), nn - 1, np.where(tail, j - 1, j))
        src_new = items.start[it] + loc
        diff = np.any(values[src_new] != values[d.src], axis=1)
        src, item_of = src_new, it
        damage = np.bincount(it, weights=diff, minlength=n_items).astype(np.float64)
        first = np.where(m > 1, n - m, n)
    elif p.kind in ("noise_time", "noise_price"):
        cols = groups.time if p.kind == "noise_time" else groups.price
        vals = values[d.src]
        seen = _observed(vals, cols, groups)
        zc = d.z[:, np.searchsorted(d.noise_cols, cols)]
        add = np.where(seen, np.float32(p.severity) * zc, np.float32(0.0))
        vals[:, cols] += add.astype(values.dtype)
        item_of = it
        damage = np.bincount(it, weights=np.abs(np.where(seen, p.severity * zc, 0.0)).sum(axis=1), minlength=n_items)
        first = _first(seen.any(axis=1))
    elif p.kind == "missing":
        vals = values[d.src]
        rows = d.u < p.severity
        cells = np.zeros(len(vals))
        anyhit = np.zeros(len(vals), bool)
        for v, f in groups.value_flag:
            hit = rows & (vals[:, f] == 0)
            vals[hit, v] = 0.0
            vals[hit, f] = 1.0
            cells += hit
            anyhit |= hit
        item_of = it
        damage = np.bincount(it, weights=cells, minlength=n_items).astype(np.float64)
        first = _first(anyhit)
    else:
        raise ConfigError(f"unknown perturbation kind {p.kind!r}; expected one of {', '.join(SEVERITY_UNITS)}")
    length = np.bincount(item_of, minlength=n_items)
    start_pos = np.concatenate([[0], np.cumsum(length)])[:-1]
    pos = np.arange(len(item_of)) - start_pos[item_of]
    first = np.minimum(first, length)
    take = (pos >= first[item_of]) & (damage[item_of] > 0)
    rows = vals[take] if vals is not None else values[src[take]]
    return _Damaged(damage, first, length, item_of[take], rows)


def _pack(seq_item: np.ndarray, rows: np.ndarray, n_seq: int):
    """Item-major rows of n_seq sequences (each non-empty) -> (PackedSequence, order longest first)."""
    lens = np.bincount(seq_item, minlength=n_seq)
    order = np.argsort(-lens, kind="stable")
    rank = np.empty(n_seq, np.int64)
    rank[order] = np.arange(n_seq)
    t_max = int(lens.max()) if n_seq else 0
    batch = (lens[order][None, :] > np.arange(t_max)[:, None]).sum(axis=1)  # (T,) sequences alive at t
    off = np.concatenate([[0], np.cumsum(batch)])
    start = np.concatenate([[0], np.cumsum(lens)])[:-1]
    t = np.arange(len(seq_item)) - start[seq_item]
    dest = off[t] + rank[seq_item]
    data = np.empty_like(rows)
    data[dest] = rows
    packed = torch.nn.utils.rnn.PackedSequence(torch.from_numpy(data), torch.from_numpy(batch.astype(np.int64)))
    return packed, order, off, rank


class _Fast:
    """One model's batched re-scoring: states from the GRU alone, the score through the model's module."""

    def __init__(self, model: LoadedModel, next_step: bool = True):
        self.model, self.gru, self.next_step = model, model.gru, next_step
        self.L, self.H = model.gru.num_layers, model.gru.hidden_size
        self._layers: list[torch.nn.GRU] | None = None

    def layers(self) -> list[torch.nn.GRU]:
        """Single-layer GRUs with the model's weights (every layer's state at every step)."""
        if self._layers is None:
            g, out = self.gru, []
            for k in range(self.L):
                one = torch.nn.GRU(g.input_size if k == 0 else self.H, self.H, 1, bias=g.bias, batch_first=False)
                with torch.no_grad():
                    for name in ("weight_ih", "weight_hh", *(("bias_ih", "bias_hh") if g.bias else ())):
                        getattr(one, f"{name}_l0").copy_(getattr(g, f"{name}_l{k}"))
                out.append(one.eval())
            self._layers = out
        return self._layers

    def trajectories(self, starts: np.ndarray, lens: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every layer's state after every row of histories values[s : s + n]: (L, rows, H) item-major, and the
        index of each history's first row in it (histories of length 0 have none)."""
        item = np.repeat(np.arange(len(lens)), lens)
        cum = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        j = np.arange(len(item)) - cum[item]
        keep = lens > 0
        out = np.zeros((self.L, len(item), self.H), np.float32)
        if not keep.any():
            return out, cum[:-1]
        sub = np.cumsum(keep) - 1
        packed, order, off, rank = _pack(sub[item], values[starts[item] + j], int(keep.sum()))
        dest = off[j] + rank[sub[item]]
        x = packed
        with torch.inference_mode():
            for k, layer in enumerate(self.layers()):
                y, _ = layer(x)
                out[k] = y.data.numpy()[dest]
                x = y
        return out, cum[:-1]

    def rerun(self, seq_item: np.ndarray, rows: np.ndarray, h0: np.ndarray, *, batch: int = 4096) -> np.ndarray:
        """Final states (L, n, H) of n sequences (item-major rows, each non-empty) run from h0 (L, n, H)."""
        n = h0.shape[1]
        out = np.zeros_like(h0)
        start = np.concatenate([[0], np.cumsum(np.bincount(seq_item, minlength=n))])
        for a in range(0, n, batch):
            b = min(a + batch, n)
            sl = slice(start[a], start[b])
            packed, order, _, _ = _pack(seq_item[sl] - a, rows[sl], b - a)
            with torch.inference_mode():
                _, hn = self.gru(packed, torch.from_numpy(np.ascontiguousarray(h0[:, a:b][:, order])))
            out[:, a + order] = hn.numpy()
        return out

    def score(self, state: np.ndarray, tx: np.ndarray, tc: np.ndarray, *, batch: int = 8192) -> np.ndarray:
        """Scores (n,) of target races (tx (n, F), tc (n, C)) from every layer's state before them (L, n, H)."""
        out = np.zeros(len(tx), np.float32)
        for a in range(0, len(tx), batch):
            b = min(a + batch, len(tx))
            out[a:b] = self._score(state[:, a:b], tx[a:b], tc[a:b])
        return out

    def _score(self, state: np.ndarray, tx: np.ndarray, tc: np.ndarray) -> np.ndarray:
        g = self.gru
        h0 = torch.from_numpy(np.ascontiguousarray(state))
        x1 = torch.from_numpy(np.ascontiguousarray(tx))[:, None] if g.batch_first else \
            torch.from_numpy(np.ascontiguousarray(tx))[None]
        n = len(tx)
        with torch.inference_mode():
            # the state after the target too, for a module that scores race t from it (the built-in one does not)
            h1 = g(x1, h0)[1] if self.next_step else h0
            seq = torch.stack([h0[-1], h1[-1]], dim=1 if g.batch_first else 0)  # the GRU's output at the 2 steps
            x2 = torch.zeros((n, 2, tx.shape[1]), dtype=torch.float32)
            x2[:, 1] = torch.from_numpy(tx)
            c2 = torch.zeros((n, 2, tc.shape[1]), dtype=torch.float32)
            c2[:, 1] = torch.from_numpy(tc)
            parent_path, _, name = self.model.gru_path.rpartition(".")
            parent = self.model.module.get_submodule(parent_path) if parent_path else self.model.module
            given = _Given(seq, h1, g)  # the module reads these states instead of running its GRU again
            setattr(parent, name, given)
            try:
                s = self.model.module(x2, c2)
            finally:
                setattr(parent, name, g)
        return s[:, 1].float().numpy()


class _Given(torch.nn.Module):
    """Stands in for a model's GRU while scoring: returns known (output, h_n) whatever it is given."""

    def __init__(self, out: torch.Tensor, hn: torch.Tensor, gru: torch.nn.GRU):
        super().__init__()
        self.out, self.hn = out, hn
        self.batch_first, self.hidden_size, self.num_layers = gru.batch_first, gru.hidden_size, gru.num_layers

    def forward(self, *_args, **_kw) -> tuple[torch.Tensor, torch.Tensor]:
        return self.out, self.hn


def _fast_mode(model: LoadedModel, values: np.ndarray, context: np.ndarray, items: _Items, n: int = 32) -> _Fast | None:
    """The batched path that gives the model's own scores and states on a sample of items (without the state
    after the target when the module does not read it), or None: re-score with `final_scores`."""
    pick = np.flatnonzero(items.n > 0)[:n]
    if not len(pick):
        return _Fast(model)
    hists = [values[a:b] for a, b in zip(items.start[pick], items.row[pick])]
    try:
        s_ref, h_ref = final_scores(model, hists, values[items.row[pick]], context[items.row[pick]])
        for next_step in (False, True):
            f = _Fast(model, next_step)
            traj, first = f.trajectories(items.start[pick], items.n[pick], values)
            state = traj[:, first + items.n[pick] - 1]
            s = f.score(state, values[items.row[pick]], context[items.row[pick]])
            if np.allclose(s, s_ref, atol=1e-4) and np.allclose(state[-1], h_ref, atol=1e-4):
                return f
    except Exception:  # a module that cannot be run this way: the plain path
        return None
    return None


def _rescore(
    models: Sequence[LoadedModel], values: np.ndarray, context: np.ndarray, items: _Items,
    perturbations: Sequence[Perturbation], groups: FeatureGroups, seen: dict[str, bool], *, seed: int, salt: int,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[int, tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]]]:
    """Original and damaged scores of every item under every model.

    -> (per model (s0 (n,), top-layer state before the target (n, H))), {perturbation index: (damage (n,),
    per model (s1, state) of the changed items only, in item order)}; kinds not seen are absent.
    """
    draws = _FlatDraws(items, values, groups, seed, salt)
    damaged = {j: _damage_flat(values, items, p, groups, draws) for j, p in enumerate(perturbations)
               if seen.get(p.kind, True)}
    tx, tc = values[items.row], context[items.row]
    u_start, inv = np.unique(items.start, return_inverse=True)
    u_len = np.zeros(len(u_start), np.int64)
    np.maximum.at(u_len, inv, items.n)
    base, pert = [], {j: (dm.damage, []) for j, dm in damaged.items()}
    for model in models:
        f = _fast_mode(model, values, context, items)
        if f is None:
            hists = [values[a:b] for a, b in zip(items.start, items.row)]
            base.append(final_scores(model, hists, tx, tc))
            for j, dm in damaged.items():
                ch = np.flatnonzero(dm.damage > 0)
                pert[j][1].append(final_scores(model, _histories(values, items, dm, ch, hists), tx[ch], tc[ch])
                                  if len(ch) else (np.zeros(0, np.float32), np.zeros((0, model.gru.hidden_size))))
            continue
        traj, first_u = f.trajectories(u_start, u_len, values)  # once per dog, to its latest target
        first_row = first_u[inv]
        all_items = np.arange(len(items.row))
        st0 = _state_after(traj, first_row, items.n - 1, all_items)
        base.append((f.score(st0, tx, tc), st0[-1]))
        for j, dm in damaged.items():
            ch = np.flatnonzero(dm.damage > 0)
            state = _state_after(traj, first_row, np.minimum(dm.first[ch], dm.length[ch]) - 1, ch)
            suffix = dm.length[ch] > dm.first[ch]
            if suffix.any():
                sub = np.flatnonzero(suffix)
                pos_in_ch = np.full(len(items.row), -1)
                pos_in_ch[ch[sub]] = np.arange(len(sub))
                state[:, sub] = f.rerun(pos_in_ch[dm.seq_item], dm.rows, state[:, sub])
            pert[j][1].append((f.score(state, tx[ch], tc[ch]), state[-1]))
    return base, pert


def _state_after(traj: np.ndarray, first_row: np.ndarray, pos: np.ndarray, it: np.ndarray) -> np.ndarray:
    """(L, len(it), H) original state after local position pos of each item `it` (zeros before its first row)."""
    out = np.zeros((traj.shape[0], len(it), traj.shape[2]), np.float32)
    has = pos >= 0
    out[:, has] = traj[:, first_row[it[has]] + pos[has]]
    return out


def _histories(values: np.ndarray, items: _Items, dm: _Damaged, ch: np.ndarray, hists: list[np.ndarray]) -> list:
    """The damaged histories of items `ch` as arrays (the plain path): original prefix + re-run suffix."""
    start = np.concatenate([[0], np.cumsum(np.bincount(dm.seq_item, minlength=len(items.row)))])
    return [np.concatenate([hists[i][: dm.first[i]], dm.rows[start[i]:start[i + 1]]]) for i in ch]


# ------------------------------------------------------------------ tables

MEASURES = ("d_nll", "flip_rate", "state_divergence")

RESILIENCE_COLUMNS: tuple[str, ...] = (
    "scope", "perturbation", "severity", "severity_unit", "level", "bucket", "plateau", "status",
    "n_cases", "n_changed", "changed_share", "n_dogs",
    *(f"{m}{s}" for m in MEASURES for s in ("", "_lo", "_hi")),
)
CONTRAST_COLUMNS: tuple[str, ...] = (
    "scope", "perturbation", "severity", "level", "contrast", "measure", "a", "b", "value_a", "value_b",
    "diff", "lo", "hi", "n_a", "n_b",
)


def _groups(cases: Cases) -> list[tuple[str, str, np.ndarray]]:
    """(bucket, plateau, case mask): all; each bucket; before/after the plateau."""
    b = bucket_of(cases.step)
    out = [("all", "all", np.ones(len(b), bool))]
    out += [(name, "all", b == name) for _, _, name in STEP_BUCKETS]
    out += [("all", "not yet", ~cases.plateau_reached), ("all", "reached", cases.plateau_reached)]
    return out


def _per_dog(x: np.ndarray, dog: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(dog, weights=x, minlength=n)


def summarise(
    effects: dict[str, dict[int, tuple]], cases: dict[str, Cases], perturbations: Sequence[Perturbation],
    weights: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The resilience table (RESILIENCE_COLUMNS) and the early-vs-late / plateau contrasts (CONTRAST_COLUMNS).

    effects: scope -> `case_effects`/`feed_effects` output; cases: scope -> its Cases; weights: (B, dog).
    Each mean's bootstrap replicates are ratios of weighted per-dog sums: every group and measure of a
    scope is one (B, dog) @ (dog, columns) product over the scope's dogs.
    """
    import pandas as pd

    levels = _levels(perturbations)
    rows, con = [], []
    for scope, eff in effects.items():
        cs = cases[scope]
        groups = _groups(cs)
        dogs_u, dinv = np.unique(cs.dog, return_inverse=True)
        nd = len(dogs_u)
        sums, counts, keys = [], [], []
        for j in sorted(eff):
            for g, (_, _, m) in enumerate(groups):
                changed = eff[j][0] & m
                counts.append(_per_dog(changed.astype(np.float64), dinv, nd))
                for q in range(len(MEASURES)):
                    sums.append(_per_dog(np.where(changed, eff[j][q + 1], 0.0), dinv, nd))
                    keys.append((j, g, q))
        col = {k: i for i, k in enumerate(keys)}
        if keys:
            w = np.asarray(weights[:, dogs_u], dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                reps_all = (w @ np.stack(sums, axis=1)) / np.repeat(w @ np.stack(counts, axis=1), len(MEASURES), axis=1)
            reps_all[~np.isfinite(reps_all)] = np.nan
            n_ok = np.isfinite(reps_all).sum(axis=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lo_all, hi_all = np.nanpercentile(reps_all, [2.5, 97.5], axis=0)
            lo_all[n_ok < 2], hi_all[n_ok < 2] = np.nan, np.nan
        for j, p in enumerate(perturbations):
            reps_of = {}
            for g, (bucket, plat, m) in enumerate(groups):
                head = (scope, p.kind, float(p.severity), p.unit, levels[j], bucket, plat)
                if j not in eff:
                    rows.append((*head, "n/a", int(m.sum()), 0, np.nan, 0, *[np.nan] * 9))
                    continue
                changed = eff[j][0] & m
                vals, reps = [], {}
                for q, name in enumerate(MEASURES):
                    c = col[(j, g, q)]
                    if changed.any():
                        mean, lo, hi, r = float(eff[j][q + 1][changed].mean()), lo_all[c], hi_all[c], reps_all[:, c]
                    else:
                        mean, lo, hi, r = np.nan, np.nan, np.nan, np.full(len(weights), np.nan)
                    vals += [mean, float(lo), float(hi)]
                    reps[name] = (mean, r)
                reps_of[(bucket, plat)] = (reps, int(changed.sum()))
                share = float(changed.sum() / m.sum()) if m.any() else np.nan
                status = "ok" if changed.any() else ("no change" if m.any() else "no cases")
                rows.append((*head, status, int(m.sum()), int(changed.sum()), share,
                             len(np.unique(cs.dog[changed])), *vals))
            con += _contrast_rows(scope, p, levels[j], reps_of)
    return pd.DataFrame(rows, columns=list(RESILIENCE_COLUMNS)), pd.DataFrame(con, columns=list(CONTRAST_COLUMNS))


def _contrast_rows(scope: str, p: Perturbation, level: int, reps_of: dict) -> list[tuple]:
    early, late = STEP_BUCKETS[0][2], STEP_BUCKETS[-1][2]
    pairs = (("early - late", (early, "all"), (late, "all")), ("before - after plateau", ("all", "not yet"),
                                                                 ("all", "reached")))
    out = []
    for name, ka, kb in pairs:
        if ka not in reps_of or kb not in reps_of:
            continue
        (ra, na), (rb, nb) = reps_of[ka], reps_of[kb]
        if na == 0 or nb == 0:
            continue
        for q in MEASURES:
            (va, xa), (vb, xb) = ra[q], rb[q]
            d = xa - xb
            d = d[np.isfinite(d)]
            lo, hi = (np.percentile(d, [2.5, 97.5]) if len(d) >= 2 else (np.nan, np.nan))
            out.append((scope, p.kind, float(p.severity), level, name, q, "/".join(ka), "/".join(kb), va, vb,
                        va - vb, float(lo), float(hi), na, nb))
    return out


def _levels(perturbations: Sequence[Perturbation]) -> list[int]:
    """1 = mildest severity of its kind; the highest level is the strongest."""
    out = []
    for p in perturbations:
        sev = sorted({q.severity for q in perturbations if q.kind == p.kind})
        out.append(sev.index(p.severity) + 1)
    return out


def contrasts(con: pd.DataFrame, measure: str = "d_nll", contrast: str = "early - late") -> pd.DataFrame:
    """The contrast rows of one measure at each kind's strongest severity."""
    c = con[(con["measure"] == measure) & (con["contrast"] == contrast)]
    strongest = c.groupby(["scope", "perturbation"])["level"].transform("max")
    return c[c["level"] == strongest]


def pair_divergence(h_a: np.ndarray, h_b: np.ndarray) -> np.ndarray:
    """||h_a(t) - h_b(t)|| over all layers and units, both from the same initial state. (Ta, L, H), (Tb, L, H) -> (min T,)."""
    t = min(len(h_a), len(h_b))
    d = (h_a[:t] - h_b[:t]).reshape(t, -1)
    return np.sqrt((d.astype(np.float64) ** 2).sum(axis=1))


def others_in_race(score: np.ndarray, race: np.ndarray, ok: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-sum-exp and max of the OTHER valid runners' scores in each target row's race. -> (B,), (B,)."""
    n_r = int(race.max()) + 1
    need = np.zeros(n_r, bool)
    need[race[tgt]] = True
    keep = np.flatnonzero(need[race])  # only the target races' rows (a few % of all)
    return _others(score[keep], race[keep], ok[keep], np.searchsorted(keep, tgt), n_r)


def _others(score: np.ndarray, race: np.ndarray, ok: np.ndarray, tgt: np.ndarray, n_r: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.where(ok, score, -np.inf)
    top = np.full(n_r, -np.inf)
    np.maximum.at(top, race, s)
    with np.errstate(invalid="ignore"):  # races without a valid runner: -inf - -inf, masked out
        e = np.where(ok, np.exp(s - top[race]), 0.0)
    tot = np.bincount(race, weights=e, minlength=n_r)
    rt = race[tgt]
    rest = np.maximum(tot[rt] - e[tgt], 1e-300)
    lse = np.log(rest) + top[rt]
    # max of the others: the race max unless the target holds it, then the second highest
    order = np.lexsort((-s, race))
    first = np.ones(len(order), bool)
    first[1:] = race[order][1:] != race[order][:-1]
    second = np.full(n_r, -np.inf)
    pos_first = np.flatnonzero(first)
    nxt = pos_first + 1
    has2 = (nxt < len(order)) & (race[order][np.minimum(nxt, len(order) - 1)] == race[order][pos_first])
    second[race[order][pos_first[has2]]] = s[order][nxt[has2]]
    top_row = np.full(n_r, -1)
    top_row[race[order][pos_first]] = order[pos_first]
    mx = np.where(top_row[rt] == tgt, second[rt], top[rt])
    return lse, mx
