"""Resilience to data issues: damage the history before a target race, re-score the race, measure what moves.

The notebook's hypothesis: early in a career the model leans on the current race, so data issues hurt
more. The direct test damages only the LATEST race before the target (drop it, blank its values, noise
on its observed values) and compares early targets (t <= 5) with late ones (t >= 16). Structural damage
(races removed at random, oldest removed, recent order shuffled, races duplicated) is applied at equal
RELATIVE severity, a share of the history, never a count that erases a short history whole; value
damage (values blanked, noise on observed prices or times) hits a share of the races or every observed
value alike.

Two kinds of measure, kept apart (per case, averaged over the seed models; per group, a mean with a
bootstrap over dogs):
  sensitivity  how much the prediction moves; needs no outcome:
               flip_rate          share of races whose top pick changed
               abs_dlogp          |change in log p| of the case dog in its race's softmax
               kl                 KL(before || after) between the race's distributions
               state_divergence   ||h_after - h_before|| of the top layer's state before race t
  harm         d_nll              change of the race's NLL, -log softmax(winner), after minus before
                                  (held-out races only: training races were fitted)

Scopes:
  dog         held-out target races; only this dog's data is damaged, the race's other runners keep
              their stored scores, so the re-scored race softmax is exact for that fault.
  within-dog  sensitivity only, the latest-race kinds, on the SAME dogs at several steps over all
              their races (training period included), so early vs late is not young dogs vs old:
              the early-minus-late contrast is a mean over dogs that have both of their own difference.
  feed        a feed-level fault: every runner of the target race has the same kind of damage to its
              own history, the whole race re-scored (latest-race kinds; readings only with enough dogs).

Cases whose input the damage did not change are no-ops: counted (`changed_share`) and left out. A case
whose damaged input is identical to the one an earlier perturbation in the list gave it (the same
outputs from every seed: scores and states within 1e-5) is counted once, under the earlier one
(`n_duplicate`), so one fact is not counted as several.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from gruviz_core.comparisons import label_ranges, poisson1
from gruviz_core.errors import ConfigError
from gruviz_core.model import LoadedModel

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Perturbation",
    "DEFAULT_PERTURBATIONS",
    "LATEST_KINDS",
    "LATEST_RACE",
    "FAMILIES",
    "TARGET_STEPS",
    "STEP_BUCKETS",
    "SEVERITY_UNITS",
    "MIN_READING_DOGS",
    "FeatureGroups",
    "Draws",
    "Cases",
    "Effects",
    "Block",
    "feature_groups",
    "draws_for",
    "races_hit",
    "perturb_history",
    "kinds_seen",
    "final_scores",
    "race_nll_change",
    "dog_logp_change",
    "bucket_of",
    "target_cases",
    "within_dog_cases",
    "subsample_cases",
    "subsample_dogs",
    "case_effects",
    "feed_effects",
    "summarise",
    "reading",
    "latest_race_summary",
    "pair_divergence",
    "others_in_race",
    "MEASURES",
    "SENSITIVITY",
    "RESILIENCE_COLUMNS",
    "CONTRAST_COLUMNS",
]


@dataclass(frozen=True)
class Perturbation:
    """One kind of data issue at one severity (bigger severity = more damage, for every kind)."""

    kind: str
    """A key of SEVERITY_UNITS."""
    severity: float
    """Amount of damage in the kind's unit (SEVERITY_UNITS): the latest race (1), a share of the
    history's races (structural kinds, 'missing'), or a noise std in normalised units."""

    @property
    def unit(self) -> str:
        return SEVERITY_UNITS[self.kind]

    @property
    def family(self) -> str:
        """'latest race', 'structural' or 'values'."""
        return next(f for f, kinds in FAMILIES.items() if self.kind in kinds)


SEVERITY_UNITS: dict[str, str] = {
    "drop_last": "latest race removed",
    "blank_last": "latest race's values made missing",
    "noise_last": "noise std on the latest race's observed values (normalised units)",
    "drop_random": "share of races removed at random",
    "truncate": "share of races removed, oldest first",
    "shuffle_recent": "share of races, latest first, put out of order",
    "duplicate": "share of races duplicated",
    "missing": "share of races blanked (observed values only)",
    "noise_price": "noise std on observed prices (normalised units)",
    "noise_time": "noise std on observed times (normalised units)",
}
"""Kind -> what its severity counts."""

LATEST_KINDS: tuple[str, ...] = ("drop_last", "blank_last", "noise_last")
"""The direct test: only the latest race before the target is damaged."""

FAMILIES: dict[str, tuple[str, ...]] = {
    "latest race": LATEST_KINDS,
    "structural": ("drop_random", "truncate", "shuffle_recent", "duplicate"),
    "values": ("missing", "noise_price", "noise_time"),
}
"""Family -> its kinds."""

_SHARE_KINDS = FAMILIES["structural"]

