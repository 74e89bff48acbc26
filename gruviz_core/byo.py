"""Bring your own model: any module with a torch.nn.GRU inside, whose forward is (x, ctx) -> scores.

The contract: `module(x (B, T, F), ctx (B, T, C)) -> (B, T)` scores, where F = the model's own
feature spec (a list of gruviz feature names, any subset in any order) and the GRU inside
reads those F features (`input_size == F`), with any number of layers.

Two ways in:

- a factory `"package.module:callable"` (+ a state dict): a plain `nn.Module`; the GRU is found
  by its dotted path or as the only GRU, and forward hooks capture what it reads and returns.
  Fully supported.
- a TorchScript file: hooks cannot be registered on scripted modules, so gruviz finds the GRU in
  `named_modules()` by its original class name, copies its weights into an eager `nn.GRU`, and
  runs that copy on the model's input `x` beside the scripted forward. Limit: this is only right
  when the scripted GRU reads `x` as given (no projection or embedding before it), batch first,
  from a zero initial state; otherwise export the model's code and use the factory path.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import torch
from torch import nn

from gruviz_core.errors import AmbiguousGRUError, ConfigError, FeatureMismatchError, NoGRUError
from gruviz_core.model import LoadedModel, find_gru

__all__ = ["resolve_factory", "wrap_module", "wrap_scripted", "ScriptedAdapter", "find_scripted_gru"]


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """'package.module:callable' -> the callable (a class or a function returning an nn.Module)."""
    mod_name, sep, attr = (spec or "").partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"model factory {spec!r}: expected 'package.module:callable', e.g. 'mymodels.race:build'")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"model factory {spec!r}: cannot import {mod_name!r} ({exc}); is it on PYTHONPATH?") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model factory {spec!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model factory {spec!r}: {attr!r} is not callable")
    return obj


def _check_input_size(gru_input_size: int, feature_names: Sequence[str], model_id: str, path: str) -> None:
    if gru_input_size != len(feature_names):
        raise FeatureMismatchError(
            f"model {model_id}: GRU {path!r} reads {gru_input_size} features but the feature spec names "
            f"{len(feature_names)} ({', '.join(feature_names)}); give the model's own feature list"
        )


def wrap_module(
    module: nn.Module, feature_names: Sequence[str], context_names: Sequence[str],
    *, gru_path: str | None = None, model_id: str = "byo",
) -> LoadedModel:
    """An eager module -> LoadedModel; NoGRUError / AmbiguousGRUError / FeatureMismatchError when it cannot be used."""
    path, gru = find_gru(module, gru_path)
    _check_input_size(gru.input_size, feature_names, model_id, path)
    return LoadedModel.wrap(module, feature_names, context_names, gru_path=path, model_id=model_id)


def find_scripted_gru(script: torch.jit.ScriptModule, path: str | None = None) -> tuple[str, torch.jit.ScriptModule]:
    """The GRU inside a TorchScript module: at dotted `path`, else the only submodule whose original class is GRU."""
    found = [(n, m) for n, m in script.named_modules() if getattr(m, "original_name", None) == "GRU"]
    name = type(script).__name__
    if path:
        hit = [(n, m) for n, m in found if n == path]
        if not hit:
            have = ", ".join(n for n, _ in found) or "none"
            raise NoGRUError(f"scripted model {name}: no GRU at {path!r} (GRUs: {have}); name a GRU submodule")
        return hit[0]
    if not found:
        raise NoGRUError(f"scripted model {name}: no torch.nn.GRU inside; gruviz looks inside GRUs only")
    if len(found) > 1:
        raise AmbiguousGRUError(
            f"scripted model {name}: several GRUs ({', '.join(n for n, _ in found)}); name one with gru_path"
        )
    return found[0]


class ScriptedAdapter(nn.Module):
    """Scores from the scripted model; its GRU's states from an eager copy run on the same input (see module doc)."""

    def __init__(self, script: torch.jit.ScriptModule, gru: nn.GRU):
        super().__init__()
        self.script = script
        self.gru = gru

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F), ctx: (B, T, C) -> (B, T) scores."""
        self.gru(x if self.gru.batch_first else x.transpose(0, 1))  # hooks on the eager copy see the states
        return self.script(x, ctx)


def wrap_scripted(
    script: torch.jit.ScriptModule, feature_names: Sequence[str], context_names: Sequence[str],
    *, gru_path: str | None = None, model_id: str = "byo-script",
) -> LoadedModel:
    """A TorchScript module -> LoadedModel whose GRU is an eager copy of the scripted one's weights."""
    path, sg = find_scripted_gru(script, gru_path)
    gru = nn.GRU(
        int(sg.input_size), int(sg.hidden_size), int(sg.num_layers),
        bias=bool(sg.bias), batch_first=bool(sg.batch_first), bidirectional=bool(sg.bidirectional),
    )
    if gru.bidirectional:
        raise FeatureMismatchError(f"scripted model {model_id}: GRU {path!r} is bidirectional; gruviz needs a causal GRU")
    _check_input_size(gru.input_size, feature_names, model_id, path)
    gru.load_state_dict({k: v.detach().clone() for k, v in sg.named_parameters()})
    loaded = LoadedModel.wrap(ScriptedAdapter(script, gru), feature_names, context_names, gru_path="gru", model_id=model_id)
    loaded.extra["scripted_gru_path"] = path
    return loaded
