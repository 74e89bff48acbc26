"""A model set ready to run (K seed models, one feature spec and normaliser), and one built from a team's
own model: TorchScript bytes, or a factory plus state-dict bytes (one per seed).

Bytes in, models out: reading the team's files is the caller's (flows.commands.model for the CLI,
storage.registry for a registered set)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gruviz_core.byo import FeatureSpec, build_module, resolve_factory, wrap_module, wrap_scripted
from gruviz_core.errors import ConfigError, GruvizError, ModelError
from gruviz_core.features import CONTEXT_NAMES, FEATURE_NAMES, Normaliser, column_index
from gruviz_core.model import LoadedModel
from gruviz_core.sequences import SequenceRows, Sequences

__all__ = ["ModelSet", "Blob", "build_byo", "spec_of", "non_finite_weights"]

Blob = tuple[str, bytes]
"""A file's name (for messages and the set's source record) and its contents."""


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

    @property
    def feature_spec(self) -> FeatureSpec:
        """Where the models' columns come from: gruviz's features, or the team's callable (manifest's feature_spec)."""
        return spec_of(self.meta)

    def prepare(self, seqs: Sequences | SequenceRows) -> tuple[np.ndarray, np.ndarray]:
        """Raw sequences -> (values (obs, F), context (obs, C)) float32, the models' columns, normalised."""
        ci = column_index(seqs.context_names, self.context_names, what=f"model set {self.set_id} context")
        norm = self.normaliser.select((), self.context_names)
        return self.prepare_values(seqs), _normalised(seqs.context, ci, lambda x, e: norm.apply(e, x)[1])

    def prepare_values(self, seqs: Sequences | SequenceRows, *, rows_per_slice: int = 1 << 20) -> np.ndarray:
        """Raw sequences -> values (obs, F) float32, the models' feature columns, normalised."""
        fi = column_index(seqs.feature_names, self.feature_names, what=f"model set {self.set_id} features")
        norm = self.normaliser.select(self.feature_names, ())
        return _normalised(seqs.values, fi, lambda x, e: norm.apply(x, e)[0], rows_per_slice)


def spec_of(meta: dict) -> FeatureSpec:
    """A manifest's feature spec (sets that predate it: the names they list, default gruviz's)."""
    if meta.get("feature_spec"):
        return FeatureSpec.from_dict(meta["feature_spec"])
    return FeatureSpec(tuple(meta.get("feature_names", FEATURE_NAMES)), tuple(meta.get("context_names", CONTEXT_NAMES)))


def _normalised(raw: np.ndarray, cols, apply, rows_per_slice: int = 1 << 20) -> np.ndarray:
    """raw[:, cols] through `apply(x, empty)` slice by slice into a float32 output, so the column selection
    and the standardisation make no full-size temporaries: the output plus one slice's working set."""
    out = np.empty((len(raw), len(cols)), np.float32)
    for a in range(0, len(raw), rows_per_slice):
        b = min(a + rows_per_slice, len(raw))
        out[a:b] = apply(raw[a:b][:, cols], np.zeros((b - a, 0), np.float32))
    return out