DEFAULT_PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("drop_last", 1), Perturbation("blank_last", 1), Perturbation("noise_last", 1.0),
    *(Perturbation(k, f) for k in _SHARE_KINDS for f in (0.25, 0.5)),
    *(Perturbation("missing", f) for f in (0.25, 0.5)),
    *(Perturbation(k, s) for k in ("noise_price", "noise_time") for s in (0.5, 1.0)),
)
"""Every data issue the resilience panel covers: the latest-race test first (it leads, and a later
perturbation that gives a case the same input is the duplicate), then relative severities, mildest first."""

LATEST_RACE: tuple[Perturbation, ...] = tuple(p for p in DEFAULT_PERTURBATIONS if p.kind in LATEST_KINDS)
"""The latest-race test's perturbations."""

TARGET_STEPS: tuple[int, ...] = (3, 5, 8, 12, 20, 30, 50)
"""Steps t whose race is re-scored after its history (races 1..t-1) is damaged."""

STEP_BUCKETS: tuple[tuple[int, int, str], ...] = ((1, 5, "t<=5"), (6, 15, "t 6-15"), (16, 10**9, "t>=16"))
"""Target-step buckets; the first is 'early', the last 'late' in the contrasts."""

MIN_READING_DOGS = 100
"""A contrast gets a reading ('early more', 'late more', 'no clear difference') only with at least this
many dogs on each side; below it the numbers are shown as 'too few for a reading'."""

_DUP_TOL = 1e-5
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

    @property
    def values(self) -> np.ndarray:
        """Columns of every nullable input's value (what 'noise_last' may touch)."""
        return np.array(sorted(v for v, _ in self.value_flag), dtype=np.int64)

    def cols_of(self, kind: str) -> np.ndarray:
        """The columns a noise kind touches."""
        return {"noise_time": self.time, "noise_price": self.price, "noise_last": self.values}[kind]


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
    """(n,) a permutation: 'drop_random'/'duplicate' hitting k races hit its first k rows."""
    z: np.ndarray
    """(n, F) standard normals: noise kinds add severity * z on observed cells."""


def draws_for(n: int, n_features: int, rng: np.random.Generator) -> Draws:
    """Draws for a history of n rows."""
    return Draws(rng.random(n), rng.permutation(n), rng.standard_normal((n, n_features)).astype(np.float32))


def races_hit(kind: str, severity: float, n: np.ndarray | int) -> np.ndarray:
    """How many races a kind damages in histories of n races (0: a no-op). n: (k,) or int -> same shape.

    Latest-race kinds and 'drop_last': the latest `severity` races. Structural kinds: the share `severity`
    of the history, rounded half up, at least 1 (2 for a shuffle) and never the whole history for kinds
    that remove races (so a short history is damaged, not erased)."""
    n = np.asarray(n, dtype=np.int64)
    if kind in LATEST_KINDS:
        return np.minimum(int(severity), n)
    if kind not in _SHARE_KINDS:
        raise ConfigError(f"races_hit: {kind!r} is not a kind that hits whole races; expected one of "
                          f"{', '.join(LATEST_KINDS + _SHARE_KINDS)}")
    if not 0 < severity <= 1:
        raise ConfigError(f"perturbation {kind}: severity {severity} is a share of the history; expected (0, 1]")
    k = np.floor(severity * n + 0.5).astype(np.int64)
    if kind == "shuffle_recent":
        return np.where(n >= 2, np.clip(k, 2, np.maximum(n, 2)), 0)
    if kind == "duplicate":
        return np.where(n >= 1, np.clip(k, 1, np.maximum(n, 1)), 0)
    return np.where(n >= 2, np.clip(k, 1, np.maximum(n - 1, 1)), 0)  # removals keep at least one race


def perturb_history(hist: np.ndarray, p: Perturbation, groups: FeatureGroups, d: Draws) -> tuple[np.ndarray, float]:
    """A damaged copy of one history (n, F) and the damage done (rows or cells touched, or total noise).

    Damage 0 means the input did not change (a no-op). Values are normalised: a missing value is 0
    with its flag 1, so noise and blanking touch only cells whose flag is 0 (what the model saw).
    The reference for the batched path (`_damage_flat`).
    """
    n = len(hist)
    if p.kind in ("drop_last", "truncate", "drop_random", "duplicate", "shuffle_recent"):
        m = int(races_hit(p.kind, p.severity, n))
    if p.kind == "drop_last":
        return hist[: n - m], float(m)
    if p.kind == "truncate":
        return hist[m:], float(m)
    if p.kind == "drop_random":
        return np.delete(hist, d.order[:m], axis=0), float(m)
    if p.kind == "duplicate":
        hit = np.sort(d.order[:m])
        return np.insert(hist, hit + 1, hist[hit], axis=0), float(m)
    if p.kind == "shuffle_recent":  # the latest m races rotated: the newest moved back m-1 places
        out = hist.copy()
        if m > 1:
            out[n - m:] = np.roll(hist[n - m:], 1, axis=0)
        return out, float(np.any(out != hist, axis=1).sum())
    if p.kind in ("noise_time", "noise_price", "noise_last"):
        cols = groups.cols_of(p.kind)
        out = hist.copy()
        seen = _observed(hist, cols, groups)  # (n, len(cols))
        if p.kind == "noise_last":
            seen[: n - 1] = False
        if not seen.any():
            return out, 0.0
        out[:, cols] += np.where(seen, p.severity * d.z[:, cols], 0.0).astype(hist.dtype)
        return out, float(np.abs(p.severity * d.z[:, cols][seen]).sum())
    if p.kind in ("missing", "blank_last"):
        out = hist.copy()
        rows = d.u < p.severity if p.kind == "missing" else np.arange(n) == n - 1
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
    out["missing"] = out["blank_last"] = out["noise_last"] = _any_seen(groups.values)
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


