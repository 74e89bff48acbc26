"""Data quality of the model's inputs: tonight's rows against the model set's training window (eval/drift)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from gruviz_core.results import RunResults
from reports.model import Panel, Section, Table, sig

__all__ = ["drift_section"]

_ID, _TITLE = "input-drift", "Data quality: inputs against the training window"
_INTRO = (
    "Do tonight's inputs look like those the model set was trained on? For every input the models read: the "
    "population stability index (PSI) of tonight's rows against the training window, the share missing, the share "
    "the normaliser clips, and tracks unknown to the vocabulary or never seen in training. A shift here can move "
    "every number on the page without the model changing."
)
_EXPLAIN_FLAGGED = (
    "Inputs past a threshold: PSI above {psi:g} on at least {min_rows} rows, or a share (missing, clipped, unknown, "
    "unseen) up by more than {share:.0%} and by more than {z:g} standard errors."
)
_EXPLAIN_ALL = (
    "Every input: PSI over the training window's deciles (levels for binary, discrete and categorical inputs), the "
    "two-sample KS statistic for continuous ones, and each share in training -> tonight. PSI < 0.1 reads as stable, "
    "0.1-0.25 as some shift, > 0.25 as shifted."
)


def drift_section(results: RunResults) -> Section:
    """The drift check's flags first, then every input behind a <details>; collapsed when nothing is flagged."""
    record, table = results.drift_record, results.drift
    if record is None and table is None:
        return _note("Not computed for this run: the drift stage did not run (eval/drift.json is missing).")
    if record and record.get("error"):
        return _note(f"The drift check failed: {record['error']}. The rest of the report does not depend on it.")
    if table is None:
        return _note("Not computed for this run: eval/drift.parquet is missing.")
    record = record or {}
    flagged = table[table["flagged"].astype(bool)].sort_values("psi", ascending=False, na_position="last")
    panels = [Panel("Flagged inputs", _scope(record) + " " + _explain(record),
                    table=_flag_table(flagged) if len(flagged) else None,
                    note=None if len(flagged) else "No input is flagged tonight.")]
    panels.append(Panel("Every input", _EXPLAIN_ALL, table=_all_table(table), collapsed=True))
    return Section(_ID, _TITLE, _INTRO, tuple(panels), collapsed=not len(flagged))


def _note(text: str) -> Section:
    return Section(_ID, _TITLE, _INTRO, (Panel("Input drift", "", note=text),), collapsed=True)


def _scope(record: Mapping[str, Any]) -> str:
    cur = int(record.get("current_rows") or 0)
    ref = int(record.get("reference_rows") or 0)
    span = ""
    if record.get("current_start") and record.get("current_end"):
        span = f", {record['current_start']} to {record['current_end']}"
    return (f"Tonight: {cur:,} rows ({record.get('current', '?')}{span}); reference: {ref:,} rows, the "
            f"{record.get('reference', 'training window')}.")


def _explain(record: Mapping[str, Any]) -> str:
    return _EXPLAIN_FLAGGED.format(psi=float(record.get("psi_threshold", 0.25)),
                                   min_rows=int(record.get("min_rows", 200)),
                                   share=float(record.get("share_threshold", 0.05)),
                                   z=float(record.get("share_z", 4.0)))


def _flag_table(df: pd.DataFrame) -> Table:
    cols = ("input", "why", "PSI", "rows tonight", "rows in training")
    rows = tuple((str(r.input), str(r.reason), sig(r.psi, 3), int(r.n_cur), int(r.n_ref)) for r in df.itertuples())
    return Table(cols, rows)


def _all_table(df: pd.DataFrame) -> Table:
    cols = ("input", "part", "kind", "PSI", "KS", "missing", "clipped", "unknown / unseen", "flag")
    rows = []
    for r in df.sort_values("psi", ascending=False, na_position="last").itertuples():
        cat = ""
        if r.kind == "categorical":
            cat = f"{_pair(r.unknown_ref, r.unknown_cur)} / {_pct(r.unseen_cur)} ({int(r.n_unseen)} level(s))"
        rows.append((str(r.input), str(r.part), str(r.kind), sig(r.psi, 3), sig(r.ks, 3),
                     _pair(r.missing_ref, r.missing_cur), _pair(r.clipped_ref, r.clipped_cur), cat,
                     "flagged" if r.flagged else ""))
    return Table(cols, tuple(rows))


def _pair(a: Any, b: Any) -> str:
    if sig(a) is None and sig(b) is None:
        return ""
    return f"{_pct(a)} -> {_pct(b)}"


def _pct(v: Any) -> str:
    x = sig(v)
    return "n/a" if x is None else f"{x:.1%}"
