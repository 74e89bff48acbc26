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
    "the normaliser clips, and for a categorical input (tracks) the share unknown to the vocabulary or never seen in "
    "training. A shift here can move every number on the page without the model changing."
)
_EXPLAIN_FLAGGED = (
    "An input is flagged past a threshold: PSI above {psi:g} on at least {min_rows} rows, or a share (missing, "
    "clipped, unknown, unseen) up by more than {share:.3g} percentage points and by more than {z:g} standard errors."
)
_EXPLAIN_ALL = (
    "Every input: PSI over the training window's deciles (levels for binary and discrete inputs; the most frequent "
    "levels and one bin for the rest for categorical ones), the two-sample KS statistic for continuous ones, and each "
    "share in training -> tonight; a PSI of – means one side has no finite value. PSI < 0.1 reads as stable, 0.1-0.25 as "
    "some shift, > 0.25 as shifted."
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
    counted = f"{len(flagged)} of {len(table)} inputs flagged tonight." if len(flagged) else \
        f"No input is flagged tonight ({len(table)} checked; the largest PSI is {_largest(table)})."
    panels = [Panel("Flagged inputs", f"{counted} {_scope(record, table)} {_explain(record)}",
                    table=_flag_table(flagged) if len(flagged) else None)]
    panels.append(Panel("Every input", _EXPLAIN_ALL, table=_all_table(table), collapsed=True))
    return Section(_ID, _TITLE, _INTRO, tuple(panels), collapsed=not len(flagged))


def _note(text: str) -> Section:
    return Section(_ID, _TITLE, _INTRO, (Panel("Input drift", "", note=text),), collapsed=True)


def _scope(record: Mapping[str, Any], table: pd.DataFrame | None = None) -> str:
    cur = int(record.get("current_rows") or 0)
    ref = int(record.get("reference_rows") or 0)
    used = int(pd.to_numeric(table["n_ref"]).max()) if table is not None and len(table) else ref
    span = ""
    if record.get("current_start") and record.get("current_end"):
        span = f", {record['current_start']} to {record['current_end']}"
    sample = f", of which a fixed random sample of {used:,} is compared" if 0 < used < ref else ""
    return (f"Tonight: {cur:,} rows ({record.get('current', '?')}{span}); reference: {ref:,} rows, the "
            f"{record.get('reference', 'training window')}{sample}.")


def _explain(record: Mapping[str, Any]) -> str:
    return _EXPLAIN_FLAGGED.format(psi=float(record.get("psi_threshold", 0.25)),
                                   min_rows=int(record.get("min_rows", 200)),
                                   share=100 * float(record.get("share_threshold", 0.05)),
                                   z=float(record.get("share_z", 4.0)))


def _largest(df: pd.DataFrame) -> str:
    """'<psi> (<input>)' of the largest finite PSI, or 'not computed'."""
    psi = pd.to_numeric(df["psi"], errors="coerce")
    if not psi.notna().any():
        return "not computed"
    i = psi.idxmax()
    return f"{sig(psi[i], 3):g} ({df.loc[i, 'input']})"


def _flag_table(df: pd.DataFrame) -> Table:
    cols = ("input", "why", "PSI", "rows tonight", "training rows compared")
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
