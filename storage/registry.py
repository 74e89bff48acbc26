"""The model registry: sets of K seed models trained together, and bring-your-own models.

    <root>/features/<snapshot_id>/sequences.npz      raw sequences of a snapshot (cache)
    <root>/models/<set_id>/manifest.json             set id, snapshot id, seeds, configs, metrics, timings
    <root>/models/<set_id>/normaliser.json           feature spec + normaliser fitted on the training period
    <root>/models/<set_id>/seed_<k>/model.pt         state_dict
    <root>/models/<set_id>/seed_<k>/config.json      ModelConfig
    <root>/models/<set_id>/seed_<k>/features.json    feature and context names + normaliser
    <root>/models/<set_id>/seed_<k>/curve.parquet    training curve (epoch, train_loss, val_loss, seconds)
    <root>/models/<set_id>/seed_<k>/metrics.json     validation metrics: model, market, uniform
    <root>/models/.tmp/<set_id>.<nonce>/             a set being written (renamed into place when complete)
    <root>/models/CURRENT                            the current set id (written atomically, last)
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
import uuid
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from gruviz_core import __version__
from gruviz_core.byo import resolve_factory, wrap_module, wrap_scripted
from gruviz_core.errors import ConfigError, NotFoundError, StoreError
from gruviz_core.features import CONTEXT_NAMES, FEATURE_NAMES, Normaliser, build_sequences, column_index, fit_normaliser, home_group
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU
from gruviz_core.racing import race_codes
from gruviz_core.sequences import Sequences
from gruviz_core.train import TrainConfig, TrainData, score_rows, time_split, train_seed
from storage.atomic import publish_dir, read_pointer, remove_tree, write_json_atomic, write_text_atomic
from storage.layout import StoreLayout

__all__ = [
    "ModelSet",
    "TrainReport",
    "ensure_sequences",
    "train_and_register",
    "load_model_set",
    "current_model_set",
    "list_model_sets",
    "load_byo",
]

log = logging.getLogger("gruviz.registry")

SEQUENCES_FILE = "sequences.npz"


@dataclass(frozen=True)
class ModelSet:
    """K models with one feature spec and normaliser, ready to run over Sequences."""

    set_id: str
    """Registry id (or 'byo-...' for a model brought from outside)."""
    seeds: list[int]
    """Seed of each model, in the order of `models`."""
    models: list[LoadedModel]
    """One per seed; each wraps its module and the GRU inside."""
    normaliser: Normaliser
    """Column names the models read, and the scaling fitted at training time."""
    meta: dict = field(default_factory=dict)
    """The manifest: snapshot id, configs, metrics, timings, created_at, code version."""

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.normaliser.feature_names

    @property
    def context_names(self) -> tuple[str, ...]:
        return self.normaliser.context_names

    def prepare(self, seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
        """Raw sequences -> (values (obs, F), context (obs, C)) float32, the models' columns, normalised."""
        fi = column_index(seqs.feature_names, self.feature_names, what=f"model set {self.set_id} features")
        ci = column_index(seqs.context_names, self.context_names, what=f"model set {self.set_id} context")
        return self.normaliser.apply(seqs.values[:, fi], seqs.context[:, ci])

    def scores(self, seqs: Sequences, *, chunk_dogs: int = 1024) -> np.ndarray:
        """(obs, seed) float32 score of every row under every model (CPU, eval)."""
        values, context = self.prepare(seqs)
        return np.stack(
            [score_rows(m.module, values, context, seqs.offsets, chunk_dogs=chunk_dogs) for m in self.models], axis=1
        )


@dataclass(frozen=True)
class TrainReport:
    """What a training run produced: the set id and validation metrics of each seed vs the baselines."""

    set_id: str
    """Id of the registered model set (now CURRENT)."""
    snapshot_id: str
    """Forms snapshot it was trained on."""
    seeds: list[int]
    """Seeds trained."""
    cutoff: str
    """Last date of the training period; validation is every later date."""
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

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ sequences


