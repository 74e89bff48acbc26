"""The model registry: sets of K seed models trained together, and bring-your-own models.

    <root>/models/<set_id>/manifest.json             set id, snapshot id, seeds, configs, metrics, timings
    <root>/models/<set_id>/normaliser.json           feature spec + normaliser fitted on the training period
    <root>/models/<set_id>/seed_<k>/model.pt         state_dict
    <root>/models/<set_id>/seed_<k>/config.json      ModelConfig
    <root>/models/<set_id>/seed_<k>/features.json    feature and context names + normaliser
    <root>/models/<set_id>/seed_<k>/curve.parquet    training curve (epoch, train_loss, val_loss, seconds)
    <root>/models/<set_id>/seed_<k>/metrics.json     validation metrics: model, market, uniform
    <root>/models/<set_id>/seed_<k>/model.ts         a registered TorchScript model (kind byo, format torchscript)
    <root>/models/.tmp/<set_id>.<nonce>/             a set being written (renamed into place when complete)
    <root>/models/CURRENT                            the current set id (written atomically, last)

On object storage (storage.objects) a set is written under its final prefix models/<set_id>/ directly,
manifest.json last: readers only take a set with a manifest, so a half-written set is never seen.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from gruviz_core import __version__
from gruviz_core.errors import ConfigError, NotFoundError, StoreError
from gruviz_core.features import Normaliser
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU
from gruviz_core.model_set import ModelSet, build_byo, non_finite_weights, spec_of
from storage.layout import StoreLayout
from storage.store import Store, StorePath, json_bytes, open_store

__all__ = [
    "write_model_set",
    "load_model_set",
    "current_model_set",
    "list_model_sets",
    "model_set_manifest",
    "model_set_normaliser",
    "describe_model_sets",
    "save_byo_set",
]

log = logging.getLogger(__name__)  # under storage.*: routed to the Prefect UI like the rest

# ------------------------------------------------------------------ training


def _set_id(report_core: dict, results: list) -> str:
    h = hashlib.sha256(json.dumps({k: report_core[k] for k in ("snapshot_id", "seeds")}, sort_keys=True).encode())
    for r in results:
        for k, v in r.state_dict.items():
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{h.hexdigest()[:10]}"


_MODELS = "models"
_CURRENT = f"{_MODELS}/CURRENT"
_MANIFEST = "manifest.json"
"""Written last into a model set: a set without it does not exist for readers."""


def _stage_set(store: Store, set_id: str) -> str:
    """Where a new set is written (Store.stage: a temporary directory, or on object storage its own prefix,
    claimed so that of two registrations of one name at once exactly one writes it)."""
    try:
        return store.stage(f"{_MODELS}/{set_id}")
    except StoreError:
        raise ConfigError(f"model registry {store.location(_MODELS)}: a model set {set_id!r} exists already (or is "
                          "being registered now); choose another --name") from None


def _commit_set(store: Store, staged: str, set_id: str, manifest: dict, make_current: bool) -> str:
    """Publish the set with its manifest written last, then (optionally) point CURRENT at it."""
    try:
        store.publish(staged, f"{_MODELS}/{set_id}", marker=_MANIFEST, body=json_bytes(manifest))
    except BaseException:
        store.discard(staged)
        raise
    if make_current:
        store.set_pointer(_CURRENT, set_id)
    return set_id


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_model_set(root, report_core: dict, results: list, norm: Normaliser, cfg: Any, make_current: bool) -> str:
    """Write trained seeds as one model set (staged, then published whole); optionally mark it CURRENT."""
    store = open_store(root)
    set_id = _set_id(report_core, results)
    while store.exists(f"{_MODELS}/{set_id}"):  # same weights trained again within the same second
        set_id = f"{set_id}-{uuid.uuid4().hex[:4]}"
    staged = _stage_set(store, set_id)
    try:
        spec = {"feature_names": list(norm.feature_names), "context_names": list(norm.context_names),
                "normaliser": norm.to_dict()}
        store.write_json(f"{staged}/normaliser.json", norm.to_dict())
        for r in results:
            d = f"{staged}/seed_{r.seed}"
            store.write_bytes(f"{d}/model.pt", _torch_bytes(r.state_dict))
            store.write_json(f"{d}/config.json", asdict(r.config))
            store.write_json(f"{d}/features.json", spec)
            store.write_parquet(f"{d}/curve.parquet", r.curve)
            store.write_json(f"{d}/metrics.json", r.metrics | {"best_epoch": r.best_epoch})
        manifest = {
            "set_id": set_id, "kind": "builtin", "model_class": "gruviz_core.model.RaceGRU",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "code_version": __version__, "train_config": asdict(cfg),
            "model_configs": {str(r.seed): asdict(r.config) for r in results},
            "feature_names": list(norm.feature_names), "context_names": list(norm.context_names),
            **report_core,
        }
    except BaseException:
        store.discard(staged)
        raise
    return _commit_set(store, staged, set_id, manifest, make_current)


# ------------------------------------------------------------------ loading


def current_model_set(root: str | StorePath) -> str | None:
    """The id in models/CURRENT, or None before any training."""
    return open_store(root).pointer(_CURRENT)


def list_model_sets(root: str | StorePath) -> list[str]:
    """Ids of all complete model sets, oldest first."""
    store = open_store(root)
    return [n for n in store.list(_MODELS) if not n.startswith(".") and store.exists(f"{_MODELS}/{n}/{_MANIFEST}")]


def load_model_set(root: str | StorePath, set_id: str | None = None) -> ModelSet:
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
    if meta.get("kind") == "byo":
        return _load_registered_byo(d, meta, norm)
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


def _read_set_json(path: StorePath, set_id: str) -> dict:
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


def _parse(path: StorePath, set_id: str, build):
    """build(json of path), with a missing or wrong field reported as a StoreError naming the file."""
    try:
        return build(_read_set_json(path, set_id))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"model set {set_id}: {path} has missing or invalid fields ({exc!r}); {_FIX}") from None


def _read_checkpoint(path: StorePath, set_id: str) -> dict:
    """A checkpoint's state dict, loaded safely (tensors only); anything else a StoreError naming the file."""
    if not path.is_file():
        raise StoreError(f"model set {set_id}: checkpoint {path} is missing; {_FIX}")
    if path.stat().st_size == 0:
        raise StoreError(f"model set {set_id}: checkpoint {path} is empty (0 bytes; an interrupted copy?); {_FIX}")
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, EOFError, RuntimeError, ValueError... for a bad file
        raise StoreError(f"model set {set_id}: checkpoint {path} is not a PyTorch state dict of tensors "
                         f"({type(exc).__name__}: damaged, truncated or not written by gruviz); {_FIX}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StoreError(f"model set {set_id}: checkpoint {path} holds a {type(state).__name__}, not a state dict "
                         f"of tensors; {_FIX}")
    return state


