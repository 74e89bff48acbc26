"""Stores the suite builds once (session fixtures in tests/conftest.py) from the project's own producers.

A test that changes a shared store copies it first (`copy_store` into its own tmp dir): the session's copy is
read by every module that asks for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tests.report_fixtures import EVIL_NAME

__all__ = ["make_store", "train_store", "copy_store", "EXPLORE_RUN", "EXPLORE_NAMES"]

EXPLORE_RUN = "explore-run"
"""The run id of conftest's explore_store."""

EXPLORE_NAMES = {3: EVIL_NAME, 5: "Ebony Flash", 7: "Zippy Ebony", 8: "Quick Silver"}
"""Dog names of conftest's explore_store: one that must show as text, two that share a word, one that does not."""


def copy_store(src: Path, dst: Path) -> Path:
    """A private copy of a shared store (its runs, models, forms and pointers), at `dst`."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def make_store(root: Path, *, run_id: str = EXPLORE_RUN, n_dogs: int = 30, n_races: int = 90, field: int = 6,
               hidden: int = 8, layers: int = 1, seeds: int = 2, names: dict[int, str] | None = None) -> Path:
    """A published run under `root` made by the real producers (extract_run, compute_stats, publish_run): random
    GRUs (input weights x4, so that some units saturate) on tiny simulated races."""
    import torch

    from flows.stages.extract import extract_run
    from flows.stages.stats import compute_stats
    from gruviz_core.cohorts import CohortRule
    from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU
    from storage import runs

    feats, ctx = ("time_z", "implied_prob", "won"), ("box", "market_prob")
    rng = np.random.default_rng(0)
    dog = np.concatenate([np.sort(rng.choice(n_dogs, field, replace=False)) for _ in range(n_races)])
    race = np.repeat(np.arange(n_races), field)
    order = np.lexsort((race, dog))
    dog, race = dog[order], race[order]
    sizes = np.bincount(dog, minlength=n_dogs)
    won = (rng.random(len(dog)) < 1 / field).astype(np.float32)
    dog_name = np.array([f"Dog {i}" for i in range(n_dogs)], dtype=object)
    for i, n in (names or {}).items():
        dog_name[i] = n
    inputs = dict(
        seqs_values=(rng.normal(size=(len(dog), len(feats))) * 2).astype(np.float32),
        context=rng.normal(size=(len(dog), len(ctx))).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        dog_id=np.array([f"D{i:03d}" for i in range(n_dogs)], dtype=object),
        dog_name=dog_name,
        race_id=np.array([f"R{r}" for r in race], dtype=object),
        race_date=np.datetime64("2024-01-01") + race.astype("timedelta64[D]"),
        won=won,
        market_prob=rng.dirichlet(np.ones(field), n_races).astype(np.float32).ravel()[order],
    )
    models = []
    for s in range(seeds):
        torch.manual_seed(s)
        m = RaceGRU(ModelConfig(len(feats), len(ctx), hidden_size=hidden, num_layers=layers, seed=s))
        with torch.no_grad():
            m.gru.weight_ih_l0.mul_(4)  # so that some units saturate
        models.append(LoadedModel.wrap(m, feats, ctx, model_id=f"s{s}"))
    meta = {"snapshot_id": "snap-x", "model_set_id": "set-x", "night": "2026-11-26"}
    tmp = extract_run(root, run_id, meta, models, device="cpu", **inputs)
    compute_stats(tmp, rule=CohortRule(w=3, k=2, delta=0.1, theta=0.2, low=0.02))
    return runs.publish_run(root, tmp)


def train_store(root: Path, *, n_dogs: int = 80, seed: int = 5, epochs: int = 2):
    """A store with one snapshot of `n_dogs` simulated dogs (storage.forms through the ingest stage) and one
    trained 1-seed, 4-unit model set, promoted current (flows.stages.train): (root, snapshot_id, TrainReport)."""
    import torch

    from flows.stages.ingest import run as ingest
    from flows.stages.train import train_and_register
    from gruviz_core.synth import simulate
    from gruviz_core.train import TrainConfig

    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    simulate(n_dogs, seed).to_parquet(root / "src.parquet")
    snap = ingest([str(root / "src.parquet")], root).snapshot_id
    cfg = TrainConfig(epochs=epochs, lr=1e-2, batch_rows=4000, chunk_dogs=256)
    report = train_and_register(root, snap, seeds=1, hidden=4, train_config=cfg, promote=True)
    return root, snap, report