def dog_logp_change(s0: np.ndarray, s1: np.ndarray, others_lse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|change in log p| of this runner and KL(before || after) of its race, when only its score moves.

    Only this runner's score moves, so every other runner's log p moves by the same -(Z1 - Z0), Z the
    log normaliser: KL = p0 (log p0 - log p1) + (1 - p0)(Z1 - Z0). All (B,) -> (B,), (B,)."""
    z0, z1 = np.logaddexp(s0, others_lse), np.logaddexp(s1, others_lse)
    lp0, lp1 = s0 - z0, s1 - z1
    p0 = np.exp(lp0)
    return np.abs(lp1 - lp0), np.maximum(p0 * (lp0 - lp1) + (1 - p0) * (z1 - z0), 0.0)


def bucket_of(step: np.ndarray) -> np.ndarray:
    """(n,) target steps -> (n,) STEP_BUCKETS label."""
    return label_ranges(step, STEP_BUCKETS)


@dataclass(frozen=True)
class Cases:
    """Target races: one per (dog, target step) with a scored race."""

    dog: np.ndarray
    """(n,) dog index."""
    step: np.ndarray
    """(n,) target step t (1-based)."""
    row: np.ndarray
    """(n,) row of the target race."""

    def take(self, keep: np.ndarray) -> Cases:
        """The cases at positions `keep` (sorted)."""
        return Cases(self.dog[keep], self.step[keep], self.row[keep])


def _has_targets(offsets: np.ndarray, ok: np.ndarray, steps: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(dog, S) bool: the dog's race at each target step exists and is `ok`; and the steps (S,)."""
    n_steps = np.diff(offsets)
    steps = np.array(sorted(set(int(s) for s in steps if s >= 2)), dtype=np.int64)
    has = (n_steps[:, None] >= steps[None, :])
    rows = offsets[:-1, None] + steps[None, :] - 1
    has &= ok[np.minimum(rows, len(ok) - 1)] if len(ok) else False
    return has, steps


def _cases_of(offsets: np.ndarray, has: np.ndarray, steps: np.ndarray, pick: np.ndarray) -> Cases:
    d, j = np.nonzero(has[pick])
    dog, step = pick[d], steps[j]
    return Cases(dog, step, offsets[dog] + step - 1)


def target_cases(
    offsets: np.ndarray, ok: np.ndarray, *, sample_dogs: int, seed: int, steps: Sequence[int] = TARGET_STEPS,
    dog_ok: np.ndarray | None = None,
) -> Cases:
    """Sample dogs with at least one target race among `ok` rows (obs,), and every such target of theirs.

    offsets: (dog + 1,); dog_ok: (dog,) bool, the dogs that may be sampled (all when None).
    """
    has, steps = _has_targets(offsets, ok, steps)
    if dog_ok is not None:
        has &= np.asarray(dog_ok, bool)[:, None]
    cand = np.flatnonzero(has.any(axis=1))
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(cand, size=min(sample_dogs, len(cand)), replace=False))
    return _cases_of(offsets, has, steps, pick)


def within_dog_cases(
    offsets: np.ndarray, ok: np.ndarray, *, sample_dogs: int, seed: int, steps: Sequence[int] = TARGET_STEPS,
    dog_ok: np.ndarray | None = None,
) -> Cases:
    """Dogs with an early AND a late target race among `ok` rows (obs,; any period), every target of theirs.

    Early and late are the first and last STEP_BUCKETS; at most `sample_dogs` dogs, drawn at random."""
    has, steps = _has_targets(offsets, ok, steps)
    if dog_ok is not None:
        has &= np.asarray(dog_ok, bool)[:, None]
    b = bucket_of(steps)
    both = has[:, b == STEP_BUCKETS[0][2]].any(axis=1) & has[:, b == STEP_BUCKETS[-1][2]].any(axis=1)
    cand = np.flatnonzero(both)
    rng = np.random.default_rng([seed, 7])
    pick = np.sort(rng.choice(cand, size=min(sample_dogs, len(cand)), replace=False))
    return _cases_of(offsets, has, steps, pick)


def subsample_cases(cases: Cases, per_step: int, seed: int) -> Cases:
    """At most `per_step` cases of each target step, drawn at random (the feed scope re-scores whole races)."""
    rng = np.random.default_rng([seed, 2])
    keep = np.concatenate([rng.permutation(np.flatnonzero(cases.step == t))[:per_step] for t in np.unique(cases.step)]
                          ) if len(cases.step) else np.zeros(0, np.int64)
    return cases.take(np.sort(keep))


