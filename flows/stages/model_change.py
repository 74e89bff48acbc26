"""The model-change stage: is tonight's model set the one last night ran? If not, say so, and what moved.

    eval/model_change.json   {changed, current_set, previous_set, previous_night, previous_run, moved: [...]}; or
                             {"error": ...}

The previous night is the latest published run (tonight's is not published yet). `moved` lists the page-one numbers
under last night's set (its run's headline) against tonight's, largest change first (gruviz_core.model_change).
"""

from __future__ import annotations

import logging
from pathlib import Path

from gruviz_core.model_change import moved
from storage.layout import RunLayout
from storage.results import read_json
from storage.states import latest_run
from storage.tables import write_json

__all__ = ["run", "email_lines"]

log = logging.getLogger(__name__)


def run(tmp_dir: str | Path, root: str | Path, set_id: str) -> dict:
    """Write and return tonight's model-change record; never raises (a failure is recorded for the report)."""
    try:
        record = _record(tmp_dir, root, set_id)
    except Exception as exc:  # noqa: BLE001 - an addition to the night: its failure must not cost the report
        record = {"changed": None, "current_set": set_id, "error": f"{type(exc).__name__}: {exc}"}
        log.warning("model change not checked: %s", record["error"])
    write_json(RunLayout.at(tmp_dir).model_change_record, record)
    if record.get("changed"):
        log.warning("model set %s took over from %s (last run on %s)", set_id, record["previous_set"],
                    record["previous_night"])
    return record


def _record(tmp_dir: str | Path, root: str | Path, set_id: str) -> dict:
    prev = latest_run(root)
    meta = read_json(RunLayout.at(prev).run_json) if prev is not None else None
    record = {"changed": False, "current_set": set_id, "previous_set": None, "previous_night": None,
              "previous_run": None, "moved": [], "error": None}
    if not meta or not meta.get("model_set_id"):
        return record
    record |= {"previous_set": meta["model_set_id"], "previous_night": meta.get("night"), "previous_run": prev.name,
               "changed": meta["model_set_id"] != set_id}
    if record["changed"]:
        before = read_json(RunLayout.at(prev).headline) or {}
        after = read_json(RunLayout.at(tmp_dir).headline) or {}
        record["moved"] = [{"number": k, "before": a, "after": b, "change": d} for k, a, b, d in moved(before, after)]
    return record


def email_lines(run_dir: str | Path) -> dict[str, str]:
    """The email's first line when a new set took over tonight: which, from which, and the number that moved most."""
    record = read_json(RunLayout.at(run_dir).model_change_record)
    if not record or not record.get("changed"):
        return {}
    line = f"a new model set, {record['current_set']}, took over from {record['previous_set']} " \
           f"(last run on {record.get('previous_night') or '?'})"
    top = (record.get("moved") or [None])[0]
    if top:
        line += (f"; moved most: {top['number']} {top['before']:.4g} -> {top['after']:.4g} "
                 f"({top['change']:+.4g} nats per runner, last night's data against tonight's)")
    return {"Model set": line}
