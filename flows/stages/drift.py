"""The drift stage: tonight's model inputs against the model set's training window (gruviz_core.drift).

    eval/drift        per model input: PSI, KS, missing / clipped / unknown / unseen shares with counts, flag
    eval/drift.json   the windows compared (what, dates, rows), the thresholds, the flagged inputs; or {"error"}

The reference is the set's training window: rows of tonight's sequences on or before its `trained_until` (features
are leak-free, so those rows are the ones it was trained on); a set that records no training window is compared
with the rows before it was registered. Tonight's rows are the runs the previous published night's snapshot did
not have; when there are none (no new form data, or the first night), the held-out races after the training and
early-stopping windows stand in, and the record says so.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gruviz_core.drift import DriftParams, flagged_inputs, sequences_drift
from storage.forms import snapshot_keys
from storage.layout import RunLayout
from storage.registry import model_set_manifest, model_set_normaliser
from storage.results import read_json
from storage.runs import latest_run
from storage.sequences import load_sequences
from storage.tables import write_json, write_table

__all__ = ["run", "drift_run", "email_lines"]

log = logging.getLogger(__name__)


def run(tmp_dir: str | Path, root: str | Path, set_id: str, seq_path: str | Path, snapshot_id: str, *,
        psi_threshold: float = 0.25, share_threshold: float = 0.05) -> dict:
    """The drift table and record of a run; never raises: a failure is recorded as {"error": ...} for the report."""
    t0 = time.perf_counter()
    params = DriftParams(psi_threshold=psi_threshold, share_threshold=share_threshold)
    try:
        return drift_run(tmp_dir, root, set_id, seq_path, snapshot_id, params=params)
    except Exception as exc:  # noqa: BLE001 - the check is an addition: its failure must not cost the night's report
        record = {"error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t0, 3)}
        log.warning("input drift not computed: %s", record["error"])
        write_json(RunLayout.at(tmp_dir).drift_record, record)
        return record


def drift_run(run_dir: str | Path, root: str | Path, set_id: str, seq_path: str | Path, snapshot_id: str, *,
              params: DriftParams = DriftParams(), previous_snapshot: str | None = None) -> dict:
    """Compare tonight's rows with the training window; write eval/drift and eval/drift.json; return the record.
    previous_snapshot: the last night's snapshot (None: the latest published run's)."""
    t0 = time.perf_counter()
    seqs = load_sequences(seq_path)
    manifest = model_set_manifest(root, set_id)
    norm = model_set_normaliser(root, set_id)
    date = seqs.race_date.astype("datetime64[D]")
    ref, ref_what, ref_end = _reference(manifest, date)
    if not ref.any():
        raise LookupError(f"model set {set_id}: no rows of snapshot {snapshot_id} fall in its training window "
                          f"(races to {ref_end}); nothing to compare with")
    if previous_snapshot is None:
        previous_snapshot = _previous_snapshot(root)
    cur, cur_what = _tonight(seqs, root, snapshot_id, previous_snapshot, manifest, date)
    table = sequences_drift(seqs, norm, ref, cur, params)
    write_table(run_dir, "drift", table)
    flagged = flagged_inputs(table)
    record = {
        "model_set_id": set_id, "reference": ref_what, "reference_end": ref_end, "reference_rows": int(ref.sum()),
        "current": cur_what, "current_rows": int(cur.sum()),
        "current_start": _day(date[cur].min()) if cur.any() else None,
        "current_end": _day(date[cur].max()) if cur.any() else None,
        "previous_snapshot": previous_snapshot, "inputs": int(len(table)), "flagged": flagged,
        "psi_threshold": params.psi_threshold, "share_threshold": params.share_threshold, "share_z": params.share_z,
        "min_rows": params.min_rows, "seconds": round(time.perf_counter() - t0, 3), "error": None,
    }
    write_json(RunLayout.at(run_dir).drift_record, record)
    if flagged:
        log.warning("input drift against the training window: %s", "; ".join(flagged))
    return record


def email_lines(run_dir: str | Path) -> dict[str, str]:
    """The email's input drift line: the flagged inputs by name, or that none was, or why the check is missing."""
    record = read_json(RunLayout.at(run_dir).drift_record)
    if record is None:
        return {}
    if record.get("error"):
        return {"Input drift": f"not checked: {record['error']}"}
    flagged = record.get("flagged") or []
    rows = f"{int(record.get('current_rows') or 0):,} rows ({record.get('current')})"
    if flagged:
        return {"Input drift": f"{len(flagged)} input(s) flagged against the training window on {rows}: "
                               + "; ".join(flagged[:5]) + (" ..." if len(flagged) > 5 else "")}
    return {"Input drift": f"no input flagged against the training window on {rows}"}


def _reference(manifest: dict, date: np.ndarray) -> tuple[np.ndarray, str, str | None]:
    """(obs,) bool rows of the training window, what it is, and its last date."""
    until = manifest.get("trained_until") or manifest.get("cutoff")
    if until:
        return date <= np.datetime64(str(until)[:10], "D"), f"training window (races to {str(until)[:10]})", str(until)[:10]
    created = str(manifest.get("created_at") or "")[:10]
    if created:
        end = np.datetime64(created, "D")
        return date < end, f"races before the set was registered ({created}; it records no training window)", created
    return np.zeros(len(date), bool), "no training window recorded", None


def _previous_snapshot(root: str | Path) -> str | None:
    prev = latest_run(root)
    meta = read_json(RunLayout.at(prev).run_json) if prev is not None else None
    return (meta or {}).get("snapshot_id")


def _tonight(seqs, root, snapshot_id: str, previous: str | None, manifest: dict, date: np.ndarray):
    """(obs,) bool rows of the night and what they are: the runs new since `previous`, else the held-out races."""
    if previous and previous != snapshot_id:
        keys = snapshot_keys(root, previous)
        dog = np.repeat(np.asarray(seqs.dog_id, dtype=str), seqs.row_size)
        here = pd.MultiIndex.from_arrays([dog, np.asarray(seqs.race_id, dtype=str)])
        new = ~here.isin(pd.MultiIndex.from_frame(keys[["dog_id", "race_id"]]))
        if new.any():
            return new, f"runs new since snapshot {previous}"
    end = manifest.get("early_stop_end") or manifest.get("trained_until") or manifest.get("cutoff")
    why = "no previous night" if not previous else "no new runs tonight"
    if end:
        return date > np.datetime64(str(end)[:10], "D"), f"held-out races after {str(end)[:10]} ({why})"
    return np.zeros(len(date), bool), f"none ({why}, and the set records no training window)"


def _day(d) -> str:
    return str(np.datetime64(d, "D"))