def subsample_dogs(cases: Cases, n_dogs: int, seed: int) -> Cases:
    """Every case of at most `n_dogs` of the cases' dogs, drawn at random (the costlier kinds' sample)."""
    dogs = np.unique(cases.dog)
    rng = np.random.default_rng([seed, 3])
    pick = np.sort(rng.choice(dogs, size=min(n_dogs, len(dogs)), replace=False))
    return cases.take(np.flatnonzero(np.isin(cases.dog, pick)))


MEASURES: tuple[str, ...] = ("d_nll", "flip_rate", "abs_dlogp", "kl", "state_divergence")
"""Every measure; d_nll is harm, the others sensitivity."""
SENSITIVITY: tuple[str, ...] = MEASURES[1:]
"""The measures that need no outcome."""


@dataclass(frozen=True)
class Effects:
    """One perturbation's effect on each case (seed-averaged)."""

    changed: np.ndarray
    """(n,) bool: the damage changed the case's input."""
    duplicate: np.ndarray
    """(n,) bool: an earlier perturbation gave the case the same damaged input (counted there)."""
    share: np.ndarray
    """(n,) share of the case dog's history (races) the damage touched; NaN for a no-op."""
    values: dict[str, np.ndarray]
    """Measure (MEASURES) -> (n,) float; NaN where not measured (d_nll off the held-out races)."""

    @property
    def counted(self) -> np.ndarray:
        """(n,) bool: the cases that count for this perturbation."""
        return self.changed & ~self.duplicate


def case_effects(
    models: Sequence[LoadedModel], values: np.ndarray, context: np.ndarray, offsets: np.ndarray, cases: Cases,
    others: Sequence[tuple[np.ndarray, np.ndarray]], won: np.ndarray | None, perturbations: Sequence[Perturbation],
    groups: FeatureGroups, seen: dict[str, bool], *, seed: int,
) -> dict[int, Effects]:
    """Scope 'dog' (or 'within-dog'): {perturbation index: Effects}, seed-averaged.

    others: per model, (log-sum-exp, max) of the other runners' stored scores in each case's race (n,);
    won: (n,) whether the case's dog won, or None: no harm measured (d_nll NaN; races not held out).
    Perturbations of kinds not seen are absent.
    """
    items = _Items(np.asarray(offsets)[cases.dog].astype(np.int64), np.asarray(cases.row, np.int64))
    base, pert = _rescore(models, values, context, items, perturbations, groups, seen, seed=seed, salt=0)
    n = len(items.row)
    dup = _duplicates(base, pert, np.arange(n), n)
    out = {}
    for j, (dmg, touched, per_model) in pert.items():
        ch = np.flatnonzero(dmg > 0)
        acc = np.zeros((len(MEASURES), n))
        for (lse, mx), (s0, h0), (s1, h1) in zip(others, base, per_model):
            a0, a1 = s0[ch].astype(np.float64), s1.astype(np.float64)
            if won is not None:
                acc[0, ch] += race_nll_change(a0, a1, lse[ch], won[ch])
            acc[1, ch] += ((a0 > mx[ch]) != (a1 > mx[ch])).astype(np.float64)
            dlp, kl = dog_logp_change(a0, a1, lse[ch])
            acc[2, ch] += dlp
            acc[3, ch] += kl
            acc[4, ch] += np.linalg.norm(h1 - h0[ch], axis=1)
        acc /= len(models)
        if won is None:
            acc[0] = np.nan
        out[j] = Effects(dmg > 0, dup[j], _share(touched, items.n, dmg), dict(zip(MEASURES, acc)))
    return out


def _share(touched: np.ndarray, n: np.ndarray, dmg: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dmg > 0, touched / np.maximum(n, 1), np.nan)


def _duplicates(base: list, pert: dict, case_of: np.ndarray, n_cases: int) -> dict[int, np.ndarray]:
    """{perturbation index: (n_cases,) bool}: the case's damaged outputs (every item's score and top-layer
    state, under every model) equal those of an earlier perturbation that changed the case: the same input."""
    order = sorted(pert)
    full, changed = {}, {}
    for j in order:
        dmg, _, per_model = pert[j]
        ch = np.flatnonzero(dmg > 0)
        outs = []
        for (s0, h0), (s1, h1) in zip(base, per_model):
            s, h = s0.copy(), h0.copy()
            s[ch], h[ch] = s1, h1
            outs.append((s, h))
        full[j] = outs
        changed[j] = np.bincount(case_of, weights=(dmg > 0), minlength=n_cases) > 0
    dup = {j: np.zeros(n_cases, bool) for j in order}
    for a, j in enumerate(order):
        for i in order[:a]:
            eq = np.ones(len(case_of), bool)
            for (sa, ha), (sb, hb) in zip(full[j], full[i]):
                eq &= (np.abs(sa - sb) <= _DUP_TOL) & np.all(np.abs(ha - hb) <= _DUP_TOL, axis=1)
            same = np.bincount(case_of, weights=~eq, minlength=n_cases) == 0
            dup[j] |= same & changed[i] & changed[j]
    return dup


