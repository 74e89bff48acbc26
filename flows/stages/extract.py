"""The extract stage: every dog's states, gates and scores under every seed, block by block.

`begin` lays out the run (storage.states.begin_run), `block` computes one block's shards with
gruviz_core.extract and hands them to storage's BlockWriter, `finish` checks every block is done.
Blocks own whole shards, so they can run as threads, processes or machines at once.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from gruviz_core.errors import ConfigError
from gruviz_core.extract import choose_device, iter_extract
from gruviz_core.model import LoadedModel
from storage.registry import ModelSet, load_model_set, load_sequence_meta, load_sequence_rows, sequence_layout
from storage.states import BlockWriter, RunPlan, begin_run, block_span, finish_run

__all__ = ["inputs", "begin", "block", "finish", "write_block", "extract_run", "set_torch_threads"]

log = logging.getLogger(__name__)


def set_torch_threads(n: int) -> None:
    """Torch intra-op threads for this process (blocks and seeds give the parallelism, see Settings)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@lru_cache(maxsize=2)
def _model_set(root: str, set_id: str) -> ModelSet:
    """The run's model set, loaded once per process (blocks that are threads of one worker share it)."""
    return load_model_set(root, set_id)


def inputs(seq_path: str, model_set: ModelSet, start: int, stop: int,
           layout: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(values, context) float32 of rows [start, stop) of a snapshot, normalised for the model set, and
    those rows' metadata ({name: array} for storage.states.ROW_META).

    Only those rows are read (at their offsets in the sequences file or object, given by `layout` when the
    plan has it) and prepared, so a block's memory follows its own rows, not the night's."""
    rows = load_sequence_rows(seq_path, start, stop, layout=layout)
    return (*model_set.prepare(rows), rows.meta)


def begin(root: str, run_id: str, meta: dict, seq_path: str, set_id: str, block_dogs: int, parallel: int = 1) -> dict:
    """Lay out the run's temporary directory; returns the plan every block task needs (keys only).

    Reads the snapshot's dog metadata only: the blocks write their own rows' metadata. `parallel`: blocks
    that run at once (the runner's in-flight limit); the blocks come evenly sized, in a multiple of it."""
    model_set = _model_set(root, set_id)
    gru = model_set.models[0].gru
    plan = begin_run(
        root, run_id, {**meta, "seeds": list(model_set.seeds)}, **load_sequence_meta(seq_path),
        n_layers=gru.num_layers, n_units=gru.hidden_size, seeds=model_set.seeds, block_dogs=block_dogs,
        parallel=parallel,
    )
    return {"root": root, "tmp_dir": plan.tmp_dir, "n_blocks": plan.n_blocks, "n_dogs": plan.n_dogs,
            "seq_path": seq_path, "seq_layout": sequence_layout(seq_path), "set_id": set_id}


def block(plan: dict, index: int, *, device: str, batch_size: int, progress=None) -> int:
    """Write one block; `progress(dogs_done, dogs_in_block)` is called after each shard. Returns its dogs.

    Reads and prepares only the rows of the block's dogs (`storage.states.block_span`)."""
    model_set = _model_set(plan["root"], plan["set_id"])
    start, stop = block_span(plan["tmp_dir"], index)
    values, context, rows = inputs(plan["seq_path"], model_set, start, stop, plan.get("seq_layout"))
    models = copy.deepcopy(model_set.models)  # blocks may be threads of one process: each runs (and moves) its own
    marker = write_block(plan["tmp_dir"], index, models, values, context, rows=rows, row_base=start,
                         device=None if device == "auto" else device, batch_size=batch_size, progress=progress)
    log.info("block %d: %d dogs (rows %d..%d) in %.1f s on %s (max recurrence error %.2e)", index, marker["dogs"],
             start, stop, marker["seconds"], marker["device"], max(marker["check_max_err"], default=0.0))
    return int(marker["dogs"])


def finish(plan: dict) -> str:
    """Check every block's done marker, write run.json; returns the (unpublished) run directory."""
    return str(finish_run(plan["tmp_dir"]))


def write_block(
    plan_or_tmpdir: RunPlan | str | Path, block_index: int, models: Sequence[LoadedModel],
    values: np.ndarray, context: np.ndarray, *, rows: Mapping[str, np.ndarray], row_base: int = 0,
    device: str | None = None,
    batch_size: int = 1024, max_tokens: int | None = None, progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Compute and write one block's shards; writes its done marker last. Returns the marker.

    values: (n, F), context: (n, C) normalised model inputs of rows [row_base, row_base + n): at
    least the block's span (`BlockWriter.span`), or every row with row_base 0; rows: {name: (n,)}
    the same rows' metadata (storage.states.ROW_META), written for the block's own rows.
    `progress(dogs_done, dogs_in_block)` is called after each shard.
    """
    t0, started_at = time.perf_counter(), time.time()
    dev = choose_device(device)
    with BlockWriter(plan_or_tmpdir, block_index) as out:
        _check_models(out, models, values, context, row_base)
        out.write_rows(rows, row_base)
        max_err = [0.0] * len(models)
        for s0, s1, dogs in out.shards():
            for k, model in enumerate(models):
                out.reserve()
                h, z, r, sc, err = _fill_shard(model, values, context, out.offsets, dogs, s0, s1, out.plan,
                                               row_base=row_base, device=dev, batch_size=batch_size, max_tokens=max_tokens,
                                               dog_ids=out.dog_ids)
                max_err[k] = max(max_err[k], err)
                out.write(k, s0, s1, h, z, r, sc)
            if progress is not None:
                progress(out.dogs_finished(s1), out.dogs_total)
    return out.done({
        "block": block_index, "rows": list(out.rows), "dogs": out.dogs_total, "device": str(dev),
        "check_max_err": max_err, "seconds": round(time.perf_counter() - t0, 3),
        "started_at": started_at, "finished_at": time.time(),  # epoch s: when it ran, next to its siblings
        "host": socket.gethostname(), "pid": os.getpid(),  # where it ran (a worker process on the cluster path)
    })


def _check_models(out: BlockWriter, models: Sequence[LoadedModel], values: np.ndarray, context: np.ndarray,
                  row_base: int) -> None:
    plan = out.plan
    if len(models) != len(plan.seeds):
        raise ConfigError(f"run {plan.run_id}: {len(models)} models given, the plan has {len(plan.seeds)} seeds")
    for m in models:
        if (m.gru.num_layers, m.gru.hidden_size) != (plan.n_layers, plan.n_units):
            raise ConfigError(f"run {plan.run_id}: model {m.model_id} has {m.gru.num_layers} layers x "
                              f"{m.gru.hidden_size} units, the plan {plan.n_layers} x {plan.n_units}")
    start, stop = out.span
    if len(values) != len(context) or row_base > start or row_base + len(values) < stop:
        raise ConfigError(f"run {plan.run_id} block {out.block_index}: values has {len(values)} rows and context "
                          f"{len(context)} from row {row_base}; the block needs rows {start}..{stop} "
                          "(storage.states.block_span), or every row from 0")


def _fill_shard(model, values, context, offsets, dogs, s0, s1, plan, row_base=0, **kw):
    """One seed's h, z, r (n, L, H) float16 and scores (n, 1) for rows [s0, s1), and the check's max error.

    values/context hold rows from `row_base` on; offsets are the run's (global rows)."""
    n, shape = s1 - s0, (s1 - s0, plan.n_layers, plan.n_units)
    h, z, r = (np.full(shape, np.nan, dtype=np.float16) for _ in range(3))
    sc = np.full((n, 1), np.nan, dtype=np.float32)
    err = 0.0
    if len(dogs):
        for _, bs in iter_extract([model], values, context, offsets - row_base, dogs, **kw):
            err = max(err, bs.max_err)
            first = np.repeat(offsets[bs.dogs] - np.concatenate([[0], np.cumsum(bs.lengths)[:-1]]), bs.lengths)
            rows = first + np.arange(len(first))  # (rows,) global row of each batch row
            keep = (rows >= s0) & (rows < s1)
            if keep.all():
                idx = rows - s0
                h[idx], z[idx], r[idx], sc[idx, 0] = bs.h, bs.z, bs.r, bs.score
            else:
                idx = rows[keep] - s0
                h[idx], z[idx], r[idx], sc[idx, 0] = bs.h[keep], bs.z[keep], bs.r[keep], bs.score[keep]
    return h, z, r, sc, err


def extract_run(
    root: str | Path, run_id: str, meta: dict, models: Sequence[LoadedModel], seqs_values: np.ndarray,
    context: np.ndarray, offsets: np.ndarray, dog_id: np.ndarray, dog_name: np.ndarray, race_id: np.ndarray,
    race_date: np.ndarray, won: np.ndarray, market_prob: np.ndarray, *, block_dogs: int | None = None,
    device: str | None = None, batch_size: int = 1024, progress: Callable[[int, int], None] | None = None,
    **layout: int,
) -> Path:
    """begin_run + every block + finish_run in this process; returns the (unpublished) tmp dir."""
    gru = models[0].gru
    seeds = [int(getattr(getattr(m.module, "cfg", None), "seed", k)) for k, m in enumerate(models)]
    plan = begin_run(root, run_id, {"device_requested": device or "auto", **meta}, offsets=offsets, dog_id=dog_id,
                     dog_name=dog_name, n_layers=gru.num_layers, n_units=gru.hidden_size, seeds=meta.get("seeds", seeds),
                     block_dogs=block_dogs, **layout)
    rows = {"race_id": race_id, "race_date": race_date, "won": won, "market_prob": market_prob}
    done, total = 0, plan.n_dogs
    for b in range(plan.n_blocks):
        cb = None if progress is None else (lambda d, _t, base=done: progress(min(base + d, total), total))
        marker = write_block(plan, b, models, seqs_values, context, rows=rows, device=device, batch_size=batch_size,
                             progress=cb)
        done = min(done + marker["dogs"], total)  # a straddling dog counts once per block: clamp
    return finish_run(plan.path)