def build_byo(
    *,
    scripts: Sequence[Blob] = (),
    factory: str | None = None,
    state_dicts: Sequence[Blob] = (),
    factory_kwargs: dict[str, Any] | None = None,
    gru_path: str | None = None,
    feature_names: Sequence[str] | None = None,
    context_names: Sequence[str] | None = None,
    normaliser: Normaliser | dict | None = None,
    set_id: str | None = None,
    feature_spec: FeatureSpec | None = None,
) -> ModelSet:
    """A model set from outside: TorchScript files, or `module:factory` + state dicts (one per seed).

    `feature_names`/`context_names` (default: all of gruviz's) are the columns the model reads, in its
    order, or `feature_spec` names them (e.g. the columns of the team's own feature callable);
    `normaliser` (a Normaliser or its dict) scales them, default none (missing -> 0).
    """
    if feature_spec is not None and feature_spec.custom:
        feats, ctx = feature_spec.feature_names, feature_spec.context_names
    else:
        feats = tuple(feature_names or (feature_spec.feature_names if feature_spec else FEATURE_NAMES))
        ctx = tuple(context_names or (feature_spec.context_names if feature_spec else CONTEXT_NAMES))
        column_index(FEATURE_NAMES, feats, what="bring-your-own feature spec")
        column_index(CONTEXT_NAMES, ctx, what="bring-your-own context spec")
    norm = _byo_normaliser(normaliser, feats, ctx)
    if bool(scripts) == (factory is not None):
        raise ConfigError("load_byo: give exactly one of script= (TorchScript file) or factory= ('module:callable')")
    models: list[LoadedModel] = []
    if scripts:
        for i, (name, data) in enumerate(scripts):
            scripted = _load_script(name, data)
            _check_finite_weights(scripted, name)
            models.append(wrap_scripted(scripted, feats, ctx, gru_path=gru_path,
                                        model_id=f"{os.path.basename(name)}#{i}"))
        source: dict[str, Any] = {"script": [name for name, _ in scripts]}
    else:
        make = resolve_factory(factory)
        for i, blob in enumerate(state_dicts or [None]):
            module = build_module(make, factory, factory_kwargs)
            if blob is not None:
                try:
                    module.load_state_dict(_load_state_dict(*blob))
                except (RuntimeError, OSError, KeyError, ValueError) as exc:
                    raise ModelError(f"load_byo: state dict {blob[0]} does not fit {factory} ({exc}); "
                                     "give the weights saved from the same architecture") from exc
            _check_finite_weights(module, blob[0] if blob else factory)
            models.append(wrap_module(module, feats, ctx, gru_path=gru_path, model_id=f"{factory}#{i}"))
        source = {"factory": factory, "state_dict": [name for name, _ in state_dicts],
                  "factory_kwargs": factory_kwargs or {}}
    sid = set_id or "byo-" + hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()[:10]
    meta = {"set_id": sid, "kind": "byo", "seeds": list(range(len(models))), "feature_names": list(feats),
            "context_names": list(ctx), "gru_path": models[0].extra.get("scripted_gru_path", models[0].gru_path),
            "feature_spec": (feature_spec or FeatureSpec(feats, ctx)).to_dict(), **source}
    return ModelSet(set_id=sid, seeds=list(range(len(models))), models=models, normaliser=norm, meta=meta)


def _load_script(name: str, data: bytes) -> torch.jit.ScriptModule:
    if not data:
        raise ModelError(f"load_byo: TorchScript file {name} is empty (0 bytes; an interrupted copy?); "
                         "export it again with torch.jit.save")
    with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; still the format users hold
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"load_byo: {name} is not a TorchScript file torch can load ({exc})") from exc


def _load_state_dict(name: str, data: bytes) -> dict:
    """A team's state dict, tensors only (weights_only=True: nothing else is unpickled); ModelError otherwise."""
    if not data:
        raise ModelError(f"load_byo: state dict file {name} is empty (0 bytes; an interrupted copy?); save it again "
                         "with torch.save(model.state_dict(), path)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, EOFError, RuntimeError... for a bad file
        # torch's own message advises weights_only=False, which would run the file's code: not repeated here
        raise ModelError(f"load_byo: {name} is not a PyTorch state dict of tensors ({type(exc).__name__}: damaged, "
                         "truncated, or holding objects other than tensors, which gruviz does not unpickle); save "
                         "it with torch.save(model.state_dict(), path)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"load_byo: {name} holds a {type(state).__name__}, not a PyTorch state dict of tensors; "
                         "save it with torch.save(model.state_dict(), path)")
    return state


def non_finite_weights(module: torch.nn.Module) -> str:
    """The first names (at most 5, '...' after) of a module's floating tensors holding NaN or inf; '' when none."""
    bad = [name for name, t in module.state_dict().items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()]
    return f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"


def _check_finite_weights(module: torch.nn.Module, where) -> None:
    """A team's weights all finite: an inf GRU bias publishes a run of zero states and update gates of 1."""
    if bad := non_finite_weights(module):
        raise ModelError(f"load_byo: {where} has non-finite (NaN or inf) weights in {bad}; every state would be "
                         "saturated or NaN. Give weights from a training run that did not diverge")


def _byo_normaliser(normaliser: Normaliser | dict | None, feats: tuple[str, ...], ctx: tuple[str, ...]) -> Normaliser:
    if normaliser is None:
        return Normaliser.identity(feats, ctx)
    try:
        if isinstance(normaliser, dict):
            normaliser = Normaliser.from_dict(normaliser)
        return normaliser.select(feats, ctx)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, GruvizError):
            raise
        raise ConfigError(f"the normaliser is not a gruviz normaliser for these columns ({type(exc).__name__}: "
                          f"{exc}); give the file written by gruviz_core.features.Normaliser.to_dict") from None
