"""`gruviz model register|list`: bring a team's own GRU model set into the registry, list the sets.

register: a `module:factory` + one state dict per seed, or one TorchScript file per seed; the
feature spec as gruviz feature/context names or the team's `module:callable`; validated on a
sample of dogs (the GRU found, input sizes, a forward pass, the recurrence check, the scores'
shape) before anything is written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Annotated

import typer

from flows.commands.options import Home, Json, namespace
from flows.output import dumps_strict
from gruviz_core.errors import ConfigError

__all__ = ["HELP", "MULTI_VALUE", "app", "run", "register"]

HELP = "Register a team's own GRU model set (factory + state dicts, or TorchScript), or list model sets."
MULTI_VALUE = ("--script", "--weights")
SAMPLE_DOGS = 200

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


@app.command("register", help="Validate a team's model set on a sample of dogs and register it.")
def register_command(
    ctx: typer.Context,
    factory: Annotated[str | None, typer.Option(
        "--factory", help="'package.module:callable' building the nn.Module (with --weights); or --script")] = None,
    script: Annotated[list[str] | None, typer.Option(
        "--script", metavar="FILE...", help="one TorchScript file per seed; or --factory")] = None,
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", metavar="FILE...", help="one state dict file per seed (with --factory)")] = None,
    factory_kwargs: Annotated[str | None, typer.Option(
        "--factory-kwargs", help="keyword arguments of the factory, as a JSON object")] = None,
    features: Annotated[str | None, typer.Option(
        "--features", help="gruviz feature names the GRU reads, comma-separated (default: all of them)")] = None,
    feature_fn: Annotated[str | None, typer.Option(
        "--feature-fn", help="'package.module:callable': canonical runs table -> (features, context) DataFrames; "
        "not with --features")] = None,
    context: Annotated[str | None, typer.Option(
        "--context", help="gruviz context names the head reads, comma-separated (default: all of them; "
        "not with --feature-fn)")] = None,
    gru_path: Annotated[str | None, typer.Option(
        "--gru-path", help="dotted path of the GRU inside the model (default: the only one)")] = None,
    normaliser: Annotated[str | None, typer.Option(
        "--normaliser", help="JSON normaliser (gruviz_core.features.Normaliser.to_dict)")] = None,
    trained_until: Annotated[str | None, typer.Option(
        "--trained-until", metavar="YYYY-MM-DD",
        help="last race date the model was trained on: the report compares later races only "
        "(without it, comparisons may be in sample and the run says so)")] = None,
    name: Annotated[str | None, typer.Option("--name", help="model set id (default: byo-<time>-<hash>)")] = None,
    current: Annotated[bool, typer.Option("--current", help="mark the set current (the nightly's default)")] = False,
    snapshot: Annotated[str | None, typer.Option(
        "--snapshot", help="forms snapshot to validate on (default: the latest; simulated races when the store "
        "has none)")] = None,
    home: Home = None,
    as_json: Json = False,
) -> int:
    _one_of(ctx, "--factory", factory, "--script", script, required=True)
    _one_of(ctx, "--features", features, "--feature-fn", feature_fn)
    return run(namespace(
        model_command="register", factory=factory, script=script or None, weights=weights or None,
        factory_kwargs=factory_kwargs, features=features, feature_fn=feature_fn, context=context, gru_path=gru_path,
        normaliser=normaliser, trained_until=trained_until, name=name, current=current, snapshot=snapshot,
        home=home, json=as_json))


@app.command("list", help="List the registered model sets (* = current).")
def list_command(home: Home = None, as_json: Json = False) -> int:
    return run(namespace(model_command="list", home=home, json=as_json))


def _one_of(ctx: typer.Context, a: str, a_value, b: str, b_value, *, required: bool = False) -> None:
    """argparse's mutually exclusive group: at most one of the options (exactly one when required)."""
    if a_value and b_value:
        ctx.fail(f"{a} is not allowed with {b}: pass one of them")
    if required and not (a_value or b_value):
        ctx.fail(f"one of {a} or {b} is required")


def run(args: argparse.Namespace) -> int:
    if args.model_command == "list":
        return _list(args)
    out = register(**{k: getattr(args, k) for k in (
        "factory", "script", "weights", "factory_kwargs", "features", "feature_fn", "context", "gru_path",
        "normaliser", "trained_until", "name", "current", "snapshot", "home")})
    if args.json:
        print(dumps_strict(out, sort_keys=True))
        return 0
    v = out["validation"]
    print(f"model set {out['set_id']} registered{' (current)' if out['current'] else ''}: {len(out['seeds'])} "
          f"seed(s), GRU {out['gru_path']!r} {out['layers']} layer(s) x {out['units']} units")
    print(f"features: {out['features']}")
    print(f"validated on {v['dogs']} dogs, {v['rows']} races of {v['sample']}: recurrence max error "
          f"{v['max_err']:.2e}")
    if out["trained_until"] is None:
        print("no --trained-until: the nightly report's comparisons may be in sample")
    return 0