def _check_finite(module: torch.nn.Module, path: StorePath, set_id: str) -> None:
    """Every weight finite: a NaN or infinite weight is the checkpoint's fault, said so here."""
    if bad := non_finite_weights(module):
        raise StoreError(f"model set {set_id}: checkpoint {path} has non-finite (NaN or inf) weights in {bad} "
                         f"(training diverged or the file was damaged); {_FIX}")


# ------------------------------------------------------------------ registered bring-your-own sets

_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def save_byo_set(
    root: str | StorePath, ms: ModelSet, *, name: str | None = None, trained_until: str | None = None,
    validation: dict | None = None, snapshot_id: str | None = None, make_current: bool = False,
) -> str:
    """Copy a validated bring-your-own set's weights into the registry (tmp dir, then an atomic rename).

    The manifest records the source (factory or TorchScript), the feature spec (the callable and its
    version, if any), the GRU path, `trained_until` (None: comparisons may be in sample) and the
    validation on a sample. Returns the set id; marks it CURRENT if asked.
    """
    store = open_store(root)
    set_id = name or f"byo-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{ms.set_id.removeprefix('byo-')}"
    if not _SET_NAME.match(set_id):
        raise ConfigError(f"model set name {set_id!r}: use letters, digits, '.', '_' and '-' (at most 100), "
                          "starting with a letter or digit")
    if store.exists(f"{_MODELS}/{set_id}"):
        raise ConfigError(f"model registry {store.location(_MODELS)}: a model set {set_id!r} exists already (or is "
                          "being registered now); choose another --name")
    script = "script" in ms.meta
    sources = [Path(p) for p in (ms.meta["script"] if script else ms.meta.get("state_dict", []))]
    staged = _stage_set(store, set_id)
    try:
        files = []
        for k in ms.seeds:
            d = f"seed_{k}"
            if script or sources:
                name = f"{d}/model.ts" if script else f"{d}/model.pt"
                store.write_bytes(f"{staged}/{name}", sources[k].read_bytes())
                files.append(name)
            store.write_json(f"{staged}/{d}/features.json",
                             ms.feature_spec.to_dict() | {"normaliser": ms.normaliser.to_dict()})
        store.write_json(f"{staged}/normaliser.json", ms.normaliser.to_dict())
        gru = ms.models[0].gru
        manifest = {
            **{k: v for k, v in ms.meta.items() if k not in ("set_id", "script", "state_dict")},
            "set_id": set_id, "kind": "byo", "format": "torchscript" if script else "state_dict",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "code_version": __version__,
            "files": files, "source_files": [str(p.resolve()) for p in sources],
            "seeds": list(ms.seeds), "layers": gru.num_layers, "units": gru.hidden_size,
            "trained_until": trained_until, "cutoff": trained_until,
            "comparisons_may_be_in_sample": trained_until is None,
            "snapshot_id": snapshot_id, "validation": validation or {},
        }
    except BaseException:
        store.discard(staged)
        raise
    return _commit_set(store, staged, set_id, manifest, make_current)


