"""The model-change stage: is tonight's model set the one last night ran? If not, say so, and what moved.

    eval/model_change.json   {changed, current_set, previous_set, previous_night, previous_run, moved: [...],
                             same_races: {...} or {"error": ...}}; or {"error": ...}

The previous night is the latest published run (tonight's is not published yet). `moved` lists the page-one numbers
under last night's set (its run's headline) against tonight's, largest change first (gruviz_core.model_change): two
nights' data. `same_races` is the real comparison: on the night a set takes over, the previous set is loaded from the
registry and scores tonight's held-out races (a sample of them, whole races, about GRUVIZ_MODEL_CHANGE_DOGS dogs)
through the extraction's own code path (gruviz_core.extract.iter_extract, its normaliser and feature names on the
snapshot's raw sequences); its states are never stored: its scores, its plateau-s statuses (from its own s) and
seed 0's top-layer states at the CKA rows are kept in memory for the comparison:

    numbers            race NLL (ensemble, seed 0), gap to the market overall and by race count, under each set, with
                       95% intervals over dogs and the change's; largest |change| first
    main_effect        settled - settling at the same step under each set
    disagreement       share of races whose favourite differs (ensembles; seed 0 against seed 0)
    status_agreement   settled/settling status of the same dogs at races 15, 20, 25, 30 under each set
    cka                debiased CKA between the sets' seed-0 top-layer states per race count, with the permutation
                       baseline (gruviz_core.repro.cka_curve; seed_a = the previous set, seed_b = tonight's)

The previous set reads its own features of tonight's snapshot (flows.stages.features: gruviz's, or its team's
callable's), not tonight's set's: a registered set with its own feature callable takes over from a built-in one (or
the other way) and the two still score the same rows. A previous set that cannot be loaded, or whose features
cannot be built, is said so in same_races.error; the night goes on.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flows.stages.evaluate import Holdout, holdout_of
from flows.stages.stats import run_offsets
from gruviz_core import comparisons as cmp
from gruviz_core import evaluate as ev
from gruviz_core import model_change as mc
from gruviz_core import repro as rp
from gruviz_core import stats as st
from gruviz_core.cohorts import CohortRule
from gruviz_core.errors import ConfigError
from gruviz_core.extract import choose_device, iter_extract
from gruviz_core.model_set import ModelSet
from gruviz_core.racing import race_codes, race_softmax, renormalise
from gruviz_core.sequences import SequenceRows
from storage.layout import RunLayout
from storage.registry import load_model_set, model_set_manifest
from storage.results import read_json, read_summary
from storage.runs import latest_run
from storage.sequences import load_sequence_meta, load_sequence_rows
from storage.states import open_states
from storage.tables import write_json

__all__ = ["run", "same_races", "email_lines", "SAMPLE_DOGS"]

log = logging.getLogger(__name__)

SAMPLE_DOGS = 3000
"""Default dogs whose whole races are compared (GRUVIZ_MODEL_CHANGE_DOGS): the previous set re-runs their histories."""


def run(tmp_dir: str | Path, root: str | Path, set_id: str, seq_path: str | Path | None = None, *,
        dogs: int = SAMPLE_DOGS, n_boot: int = 1000, device: str = "cpu", seed: int = 0) -> dict:
    """Write and return tonight's model-change record; never raises (a failure is recorded for the report).
    Without `seq_path` the same-race comparison is not run (the two nights' numbers only)."""
    try:
        record = _record(tmp_dir, root, set_id)
    except Exception as exc:  # noqa: BLE001 - an addition to the night: its failure must not cost the report
        record = {"changed": None, "current_set": set_id, "error": f"{type(exc).__name__}: {exc}"}
        log.warning("model change not checked: %s", record["error"])
    if record.get("changed") and seq_path is not None:
        t0 = time.perf_counter()
        try:
            prev_seq = _previous_sequences(tmp_dir, root, set_id, record["previous_set"], seq_path)
            record["same_races"] = same_races(tmp_dir, root, set_id, record["previous_set"], seq_path,
                                              max_dogs=dogs, n_boot=n_boot, device=device, seed=seed,
                                              previous_seq_path=prev_seq)
        except Exception as exc:  # noqa: BLE001 - said in the record and the report, never fails the night
            record["same_races"] = {"error": f"{type(exc).__name__}: {exc}",
                                    "seconds": round(time.perf_counter() - t0, 3)}
            log.warning("the previous model set %s was not compared on tonight's races: %s", record["previous_set"],
                        record["same_races"]["error"])
    write_json(RunLayout.at(tmp_dir).model_change_record, _jsonable(record))
    if record.get("changed"):
        log.warning("model set %s took over from %s (last run on %s)", set_id, record["previous_set"],
                    record["previous_night"])
    return record


def _previous_sequences(tmp_dir: str | Path, root: str | Path, set_id: str, previous_set: str,
                        seq_path: str | Path) -> str | Path:
    """The sequences the previous set reads on tonight's snapshot: tonight's when both sets read gruviz's features
    (or the same callable), else its own (built and cached as its own night would build them); `seq_path` when the
    previous set's manifest cannot be read (same_races then says it could not be loaded) or the run records no
    snapshot."""
    from flows.stages import features

    try:
        before = features.spec_of_set(root, previous_set)
    except Exception:  # noqa: BLE001 - a set gone or damaged: same_races names it
        return seq_path
    after = features.spec_of_set(root, set_id)
    custom = [spec.key if spec is not None and spec.custom else None for spec in (before, after)]
    snapshot_id = (read_json(RunLayout.at(tmp_dir).run_json) or {}).get("snapshot_id")
    if custom[0] == custom[1] or not snapshot_id:
        return seq_path
    try:
        return features.run(root, snapshot_id, previous_set)
    except Exception as exc:  # noqa: BLE001 - the team's callable, a snapshot gone: said in same_races.error
        raise ConfigError(f"the previous model set {previous_set}'s features of snapshot {snapshot_id} could not be "
                          f"built ({type(exc).__name__}: {exc})") from None


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
        record["moved"] = [{"number": k, "before": a, "after": b, "change": d} for k, a, b, d in mc.moved(before, after)]
    return record


# ------------------------------------------------------------------ the same races under both sets


def same_races(run_dir: str | Path, root: str | Path, set_id: str, previous_set: str, seq_path: str | Path, *,
               max_dogs: int = SAMPLE_DOGS, n_boot: int = 1000, device: str = "cpu", seed: int = 0,
               previous: ModelSet | None = None, cka_min_dogs: int = 50,
               previous_seq_path: str | Path | None = None) -> dict:
    """The previous set against tonight's on the same held-out races of tonight's run (see the module docstring).
    `previous`: the set already loaded (else from the registry); `previous_seq_path`: the sequences it reads (its
    own features of tonight's snapshot; else `seq_path`). Raises on what it cannot do; `run` records it."""
    t0 = time.perf_counter()
    try:
        prev = previous or load_model_set(root, previous_set)
    except Exception as exc:  # noqa: BLE001 - any damage: the record says the set could not be loaded
        raise ConfigError(f"the previous model set {previous_set} could not be loaded from the registry "
                          f"({type(exc).__name__}: {exc})") from None
    reader = open_states(run_dir, allow_incomplete=True)
    rows, offsets = reader.rows(), run_offsets(reader)
    prev_seq = previous_seq_path or seq_path
    for path in dict.fromkeys([seq_path, prev_seq]):
        seq_off = np.asarray(load_sequence_meta(path)["offsets"], np.int64)
        if len(seq_off) != len(offsets) or np.any(seq_off != offsets):
            raise ConfigError(f"sequences {path} do not have the run's rows ({len(seq_off) - 1} vs {reader.n_dogs} "
                              "dogs)")
    scores = reader.scores().astype(np.float64)  # (obs, K)
    race_all = race_codes(rows["race_id"].to_numpy())
    sel, has_market = ev.eval_rows(rows, scores, race_all)
    hold = _both_held_out(model_set_manifest(root, set_id), prev.meta)
    sel = sel[hold.keep(rows["race_date"].to_numpy()[sel])]
    if not len(sel):
        raise ConfigError(f"no held-out races after {hold.after} to compare the sets on")
    dog_all = rows["dog_index"].to_numpy(np.int64)
    sel = sel[mc.pick_races(race_all[sel], dog_all[sel], max_dogs, seed)]
    dogs = np.unique(dog_all[sel])  # (D,) run dog indices, sorted
    lens = offsets[dogs + 1] - offsets[dogs]
    off_c = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)  # (D + 1,) compact offsets
    idx = np.repeat(offsets[dogs] - off_c[:-1], lens) + np.arange(int(off_c[-1]))  # (rows_c,) run rows, sorted
    step_c = rows["step"].to_numpy()[idx]
    summary = read_summary(run_dir)
    rule = CohortRule.coerce(summary.rule if summary else None)
    cka_at = rp.cka_dogs(lens, seed=seed, n_per_step=1000, min_dogs=cka_min_dogs)  # {t: compact dogs}
    cka_rows = {t: off_c[d] + t - 1 for t, d in cka_at.items()}
    want = np.unique(np.concatenate(list(cka_rows.values()))) if cka_rows else np.zeros(0, np.int64)

    before = _previous_scores(prev, prev_seq, idx, off_c, rule, want, device=device)
    after = _current_states(reader, idx, off_c, step_c, rule, want)

    pos = np.searchsorted(idx, sel)  # compared rows in the compact numbering
    race = pd.factorize(race_all[sel], sort=False)[0].astype(np.int64)
    dog = np.searchsorted(dogs, dog_all[sel])
    step = rows["step"].to_numpy()[sel].astype(np.int64)
    won = rows["won"].to_numpy(np.float64)[sel]
    market = renormalise(rows["market_prob"].to_numpy(np.float64)[sel], race) if has_market else None
    p_a = np.stack([race_softmax(before["score"][pos, k], race) for k in range(before["score"].shape[1])], axis=1)
    p_b = np.stack([race_softmax(scores[sel, k], race) for k in range(scores.shape[1])], axis=1)
    weights = cmp.bootstrap_weights(len(dogs), n_boot, seed)
    numbers = mc.same_race_numbers(p_a, p_b, market, won, race, dog, step, weights)
    effects = [mc.settled_minus_settling(p, plat, market, won, race, dog, step, w=rule.w, k=rule.k, weights=weights)
               for p, plat in ((p_a, before["plateau"]), (p_b, after["plateau"]))]
    numbers.append(_effect_row(*effects))
    numbers.sort(key=lambda r: -abs(r["change"]) if _finite(r["change"]) else 0.0)
    cka = rp.cka_curve({t: {0: before["top"][np.searchsorted(want, r)], 1: after["top"][np.searchsorted(want, r)]}
                        for t, r in cka_rows.items()},
                       weights_of=lambda n: cmp.bootstrap_weights(n, min(n_boot, 200), seed + 3), seed=seed)
    d = rows["race_date"].to_numpy(dtype="datetime64[D]")[sel]
    return {
        "previous_set": prev.set_id, "current_set": set_id, "previous_seeds": list(prev.seeds),
        "current_seeds": list(reader.seeds), "held_out_after": hold.after, "start": str(d.min()), "end": str(d.max()),
        "races": int(race.max() + 1), "runners": int(len(sel)), "dogs": int(len(dogs)), "rows_rerun": int(off_c[-1]),
        "sample_dogs": int(max_dogs), "has_market": bool(has_market), "n_boot": int(n_boot),
        "rule": {"name": "plateau-s", "w": rule.w, "delta": rule.delta, "k": rule.k, "layer": rule.layer},
        "numbers": numbers, "main_effect": {"before": effects[0], "after": effects[1]},
        "disagreement": mc.top_pick_disagreement(p_a, p_b, race, dog, weights),
        "status_agreement": mc.status_agreement(before["plateau"], after["plateau"], lens, w=rule.w, k=rule.k,
                                                weights=weights),
        "cka": cka.rename(columns={"seed_a": "set_a", "seed_b": "set_b"}).to_dict("records"),
        "max_recurrence_error": before["max_err"], "seconds": round(time.perf_counter() - t0, 3), "error": None,
    }


