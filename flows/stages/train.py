"""The train stage: K seeds of the built-in model on a snapshot -> one model set in the registry."""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from flows.progress import report
from flows.stages import features
from gruviz_core.errors import ConfigError
from gruviz_core.features import (
    CATEGORICAL,
    ORDER_COLUMNS,
    TRACK_INDEX,
    Normaliser,
    column_index,
    fit_normaliser,
    home_group,
    run_order,
    track_embedding_columns,
    yardstick_probs,
)
from gruviz_core.model import ModelConfig
from gruviz_core.model_set import ModelSet
from gruviz_core.racing import race_codes
from gruviz_core.schema import YARDSTICKS
from gruviz_core.sequences import Sequences
from gruviz_core.train import TrainConfig, TrainData, score_rows, time_windows, train_seed, window_report
from storage.forms import load_snapshot_columns
from storage.registry import write_model_set
from storage.sequences import load_sequences

__all__ = ["TrainReport", "train_and_register", "beats_uniform", "model_set_scores", "snapshot_yardsticks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReport:
    """What a training run produced: the set id and validation metrics of each seed vs the baselines."""

    set_id: str
    """Id of the registered model set."""
    current: bool
    """Whether the set was made CURRENT (it beat the uniform baseline, or promotion was forced)."""
    beats_uniform: bool
    """Mean race log-loss of the seeds on the validation (early-stopping) window below uniform's."""
    snapshot_id: str
    """Forms snapshot it was trained on."""
    seeds: list[int]
    """Seeds trained."""
    cutoff: str
    """Last date of the training period; the early-stopping window follows it."""
    early_stop_end: str
    """Last date of the early-stopping window; races after it (the test window) were never used."""
    n_train_rows: int
    """Runner rows in the training period."""
    n_val_rows: int
    """Runner rows in the validation period."""
    per_seed: dict[str, dict]
    """Seed -> {'model': metrics, 'model_priced': metrics, 'best_epoch', 'epochs', 'seconds'}."""
    market: dict | None
    """Market (renormalised implied probabilities) on the validation rows with prices."""
    uniform: dict
    """1/field size on all validation rows."""
    timings: dict
    """Seconds: features, per seed, per epoch (mean), total."""
    n_test_rows: int = 0
    """Runner rows in the test window (after `early_stop_end`)."""
    test: dict | None = None
    """Test-window metrics (gruviz_core.train.window_report): per seed, the K-seed mean (the production score),
    uniform, and 'vs' each baseline (market; a source's rated price where given) on the same races, as differences."""

    def to_dict(self) -> dict:
        return asdict(self)



def train_and_register(
    root: str | Path,
    snapshot_id: str,
    *,
    seeds: int | Sequence[int] = 3,
    hidden: int = 64,
    layers: int = 1,
    epochs: int | None = None,
    train_config: TrainConfig | None = None,
    context_skip: bool = True,
    context_names: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
    box_track: bool = True,
    workers: int = 1,
    make_current: bool = True,
    promote: bool = False,
    log_fn: Callable[[str], None] | None = None,
    yardsticks: Callable[[Sequences], dict[str, np.ndarray]] | None = None,
) -> TrainReport:
    """Train K seeds of the built-in model on a snapshot, write them as one model set, mark it CURRENT.

    The sanity gate: a set whose seeds do not beat the uniform baseline (1/field size) on the
    validation window is registered but CURRENT stays where it was, unless `promote` forces it.

    `context_names` (default: all) picks the pre-race context the model reads, e.g. all but
    `features.MARKET_CONTEXT` to make the GRU learn from form alone; the market stays a baseline.
    `feature_names` (default: all) picks the race features the GRU reads (ablations). `box_track` adds the
    model's learned box x track table where the context has box one-hots and the track index (which the model
    reads through a learned embedding).
    `workers` > 1 trains seeds in parallel processes (spawned, one torch thread each): the way
    to use several cores, since one GRU's small matrices gain little from intra-op threads.
    `yardsticks` (seqs -> name -> (obs,) win probability, NaN where unknown) adds other forecasters to the
    test-window comparison; by default those the snapshot carries (`schema.YARDSTICKS`, e.g. Iggy's rated price).
    They are never an input.
    """
    t0 = time.perf_counter()
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("train: seeds must be at least 1 (e.g. --seeds 3)")
    cfg = train_config or TrainConfig()
    if epochs is not None:
        cfg = TrainConfig(**{**asdict(cfg), "epochs": int(epochs)})
    seq_path = features.run(root, snapshot_id)
    data, norm, cutoff, es_end = _training_data(seq_path, cfg.val_frac, cfg.test_frac, context_names, feature_names)
    track_col, box_cols = track_embedding_columns(norm.context_names)
    box_cols = box_cols if box_track else ()
    train_rows, val_rows = int(data.train_rows.sum()), int(data.val_rows.sum())
    test_rows = data.test_rows if data.test_rows is not None else np.zeros(len(data.won), dtype=bool)
    t_features = time.perf_counter() - t0
    configs = [
        ModelConfig(len(norm.feature_names), len(norm.context_names), hidden_size=hidden, num_layers=layers,
                    seed=seed, context_skip=context_skip, box_columns=box_cols, track_column=track_col,
                    n_tracks=CATEGORICAL[TRACK_INDEX] if track_col >= 0 else 0)
        for seed in seed_list
    ]
    if workers > 1 and len(seed_list) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(seed_list)), mp_context=ctx) as pool:
            futures = [pool.submit(_train_worker, str(seq_path), cfg, tuple(norm.context_names),
                                   tuple(norm.feature_names), m) for m in configs]
            results = [f.result() for f in futures]
        if log_fn:
            for r in results:
                log_fn(f"seed {r.seed}: {len(r.curve)} epochs, best {r.best_epoch}, {r.seconds:.1f} s")
    else:
        results = [train_seed(data, m, cfg, log=log_fn, on_epoch=_epoch_report(m.seed, cfg.epochs)) for m in configs]
    for r in results:  # early stopping ends a seed before its last epoch: its bar ends full
        last = float(r.curve["val_loss"].iloc[-1]) if len(r.curve) else float("nan")
        report(f"train seed {r.seed}", len(r.curve), len(r.curve), unit="epochs", val_loss=last, best=r.best_epoch)
    per_epoch = [float(r.curve["seconds"].mean()) for r in results]
    timings = {
        "features_s": t_features,
        "per_seed_s": [r.seconds for r in results],
        "per_epoch_s": float(np.mean(per_epoch)),
        "total_s": time.perf_counter() - t0,
    }
    first = results[0].metrics
    sticks = yardsticks(load_sequences(seq_path)) if yardsticks else snapshot_yardsticks(root, snapshot_id, len(data.won))
    test = window_report({str(r.seed): r.scores for r in results}, data, test_rows, sticks)
    report_core = {
        "snapshot_id": snapshot_id, "seeds": seed_list, "cutoff": str(cutoff), "early_stop_end": str(es_end),
        "n_train_rows": train_rows, "n_val_rows": val_rows,
        "per_seed": {
            str(r.seed): {"model": r.metrics["model"], "model_priced": r.metrics.get("model_priced"),
                          "best_epoch": r.best_epoch, "epochs": len(r.curve), "seconds": r.seconds}
            for r in results
        },
        "market": first.get("market"), "uniform": first["uniform"], "timings": timings,
        "n_test_rows": int(test_rows.sum()), "test": test,
    }
    beats = beats_uniform(report_core["per_seed"], report_core["uniform"])
    current = make_current and (beats or promote)
    set_id = write_model_set(root, report_core, results, norm, cfg, current)
    if make_current and not current:
        log.warning("model set %s does not beat the uniform baseline on its validation window; registered, "
                    "not made current (pass --promote to force)", set_id)
    return TrainReport(set_id=set_id, current=current, beats_uniform=beats, **report_core)


