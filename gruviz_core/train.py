"""Training the built-in race model: conditional-logit loss within races, time split, early stopping.

Batches are groups of whole dog histories (dogs grouped by home track, so most runners of a
race share a batch). The loss of a batch is the conditional logit over the runners of each
race present in it: P(winner | the winner is among the runners present) = softmax over those
runners. Under the conditional-logit model that is an exact conditional likelihood, so a race
split across batches still gives an unbiased term; races without their winner in the batch, or
with a single runner present, give none. Inside a batch, dogs are sorted by length and run in
padded chunks (the GRU is causal: padding after a dog's last race changes none of its scores).

Deterministic per seed on CPU: weights from `torch.manual_seed(seed)`, batch order from
`numpy.random.default_rng(seed)`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from gruviz_core.errors import ConfigError
from gruviz_core.model import ModelConfig, RaceGRU
from gruviz_core.racing import (
    brier,
    hit_rate,
    race_codes,
    race_softmax,
    renormalise,
    uniform_probs,
    win_log_loss,
)

__all__ = [
    "TrainConfig",
    "TrainData",
    "SeedResult",
    "time_split",
    "time_windows",
    "conditional_logit_nll",
    "score_rows",
    "win_metrics",
    "validation_metrics",
    "window_report",
    "train_seed",
]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation knobs; the defaults train three seeds on the 509k-row Iggy data in minutes on 2 cores."""

    epochs: int = 30
    """Upper bound on passes over the training period; early stopping usually ends sooner."""
    lr: float = 3e-3
    """Adam learning rate."""
    weight_decay: float = 1e-5
    """Adam L2 penalty."""
    batch_rows: int = 32768
    """Training rows per optimisation step (whole dogs, grouped by home track)."""
    chunk_dogs: int = 512
    """Dogs per padded GRU call inside a step, sorted by length to keep padding small."""
    patience: int = 3
    """Epochs without a better validation loss before stopping; the best epoch's weights are kept."""
    min_delta: float = 2e-4
    """Smallest drop of the validation loss (nats per race) that counts as better."""
    val_frac: float = 0.15
    """Share of race dates in the early-stopping window (after the training period)."""
    test_frac: float = 0.2
    """Share of the most recent race dates held out entirely (after the early-stopping window): never used
    to fit or to choose the epoch, so the nightly report can compare cohorts on them out of sample."""
    grad_clip: float = 1.0
    """Max gradient norm per step."""
    plateau_factor: float = 1.0
    """Learning rate multiplied by this after each epoch that does not improve the early-stopping loss (1: constant)."""
    place_weight: float = 0.0
    """Weight of a top-2 Plackett-Luce term in the loss: -log P(second | the winner is out) among the other
    runners present, for races whose second is known (`TrainData.second`). 0: the win term only. Early stopping
    always watches the win term alone."""
    threads: int | None = 1
    """Torch intra-op threads while training (None: leave as is). The GRU's matrices are small, and on a
    shared machine two threads wait on each other (measured 30x slower under load); train seeds in
    parallel processes instead (`train_and_register(workers=...)`)."""


@dataclass(frozen=True)
class TrainData:
    """Everything a training run reads, as flat normalised arrays."""

    values: np.ndarray
    """(obs, F) float32 normalised race features."""
    context: np.ndarray
    """(obs, C) float32 normalised pre-race context."""
    offsets: np.ndarray
    """(dog + 1,) int64 row offsets; rows of a dog in date order."""
    race: np.ndarray
    """(obs,) int64 race code."""
    won: np.ndarray
    """(obs,) float32 1 won, 0 lost."""
    market_prob: np.ndarray
    """(obs,) float32 market's renormalised implied probability; NaN if the race lacks prices."""
    train_rows: np.ndarray
    """(obs,) bool: in the training period (a prefix of each dog's rows)."""
    val_rows: np.ndarray
    """(obs,) bool: in the validation period."""
    group: np.ndarray
    """(dog,) int64 batch group (home track bucket)."""
    test_rows: np.ndarray | None = None
    """(obs,) bool: in the test window (after the early-stopping window; never fitted on or used to stop)."""
    second: np.ndarray | None = None
    """(obs,) float32 1 came second, 0 did not or unknown (for the place term of the loss); None: unknown."""