def _both_held_out(current_meta: dict, previous_meta: dict) -> Holdout:
    """Races out of sample for both sets: after the later of their held-out boundaries."""
    a, b = holdout_of(current_meta), holdout_of(previous_meta)
    if a.after is None or (b.after is not None and b.after > a.after):
        return b if b.after is not None else a
    return a


def _previous_scores(prev: ModelSet, seq_path, idx: np.ndarray, off_c: np.ndarray, rule: CohortRule,
                     want: np.ndarray, *, device: str) -> dict:
    """The previous set over the sampled dogs' whole histories: its scores (rows_c, K), plateau steps (D, K) from
    its own s (float16-rounded, as a stored run would hold them), seed 0's top-layer states at rows `want`."""
    seqs = load_sequence_rows(seq_path, 0, int(idx[-1]) + 1, meta=())  # raw rows; only idx's are prepared
    rows = SequenceRows(0, seqs.values[idx], seqs.context[idx], seqs.feature_names, seqs.context_names, {})
    try:
        values, context = prev.prepare(rows)
    except Exception as exc:  # noqa: BLE001 - a set whose inputs tonight's sequences lack
        raise ConfigError(f"the previous model set {prev.set_id} reads inputs tonight's sequences do not carry "
                          f"({type(exc).__name__}: {exc}); it cannot score tonight's races") from None
    n_rows, n_dogs, k_seeds = int(off_c[-1]), len(off_c) - 1, len(prev.models)
    score = np.full((n_rows, k_seeds), np.nan)
    s = np.full((k_seeds, n_rows), np.nan)
    top = np.zeros((len(want), prev.models[0].gru.hidden_size), np.float32)
    layer = _layer(rule, prev.models[0].gru.num_layers)
    max_err = 0.0
    dev = choose_device(None if device == "auto" else device)
    for k, bs in iter_extract(prev.models, values, context, off_c, np.arange(n_dogs), device=dev, dtype=torch.float32):
        at = np.repeat(off_c[bs.dogs] - (np.cumsum(bs.lengths) - bs.lengths), bs.lengths) + np.arange(len(bs.score))
        score[at, k] = bs.score
        s[k, at] = _s(bs.h[:, layer])
        max_err = max(max_err, bs.max_err)
        if k == 0 and len(want):
            hit = np.isin(at, want)
            top[np.searchsorted(want, at[hit])] = bs.h[hit, -1].astype(np.float16)
    plateau = np.stack([st.plateau_steps(s[k], _steps(off_c), off_c, w=rule.w, delta=rule.delta, k=rule.k)
                        for k in range(k_seeds)], axis=1)
    return {"score": score, "plateau": plateau, "top": top, "max_err": float(max_err)}


