"""The extract stage: every dog's states, gates and scores under every seed, block by block.

`begin` lays out the run (storage.writer.begin_run), `block` computes one block's shards with
gruviz_core.extract, summarises its float32 states with gruviz_core.stats (the per-row summaries and
per-unit accumulators the stats stage aggregates: it never decodes the states) and hands them to
storage's BlockWriter, `finish` checks every block is done.
Blocks own whole shards, so they can run as threads, processes or machines at once.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from gruviz_core import stats as st
from gruviz_core.errors import ConfigError
from gruviz_core.extract import BatchStates, choose_device, iter_extract
from gruviz_core.model import LoadedModel
from gruviz_core.model_set import ModelSet
from storage.registry import load_model_set
from storage.runs import RunPlan, finish_run
from storage.sequences import load_sequence_meta, load_sequence_rows
from storage.writer import BlockWriter, ShardBuffers, begin_run, block_span

__all__ = ["inputs", "begin", "block", "finish", "write_block", "extract_run", "set_torch_threads"]

log = logging.getLogger(__name__)

ENCODE_WORKERS = 1
"""Threads beside the GRU that summarise each batch and fill the float16 shard buffers (storage's writer thread
and zarr's codec threads compress and write): on 2 cores, the GRU on one and the rest on the other."""
BATCHES_IN_FLIGHT = 2
"""Most float32 batches in memory at once (one computing, one being absorbed): memory stays flat."""


def set_torch_threads(n: int) -> None:
    """Torch intra-op threads for this process (blocks and seeds give the parallelism, see Settings)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@lru_cache(maxsize=2)
def _model_set(root: str, set_id: str) -> ModelSet:
    """The run's model set, loaded once per process (blocks that are threads of one worker share it)."""
    return load_model_set(root, set_id)


def inputs(seq_path: str, model_set: ModelSet, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(values, context) float32 of rows [start, stop) of a snapshot, normalised for the model set, and
    those rows' metadata ({name: array} for storage.states.ROW_META).

    Only those rows are read (the sequences store's chunks covering them) and prepared, so a block's memory
    follows its own rows, not the night's."""
    rows = load_sequence_rows(seq_path, start, stop)
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
            "seq_path": seq_path, "set_id": set_id}


def block(plan: dict, index: int, *, device: str, batch_size: int, progress=None) -> int:
    """Write one block; `progress(dogs_done, dogs_in_block)` is called after each shard. Returns its dogs.

    Reads and prepares only the rows of the block's dogs (`storage.writer.block_span`)."""
    model_set = _model_set(plan["root"], plan["set_id"])
    start, stop = block_span(plan["tmp_dir"], index)
    values, context, rows = inputs(plan["seq_path"], model_set, start, stop)
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
    workers: int = ENCODE_WORKERS, in_flight: int = BATCHES_IN_FLIGHT,
) -> dict:
    """Compute and write one block's shards, its rows' summaries and its per-unit accumulators; writes its
    done marker last. Returns the marker.

    values: (n, F), context: (n, C) normalised model inputs of rows [row_base, row_base + n): at
    least the block's span (`BlockWriter.span`), or every row with row_base 0; rows: {name: (n,)}
    the same rows' metadata (storage.states.ROW_META), written for the block's own rows.
    `progress(dogs_done, dogs_in_block)` is called after each shard. The GRU runs in this thread;
    `workers` threads summarise each float32 batch and fill the float16 shard buffers from it while
    the next batch computes (at most `in_flight` batches exist), and storage's writer thread
    compresses and writes each shard once its batches are in.
    """
    t0, started_at = time.perf_counter(), time.time()
    dev = choose_device(device)
    units = [st.UnitAccumulators() for _ in models]
    lock = threading.Lock()
    # one BLAS thread: the Gram products of the unit accumulators run beside the GRU, and OpenBLAS threads
    # spin-waiting for a busy core slow everything (as in the stats stage)
    with threadpool_limits(1, user_api="blas"), BlockWriter(plan_or_tmpdir, block_index) as out, \
            ThreadPoolExecutor(max(1, workers), thread_name_prefix="gruviz-encode") as pool:
        _check_models(out, models, values, context, row_base)
        out.write_rows(rows, row_base)
        slots = threading.BoundedSemaphore(max(1, in_flight))
        max_err = [0.0] * len(models)
        for s0, s1, dogs in out.shards():
            for k, model in enumerate(models):
                out.reserve()
                buf = out.buffers(k, s0, s1)
                jobs = []
                for bs in _batches(model, values, context, out.offsets - row_base, dogs, slots, device=dev,
                                   batch_size=batch_size, max_tokens=max_tokens, dog_ids=out.dog_ids):
                    max_err[k] = max(max_err[k], bs.max_err)
                    jobs.append(pool.submit(_absorb, buf, bs, out.offsets, units[k], lock, slots))
                out.write(buf, after=jobs)
            if progress is not None:
                progress(out.dogs_finished(s1), out.dogs_total)
    for k, acc in enumerate(units):
        out.write_units(k, acc.to_arrays())
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
                          "(storage.writer.block_span), or every row from 0")


def _batches(model: LoadedModel, values, context, offsets, dogs, slots: threading.BoundedSemaphore,
             **kw) -> Iterator[BatchStates]:
    """The float32 batches of `dogs` under one model, each computed once a slot is free (`_absorb` frees it)."""
    it = iter_extract([model], values, context, offsets, dogs, dtype=torch.float32, **kw)
    while True:
        slots.acquire()
        try:
            item = next(it, None)
        except BaseException:
            slots.release()
            raise
        if item is None:
            slots.release()
            return
        yield item[1]


def _absorb(buf: ShardBuffers, bs: BatchStates, offsets: np.ndarray, units: st.UnitAccumulators,
            lock: threading.Lock, slots: threading.BoundedSemaphore) -> None:
    """A worker's share of one float32 batch: its rows' summaries (from whole dogs, so a dog's first row
    moves from h_0 = 0 and every other from its own h_(t-1)), the per-unit accumulators of the rows inside
    the shard, and those rows into the shard's float16 buffers. offsets: the run's (global rows)."""
    try:
        if not len(bs.dogs):
            return
        first = np.repeat(offsets[bs.dogs] - (np.cumsum(bs.lengths) - bs.lengths), bs.lengths)
        rows = first + np.arange(len(first))  # (rows,) global row of each batch row
        keep = (rows >= buf.s0) & (rows < buf.s1)  # a dog straddling shards is computed by each
        summary = st.row_summary(bs.h, bs.z, bs.lengths)
        h, z, r, score = bs.h, bs.z, bs.r, bs.score
        if not keep.all():
            h, z, r, score = h[keep], z[keep], r[keep], score[keep]
            summary = {name: a[keep] for name, a in summary.items()}
        part = st.UnitAccumulators().add(h, z, r)
        idx = torch.from_numpy(rows[keep] - buf.s0)
        for dst, src in ((buf.h, h), (buf.z, z), (buf.r, r)):  # torch's float16 cast is vectorised, numpy's is not
            torch.from_numpy(dst).index_copy_(0, idx, torch.from_numpy(src).to(torch.float16))
        i = idx.numpy()
        buf.score[i, 0] = score
        for name, a in summary.items():
            buf.summary[name][i] = a
        with lock:
            units.merge(part)
            buf.filled[0] += len(i)  # the writer checks every row of the shard was filled
    finally:
        slots.release()


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