def feed_effects(
    models: Sequence[LoadedModel], values: np.ndarray, context: np.ndarray, offsets: np.ndarray,
    row_dog: np.ndarray, row_race: np.ndarray, ok: np.ndarray, won: np.ndarray, cases: Cases,
    perturbations: Sequence[Perturbation], groups: FeatureGroups, seen: dict[str, bool], *, seed: int,
) -> dict[int, Effects]:
    """Scope 'feed': every valid runner of each case's race damaged, the race re-scored from scratch.

    row_dog, row_race, ok, won: (obs,) per row. Same output as `case_effects`; abs_dlogp and the
    divergence are the case dog's own, the share of history is the case dog's.
    """
    by_race = _rows_by_race(row_race, ok)
    runners = [by_race[row_race[r]] for r in cases.row]  # each case's race rows, its own row included
    flat_rows = np.concatenate(runners).astype(np.int64) if runners else np.zeros(0, np.int64)
    case_of = np.repeat(np.arange(len(runners)), [len(x) for x in runners])
    items = _Items(np.asarray(offsets)[row_dog[flat_rows]].astype(np.int64), flat_rows)
    base, pert = _rescore(models, values, context, items, perturbations, groups, seen, seed=seed, salt=1)
    own = np.flatnonzero(flat_rows == cases.row[case_of])
    w = won[flat_rows]
    n = len(runners)
    dup = _duplicates(base, pert, case_of, n)
    out = {}
    for j, (dmg, touched, per_model) in pert.items():
        changed = np.bincount(case_of, weights=dmg, minlength=n) > 0
        ch = np.flatnonzero(dmg > 0)
        acc = np.zeros((len(MEASURES), n))
        for (s0, h0), (s1c, h1c) in zip(base, per_model):
            s1, h1 = s0.copy(), h0.copy()
            s1[ch], h1[ch] = s1c, h1c
            nll0, top0, lp0 = _race_stats(s0, case_of, w, n)
            nll1, top1, lp1 = _race_stats(s1, case_of, w, n)
            acc[0] += nll1 - nll0
            acc[1] += top0 != top1
            acc[2][case_of[own]] += np.abs(lp1[own] - lp0[own])
            acc[3] += np.maximum(np.bincount(case_of, weights=np.exp(lp0) * (lp0 - lp1), minlength=n), 0.0)
            acc[4][case_of[own]] += np.linalg.norm(h1[own] - h0[own], axis=1)
        acc /= len(models)
        share = np.full(n, np.nan)
        share[case_of[own]] = touched[own] / np.maximum(items.n[own], 1)
        out[j] = Effects(changed, dup[j], np.where(changed, share, np.nan), dict(zip(MEASURES, np.where(changed, acc, 0.0))))
    return out


def _rows_by_race(race: np.ndarray, ok: np.ndarray) -> dict[int, np.ndarray]:
    rows = np.flatnonzero(ok)
    order = rows[np.argsort(race[rows], kind="stable")]
    cut = np.flatnonzero(np.diff(race[order])) + 1
    return {int(race[g[0]]): g for g in np.split(order, cut) if len(g)}