def _epoch_report(seed: int, epochs: int) -> Callable[[dict], None]:
    return lambda row: report(f"train seed {seed}", row["epoch"], epochs, unit="epochs", val_loss=row["val_loss"])


def snapshot_yardsticks(root: str | Path, snapshot_id: str, n_obs: int) -> dict[str, np.ndarray]:
    """The snapshot's yardstick columns as win probabilities per sequence row ({} when it has none)."""
    prices = load_snapshot_columns(root, snapshot_id, YARDSTICKS)
    if not yardstick_probs(prices, order=np.arange(len(prices))):  # no price at all (most snapshots)
        return {}
    order = run_order(load_snapshot_columns(root, snapshot_id, ORDER_COLUMNS))  # a few narrow columns
    sticks = yardstick_probs(prices, order=order)
    if any(len(v) != n_obs for v in sticks.values()):  # sequences not built by gruviz's own features
        log.warning("snapshot %s: yardsticks do not line up with the sequences (%d rows); left out", snapshot_id, n_obs)
        return {}
    return sticks


def beats_uniform(per_seed: dict[str, dict], uniform: dict) -> bool:
    """Mean race log-loss of the seeds (validation window) strictly below uniform's; NaN never beats."""
    losses = [float(v["model"]["race_log_loss"]) for v in per_seed.values()]
    mean, base = float(np.mean(losses)) if losses else float("nan"), float(uniform["race_log_loss"])
    return bool(np.isfinite(mean) and np.isfinite(base) and mean < base)


