"""The determinism watch: the watched dogs' stored states tonight against last night's run (gruviz_core.determinism).

    eval/determinism.json   {checked, previous_run, previous_night, model_set_id, source, watched, compared,
                            history_changed, missing, flagged: [{dog_id, dog_name, seed, first_step, race_id, race_date,
                            arrays, max_abs}], causes, note}; or {"checked": false, "note": why}; or {"error": ...}

Watched dogs: the watchlist's (ids or names) found in both runs, else a fixed hashed sample of the dogs both runs
have (GRUVIZ_DETERMINISM_DOGS). Only those dogs' rows are read (StatesReader.dog). Under the same model set, a dog
whose races (ids and dates) are the same as last night's must have the same stored h, z, r and scores under every
seed; a difference is flagged with its first differing step, and the likely causes are what differs between the two
runs' records (code version, device, library versions, settings).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from gruviz_core import determinism as dt
from gruviz_core.errors import NotFoundError
from storage.layout import RunLayout
from storage.results import read_json
from storage.runs import latest_run
from storage.states import open_states
from storage.tables import write_json

__all__ = ["run", "watch", "email_lines", "library_versions", "LIBRARIES"]

log = logging.getLogger(__name__)

LIBRARIES: tuple[str, ...] = ("torch", "numpy", "zarr", "numcodecs", "pandas")
"""Packages whose version a run records (run.json 'libraries'): those that compute or store the states."""


def library_versions() -> dict[str, str]:
    """{package: version} of LIBRARIES and Python, for run.json."""
    import platform

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def run(tmp_dir: str | Path, root: str | Path, set_id: str, watchlist: Sequence[str] = (), *, dogs: int = 50) -> dict:
    """Write and return tonight's determinism record; never raises (a failure is recorded for the report)."""
    t0 = time.perf_counter()
    try:
        record = watch(tmp_dir, root, set_id, watchlist, dogs=dogs)
    except Exception as exc:  # noqa: BLE001 - a watch: its failure must not cost the night's report
        record = {"checked": False, "error": f"{type(exc).__name__}: {exc}"}
        log.warning("determinism watch not run: %s", record["error"])
    record["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(RunLayout.at(tmp_dir).determinism_record, record)
    if record.get("flagged"):
        log.warning("determinism: %d watched dog(s) changed states with an unchanged history: %s",
                    len(record["flagged"]), "; ".join(_flag_text(f) for f in record["flagged"][:3]))
    return record


def watch(run_dir: str | Path, root: str | Path, set_id: str, watchlist: Sequence[str] = (), *,
          dogs: int = 50, previous: str | Path | None = None) -> dict:
    """Compare the watched dogs with the previous published run (default: the latest) and return the record."""
    if dogs <= 0 and not watchlist:
        return {"checked": False, "note": "off (GRUVIZ_DETERMINISM_DOGS=0 and no watchlist)"}
    prev = latest_run(root) if previous is None else Path(previous)
    if prev is None:
        return {"checked": False, "note": "no previous night to compare with"}
    before_meta = read_json(RunLayout.at(prev).run_json) or {}
    after_meta = read_json(RunLayout.at(run_dir).run_json) or {}
    base = {"previous_run": Path(str(prev)).name, "previous_night": before_meta.get("night"), "model_set_id": set_id}
    if before_meta.get("model_set_id") != set_id:
        return {**base, "checked": False,
                "note": f"the model set changed ({before_meta.get('model_set_id')} -> {set_id}): nothing to compare"}
    a, b = open_states(prev), open_states(run_dir, allow_incomplete=True)
    ids, source, missing = _watched(a, b, watchlist, dogs)
    flagged, compared, changed = [], 0, 0
    seeds = min(len(a.seeds), len(b.seeds))
    before = [a.dogs(ids, k) for k in range(seeds)]  # (seed, dog): each run's watched dogs, one read per seed
    after = [b.dogs(ids, k) for k in range(seeds)]
    for i, dog_id in enumerate(ids):
        da, db = before[0][i], after[0][i]
        if not dt.same_history(_arrays(da), _arrays(db)):
            changed += 1
            continue
        compared += 1
        for k in range(seeds):
            sa, sb = before[k][i], after[k][i]
            diff = dt.compare_states(_arrays(sa), _arrays(sb))
            if diff is not None:
                i = diff["first_step"] - 1
                flagged.append({"dog_id": dog_id, "dog_name": db.dog_name, "seed": int(b.seeds[k]), **diff,
                                "race_id": str(db.race_id[i]), "race_date": str(db.race_date[i])})
                break  # the first seed that differs names the dog
    causes = dt.likely_causes(before_meta, after_meta)
    if flagged and not causes:
        causes = ["none recorded: the same code version, device, library versions and settings; the dog's race "
                  "inputs may have been corrected in the source, or the computation is not deterministic "
                  "(threads, batch composition on the device)"]
    note = "" if compared else "no watched dog has the same races as last night (all raced or were corrected)"
    return {**base, "checked": True, "source": source, "watched": len(ids), "compared": compared,
            "history_changed": changed, "missing": missing, "seeds_compared": seeds, "flagged": flagged,
            "causes": causes if flagged else dt.likely_causes(before_meta, after_meta), "note": note, "error": None}


def _watched(a, b, watchlist: Sequence[str], n: int) -> tuple[list[str], str, list[str]]:
    """(dog ids in both runs, 'watchlist' or 'hashed sample', watchlist entries not found in both)."""
    if watchlist:
        ids, missing = [], []
        for entry in watchlist:
            found = _resolve(a, entry) if _resolve(b, entry) is not None else None
            (ids.append(found) if found is not None else missing.append(str(entry)))
        if ids:
            return list(dict.fromkeys(ids)), "watchlist", missing
    common = np.intersect1d(a.index()["dog_id"].astype(str).to_numpy(), b.index()["dog_id"].astype(str).to_numpy())
    return dt.hashed_sample(common, n), "hashed sample", list(map(str, watchlist))


def _resolve(reader, entry: str) -> str | None:
    try:
        reader.dog_index(str(entry))
        return str(entry)
    except NotFoundError:
        idx = reader.index()
        hit = idx[idx["dog_name"].astype(str) == str(entry)]
        return str(hit["dog_id"].iloc[0]) if len(hit) == 1 else None


def _arrays(d) -> dict[str, np.ndarray]:
    return {"race_id": d.race_id, "race_date": d.race_date, "h": d.h, "z": d.z, "r": d.r, "score": d.score}


def _flag_text(f: dict) -> str:
    return (f"{f.get('dog_name') or f['dog_id']} ({f['dog_id']}, seed {f['seed']}) first at race {f['first_step']} "
            f"({f.get('race_date')}; {', '.join(f['arrays'])}, max |difference| {f['max_abs']:.3g})")


def email_lines(run_dir: str | Path) -> dict[str, str]:
    """The email's determinism line, only when a watched dog's states changed (or the watch failed)."""
    record = read_json(RunLayout.at(run_dir).determinism_record)
    if not record:
        return {}
    if record.get("error"):
        return {"Determinism": f"not checked: {record['error']}"}
    flagged = record.get("flagged") or []
    if not flagged:
        return {}
    causes = "; ".join(record.get("causes") or []) or "unknown"
    return {"Determinism": f"{len(flagged)} of {record.get('compared', 0)} watched dogs with the same races as last "
                           f"night have different states under the same model set: "
                           + "; ".join(_flag_text(f) for f in flagged[:3]) + (" ..." if len(flagged) > 3 else "")
                           + f". Likely cause: {causes}"}
