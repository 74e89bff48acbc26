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
import os
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from gruviz_core import __version__
from gruviz_core.byo import resolve_factory, wrap_module, wrap_scripted
from gruviz_core.errors import ConfigError, NotFoundError, StoreError
from gruviz_core.features import CONTEXT_NAMES, FEATURE_NAMES, Normaliser, column_index
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU
from gruviz_core.sequences import Sequences
from storage.atomic import publish_dir, read_pointer, remove_tree, write_json_atomic, write_text_atomic
from storage.layout import StoreLayout

__all__ = [
    "ModelSet",
    "sequences_path",
    "stored_sequence_spec",
    "save_sequences",
    "write_model_set",
    "load_model_set",
    "current_model_set",
    "list_model_sets",
    "load_byo",
]

log = logging.getLogger(__name__)  # under storage.*: routed to the Prefect UI like the rest

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



# ------------------------------------------------------------------ sequences


def sequences_path(root: str | Path, snapshot_id: str) -> Path:
    """Where a snapshot's raw sequences are cached: features/<snapshot_id>/sequences.npz."""
    return StoreLayout.at(root).features(snapshot_id) / SEQUENCES_FILE


def stored_sequence_spec(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(feature names, context names) of cached sequences, or None when absent or unreadable."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return tuple(z["feature_names"].tolist()), tuple(z["context_names"].tolist())
    except (OSError, ValueError, KeyError):
        log.warning("sequences at %s unreadable; rebuilding", path)
        return None


def save_sequences(seqs: Sequences, path: Path) -> None:
    """Write sequences atomically (readers see the old file or the whole new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")
    try:
        seqs.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------ training


def _set_id(report_core: dict, results: list) -> str:
    h = hashlib.sha256(json.dumps({k: report_core[k] for k in ("snapshot_id", "seeds")}, sort_keys=True).encode())
    for r in results:
        for k, v in r.state_dict.items():
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{h.hexdigest()[:10]}"


def write_model_set(root, report_core: dict, results: list, norm: Normaliser, cfg: Any, make_current: bool) -> str:
    """Write trained seeds as one model set (tmp dir, then an atomic rename); optionally mark it CURRENT."""
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
    """A registered model set (None = CURRENT), every seed's weights loaded, in eval mode on CPU.

    A damaged set (unreadable JSON, a checkpoint that is not a state dict, non-finite weights) is a
    StoreError naming the file and the fix, never a raw parser error."""
    layout = StoreLayout.at(root)
    set_id = set_id or current_model_set(root)
    if set_id is None:
        raise NotFoundError(f"model registry {layout.models}: no CURRENT model set; run `gruviz train` first")
    d = layout.model_set(set_id)
    if not (d / "manifest.json").exists():
        known = ", ".join(list_model_sets(root)) or "none"
        raise NotFoundError(f"model registry {layout.models}: no model set {set_id!r} (known: {known})")
    meta = _read_set_json(d / "manifest.json", set_id)
    seeds = meta.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise StoreError(f"model set {set_id}: {d / 'manifest.json'} has no list of integer 'seeds' "
                         f"(got {seeds!r}); {_FIX}")
    norm = _parse(d / "normaliser.json", set_id, Normaliser.from_dict)
    models = []
    for seed in seeds:
        sd = d / f"seed_{seed}"
        cfg = _parse(sd / "config.json", set_id, lambda c: ModelConfig(**c))
        module = RaceGRU(cfg)
        try:
            module.load_state_dict(_read_checkpoint(sd / "model.pt", set_id))
        except RuntimeError as exc:  # wrong keys or shapes for this config
            first = str(exc).strip().splitlines()[0]
            raise StoreError(f"model set {set_id}: checkpoint {sd / 'model.pt'} does not fit {sd / 'config.json'} "
                             f"({first}); {_FIX}") from None
        _check_finite(module, sd / "model.pt", set_id)
        models.append(LoadedModel.wrap(module, norm.feature_names, norm.context_names, model_id=f"{set_id}/seed_{seed}"))
    return ModelSet(set_id=set_id, seeds=[int(s) for s in seeds], models=models, normaliser=norm, meta=meta)


_FIX = "retrain the set (`gruviz train`), restore its directory from a backup, or point models/CURRENT at another set"


def _read_set_json(path: Path, set_id: str) -> dict:
    """A model set's JSON file as a dict, or a StoreError naming it."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"model set {set_id}: {path} is missing; {_FIX}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"model set {set_id}: {path} is not readable JSON ({exc}); {_FIX}") from None
    if not isinstance(obj, dict):
        raise StoreError(f"model set {set_id}: {path} holds a {type(obj).__name__}, expected an object; {_FIX}")
    return obj


def _parse(path: Path, set_id: str, build):
    """build(json of path), with a missing or wrong field reported as a StoreError naming the file."""
    try:
        return build(_read_set_json(path, set_id))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"model set {set_id}: {path} has missing or invalid fields ({exc!r}); {_FIX}") from None


def _read_checkpoint(path: Path, set_id: str) -> dict:
    """A checkpoint's state dict, loaded safely (tensors only); anything else a StoreError naming the file."""
    if not path.is_file():
        raise StoreError(f"model set {set_id}: checkpoint {path} is missing; {_FIX}")
    if path.stat().st_size == 0:
        raise StoreError(f"model set {set_id}: checkpoint {path} is empty (0 bytes; an interrupted copy?); {_FIX}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, EOFError, RuntimeError, ValueError... for a bad file
        raise StoreError(f"model set {set_id}: checkpoint {path} is not a PyTorch state dict of tensors "
                         f"({type(exc).__name__}: damaged, truncated or not written by gruviz); {_FIX}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StoreError(f"model set {set_id}: checkpoint {path} holds a {type(state).__name__}, not a state dict "
                         f"of tensors; {_FIX}")
    return state


def _check_finite(module: torch.nn.Module, path: Path, set_id: str) -> None:
    """Every weight finite: a NaN or infinite weight is the checkpoint's fault, said so here."""
    bad = [name for name, t in module.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise StoreError(f"model set {set_id}: checkpoint {path} has non-finite (NaN or inf) weights in "
                         f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} (training diverged or the file "
                         f"was damaged); {_FIX}")


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