def register(
    *, factory: str | None = None, script: list[str] | None = None, weights: list[str] | None = None,
    factory_kwargs: str | dict | None = None, features: str | None = None, feature_fn: str | None = None,
    context: str | None = None, gru_path: str | None = None, normaliser: str | None = None,
    trained_until: str | None = None, name: str | None = None, current: bool = False,
    snapshot: str | None = None, home: str | None = None,
) -> dict:
    """Validate and register a team's model set; returns what was registered (raises a GruvizError naming the problem)."""
    from flows.byo import load_byo
    from flows.settings import load_settings
    from gruviz_core.byo import FeatureSpec, feature_spec_of, validate_sample
    from gruviz_core.features import build_sequences
    from storage.registry import model_set_manifest, save_byo_set

    if factory is None and weights:
        raise ConfigError("model register: --weights goes with --factory (TorchScript files carry their weights)")
    if feature_fn and context:
        raise ConfigError("model register: --context names gruviz context columns; with --feature-fn the "
                          "callable returns the context columns itself")
    root = load_settings(home=home).home
    runs, sample = _sample_runs(root, snapshot)
    if feature_fn:
        spec, seqs = feature_spec_of(feature_fn, runs)
    else:
        spec, seqs = FeatureSpec.builtin(_names(features), _names(context)), build_sequences(runs)
    ms = load_byo(script=script, factory=factory, state_dict=weights, factory_kwargs=_kwargs(factory_kwargs),
                  gru_path=gru_path, feature_spec=spec, normaliser=normaliser)
    values, ctx = ms.prepare(seqs)
    checks = [validate_sample(m, values, ctx, seqs.offsets) for m in ms.models]
    validation = {"sample": sample, "dogs": checks[0].dogs, "rows": checks[0].rows,
                  "max_err": max(c.max_err for c in checks)}
    set_id = save_byo_set(root, ms, name=name, trained_until=_date(trained_until), validation=validation,
                          snapshot_id=None if sample == "simulated races" else sample,
                          make_current=current)
    m = model_set_manifest(root, set_id)
    return {"set_id": set_id, "current": current, "seeds": m["seeds"], "layers": m["layers"], "units": m["units"],
            "gru_path": m["gru_path"], "format": m["format"], "feature_spec": m["feature_spec"],
            "features": spec.callable or ", ".join(spec.feature_names), "trained_until": m["trained_until"],
            "comparisons_may_be_in_sample": m["comparisons_may_be_in_sample"], "validation": validation}


def _sample_runs(root, snapshot: str | None):
    """(canonical runs of up to SAMPLE_DOGS dogs, where they came from): the snapshot's, else simulated."""
    from gruviz_core.synth import simulate
    from storage.forms import latest_snapshot, load_snapshot

    if snapshot is not None:  # as `train --snapshot`: a plain id under the store's forms, nothing outside it
        from flows.preflight import check_id
        from storage.store import location

        snapshot = check_id(location(root) / "forms", snapshot, "model register: snapshot id (--snapshot)")
    sid = snapshot or latest_snapshot(root)
    if sid is None:
        return simulate(SAMPLE_DOGS, 0), "simulated races"
    runs = load_snapshot(root, sid)
    keep = runs["dog_id"].drop_duplicates().iloc[:SAMPLE_DOGS]
    return runs[runs["dog_id"].isin(keep)].reset_index(drop=True), sid


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _kwargs(text: str | dict | None) -> dict | None:
    if text is None or isinstance(text, dict):
        return text
    try:
        out = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model register: --factory-kwargs {text!r} is not JSON ({exc}); e.g. '{{\"hidden\": 16}}'") from exc
    if not isinstance(out, dict):
        raise ConfigError(f"model register: --factory-kwargs {text!r} must be a JSON object")
    return out


def _date(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise ConfigError(f"model register: --trained-until {text!r} is not a date; use YYYY-MM-DD") from exc


def _list(args: argparse.Namespace) -> int:
    from flows.settings import load_settings
    from storage.registry import describe_model_sets

    home = load_settings(home=args.home).home
    _check_bucket(home)
    sets = describe_model_sets(home)
    if args.json:
        print(dumps_strict(sets, sort_keys=True))
        return 0
    if not sets:
        print("no model sets; run `gruviz train` or `gruviz model register`")
    for s in sets:
        mark = "*" if s["current"] else " "
        if s["kind"] == "damaged":
            print(f"{mark} {s['set_id']:40s} damaged: {s['error']}")
            continue
        print(f"{mark} {s['set_id']:40s} {s['kind']:8s} seeds {len(s['seeds'])}  {s['layers']}x{s['units']}  "
              f"{s['features']}  trained until {s['trained_until'] or '?'}")
    return 0


def _check_bucket(home: str) -> None:
    """The store answers (on object storage: its bucket exists), else every listing looks like 'no model sets'."""
    from storage.store import open_store

    open_store(home).probe("store", write=False)
