"""The probe stage: what a run's hidden states know about quantities a modeller can name (gruviz_core.probes).

    eval/probes       per seed, layer, quantity and race-count bucket: the probe's out-of-sample score (R², or
                      AUC for a binary quantity) with its interval, the control task's, and the selectivity
    eval/unit_atlas   per seed, layer, unit and quantity: Spearman rho, and the unit's rank for that quantity
    eval/probe.json   what was sampled, how long it took, which quantities the source lacks; or, when the atlas
                      could not be computed, why (the report says so; the night goes on)

Quantities come from the canonical runs of the run's forms snapshot (never from the states), matched to the
store's rows by dog and race (the runs of the sampled dogs' races only, every runner kept for the market's
renormalisation). Only a sample of dogs is probed (`dogs`, GRUVIZ_PROBE_DOGS), all their rows, drawn from a few
random shards of the store so that only those are decompressed (h, not the gates).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from gruviz_core import probes as pr
from storage.forms import load_snapshot
from storage.fs import store_path
from storage.layout import RunLayout
from storage.states import open_dataset, open_states
from storage.tables import write_json, write_table

__all__ = ["run", "probe_run", "DEFAULT_DOGS"]

log = logging.getLogger(__name__)

DEFAULT_DOGS = 1500
"""Dogs probed by default: about 30k rows; 4.1 s for 3 seeds of H=64 on one core on a 500k-row run (bench/probe.py)."""


def run(tmp_dir: str | Path, root: str | Path, snapshot_id: str, *, dogs: int = DEFAULT_DOGS) -> dict:
    """The probe atlas of a run from its snapshot's runs; its record (eval/probe.json). Never raises: a failure is
    recorded as {"error": ...} so the report can say why the atlas is missing."""
    t0 = time.perf_counter()
    try:
        return probe_run(tmp_dir, load_snapshot(root, snapshot_id), dogs=dogs)
    except Exception as exc:  # noqa: BLE001 - the atlas is an addition: its failure must not cost the night's report
        record = {"error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t0, 3)}
        log.warning("probe atlas not computed: %s", record["error"])
        write_json(RunLayout.at(tmp_dir).probe_record, record)
        return record


def probe_run(
    run_dir: str | Path, runs: pd.DataFrame, *, dogs: int = DEFAULT_DOGS, params: pr.ProbeParams = pr.ProbeParams(),
    allow_incomplete: bool = True,
) -> dict:
    """Probe every seed and layer of a run's states on `dogs` sampled dogs; write eval/probes, eval/unit_atlas and
    eval/probe.json; return the record. runs: the canonical runs the run's sequences were built from."""
    t0 = time.perf_counter()
    run_dir = store_path(run_dir)
    reader = open_states(run_dir, allow_incomplete=allow_incomplete)
    idx = reader.index()
    picked = pr.sample_dogs(idx["row_size"].to_numpy(), dogs, params.seed, shard_rows=reader.shard_rows)
    start, size = idx["row_start"].to_numpy()[picked], idx["row_size"].to_numpy()[picked]
    rows = np.repeat(start - np.r_[0, np.cumsum(size)[:-1]], size) + np.arange(int(size.sum()))  # (rows,)
    step = rows - np.repeat(start, size) + 1
    dog_id = np.repeat(idx["dog_id"].to_numpy(dtype=object)[picked], size)
    base = open_dataset(run_dir, 0, allow_incomplete=allow_incomplete)
    race_id = base["race_id"].isel(obs=rows).values.astype(object)  # numpy StringDType -> str objects
    races = runs["race_id"].astype(str).isin(np.unique(race_id))  # the sampled dogs' races, with every runner
    quantities = pr.align_rows(pr.known_quantities(runs[races.to_numpy()]), dog_id, race_id)
    matched = int(np.isfinite(quantities["starts"]).sum())
    if matched < len(rows) // 2:
        raise LookupError(f"{run_dir}: only {matched} of the {len(rows)} sampled rows are in the snapshot's runs "
                          "(matched by dog and race); the run was not made from this snapshot")
    absent = pr.absent_quantities(quantities)
    t_read, scores, atlas = 0.0, [], []
    # one BLAS thread: the Gram products are small, and threads spin-waiting for a busy core are 10-50x slower
    with threadpool_limits(1, user_api="blas"):
        for k in range(len(reader.seeds)):
            t1 = time.perf_counter()
            ds = base if k == 0 else open_dataset(run_dir, k, allow_incomplete=allow_incomplete)
            h = np.asarray(ds["h"].isel(obs=rows).values, dtype=np.float32)  # (rows, L, H)
            t_read += time.perf_counter() - t1
            scores.append(pr.probe_scores(h, quantities, dog_id, step, params).assign(seed=k))
            atlas.append(pr.unit_correlations(h, quantities).assign(seed=k))
    write_table(run_dir, "probes", pd.concat(scores, ignore_index=True))
    write_table(run_dir, "unit_atlas", pd.concat(atlas, ignore_index=True))
    record = {
        "dogs_budget": int(dogs), "n_dogs": int(len(picked)), "of_dogs": int(reader.n_dogs), "n_rows": int(len(rows)),
        "rows_matched": matched, "seeds": len(reader.seeds), "absent": absent,
        "quantities": {q.name: q.doc for q in pr.QUANTITIES},
        "params": {"folds": params.folds, "alpha": params.alpha, "logistic_steps": params.logistic_steps,
                   "n_boot": params.n_boot, "level": params.level, "seed": params.seed},
        "seconds_read": round(t_read, 3), "seconds": round(time.perf_counter() - t0, 3), "error": None,
    }
    write_json(RunLayout.at(run_dir).probe_record, record)
    return record
