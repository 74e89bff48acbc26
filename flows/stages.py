"""What each nightly task does, given only store keys: load by key, call the library, return keys.

Kept out of the task bodies so a task stays a one-line call and these can be run without Prefect.
"""

from __future__ import annotations

import copy
import json
import logging
from functools import lru_cache
from pathlib import Path


from gruviz_core.sequences import Sequences

__all__ = ["begin", "extract_block", "finish", "evaluate", "report", "published_runs", "email_lines"]

log = logging.getLogger(__name__)


def set_torch_threads(n: int) -> None:
    """Torch intra-op threads for this process (blocks and seeds give the parallelism, see Settings)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@lru_cache(maxsize=2)
def _inputs(root: str, seq_path: str, set_id: str):
    """(Sequences, ModelSet, values, context) for a snapshot and model set; cached per process
    so the block tasks of one run (threads of one worker) load them once."""
    from storage.registry import load_model_set

    seqs = Sequences.load(seq_path)
    model_set = load_model_set(Path(root), set_id)
    values, context = model_set.prepare(seqs)
    return seqs, model_set, values, context


def begin(root: str, run_id: str, meta: dict, seq_path: str, set_id: str, block_dogs: int) -> dict:
    from storage.states import begin_run

    seqs, model_set, _, _ = _inputs(root, seq_path, set_id)
    gru = model_set.models[0].gru
    plan = begin_run(
        root, run_id, {**meta, "seeds": list(model_set.seeds)},
        offsets=seqs.offsets, dog_id=seqs.dog_id, dog_name=seqs.dog_name, race_id=seqs.race_id,
        race_date=seqs.race_date, won=seqs.won, market_prob=seqs.market_prob,
        n_layers=gru.num_layers, n_units=gru.hidden_size, seeds=model_set.seeds, block_dogs=block_dogs,
    )
    return {"root": root, "tmp_dir": plan.tmp_dir, "n_blocks": plan.n_blocks, "n_dogs": plan.n_dogs,
            "seq_path": seq_path, "set_id": set_id}


def extract_block(plan: dict, block: int, *, device: str, batch_size: int, progress=None) -> int:
    """Write one block; `progress(dogs_done, dogs_in_block)` is called after each shard."""
    from storage.states import extract_block as write_block

    _, model_set, values, context = _inputs(plan["root"], plan["seq_path"], plan["set_id"])
    models = copy.deepcopy(model_set.models)  # blocks run as threads: each runs (and moves) its own modules
    marker = write_block(plan["tmp_dir"], block, models, values, context,
                         device=None if device == "auto" else device, batch_size=batch_size, progress=progress)
    log.info("block %d: %d dogs in %.1f s on %s (max recurrence error %.2e)",
             block, marker["dogs"], marker["seconds"], marker["device"], max(marker["check_max_err"], default=0.0))
    return int(marker["dogs"])


def finish(plan: dict) -> str:
    from storage.states import finish_run

    return str(finish_run(plan["tmp_dir"]))


def evaluate(tmp_dir: str, root: str, set_id: str, seq_path: str) -> dict:
    from storage.analysis import evaluate_run

    seqs, model_set, values, context = _inputs(root, seq_path, set_id)
    evaluate_run(Path(tmp_dir), models=model_set.models, values=values, context=context,
                 offsets=seqs.offsets, feature_names=seqs.feature_names)
    path = Path(tmp_dir) / "eval" / "headline.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def published_runs(root: str) -> list[Path]:
    """Published run directories, oldest night first."""
    runs = []
    for d in (Path(root) / "runs").iterdir() if (Path(root) / "runs").exists() else []:
        if d.is_dir() and not d.name.startswith(".") and (d / "_COMPLETE").exists():
            info = json.loads((d / "run.json").read_text(encoding="utf-8"))
            runs.append((str(info.get("night", "")), str(info.get("finished_at", "")), d))
    return [d for *_, d in sorted(runs)]


def report(run_dir: str, root: str, reports_dir: str, night: str, snapshot_id: str, watchlist: list[str]) -> str:
    """Build, render and publish the night's report; returns its path relative to the reports dir."""
    from reports.build import build_report, heatmap_dog_ids
    from reports.publish import publish_report
    from reports.render import render
    from storage.results import read_dog_states, read_history, read_run_results

    run = Path(run_dir)
    results = read_run_results(run)
    history = read_history(d for d in published_runs(root) if d.resolve() != run.resolve())
    dogs = read_dog_states(run, heatmap_dog_ids(results, watchlist))
    model = build_report(
        results, history=history, dogs=dogs, watchlist=tuple(watchlist), data_quality=_data_quality(root, snapshot_id)
    )
    page = publish_report(render(model), Path(reports_dir), night, headline=dict(results.headline))
    return str(Path(page).resolve().relative_to(Path(reports_dir).resolve()))


def email_lines(run_dir: str, watchlist: list[str]) -> dict[str, str]:
    """Labelled headline numbers for the email, with exemplar and watchlist dogs by name."""
    from reports.email import email_summary
    from storage.results import read_run_results

    results = read_run_results(run_dir, tables=("dog",))
    dogs = None
    if results.dog is not None:
        dogs = results.dog[["dog_id", "dog_name", "cohort", "plateau_step", "cohort_layer"]]
        dogs = dogs[dogs["cohort_layer"]]
    return email_summary(dict(results.headline), dogs, tuple(watchlist))


def _data_quality(root: str, snapshot_id: str) -> dict:
    from storage.layout import StoreLayout

    manifest = StoreLayout.at(root).snapshot(snapshot_id) / "manifest.json"
    return json.loads(manifest.read_text(encoding="utf-8")) if manifest.exists() else {}