@dataclass(frozen=True)
class SeedResult:
    """One trained seed."""

    seed: int
    """Seed of init and batch order."""
    config: ModelConfig
    """Architecture of the model."""
    state_dict: dict = field(repr=False)
    """Weights at the best validation epoch."""
    curve: pd.DataFrame = field(repr=False)
    """Per epoch: epoch, batch_loss (mean over steps, races split across batches count their runners present),
    train_loss and val_loss (conditional-logit NLL per whole race, after the epoch), seconds."""
    best_epoch: int
    """Epoch (1-based) whose weights were kept."""
    metrics: dict
    """Validation metrics: {'model', 'uniform', 'market', 'model_priced'} -> win_metrics dict."""
    seconds: float
    """Wall time of training this seed."""
    scores: np.ndarray | None = field(default=None, repr=False)
    """(obs,) float32 score of every row under the kept weights, so the K seeds' mean can be scored without
    running the models again."""


def time_split(race_date: np.ndarray, val_frac: float) -> tuple[np.datetime64, np.ndarray, np.ndarray]:
    """Last training date, and (obs,) bool train / validation masks: the most recent `val_frac` of dates held out."""
    if not 0.0 < val_frac < 1.0:
        raise ConfigError(f"train: val_frac={val_frac} must be between 0 and 1 (e.g. 0.15)")
    dates = np.unique(race_date.astype("datetime64[D]"))
    if len(dates) < 2:
        raise ConfigError(f"train: races on {len(dates)} date(s); a time split needs at least 2 dates")
    n_train = min(max(int(round(len(dates) * (1.0 - val_frac))), 1), len(dates) - 1)
    cutoff = dates[n_train - 1]
    train = race_date.astype("datetime64[D]") <= cutoff
    return cutoff, train, ~train


def time_windows(
    race_date: np.ndarray, val_frac: float, test_frac: float
) -> tuple[np.datetime64, np.datetime64, np.ndarray, np.ndarray]:
    """Train | early-stopping | test windows by date: (last training date, last early-stopping date,
    train (obs,) bool, early-stopping (obs,) bool). Rows after the second date are the test window."""
    if not 0.0 <= test_frac < 1.0 or not 0.0 < val_frac < 1.0 or val_frac + test_frac >= 1.0:
        raise ConfigError(f"train: val_frac={val_frac}, test_frac={test_frac}: each in [0, 1), val_frac > 0 "
                          "and together below 1 (e.g. 0.15 and 0.2)")
    dates = np.unique(race_date.astype("datetime64[D]"))
    if len(dates) < 3 and test_frac > 0:
        raise ConfigError(f"train: races on {len(dates)} date(s); train, early-stopping and test windows need 3")
    n_test = min(int(round(len(dates) * test_frac)), len(dates) - 2) if test_frac > 0 else 0
    kept = dates[: len(dates) - n_test]
    cutoff, _, _ = time_split(kept, val_frac / (1.0 - test_frac))
    es_end = kept[-1]
    d = race_date.astype("datetime64[D]")
    return cutoff, es_end, d <= cutoff, (d > cutoff) & (d <= es_end)