def _current_states(reader, idx: np.ndarray, off_c: np.ndarray, step_c: np.ndarray, rule: CohortRule,
                    want: np.ndarray) -> dict:
    """Tonight's set from its stored states at the sampled dogs' rows: plateau steps (D, K) from each seed's s at
    the cohort layer, seed 0's top-layer states at rows `want` (compact numbering)."""
    layer = _layer(rule, reader.n_layers)
    plateau = np.stack([st.plateau_steps(_s(_stored(reader, k, idx, layer)), step_c, off_c, w=rule.w,
                                         delta=rule.delta, k=rule.k) for k in range(len(reader.seeds))], axis=1)
    return {"plateau": plateau, "top": _stored(reader, 0, idx[want], reader.n_layers - 1)}


def _stored(reader, seed: int, rows: np.ndarray, layer: int) -> np.ndarray:
    """(len(rows), H) float32 stored h of one layer at sorted rows (only the chunks holding them)."""
    arr = getattr(reader, "_arr", None)  # the reader has no public row selection yet (as evaluate's _top_rows)
    if not len(rows):
        return np.zeros((0, reader.n_units), np.float32)
    if arr is not None:
        return arr(f"seed{seed}/h").get_orthogonal_selection((rows, layer, slice(None))).astype(np.float32)
    out = np.zeros((len(rows), reader.n_units), np.float32)
    for c in reader.iter_chunks(seed, (int(rows[0]), int(rows[-1]) + 1)):
        a, b = np.searchsorted(rows, [c.start, c.stop])
        out[a:b] = c.h[rows[a:b] - c.start, layer]
    return out


