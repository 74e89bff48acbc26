"""Bring your own model: any module with a torch.nn.GRU inside, whose forward is (x, ctx) -> scores.

The contract: `module(x (B, T, F), ctx (B, T, C)) -> (B, T)` scores, where F = the model's own
feature spec (a list of gruviz feature names, any subset in any order) and the GRU inside
reads those F features (`input_size == F`), with any number of layers.

Features come either from gruviz's own list (`FEATURE_NAMES`/`CONTEXT_NAMES`, any subset) or
from the team's own callable `"package.module:fn"`, `fn(runs) -> (features, context)`: given the
canonical runs table in sequence order (`gruviz_core.features.clean_runs`), two DataFrames with
one row per run, whose columns are what the GRU reads after the race and what the head knows
before it (`build_custom_sequences`). A `FeatureSpec` records which, with the callable's version.

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

import dataclasses
import hashlib
import importlib
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gruviz_core.errors import AmbiguousGRUError, ConfigError, FeatureMismatchError, ModelError, NoGRUError
from gruviz_core.extract import extract_batch
from gruviz_core.features import CONTEXT_NAMES, FEATURE_NAMES, build_sequences, clean_runs, column_index
from gruviz_core.model import LoadedModel, find_gru
from gruviz_core.sequences import Sequences, pad_batch

__all__ = [
    "resolve_factory", "resolve_callable", "build_module", "wrap_module", "wrap_scripted", "ScriptedAdapter", "find_scripted_gru",
    "scripted_gru_output",
    "FeatureSpec", "feature_spec_of", "callable_identity", "build_custom_sequences", "validate_sample", "SampleCheck",
]


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """'package.module:callable' -> the callable (a class or a function returning an nn.Module)."""
    return resolve_callable(spec, what="model factory", example="mymodels.race:build")


def resolve_callable(spec: str, *, what: str = "callable", example: str = "mymodels.race:features") -> Callable:
    """'package.module:callable' -> the callable; ConfigError naming `what` when it cannot be imported."""
    mod_name, sep, attr = (spec or "").partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"{what} {spec!r}: expected 'package.module:callable', e.g. {example!r}")
    if not all(part.isidentifier() for part in mod_name.split(".")):
        raise ConfigError(f"{what} {spec!r}: {mod_name!r} is not a module name (dotted Python names, no path or "
                          f"'.py'); put its directory on PYTHONPATH and name it as {example!r}")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {mod_name!r} ({exc}); is it on PYTHONPATH?") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {spec!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} {spec!r}: {attr!r} is not callable")
    return obj


# ------------------------------------------------------------------ feature specs


@dataclass(frozen=True)
class FeatureSpec:
    """The columns a model reads and where they come from: gruviz's features or the team's callable."""

    feature_names: tuple[str, ...]
    """Columns the GRU reads per race (known after the race), in the model's order."""
    context_names: tuple[str, ...]
    """Columns the head reads beside the state (known before the race), in the model's order."""
    callable: str | None = None
    """'package.module:fn' building both from the canonical runs table; None = gruviz's own features."""
    version: str | None = None
    """The callable's version: its `__version__`, else its module's; None when it declares none."""
    source_sha256: str | None = None
    """sha256 of the callable's source text, so a changed callable is noticed even without a version."""

    @property
    def custom(self) -> bool:
        return self.callable is not None

    @property
    def key(self) -> str:
        """Short id of the spec: custom sequences of a snapshot are cached per key."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {"feature_names": list(self.feature_names), "context_names": list(self.context_names),
                "callable": self.callable, "version": self.version, "source_sha256": self.source_sha256}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(tuple(d["feature_names"]), tuple(d["context_names"]), d.get("callable"), d.get("version"),
                   d.get("source_sha256"))

    @classmethod
    def builtin(cls, feature_names: Sequence[str] | None = None, context_names: Sequence[str] | None = None) -> FeatureSpec:
        """A subset of gruviz's own features (default all); unknown names are a FeatureMismatchError."""
        feats = tuple(feature_names or FEATURE_NAMES)
        ctx = tuple(context_names or CONTEXT_NAMES)
        column_index(FEATURE_NAMES, feats, what="feature spec")
        column_index(CONTEXT_NAMES, ctx, what="context spec")
        return cls(feats, ctx)


