"""The probe stage: what a run's hidden states know about quantities a modeller can name (gruviz_core.probes).

    eval/probes       per seed, layer, quantity and race-count bucket: the probe's out-of-sample score (R², or
                      AUC for a binary quantity) with its interval, the control task's, and the selectivity
    eval/unit_atlas   per seed, layer, unit and quantity: Spearman rho, and the unit's rank for that quantity
    eval/probe_rows   the probed rows (dog_index, step, store row) and each quantity there, for the explorer's
                      scatter of a unit against the quantity it tracks best
    eval/probe.json   what was sampled, how long it took, which quantities the source lacks; or, when the atlas
                      could not be computed, why (the report says so; the night goes on)

Quantities come from the canonical runs of the run's forms snapshot (never from the states), matched to the
store's rows by dog and race (the runs of the sampled dogs' races only, every runner kept for the market's
renormalisation). Only a sample of dogs is probed (`dogs`, GRUVIZ_PROBE_DOGS), all their rows, drawn from random
windows of one inner chunk of the store, so that about 5/4 of the probed rows are decompressed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from gruviz_core import probes as pr
from storage.explore import read_rows
from storage.forms import load_snapshot
from storage.layout import RunLayout
from storage.runs import RunPlan
from storage.states import StatesReader, open_dataset, open_states
from storage.store import location as store_path
from storage.tables import write_json, write_table

__all__ = ["run", "probe_run", "DEFAULT_DOGS"]

log = logging.getLogger(__name__)

DEFAULT_DOGS = 800
"""Dogs probed by default: 3 seeds of H=64 on one core on the Iggy run (497,574 rows; evaluate 9.5-9.8 s) take
1.72-2.07 s (medians 1.78 and 1.81 in two runs of 4) with 100 bootstrap replicates and 1 logistic step, against
1.88-2.61 s (medians 2.43 and 2.23) at 1,000 dogs, 200 replicates and 2 steps, alternating in the same runs; the
all-races intervals' median width is then 0.021 instead of 0.017 (R² or AUC) and 0.023 instead of 0.021
(selectivity), and seed 0's all-races scores move by at most 0.012 and its selectivities by at most 0.017 (any layer,
any quantity)."""


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
    chunk = _chunk_rows(run_dir, reader)
    # windows of one inner chunk each, enough that a window's quota (dogs / windows) is about 4/5 of its dogs:
    # the rows read are then about 5/4 of the rows probed, however large the store
    per_dog = max(1.0, reader.n_obs / max(reader.n_dogs, 1))
    windows = max(4, int(np.ceil(1.25 * dogs * per_dog / chunk)))
    picked = pr.sample_dogs(idx["row_size"].to_numpy(), dogs, params.seed, shard_rows=chunk, shards=windows)
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
    t1 = time.perf_counter()
    # seeds side by side as layers (rows, S * L, H): the targets, folds, control shuffles and bootstrap draws are
    # made once for every seed
    h = np.concatenate([read_rows(reader, k, rows, chunk) for k in range(len(reader.seeds))], axis=1)
    t_read = time.perf_counter() - t1
    n_layers = reader.n_layers
    # one BLAS thread: the Gram products are small, and threads spin-waiting for a busy core are 10-50x slower
    with threadpool_limits(1, user_api="blas"):
        scores = _by_seed(pr.probe_scores(h, quantities, dog_id, step, params), n_layers)
        atlas = _by_seed(pr.unit_correlations(h, quantities, max_rows=params.unit_rows, seed=params.seed), n_layers)
    write_table(run_dir, "probes", scores)
    write_table(run_dir, "unit_atlas", atlas)
    write_table(run_dir, "probe_rows", pd.concat([pd.DataFrame({
        "dog_index": np.repeat(picked.astype(np.int64), size), "step": step.astype(np.int64),
        "row": rows.astype(np.int64)}), quantities[[q.name for q in pr.QUANTITIES]].reset_index(drop=True)], axis=1))
    record = {
        "dogs_budget": int(dogs), "n_dogs": int(len(picked)), "of_dogs": int(reader.n_dogs), "n_rows": int(len(rows)),
        "rows_matched": matched, "seeds": len(reader.seeds), "absent": absent,
        "quantities": {q.name: q.doc for q in pr.QUANTITIES},
        "params": {"folds": params.folds, "alpha": params.alpha, "logistic_steps": params.logistic_steps,
                   "n_boot": params.n_boot, "level": params.level, "seed": params.seed, "unit_rows": params.unit_rows},
        "seconds_read": round(t_read, 3), "seconds": round(time.perf_counter() - t0, 3), "error": None,
    }
    write_json(RunLayout.at(run_dir).probe_record, record)
    return record


def _by_seed(table: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """A table over seeds stacked as layers (layer = seed * n_layers + layer) with its seed and layer apart again."""
    stacked = table["layer"].to_numpy(np.int64)
    out = table.assign(layer=stacked % n_layers, seed=stacked // n_layers)
    return out.sort_values(["seed", "layer"], kind="stable").reset_index(drop=True)


def _chunk_rows(run_dir, reader: StatesReader) -> int:
    """Rows per inner chunk of the states (the smallest read), from the run's plan; a shard where there is none."""
    try:
        return int(RunPlan.load(run_dir).chunk_rows)
    except Exception:  # noqa: BLE001 - a run written before plan.json: shards are still whole reads
        return int(reader.shard_rows)