def _training_data(
    seq_path: Path, val_frac: float, test_frac: float, context_names: Sequence[str] | None,
    feature_names: Sequence[str] | None = None,
) -> tuple[TrainData, Normaliser, np.datetime64, np.datetime64]:
    """Sequences -> normalised training arrays, the normaliser (fitted on the training period) and the cutoff."""
    return training_arrays(load_sequences(seq_path), val_frac, test_frac, context_names, feature_names)


def training_arrays(
    seqs: Sequences, val_frac: float, test_frac: float, context_names: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
) -> tuple[TrainData, Normaliser, np.datetime64, np.datetime64]:
    """In-memory sequences -> normalised training arrays, normaliser, last training and early-stopping dates."""
    cutoff, es_end, train_rows, val_rows = time_windows(seqs.race_date, val_frac, test_frac)
    ctx_names = tuple(context_names) if context_names else seqs.context_names
    feat_names = tuple(feature_names) if feature_names else seqs.feature_names
    norm = fit_normaliser(seqs, train_rows).select(feat_names, ctx_names)
    ci = column_index(seqs.context_names, ctx_names, what="train context_names")
    fi = column_index(seqs.feature_names, feat_names, what="train feature_names")
    values, context = norm.apply(seqs.values[:, fi], seqs.context[:, ci])
    second = None
    if "log_place" in seqs.feature_names:  # the race's own place (known after it): a target, not an input
        second = np.isclose(seqs.values[:, seqs.feature_names.index("log_place")], np.log(2.0)).astype(np.float32)
    data = TrainData(
        values=values, context=context, offsets=seqs.offsets, race=race_codes(seqs.race_id),
        won=np.nan_to_num(seqs.won, nan=0.0).astype(np.float32), market_prob=seqs.market_prob,
        train_rows=train_rows, val_rows=val_rows, group=home_group(seqs),
        test_rows=seqs.race_date.astype("datetime64[D]") > es_end, second=second,
    )
    return data, norm, cutoff, es_end


def _train_worker(seq_path: str, cfg: TrainConfig, context_names: tuple[str, ...], feature_names: tuple[str, ...],
                  mcfg: ModelConfig):
    """One seed in a spawned process: rebuild the arrays from the cached sequences, train."""
    data, _, _, _ = _training_data(Path(seq_path), cfg.val_frac, cfg.test_frac, context_names, feature_names)
    return train_seed(data, mcfg, cfg)




def model_set_scores(model_set: ModelSet, seqs: Sequences, *, chunk_dogs: int = 1024) -> np.ndarray:
    """(obs, seed) float32 score of every row under every model of a set (CPU, eval)."""
    values, context = model_set.prepare(seqs)
    return np.stack(
        [score_rows(m.module, values, context, seqs.offsets, chunk_dogs=chunk_dogs) for m in model_set.models], axis=1
    )