def ensure_sequences(root: str | Path, snapshot_id: str) -> Path:
    """The raw sequences of a snapshot as npz under features/<snapshot_id>/, built once and cached."""
    path = StoreLayout.at(root).features(snapshot_id) / SEQUENCES_FILE
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                names = tuple(z["feature_names"].tolist()), tuple(z["context_names"].tolist())
            if names == (FEATURE_NAMES, CONTEXT_NAMES):
                return path
            log.info("sequences at %s use an older feature spec; rebuilding", path)
        except (OSError, ValueError, KeyError):
            log.warning("sequences at %s unreadable; rebuilding", path)
    from storage.forms import load_snapshot

    seqs = build_sequences(load_snapshot(root, snapshot_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")
    try:
        seqs.save(tmp)
        os.replace(tmp, path)  # same directory: readers see the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------ training


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
    workers: int = 1,
    make_current: bool = True,
    log_fn: Callable[[str], None] | None = None,
) -> TrainReport:
    """Train K seeds of the built-in model on a snapshot, write them as one model set, mark it CURRENT.

    `context_names` (default: all) picks the pre-race context the model reads, e.g. all but
    `features.MARKET_CONTEXT` to make the GRU learn from form alone; the market stays a baseline.
    `workers` > 1 trains seeds in parallel processes (spawned, one torch thread each): the way
    to use several cores, since one GRU's small matrices gain little from intra-op threads.
    """
    t0 = time.perf_counter()
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("train: seeds must be at least 1 (e.g. --seeds 3)")
    cfg = train_config or TrainConfig()
    if epochs is not None:
        cfg = TrainConfig(**{**asdict(cfg), "epochs": int(epochs)})
    seq_path = ensure_sequences(root, snapshot_id)
    data, norm, cutoff = _training_data(seq_path, cfg.val_frac, context_names)
    train_rows, val_rows = int(data.train_rows.sum()), int(data.val_rows.sum())
    t_features = time.perf_counter() - t0
    configs = [
        ModelConfig(len(norm.feature_names), len(norm.context_names), hidden_size=hidden, num_layers=layers,
                    seed=seed, context_skip=context_skip)
        for seed in seed_list
    ]
    if workers > 1 and len(seed_list) > 1:
        del data  # each worker rebuilds it from the cached npz rather than receiving a pickled copy
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(seed_list)), mp_context=ctx) as pool:
            futures = [pool.submit(_train_worker, str(seq_path), cfg, tuple(norm.context_names), m) for m in configs]
            results = [f.result() for f in futures]
        if log_fn:
            for r in results:
                log_fn(f"seed {r.seed}: {len(r.curve)} epochs, best {r.best_epoch}, {r.seconds:.1f} s")
    else:
        results = [train_seed(data, m, cfg, log=log_fn) for m in configs]
    per_epoch = [float(r.curve["seconds"].mean()) for r in results]
    timings = {
        "features_s": t_features,
        "per_seed_s": [r.seconds for r in results],
        "per_epoch_s": float(np.mean(per_epoch)),
        "total_s": time.perf_counter() - t0,
    }
    first = results[0].metrics
    report_core = {
        "snapshot_id": snapshot_id, "seeds": seed_list, "cutoff": str(cutoff),
        "n_train_rows": train_rows, "n_val_rows": val_rows,
        "per_seed": {
            str(r.seed): {"model": r.metrics["model"], "model_priced": r.metrics.get("model_priced"),
                          "best_epoch": r.best_epoch, "epochs": len(r.curve), "seconds": r.seconds}
            for r in results
        },
        "market": first.get("market"), "uniform": first["uniform"], "timings": timings,
    }
    set_id = _write_set(root, report_core, results, norm, cfg, make_current)
    return TrainReport(set_id=set_id, **report_core)


def _training_data(
    seq_path: Path, val_frac: float, context_names: Sequence[str] | None
) -> tuple[TrainData, Normaliser, np.datetime64]:
    """Sequences -> normalised training arrays, the normaliser (fitted on the training period) and the cutoff."""
    seqs = Sequences.load(seq_path)
    cutoff, train_rows, val_rows = time_split(seqs.race_date, val_frac)
    ctx_names = tuple(context_names) if context_names else seqs.context_names
    norm = fit_normaliser(seqs, train_rows).select(seqs.feature_names, ctx_names)
    ci = column_index(seqs.context_names, ctx_names, what="train context_names")
    values, context = norm.apply(seqs.values, seqs.context[:, ci])
    data = TrainData(
        values=values, context=context, offsets=seqs.offsets, race=race_codes(seqs.race_id),
        won=np.nan_to_num(seqs.won, nan=0.0).astype(np.float32), market_prob=seqs.market_prob,
        train_rows=train_rows, val_rows=val_rows, group=home_group(seqs),
    )
    return data, norm, cutoff


