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
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
import torch

from gruviz_core.cohorts import COHORTS
from gruviz_core.errors import ConfigError
from gruviz_core.model import LoadedModel
from gruviz_core.racing import race_codes
from gruviz_core.sequences import pad_batch

__all__ = [
    "Perturbation",
    "DEFAULT_PERTURBATIONS",
    "feature_groups",
    "perturb_history",
    "final_scores",
    "race_effects",
    "pair_divergence",
    "resilience_table",
    "others_in_race",
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
"""Every data issue the resilience panel covers, at three or four severities."""

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
    raise ConfigError(f"perturbation {p}: unknown kind {p.kind!r}; use one of DEFAULT_PERTURBATIONS' kinds")


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


# ------------------------------------------------------------------ the evaluate stage's resilience table


def resilience_table(rows, scores, sel, cohort, models, values, context, store_off, feature_names,
                     sample_dogs, seed, perturbations) -> "pd.DataFrame":
    """Perturb sampled dogs' histories; score their last race against the other runners' stored scores.

    rows: per-row frame (race_id, won); scores: (obs, seed); sel: rows evaluated; store_off: (dog + 1,).
    """
    import pandas as pd

    names = tuple(feature_names) or tuple(models[0].feature_names)
    groups = feature_groups(names)
    ok = np.zeros(len(rows), bool)
    ok[sel] = True
    last = store_off[1:] - 1
    n_steps = np.diff(store_off)
    cand = np.flatnonzero((n_steps >= 3) & ok[np.maximum(last, 0)])
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(cand, size=min(sample_dogs, len(cand)), replace=False))
    tgt = last[pick]
    race_all = race_codes(rows["race_id"].to_numpy())
    out = []
    for k, model in enumerate(models):
        lse, mx = others_in_race(scores[:, k], race_all, ok, tgt)
        won = rows["won"].to_numpy(np.float64)[tgt]
        hists = [values[store_off[d]:last[d]] for d in pick]
        s0, h0 = final_scores(model, hists, values[tgt], context[tgt])
        for j, pert in enumerate(perturbations):
            prng = np.random.default_rng([seed, k, j])
            done = [perturb_history(h, pert, groups, prng) for h in hists]
            s1, h1 = final_scores(model, [x for x, _ in done], values[tgt], context[tgt])
            dl, flip = race_effects(s0, s1, lse, mx, won)
            div = np.linalg.norm(h1 - h0, axis=1)
            pos = np.array([w for _, w in done], dtype=object)
            c = cohort[pick]
            for scope in ["all", *COHORTS]:
                for where in ["all", "early", "late"]:
                    m = (c == scope) if scope != "all" else np.ones(len(pick), bool)
                    if where != "all":
                        m = m & (pos == where)
                    if m.any():
                        out.append((pert.kind, pert.severity, scope, where, k, float(dl[m].mean()),
                                    float(flip[m].mean()), float(div[m].mean()), int(m.sum())))
    df = pd.DataFrame(out, columns=["perturbation", "severity", "cohort", "position", "seed", "d_loss", "flip_rate",
                                    "state_divergence", "n"])
    agg = df.groupby(["perturbation", "severity", "cohort", "position"], sort=False)
    res = agg.apply(lambda g: pd.Series({
        "d_loss": np.average(g["d_loss"], weights=g["n"]), "flip_rate": np.average(g["flip_rate"], weights=g["n"]),
        "state_divergence": np.average(g["state_divergence"], weights=g["n"]), "n": int(g["n"].sum()),
    }), include_groups=False).reset_index()
    res["n"] = res["n"].astype(np.int64)
    return res


def others_in_race(score: np.ndarray, race: np.ndarray, ok: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-sum-exp and max of the OTHER valid runners' scores in each target row's race. -> (B,), (B,)."""
    n_r = int(race.max()) + 1
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