def build_module(make: Callable[..., Any], spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """`make(**kwargs)`, the team's factory: its failure, bad arguments or a result that is not an nn.Module are
    a ConfigError/ModelError naming the factory (its code is the team's; the message says what it raised)."""
    kwargs = kwargs or {}
    try:
        inspect.signature(make).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model factory {spec} does not take these arguments ({exc}); fix --factory-kwargs "
                          f"{json.dumps(kwargs)}") from None
    except ValueError:
        pass  # no signature to check (a builtin): the call says
    try:
        module = make(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the team's code: any failure is reported as theirs, with its type
        raise ConfigError(f"model factory {spec} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ModelError(f"model factory {spec} returned a {type(module).__name__}, not a torch.nn.Module; "
                         "return the model (an nn.Module whose forward takes (x, ctx))")
    return module


def callable_identity(fn: Callable) -> tuple[str | None, str | None]:
    """(version, source sha256) of a callable; either may be None when it cannot be known."""
    version = getattr(fn, "__version__", None) or getattr(inspect.getmodule(fn), "__version__", None)
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = None
    return (str(version) if version is not None else None,
            hashlib.sha256(source.encode()).hexdigest() if source is not None else None)


def feature_spec_of(spec: str, runs: pd.DataFrame) -> tuple[FeatureSpec, Sequences]:
    """The team's callable `spec` run on `runs`: its FeatureSpec (names from its columns, its version) and the sequences."""
    fn = resolve_callable(spec, what="feature callable")
    seqs = build_custom_sequences(runs, fn, name=spec)
    version, sha = callable_identity(fn)
    return FeatureSpec(seqs.feature_names, seqs.context_names, spec, version, sha), seqs


def build_custom_sequences(runs: pd.DataFrame, fn: Callable, *, name: str = "feature callable") -> Sequences:
    """Sequences whose values/context are `fn(clean_runs(runs)) -> (features, context)`; the rest as gruviz builds it.

    Each returned frame has one row per run (obs), in the order of the table it was given, and
    numeric columns (NaN = missing; the normaliser maps it to 0).
    """
    base = build_sequences(runs)  # offsets, ids, dates, results, market: the skeleton every model shares
    table = clean_runs(runs)
    try:
        out = fn(table.copy())
    except Exception as exc:  # the team's code: any failure is reported as theirs, with its type
        raise ConfigError(f"feature callable {name}: raised {type(exc).__name__}: {exc}") from exc
    if not (isinstance(out, tuple) and len(out) == 2):
        raise FeatureMismatchError(
            f"feature callable {name}: returned {type(out).__name__}; expected a tuple (features, context) of "
            "two DataFrames with one row per run")
    values = _columns(out[0], table.index, name, "features")
    context = _columns(out[1], table.index, name, "context")
    return dataclasses.replace(base, values=values[1], context=context[1], feature_names=values[0],
                               context_names=context[0])


def _columns(frame: Any, index: pd.Index, name: str, what: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, (obs, k) float32) of one returned frame, whose index must be the given table's `index`, in its
    order; FeatureMismatchError naming the problem."""
    n_obs = len(index)
    if not isinstance(frame, pd.DataFrame):
        raise FeatureMismatchError(f"feature callable {name}: {what} is a {type(frame).__name__}; return a DataFrame")
    if len(frame) != n_obs:
        raise FeatureMismatchError(
            f"feature callable {name}: {what} has {len(frame)} rows, the runs table it was given {n_obs}; "
            "return one row per run, in the given order")
    if not frame.index.equals(index):
        moved = int((frame.index.to_numpy() != index.to_numpy()).sum())
        raise FeatureMismatchError(
            f"feature callable {name}: {what} rows are not the input's rows in the input's order ({moved:,} of "
            f"{n_obs:,} rows have another index label, e.g. row {_first_moved(frame.index, index)}; sorted?): "
            "every row would be another run's features. Return frames with the index of the table given, "
            "in its order (e.g. .loc[runs.index] or .reindex(runs.index))")
    if frame.shape[1] == 0 and what == "features":
        raise FeatureMismatchError(f"feature callable {name}: no feature columns; the GRU needs at least one")
    try:
        arr = frame.astype("float64").to_numpy(dtype=np.float32, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise FeatureMismatchError(f"feature callable {name}: {what} has non-numeric columns ({exc}); "
                                   "encode them as numbers") from exc
    names = tuple(str(c) for c in frame.columns)
    if len(set(names)) != len(names):
        raise FeatureMismatchError(f"feature callable {name}: {what} repeats a column name ({', '.join(names)})")
    arr = arr.reshape(n_obs, len(names))
    inf = np.isinf(arr)
    if inf.any():
        row, col = np.argwhere(inf)[0]
        raise FeatureMismatchError(
            f"feature callable {name}: {what} column {names[col]!r} holds inf ({int(inf[:, col].sum()):,} rows, the "
            f"first at row {int(row)} of the table given); NaN means missing, inf is not a value: "
            "clip or mark it missing")
    return names, arr


def _first_moved(got: pd.Index, want: pd.Index) -> str:
    i = int(np.flatnonzero(got.to_numpy() != want.to_numpy())[0]) if len(got) == len(want) else 0
    return f"{i}: index {_label(got[i])} where the input has {_label(want[i])}"


def _label(v: Any) -> str:
    return repr(v.item() if hasattr(v, "item") else v)


# ------------------------------------------------------------------ validation on a sample


@dataclass(frozen=True)
class SampleCheck:
    """What validating a model on a sample of dogs showed."""

    dogs: int
    """Dogs of the sample run through the model."""
    rows: int
    """Races (steps) of those dogs."""
    max_err: float
    """Largest |recomputed - fused| top-layer state (must stay within the extraction tolerance)."""
    layers: int
    """GRU layers."""
    units: int
    """Units per layer."""


def validate_sample(
    model: LoadedModel, values: np.ndarray, context: np.ndarray, offsets: np.ndarray, *, max_dogs: int = 64,
) -> SampleCheck:
    """Run `model` on up to `max_dogs` dogs: the forward pass, the scores' shape, the recurrence check.

    values: (obs, F), context: (obs, C) normalised; offsets: (dog + 1,). Raises a ModelError (or
    ExtractionCheckError) naming what is wrong.
    """
    lengths = np.diff(offsets)
    dogs = np.flatnonzero(lengths > 0)[:max_dogs]
    if len(dogs) == 0:
        raise ModelError(f"model {model.model_id}: the validation sample has no dog with a race; ingest form data first")
    x_np, len_np = pad_batch(values, offsets, dogs)
    c_np, _ = pad_batch(context, offsets, dogs)
    with torch.inference_mode():
        try:
            out = model.run(torch.from_numpy(x_np), torch.from_numpy(c_np))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ModelError(
                f"model {model.model_id}: forward pass failed on x {tuple(x_np.shape)} (features: "
                f"{', '.join(model.feature_names)}) and ctx {tuple(c_np.shape)} (context: "
                f"{', '.join(model.context_names) or 'none'}): {type(exc).__name__}: {exc}; the model must take "
                "module(x (B, T, F), ctx (B, T, C)) -> (B, T) scores") from exc
    scores = out.scores
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != tuple(x_np.shape[:2]):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ModelError(f"model {model.model_id}: forward returned scores of shape {shape}, expected (B, T) = "
                         f"{tuple(x_np.shape[:2])}: one score per dog per race")
    mask = np.arange(x_np.shape[1])[None, :] < len_np[:, None]
    if isinstance(model.module, ScriptedAdapter):
        with torch.inference_mode():
            model.module.check_input(torch.from_numpy(x_np), torch.from_numpy(c_np), mask, model.model_id)
    if not np.isfinite(scores.float().numpy()[mask]).all():
        raise ModelError(f"model {model.model_id}: forward returned non-finite scores on the sample; "
                         "check the weights and the normaliser")
    bs = extract_batch(model, values, context, offsets, dogs, device=torch.device("cpu"))
    return SampleCheck(dogs=len(dogs), rows=int(len_np.sum()), max_err=float(bs.max_err),
                       layers=model.gru.num_layers, units=model.gru.hidden_size)


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


def scripted_gru_output(script: torch.jit.ScriptModule, path: str, x: torch.Tensor,
                        ctx: torch.Tensor) -> torch.Tensor | None:
    """What the scripted model's own GRU at `path` outputs when the model runs on (x, ctx): (B, T, H), or None
    when it cannot be seen (the GRU's call inside a branch, or no GRU call of that path in the graph).

    TorchScript has no hooks; this is the one place that reads its graph (`inlined_graph`, a copy) and builds a
    function returning the GRU's output with `torch._C._create_function_from_graph` (private: tests/test_byo.py
    checks that it still returns the output on a plain scripted model)."""
    graph = script.inlined_graph
    calls = [n for n in graph.nodes() if n.kind() == "aten::gru" and _attr_path(list(n.inputs())[2]) == path]
    if len(calls) != 1:
        return None
    graph.eraseOutput(0)
    graph.registerOutput(calls[0].outputsAt(0))
    probe = torch._C._create_function_from_graph("gruviz_scripted_gru", graph)
    return probe(script._c, x, ctx)


def _attr_path(value) -> str:
    """'encoder.rnn' for the value `self.encoder.rnn._flat_weights` (a chain of prim::GetAttr in the graph)."""
    names = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        names.append(node.s("name"))
        node = next(node.inputs()).node()
    return ".".join(reversed(names[1:]))  # the last attribute is the weights list, not a module


class ScriptedAdapter(nn.Module):
    """Scores from the scripted model; its GRU's states from an eager copy run on the same input (see module doc)."""

    def __init__(self, script: torch.jit.ScriptModule, gru: nn.GRU, script_gru_path: str = ""):
        super().__init__()
        self.script = script
        self.gru = gru
        self.script_gru_path = script_gru_path

    def check_input(self, x: torch.Tensor, ctx: torch.Tensor, valid: np.ndarray, model_id: str) -> None:
        """ModelError when the scripted GRU does not read `x` as given (a projection or embedding before it):
        the eager copy's states, which gruviz stores, would not be the model's. valid: (B, T) bool steps."""
        scripted = scripted_gru_output(self.script, self.script_gru_path, x, ctx)
        eager, _ = self.gru(x if self.gru.batch_first else x.transpose(0, 1))
        if not self.gru.batch_first:
            eager = eager.transpose(0, 1)
        if scripted is None or tuple(scripted.shape) != tuple(eager.shape):
            return  # not visible in the graph (see scripted_gru_output): the module doc's limit applies
        err = float((scripted - eager).abs().numpy()[valid].max()) if valid.any() else 0.0
        if err > 1e-4:
            raise ModelError(
                f"scripted model {model_id}: its GRU {self.script_gru_path!r} does not read x as given (its states "
                f"differ from a copy run on x by up to {err:.3g}: a projection or embedding before it?); gruviz "
                "would store states that are not the model's. Register the model's code with --factory instead")

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
    loaded = LoadedModel.wrap(ScriptedAdapter(script, gru, path), feature_names, context_names, gru_path="gru",
                              model_id=model_id)
    loaded.extra["scripted_gru_path"] = path
    return loaded