def _train_worker(seq_path: str, cfg: TrainConfig, context_names: tuple[str, ...], mcfg: ModelConfig):
    """One seed in a spawned process: rebuild the arrays from the cached npz, train."""
    data, _, _ = _training_data(Path(seq_path), cfg.val_frac, context_names)
    return train_seed(data, mcfg, cfg)


def _set_id(report_core: dict, results: list) -> str:
    h = hashlib.sha256(json.dumps({k: report_core[k] for k in ("snapshot_id", "seeds")}, sort_keys=True).encode())
    for r in results:
        for k, v in r.state_dict.items():
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{h.hexdigest()[:10]}"


def _write_set(root, report_core: dict, results: list, norm: Normaliser, cfg: TrainConfig, make_current: bool) -> str:
    layout = StoreLayout.at(root)
    set_id = _set_id(report_core, results)
    while layout.model_set(set_id).exists():  # same weights trained again within the same second
        set_id = f"{set_id}-{uuid.uuid4().hex[:4]}"
    tmp = layout.models / ".tmp" / f"{set_id}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        spec = {"feature_names": list(norm.feature_names), "context_names": list(norm.context_names),
                "normaliser": norm.to_dict()}
        write_json_atomic(tmp / "normaliser.json", norm.to_dict())
        for r in results:
            d = tmp / f"seed_{r.seed}"
            d.mkdir()
            torch.save(r.state_dict, d / "model.pt")
            write_json_atomic(d / "config.json", asdict(r.config))
            write_json_atomic(d / "features.json", spec)
            r.curve.to_parquet(d / "curve.parquet", index=False)
            write_json_atomic(d / "metrics.json", r.metrics | {"best_epoch": r.best_epoch})
        manifest = {
            "set_id": set_id, "kind": "builtin", "model_class": "gruviz_core.model.RaceGRU",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "code_version": __version__, "train_config": asdict(cfg),
            "model_configs": {str(r.seed): asdict(r.config) for r in results},
            "feature_names": list(norm.feature_names), "context_names": list(norm.context_names),
            **report_core,
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        publish_dir(tmp, layout.model_set(set_id))
    except BaseException:
        remove_tree(tmp)
        raise
    if make_current:
        write_text_atomic(layout.models / "CURRENT", set_id + "\n")
    return set_id


# ------------------------------------------------------------------ loading


def current_model_set(root: str | Path) -> str | None:
    """The id in models/CURRENT, or None before any training."""
    return read_pointer(StoreLayout.at(root).models / "CURRENT")


def list_model_sets(root: str | Path) -> list[str]:
    """Ids of all complete model sets, oldest first."""
    models = StoreLayout.at(root).models
    return sorted(p.name for p in models.iterdir() if (p / "manifest.json").exists()) if models.exists() else []


def load_model_set(root: str | Path, set_id: str | None = None) -> ModelSet:
    """A registered model set (None = CURRENT), every seed's weights loaded, in eval mode on CPU."""
    layout = StoreLayout.at(root)
    set_id = set_id or current_model_set(root)
    if set_id is None:
        raise NotFoundError(f"model registry {layout.models}: no CURRENT model set; run `gruviz train` first")
    d = layout.model_set(set_id)
    if not (d / "manifest.json").exists():
        known = ", ".join(list_model_sets(root)) or "none"
        raise NotFoundError(f"model registry {layout.models}: no model set {set_id!r} (known: {known})")
    meta = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    norm = Normaliser.from_dict(json.loads((d / "normaliser.json").read_text(encoding="utf-8")))
    models = []
    for seed in meta["seeds"]:
        sd = d / f"seed_{seed}"
        cfg = ModelConfig(**json.loads((sd / "config.json").read_text(encoding="utf-8")))
        module = RaceGRU(cfg)
        try:
            module.load_state_dict(torch.load(sd / "model.pt", map_location="cpu", weights_only=True))
        except (OSError, RuntimeError) as exc:
            raise StoreError(f"model set {set_id}: checkpoint {sd / 'model.pt'} unreadable ({exc}); retrain the set") from exc
        models.append(LoadedModel.wrap(module, norm.feature_names, norm.context_names, model_id=f"{set_id}/seed_{seed}"))
    return ModelSet(set_id=set_id, seeds=[int(s) for s in meta["seeds"]], models=models, normaliser=norm, meta=meta)


def load_byo(
    *,
    script: str | Path | Sequence[str | Path] | None = None,
    factory: str | None = None,
    state_dict: str | Path | Sequence[str | Path] | None = None,
    factory_kwargs: dict[str, Any] | None = None,
    gru_path: str | None = None,
    feature_names: Sequence[str] | None = None,
    context_names: Sequence[str] | None = None,
    normaliser: Normaliser | dict | str | Path | None = None,
    set_id: str | None = None,
) -> ModelSet:
    """A model set from outside: TorchScript file(s), or `module:factory` + state dict file(s) (one per seed).

    `feature_names`/`context_names` (default: all of gruviz's) are the columns the model reads, in its
    order; `normaliser` (a Normaliser, its dict or a JSON path) scales them, default none (missing -> 0).
    """
    feats = tuple(feature_names or FEATURE_NAMES)
    ctx = tuple(context_names or CONTEXT_NAMES)
    column_index(FEATURE_NAMES, feats, what="bring-your-own feature spec")
    column_index(CONTEXT_NAMES, ctx, what="bring-your-own context spec")
    norm = _byo_normaliser(normaliser, feats, ctx)
    models: list[LoadedModel] = []
    if (script is None) == (factory is None):
        raise ConfigError("load_byo: give exactly one of script= (TorchScript file) or factory= ('module:callable')")
    if script is not None:
        paths = [Path(p) for p in ([script] if isinstance(script, (str, Path)) else script)]
        for i, p in enumerate(paths):
            if not p.exists():
                raise NotFoundError(f"load_byo: TorchScript file {p} does not exist")
            with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; still the format users hold
                warnings.simplefilter("ignore", DeprecationWarning)
                scripted = torch.jit.load(str(p), map_location="cpu")
            models.append(wrap_scripted(scripted, feats, ctx, gru_path=gru_path, model_id=f"{p.name}#{i}"))
        source = {"script": [str(p) for p in paths]}
    else:
        make = resolve_factory(factory)
        paths = [Path(p) for p in ([state_dict] if isinstance(state_dict, (str, Path)) else (state_dict or []))]
        for i, p in enumerate(paths or [None]):
            module = make(**(factory_kwargs or {}))
            if p is not None:
                if not p.exists():
                    raise NotFoundError(f"load_byo: state dict file {p} does not exist")
                module.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
            models.append(wrap_module(module, feats, ctx, gru_path=gru_path, model_id=f"{factory}#{i}"))
        source = {"factory": factory, "state_dict": [str(p) for p in paths], "factory_kwargs": factory_kwargs or {}}
    sid = set_id or "byo-" + hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()[:10]
    meta = {"set_id": sid, "kind": "byo", "seeds": list(range(len(models))), "feature_names": list(feats),
            "context_names": list(ctx), "gru_path": models[0].gru_path, **source}
    return ModelSet(set_id=sid, seeds=list(range(len(models))), models=models, normaliser=norm, meta=meta)


def _byo_normaliser(normaliser, feats: tuple[str, ...], ctx: tuple[str, ...]) -> Normaliser:
    if normaliser is None:
        return Normaliser.identity(feats, ctx)
    if isinstance(normaliser, (str, Path)):
        normaliser = json.loads(Path(normaliser).read_text(encoding="utf-8"))
    if isinstance(normaliser, dict):
        normaliser = Normaliser.from_dict(normaliser)
    return normaliser.select(feats, ctx)