def model_set_manifest(root: str | StorePath, set_id: str | None = None) -> dict:
    """A model set's manifest (None = CURRENT) without loading its weights."""
    layout = StoreLayout.at(root)
    set_id = set_id or current_model_set(root)
    path = layout.model_set(set_id) / "manifest.json" if set_id else None
    if path is None or not path.exists():
        known = ", ".join(list_model_sets(root)) or "none"
        raise NotFoundError(f"model registry {layout.models}: no model set {set_id!r} (known: {known}); "
                            "run `gruviz train` or `gruviz model register`")
    return json.loads(path.read_text(encoding="utf-8"))


def model_set_normaliser(root: str | StorePath, set_id: str) -> Normaliser:
    """A model set's normaliser (the columns it reads and their training-window scaling) without its weights."""
    return _parse(StoreLayout.at(root).model_set(set_id) / "normaliser.json", set_id, Normaliser.from_dict)


def describe_model_sets(root: str | StorePath) -> list[dict]:
    """One line of facts per registered set, oldest first: id, kind, seeds, layers x units, features, current."""
    current = current_model_set(root)
    out = []
    for sid in list_model_sets(root):
        try:
            m = model_set_manifest(root, sid)
            cfg = next(iter((m.get("model_configs") or {}).values()), {})
            spec = spec_of(m)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            path = StoreLayout.at(root).model_set(sid) / "manifest.json"
            out.append({"set_id": sid, "kind": "damaged", "current": sid == current, "created_at": None, "seeds": [],
                        "layers": None, "units": None, "features": None, "trained_until": None,
                        "error": f"{path} cannot be read ({type(exc).__name__}: {exc}); {_FIX}"})
            continue
        out.append({
            "set_id": sid, "kind": m.get("kind", "builtin"), "current": sid == current,
            "created_at": m.get("created_at"), "seeds": m.get("seeds", []),
            "layers": m.get("layers", cfg.get("num_layers")), "units": m.get("units", cfg.get("hidden_size")),
            "features": spec.callable or f"{len(spec.feature_names)} gruviz features",
            "trained_until": m.get("trained_until", m.get("cutoff")),
        })
    return out


def _load_registered_byo(d: StorePath, meta: dict, norm: Normaliser) -> ModelSet:
    """A registered bring-your-own set, from the weights copied into the registry."""
    files = [d / f for f in meta.get("files", [])]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise StoreError(f"model set {meta['set_id']}: file(s) missing from the registry: {', '.join(missing)}; "
                         "register the set again")
    blobs = [(str(f), f.read_bytes()) for f in files]
    kw: dict[str, Any] = {"scripts": blobs} if meta.get("format") == "torchscript" else {
        "factory": meta["factory"], "state_dicts": blobs, "factory_kwargs": meta.get("factory_kwargs") or None}
    ms = build_byo(**kw, gru_path=meta.get("gru_path"), feature_spec=spec_of(meta), normaliser=norm,
                   set_id=meta["set_id"])
    return ModelSet(set_id=meta["set_id"], seeds=[int(s) for s in meta["seeds"]], models=ms.models,
                    normaliser=norm, meta=meta)