def _race_stats(s: np.ndarray, grp: np.ndarray, won: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group of rows: NLL of the winner under the softmax, the position of the top score; per row log p."""
    s = s.astype(np.float64)
    top = np.full(n, -np.inf)
    np.maximum.at(top, grp, s)
    lse = np.log(np.bincount(grp, weights=np.exp(s - top[grp]), minlength=n)) + top
    logp = s - lse[grp]
    nll = -np.bincount(grp, weights=won * logp, minlength=n)
    first = np.full(n, len(s))
    np.minimum.at(first, grp, np.where(s == top[grp], np.arange(len(s)), len(s)))
    return nll, first, logp


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
    touched: np.ndarray
    """(n,) races of the original history the damage touched (for the share of history damaged)."""
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
        self.noise_cols = np.union1d(np.union1d(groups.time, groups.price), groups.values).astype(np.int64)
        self.z = rng.standard_normal((len(self.item), len(self.noise_cols)), dtype=np.float32)


def _damage_flat(values: np.ndarray, items: _Items, p: Perturbation, groups: FeatureGroups, d: _FlatDraws) -> _Damaged:
    """`perturb_history` of every item at once (same kinds, severities and damage units)."""
    n = items.n
    n_items = len(n)
    j, it = d.j, d.item
    big = np.iinfo(np.int64).max
    if p.kind in ("drop_last", "truncate", "drop_random", "duplicate", "shuffle_recent"):
        m = races_hit(p.kind, p.severity, n)  # (n_items,)

    def _first(mask: np.ndarray, shift: int = 0) -> np.ndarray:
        out = np.full(n_items, big)
        np.minimum.at(out, it[mask], j[mask] + shift)
        return np.minimum(out, n + (shift if shift else 0))

    def _rows_hit(mask: np.ndarray) -> np.ndarray:
        return np.bincount(it, weights=mask, minlength=n_items).astype(np.float64)

    src, vals = d.src, None  # damaged history as global rows (index kinds) or values (value kinds)
    if p.kind == "drop_last":
        keep = j < (n - m)[it]
        src, item_of, damage, first = src[keep], it[keep], m.astype(np.float64), n - m
        touched = damage
    elif p.kind == "truncate":
        keep = j >= m[it]
        src, item_of, damage, first = src[keep], it[keep], m.astype(np.float64), np.where(m > 0, 0, n)
        touched = damage
    elif p.kind == "drop_random":
        hit = d.rank < m[it]
        src, item_of, damage, first = src[~hit], it[~hit], m.astype(np.float64), _first(hit)
        touched = damage
    elif p.kind == "duplicate":
        hit = d.rank < m[it]
        reps = 1 + hit.astype(np.int64)
        src, item_of, damage, first = np.repeat(src, reps), np.repeat(it, reps), m.astype(np.float64), _first(hit, 1)
        touched = damage
    elif p.kind == "shuffle_recent":  # the latest m races rotated: the newest moved back m-1 places
        mm = m[it]
        nn = n[it]
        tail = (mm > 1) & (j >= nn - mm)
        loc = np.where(tail & (j == nn - mm), nn - 1, np.where(tail, j - 1, j))
        src_new = items.start[it] + loc
        diff = np.any(values[src_new] != values[d.src], axis=1)
        src, item_of = src_new, it
        damage = touched = _rows_hit(diff)
        first = np.where(m > 1, n - m, n)
    elif p.kind in ("noise_time", "noise_price", "noise_last"):
        cols = groups.cols_of(p.kind)
        vals = values[d.src]
        seen = _observed(vals, cols, groups)
        if p.kind == "noise_last":
            seen &= (j == n[it] - 1)[:, None]
        zc = d.z[:, np.searchsorted(d.noise_cols, cols)]
        add = np.where(seen, np.float32(p.severity) * zc, np.float32(0.0))
        vals[:, cols] += add.astype(values.dtype)
        item_of = it
        damage = np.bincount(it, weights=np.abs(np.where(seen, p.severity * zc, 0.0)).sum(axis=1), minlength=n_items)
        touched = _rows_hit(seen.any(axis=1))
        first = _first(seen.any(axis=1))
    elif p.kind in ("missing", "blank_last"):
        vals = values[d.src]
        rows = d.u < p.severity if p.kind == "missing" else j == n[it] - 1
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
        touched = _rows_hit(anyhit)
        first = _first(anyhit)
    else:
        raise ConfigError(f"unknown perturbation kind {p.kind!r}; expected one of {', '.join(SEVERITY_UNITS)}")
    length = np.bincount(item_of, minlength=n_items)
    start_pos = np.concatenate([[0], np.cumsum(length)])[:-1]
    pos = np.arange(len(item_of)) - start_pos[item_of]
    first = np.minimum(first, length)
    take = (pos >= first[item_of]) & (damage[item_of] > 0)
    rows = vals[take] if vals is not None else values[src[take]]
    return _Damaged(damage, touched, first, length, item_of[take], rows)


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
    races touched (n,), per model (s1, state) of the changed items only, in item order)}; kinds not seen are absent.
    """
    draws = _FlatDraws(items, values, groups, seed, salt)
    damaged = {j: _damage_flat(values, items, p, groups, draws) for j, p in enumerate(perturbations)
               if seen.get(p.kind, True)}
    tx, tc = values[items.row], context[items.row]
    u_start, inv = np.unique(items.start, return_inverse=True)
    u_len = np.zeros(len(u_start), np.int64)
    np.maximum.at(u_len, inv, items.n)
    base, pert = [], {j: (dm.damage, dm.touched, []) for j, dm in damaged.items()}
    for model in models:
        f = _fast_mode(model, values, context, items)
        if f is None:
            hists = [values[a:b] for a, b in zip(items.start, items.row)]
            base.append(final_scores(model, hists, tx, tc))
            for j, dm in damaged.items():
                ch = np.flatnonzero(dm.damage > 0)
                pert[j][2].append(final_scores(model, _histories(values, items, dm, ch, hists), tx[ch], tc[ch])
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
            pert[j][2].append((f.score(state, tx[ch], tc[ch]), state[-1]))
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

RESILIENCE_COLUMNS: tuple[str, ...] = (
    "scope", "perturbation", "family", "severity", "severity_unit", "level", "bucket", "status",
    "n_cases", "n_changed", "n_duplicate", "changed_share", "damage_share", "n_dogs",
    *(f"{m}{s}" for m in MEASURES for s in ("", "_lo", "_hi")),
)
CONTRAST_COLUMNS: tuple[str, ...] = (
    "scope", "perturbation", "family", "severity", "level", "contrast", "measure", "role", "a", "b",
    "value_a", "value_b", "diff", "lo", "hi", "n_a", "n_b", "n_dogs_a", "n_dogs_b", "n_boot", "reading",
)

EARLY, LATE = STEP_BUCKETS[0][2], STEP_BUCKETS[-1][2]


@dataclass(frozen=True)
class Block:
    """The cases of one scope, the perturbations run on them and their effects."""

    scope: str
    """'dog', 'within-dog' or 'feed' (module docstring)."""
    cases: Cases
    """Its cases (n,)."""
    perturbations: tuple[Perturbation, ...]
    """The perturbations run on them."""
    effects: dict[int, Effects]
    """Index into `perturbations` -> its effects; kinds never seen in training are absent ('n/a')."""


def _groups(block: Block) -> list[tuple[str, np.ndarray]]:
    """(bucket label, case mask): all; each step bucket; each step too for the within-dog scope."""
    b = bucket_of(block.cases.step)
    out = [("all", np.ones(len(b), bool))] + [(name, b == name) for _, _, name in STEP_BUCKETS]
    if block.scope == "within-dog":
        out += [(f"t={t}", block.cases.step == t) for t in np.unique(block.cases.step)]
    return out


def reading(lo: float, hi: float, n_dogs_a: int, n_dogs_b: int, *, min_dogs: int = MIN_READING_DOGS) -> str:
    """The word for an early-minus-late interval: 'early more', 'late more', 'no clear difference', or
    'too few for a reading' (an interval missing, or fewer than min_dogs dogs on a side)."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or min(n_dogs_a, n_dogs_b) < min_dogs:
        return "too few for a reading"
    return "early more" if lo > 0 else ("late more" if hi < 0 else "no clear difference")


def summarise(
    blocks: Sequence[Block], *, n_boot: int, seed: int, min_dogs: int = MIN_READING_DOGS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The resilience table (RESILIENCE_COLUMNS) and the early-minus-late contrasts (CONTRAST_COLUMNS).

    Means are over the counted cases (changed, not a duplicate) of each scope, kind, severity and
    step group, with a 95% interval from n_boot Poisson bootstrap replicates over dogs (one draw per
    block, shared by its groups and measures, so a contrast's replicates are paired). Early minus late:
    for 'dog' and 'feed' the difference of the two groups' means; for 'within-dog' the mean over dogs
    with both of each dog's own early mean minus its late mean.
    """
    import pandas as pd

    if n_boot < 1:
        raise ConfigError(f"resilience summarise: n_boot must be >= 1, got {n_boot}")
    levels = _levels([p for b in blocks for p in b.perturbations])
    rows, con = [], []
    for bi, block in enumerate(blocks):
        dogs_u, dinv = np.unique(block.cases.dog, return_inverse=True)
        w = poisson1(np.random.default_rng([seed, 11, bi]), (n_boot, len(dogs_u))).astype(np.float64)
        groups = _groups(block)
        for j, p in enumerate(block.perturbations):
            head = (block.scope, p.kind, p.family, float(p.severity), p.unit, levels[(p.kind, float(p.severity))])
            eff = block.effects.get(j)
            if eff is None:
                rows += [(*head, g, "n/a", int(m.sum()), 0, 0, np.nan, np.nan, 0, *[np.nan] * 3 * len(MEASURES))
                         for g, m in groups]
                continue
            stats = _group_stats(eff, groups, dinv, len(dogs_u), w)
            for g, m in groups:
                counted, st = eff.counted & m, stats[g]
                status = "ok" if counted.any() else ("no change" if m.any() else "no cases")
                vals = [x for q in MEASURES for x in st["ci"][q]]
                rows.append((*head, g, status, int(m.sum()), int((eff.changed & m).sum()),
                             int((eff.duplicate & eff.changed & m).sum()),
                             float((eff.changed & m).sum() / m.sum()) if m.any() else np.nan,
                             float(np.nanmean(eff.share[counted])) if counted.any() else np.nan,
                             len(np.unique(block.cases.dog[counted])), *vals))
            con += _contrast(block, j, p, levels, eff, stats, dinv, w, min_dogs)
    return pd.DataFrame(rows, columns=list(RESILIENCE_COLUMNS)), pd.DataFrame(con, columns=list(CONTRAST_COLUMNS))


def _group_stats(eff: Effects, groups: list, dinv: np.ndarray, nd: int, w: np.ndarray) -> dict:
    """Per group: per-dog sums and counts of each measure over the counted cases ("sum", "n": measure ->
    (dog,)), the bootstrap replicates of its mean ("reps": measure -> (B,) or None when nothing was
    measured) and (mean, lo, hi) ("ci"). One (B, dog) @ (dog, groups x measures) product."""
    out, cols_s, cols_n, keys = {}, [], [], []
    for g, m in groups:
        c = eff.counted & m
        d = {"sum": {}, "n": {}, "reps": {}, "ci": {}}
        for q in MEASURES:
            x = eff.values[q]
            ok = c & np.isfinite(x)
            d["sum"][q] = np.bincount(dinv, weights=np.where(ok, x, 0.0), minlength=nd)
            d["n"][q] = np.bincount(dinv, weights=ok.astype(np.float64), minlength=nd)
            d["reps"][q], d["ci"][q] = None, (np.nan, np.nan, np.nan)
            if ok.any():
                cols_s.append(d["sum"][q])
                cols_n.append(d["n"][q])
                keys.append((g, q))
        out[g] = d
    if keys:
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = (w @ np.stack(cols_s, axis=1)) / (w @ np.stack(cols_n, axis=1))  # (B, columns)
        for i, (g, q) in enumerate(keys):
            d = out[g]
            d["reps"][q] = reps[:, i]
            d["ci"][q] = (float(d["sum"][q].sum() / d["n"][q].sum()), *_interval(reps[:, i]))
    return out


def _interval(reps: np.ndarray) -> tuple[float, float]:
    r = reps[np.isfinite(reps)]
    if len(r) < 2:
        return np.nan, np.nan
    lo, hi = np.percentile(r, [2.5, 97.5])
    return float(lo), float(hi)


def _contrast(block: Block, j: int, p: Perturbation, levels: dict, eff: Effects, stats: dict, dinv: np.ndarray,
              w: np.ndarray, min_dogs: int) -> list[tuple]:
    """Early-minus-late rows of one perturbation, one per measure with a value on both sides."""
    a, b = stats[EARLY], stats[LATE]
    out = []
    for q in MEASURES:
        if a["reps"][q] is None or b["reps"][q] is None:
            continue
        if block.scope == "within-dog":
            both = (a["n"][q] > 0) & (b["n"][q] > 0)
            if not both.any():
                continue
            ea, lb = a["sum"][q][both] / a["n"][q][both], b["sum"][q][both] / b["n"][q][both]
            wb = w[:, both]
            with np.errstate(invalid="ignore", divide="ignore"):
                reps = (wb @ (ea - lb)) / wb.sum(axis=1)
            va, vb, diff = float(ea.mean()), float(lb.mean()), float((ea - lb).mean())
            na, nb = int(a["n"][q][both].sum()), int(b["n"][q][both].sum())
            nda = ndb = int(both.sum())
            name = "early - late, same dogs"
        else:
            va, vb = a["ci"][q][0], b["ci"][q][0]
            diff, reps = va - vb, a["reps"][q] - b["reps"][q]
            na, nb = int(a["n"][q].sum()), int(b["n"][q].sum())
            nda, ndb = int((a["n"][q] > 0).sum()), int((b["n"][q] > 0).sum())
            name = "early - late"
        lo, hi = _interval(reps)
        out.append((block.scope, p.kind, p.family, float(p.severity), levels[(p.kind, float(p.severity))], name, q,
                    "harm" if q == "d_nll" else "sensitivity", EARLY, LATE, va, vb, diff, lo, hi, na, nb, nda, ndb,
                    len(w), reading(lo, hi, nda, ndb, min_dogs=min_dogs)))
    return out


def _levels(perturbations: Sequence[Perturbation]) -> dict[tuple[str, float], int]:
    """(kind, severity) -> 1 for the mildest severity of its kind, up to the strongest."""
    out = {}
    for p in perturbations:
        sev = sorted({float(q.severity) for q in perturbations if q.kind == p.kind})
        out[(p.kind, float(p.severity))] = sev.index(float(p.severity)) + 1
    return out


def latest_race_summary(contrast: pd.DataFrame, perturbation: str = "drop_last") -> dict:
    """The latest-race test for page one, from the resilience_contrast table (CONTRAST_COLUMNS).

    -> {"perturbation": the kind (default "drop_last": the latest race removed), "early": "t<=5",
        "late": "t>=16",
        "held_out": {measure: entry} for d_nll, flip_rate, abs_dlogp, kl, state_divergence on held-out
                    races (scope 'dog'; early and late are different dogs),
        "within_dog": {measure: entry} for the sensitivity measures on the same dogs over all their
                      races (scope 'within-dog'; no d_nll: harm is held-out only),
        "sensitive": True when the held-out flip-rate difference's interval is above 0, False when it
                     includes 0 or is below, None without a reading,
        "harmed": the same for d_nll}
    entry: {"early", "late": the two means, "diff": early minus late, "lo", "hi": its 95% interval,
            "n_early", "n_late": cases, "n_dogs_early", "n_dogs_late": dogs, "n_boot": replicates,
            "reading": 'early more' | 'late more' | 'no clear difference' | 'too few for a reading'}.
    A measure or scope the table lacks is absent from its dict.
    """
    out: dict = {"perturbation": perturbation, "early": EARLY, "late": LATE, "held_out": {}, "within_dog": {},
                 "sensitive": None, "harmed": None}
    if contrast is None or not len(contrast):
        return out
    c = contrast[(contrast["perturbation"] == perturbation) & contrast["contrast"].str.startswith("early - late")]
    for scope, key in (("dog", "held_out"), ("within-dog", "within_dog")):
        for r in c[c["scope"] == scope].itertuples(index=False):
            out[key][str(r.measure)] = {
                "early": _num(r.value_a), "late": _num(r.value_b), "diff": _num(r.diff), "lo": _num(r.lo),
                "hi": _num(r.hi), "n_early": int(r.n_a), "n_late": int(r.n_b), "n_dogs_early": int(r.n_dogs_a),
                "n_dogs_late": int(r.n_dogs_b), "n_boot": int(r.n_boot), "reading": str(r.reading)}
    for m, flag in (("flip_rate", "sensitive"), ("d_nll", "harmed")):
        e = out["held_out"].get(m)
        if e is not None and e["reading"] != "too few for a reading":
            out[flag] = e["reading"] == "early more"
    return out


def _num(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


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
