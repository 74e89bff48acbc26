"""The train flow: (optionally ingest, then) train K seeds on a snapshot and register the model set."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from flows.artifacts import train_artifacts
from flows.logs import route_library_logs
from flows.nightly import ingest_task
from flows.notify import notify_failure
from flows.preflight import preflight_train
from flows.settings import load_settings

__all__ = ["train"]


@task(name="train-model-set", cache_policy=NO_CACHE)
def train_task(
    root: str, snapshot_id: str, seeds: int, hidden: int, layers: int, epochs: int | None, market: bool, workers: int,
    promote: bool = False,
) -> dict:
    from flows.stages.train import train_and_register
    from gruviz_core.features import CONTEXT_NAMES, MARKET_CONTEXT

    context = None if market else [n for n in CONTEXT_NAMES if n not in MARKET_CONTEXT]
    report = train_and_register(root, snapshot_id, seeds=seeds, hidden=hidden, layers=layers, epochs=epochs,
                                context_names=context, workers=workers, promote=promote,
                                log_fn=get_run_logger().info)
    return report.to_dict()


@flow(name="train", on_failure=[notify_failure], on_crashed=[notify_failure])
def train(
    source: list[str] | None = None,
    snapshot: str | None = None,
    home: str | None = None,
    seeds: int | None = None,
    hidden: int | None = None,
    layers: int | None = None,
    epochs: int | None = None,
    market: bool | None = None,
    workers: int | None = None,
    promote: bool = False,
) -> dict:
    """Train a model set of K seeds on a forms snapshot (the latest one by default) and mark it current
    if it beats the uniform baseline on its validation window (or `promote` is set)."""
    route_library_logs()
    s = load_settings(home=home, seeds=seeds, hidden_size=hidden, num_layers=layers, market_context=market,
                      train_workers=workers)
    checked = preflight_train(s, snapshot=snapshot, sources=source)  # before any work
    root = str(checked.root)
    snapshot_id = ingest_task(root, list(source), s.inflate_limit) if source else checked.snapshot_id
    report = train_task(root, snapshot_id, s.seeds, s.hidden_size, s.num_layers, epochs, s.market_context,
                        s.train_workers, promote)
    train_artifacts(report)
    if report.get("current"):
        get_run_logger().info("model set %s registered and marked current", report.get("set_id"))
    else:
        get_run_logger().warning("model set %s registered but NOT current: it does not beat the uniform baseline "
                                 "on its validation window (train again, or pass promote=True)", report.get("set_id"))
    return report