def _s(h: np.ndarray) -> np.ndarray:
    """s = mean |h| per row of (rows, H) states, from their float16 values (as stored)."""
    return np.abs(np.asarray(h).astype(np.float16).astype(np.float32)).mean(axis=-1, dtype=np.float64)


def _layer(rule: CohortRule, n_layers: int) -> int:
    return rule.layer % n_layers if -n_layers <= rule.layer < n_layers else n_layers - 1


def _steps(off: np.ndarray) -> np.ndarray:
    lens = np.diff(off)
    return (np.arange(int(off[-1])) - np.repeat(off[:-1], lens) + 1).astype(np.int64)


def _effect_row(a: dict, b: dict) -> dict:
    """The settled - settling comparison under each set as a `numbers` row (no interval of the change: the two
    effects' replicates are not kept)."""
    va, vb = a.get("diff"), b.get("diff")
    change = vb - va if _finite(va) and _finite(vb) else float("nan")
    return {"number": "settled - settling, same step", "unit": "nats per runner, model - market", "n": 0,
            "before": va, "before_lo": a.get("lo"), "before_hi": a.get("hi"), "after": vb, "after_lo": b.get("lo"),
            "after_hi": b.get("hi"), "change": change, "lo": float("nan"), "hi": float("nan"),
            "comparable": bool(a.get("comparable") and b.get("comparable"))}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _jsonable(x: Any) -> Any:
    """NaN and infinities as None, NumPy scalars as Python's, recursively."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ------------------------------------------------------------------ the email


def email_lines(run_dir: str | Path) -> dict[str, str]:
    """The email's first line when a new set took over tonight: which, from which, and the number that moved most
    (on the same races under both sets when they were compared, else between the two nights)."""
    record = read_json(RunLayout.at(run_dir).model_change_record)
    if not record or not record.get("changed"):
        return {}
    line = f"a new model set, {record['current_set']}, took over from {record['previous_set']} " \
           f"(last run on {record.get('previous_night') or '?'})"
    same = record.get("same_races") or {}
    top = mc.largest_change(same.get("numbers") or [])
    if top is not None:
        ci = f" [{top['lo']:+.3g}, {top['hi']:+.3g}]" if _finite(top.get("lo")) and _finite(top.get("hi")) else ""
        dis = (same.get("disagreement") or {}).get("ensemble") or {}
        line += (f"; moved most on the same {same.get('races', 0):,} races: {top['number']} {top['before']:.4g} -> "
                 f"{top['after']:.4g} ({top['change']:+.3g}{ci} {top.get('unit', 'nats')})")
        if _finite(dis.get("value")):
            line += f"; favourites differ in {100 * dis['value']:.1f}% of races"
        return {"Model set": line}
    if same.get("error"):
        line += f"; the sets were not compared on the same races: {same['error']}"
    top = (record.get("moved") or [None])[0]
    if top:
        line += (f"; moved most: {top['number']} {top['before']:.4g} -> {top['after']:.4g} "
                 f"({top['change']:+.4g} {mc.unit_of(top['number'])}, last night's data against tonight's)")
    return {"Model set": line}