def conditional_logit_nll(scores: torch.Tensor, race: torch.Tensor, won: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum over races of -log softmax(winner) among the runners present, and the number of races counted.

    scores, won: (n,) float; race: (n,) int64 codes 0..R-1. Dead heats share the winner's term.
    """
    n_races = int(race.max()) + 1
    top = torch.full((n_races,), -torch.inf, dtype=scores.dtype)
    top = top.scatter_reduce(0, race, scores.detach(), reduce="amax", include_self=True)
    tot = torch.zeros(n_races, dtype=scores.dtype).index_add(0, race, torch.exp(scores - top[race]))
    lse = top + torch.log(tot)  # (R,)
    n_won = torch.zeros(n_races, dtype=scores.dtype).index_add(0, race, won)
    n_run = torch.bincount(race, minlength=n_races)
    ok = (n_won > 0) & (n_run >= 2)
    per_race = -torch.zeros(n_races, dtype=scores.dtype).index_add(0, race, won * (scores - lse[race]))
    per_race = per_race / n_won.clamp(min=1.0)
    return per_race[ok].sum(), int(ok.sum())


def _padded_index(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row index (B, T) (0 where padded) and mask (B, T) for dogs' first `lengths` rows."""
    t_max = int(lengths.max())
    mask = np.arange(t_max)[None, :] < lengths[:, None]
    idx = np.where(mask, starts[:, None] + np.arange(t_max)[None, :], 0)
    return idx, mask


def _forward_rows(
    module: nn.Module, values: torch.Tensor, context: torch.Tensor,
    starts: np.ndarray, lengths: np.ndarray, chunk_dogs: int,
) -> tuple[torch.Tensor, np.ndarray]:
    """Scores of the given dogs' first `lengths` rows, length-sorted padded chunks -> (n,) scores, (n,) row index."""
    order = np.argsort(-lengths, kind="stable")
    scores, rows = [], []
    for lo in range(0, len(order), chunk_dogs):
        sel = order[lo:lo + chunk_dogs]
        idx, mask = _padded_index(starts[sel], lengths[sel])
        ti, tm = torch.from_numpy(idx), torch.from_numpy(mask)
        x = values[ti] * tm[..., None]  # (B, T, F), zero padding
        c = context[ti] * tm[..., None]  # (B, T, C)
        scores.append(module(x, c)[tm])
        rows.append(idx[mask])
    return torch.cat(scores), np.concatenate(rows)


def score_rows(module: nn.Module, values: np.ndarray, context: np.ndarray, offsets: np.ndarray,
               *, chunk_dogs: int = 1024) -> np.ndarray:
    """Every row's score under `module` (eval, no grad). values (obs, F), context (obs, C) -> (obs,) float32."""
    out = np.full(len(values), np.nan, dtype=np.float32)
    lengths = np.diff(offsets)
    keep = lengths > 0
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            s, rows = _forward_rows(
                module, torch.from_numpy(np.ascontiguousarray(values)), torch.from_numpy(np.ascontiguousarray(context)),
                offsets[:-1][keep], lengths[keep], chunk_dogs,
            )
    finally:
        module.train(was_training)
    out[rows] = s.numpy()
    return out


def win_metrics(p: np.ndarray, won: np.ndarray, race: np.ndarray) -> dict:
    """Log-loss, Brier (per runner), winner hit rate and race log-loss (-log p of the winner) of win probabilities."""
    won = np.asarray(won, dtype=np.float64)
    race = race_codes(race)
    p_win = np.bincount(race, weights=won * np.asarray(p, dtype=np.float64))
    has_winner = np.bincount(race, weights=won) > 0
    return {
        "log_loss": float(win_log_loss(p, won).mean()),
        "brier": float(brier(p, won).mean()),
        "hit_rate": hit_rate(np.asarray(p), won, race),
        "race_log_loss": float(-np.log(np.clip(p_win[has_winner], 1e-12, 1.0)).mean()),
        "n_rows": int(len(p)),
        "n_races": int(race.max() + 1) if len(race) else 0,
    }


def validation_metrics(scores: np.ndarray, data: TrainData) -> dict:
    """Model, uniform and market metrics on the validation races; market and 'model_priced' on the priced rows only."""
    rows = data.val_rows
    race = race_codes(data.race[rows])
    won = data.won[rows]
    p_model = race_softmax(scores[rows], race)
    priced = np.isfinite(data.market_prob[rows])
    out = {"model": win_metrics(p_model, won, race), "uniform": win_metrics(uniform_probs(race), won, race)}
    if priced.any():
        out["market"] = win_metrics(data.market_prob[rows][priced], won[priced], race[priced])
        out["model_priced"] = win_metrics(p_model[priced], won[priced], race[priced])
    return out


def window_report(
    seed_scores: dict[str, np.ndarray], data: TrainData, rows: np.ndarray, yardsticks: dict[str, np.ndarray] | None = None,
) -> dict:
    """Metrics of each seed and of the K-seed mean (the production score) on `rows`, beside the baselines.

    seed_scores: seed -> (obs,) scores. Each seed's probabilities come from a softmax within the race;
    the ensemble is the mean of those probabilities. yardsticks: name -> (obs,) win probability of another
    forecaster (e.g. a source's own rated price, renormalised within the race here; NaN where unknown).
    'vs' compares the ensemble with each baseline on the same races only (those where the baseline
    prices every runner): {'baseline', 'model', 'diff' (model - baseline)}.
    """
    rows = np.asarray(rows, dtype=bool)
    if not rows.any():
        return {}
    race = race_codes(data.race[rows])
    won = data.won[rows].astype(np.float64)
    probs = {k: race_softmax(v[rows], race) for k, v in seed_scores.items()}
    ens = np.mean(np.stack(list(probs.values()), axis=1), axis=1)
    out: dict = {
        "per_seed": {k: win_metrics(p, won, race) for k, p in probs.items()},
        "ensemble": win_metrics(ens, won, race),
        "uniform": win_metrics(uniform_probs(race), won, race),
    }
    baselines = {"market": data.market_prob[rows].astype(np.float64)}
    baselines |= {k: renormalise(np.asarray(v, dtype=np.float64)[rows], race) for k, v in (yardsticks or {}).items()}
    baselines["uniform"] = uniform_probs(race)
    out["vs"] = {}
    for name, p in baselines.items():
        bad = np.bincount(race, weights=~np.isfinite(p), minlength=int(race.max()) + 1) > 0
        keep = ~bad[race]
        if not keep.any():
            continue
        sub = race_codes(race[keep])
        b, m = win_metrics(p[keep], won[keep], sub), win_metrics(ens[keep], won[keep], sub)
        out["vs"][name] = {"baseline": b, "model": m, "diff": {k: m[k] - b[k] for k in _METRIC_KEYS}}
    return out


_METRIC_KEYS = ("log_loss", "brier", "hit_rate", "race_log_loss")


def _race_loss(scores: np.ndarray, data: TrainData, rows: np.ndarray) -> float:
    """Conditional-logit NLL per race over whole races (all runners present) of the given rows."""
    race = race_codes(data.race[rows])
    loss, n = conditional_logit_nll(
        torch.from_numpy(scores[rows].astype(np.float64)), torch.from_numpy(race),
        torch.from_numpy(data.won[rows].astype(np.float64)),
    )
    return float(loss) / max(n, 1)


def _fit_context_skip(model: RaceGRU, context: torch.Tensor, won: torch.Tensor, data: TrainData) -> None:
    """Warm start: the conditional logit on the context alone (convex; full batch L-BFGS on the training races).

    The GRU and head then learn the correction to it, instead of spending epochs rediscovering
    that the market's log-odds are the strongest single input.
    """
    rows = torch.from_numpy(np.flatnonzero(data.train_rows))
    race = torch.from_numpy(race_codes(data.race[data.train_rows]))
    skip = model.skip
    c, w = model.dense_context(context[rows]), won[rows]
    opt = torch.optim.LBFGS(skip.parameters(), lr=1.0, max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss, n = conditional_logit_nll(skip(c).squeeze(-1), race, w)
        loss = loss / max(n, 1)
        loss.backward()
        return loss

    opt.step(closure)


def _batches(data: TrainData, train_len: np.ndarray, rng: np.random.Generator, batch_rows: int) -> list[np.ndarray]:
    """Dogs in a random order of home groups (random within a group), cut into steps of ~batch_rows rows."""
    dogs = np.flatnonzero(train_len > 0)
    groups = np.unique(data.group[dogs])
    rank = np.empty(int(groups.max()) + 1 if len(groups) else 0, dtype=np.int64)
    rank[groups] = rng.permutation(len(groups))
    order = dogs[np.lexsort((rng.random(len(dogs)), rank[data.group[dogs]]))]
    cum = np.cumsum(train_len[order])
    cuts = np.searchsorted(cum, np.arange(batch_rows, cum[-1], batch_rows), side="right") if len(cum) else []
    return [b for b in np.split(order, cuts) if len(b)]


def train_seed(data: TrainData, model_cfg: ModelConfig, cfg: TrainConfig, *, log=None, on_epoch=None) -> SeedResult:
    """Train one seed of RaceGRU on the training period; early stopping on the validation races.
    `on_epoch(row)` gets each epoch's curve row (epoch, batch_loss, train_loss, val_loss, seconds)."""
    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train_seed(data, model_cfg, cfg, log, on_epoch)
    finally:
        torch.set_num_threads(before)


def _train_seed(data: TrainData, model_cfg: ModelConfig, cfg: TrainConfig, log, on_epoch=None) -> SeedResult:
    t0 = time.perf_counter()
    seed = model_cfg.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = RaceGRU(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    values = torch.from_numpy(np.ascontiguousarray(data.values))
    context = torch.from_numpy(np.ascontiguousarray(data.context))
    won = torch.from_numpy(data.won.astype(np.float32))
    won_np = data.won.astype(np.float32)
    second = (torch.from_numpy(np.asarray(data.second, dtype=np.float32))
              if cfg.place_weight > 0 and data.second is not None else None)
    starts = data.offsets[:-1]
    dog_of_row = np.repeat(np.arange(len(starts)), np.diff(data.offsets))
    train_len = np.bincount(dog_of_row[data.train_rows], minlength=len(starts)).astype(np.int64)
    if train_len.sum() == 0:
        raise ConfigError("train: no rows in the training period; give more dates or a smaller val_frac")
    if model.skip is not None:
        _fit_context_skip(model, context, won, data)
    best, best_loss, best_epoch, stale, curve = None, np.inf, 0, 0, []
    for epoch in range(1, cfg.epochs + 1):
        te = time.perf_counter()
        model.train()
        losses = []
        for batch in _batches(data, train_len, rng, cfg.batch_rows):
            s, rows = _forward_rows(model, values, context, starts[batch], train_len[batch], cfg.chunk_dogs)
            race = torch.from_numpy(np.unique(data.race[rows], return_inverse=True)[1].astype(np.int64))
            loss_sum, n = conditional_logit_nll(s, race, won[rows])
            if n == 0:
                continue
            loss = loss_sum / n
            if second is not None:  # top-2 Plackett-Luce: the second among the runners left after the winner
                rest = torch.from_numpy(won_np[rows] == 0)
                p_sum, n_p = conditional_logit_nll(s[rest], race[rest], second[rows][rest]) if rest.any() else (0, 0)
                if n_p:
                    loss = loss + cfg.place_weight * p_sum / n_p
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
        all_scores = score_rows(model, data.values, data.context, data.offsets)
        val_loss = _race_loss(all_scores, data, data.val_rows)
        curve.append({"epoch": epoch, "batch_loss": float(np.mean(losses)) if losses else np.nan,
                      "train_loss": _race_loss(all_scores, data, data.train_rows),
                      "val_loss": val_loss, "seconds": time.perf_counter() - te})
        if log:
            log(f"seed {seed} epoch {epoch}: train {curve[-1]['train_loss']:.4f} val {val_loss:.4f}")
        if on_epoch:
            on_epoch(dict(curve[-1]))
        if val_loss < best_loss - cfg.min_delta:
            best, best_loss, best_epoch, stale = copy.deepcopy(model.state_dict()), val_loss, epoch, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
            for g in opt.param_groups:
                g["lr"] *= cfg.plateau_factor
    model.load_state_dict(best if best is not None else model.state_dict())
    scores = score_rows(model, data.values, data.context, data.offsets)
    return SeedResult(
        seed=seed, config=model_cfg, state_dict=model.state_dict(), curve=pd.DataFrame(curve),
        best_epoch=best_epoch, metrics=validation_metrics(scores, data), seconds=time.perf_counter() - t0,
        scores=scores,
    )
