"""Hostile CSV files (issue 18 item 7): whatever the bytes, every row is accounted for and no name changes.

Each example writes one canonical CSV whose rows are valid, then spoils it the ways real exports
do: trailing commas (also on the first data row), extra values, missing trailing fields, a BOM,
UTF-16 with or without a BOM, lines in cp1252 beside UTF-8 lines, CRLF, quoted newlines and
delimiters, duplicated columns (agreeing or not) and huge fields. Checked: the identity
`rows_in = accepted + rejected + duplicates_merged` with rows_in the rows written, only the
rows with extra values rejected (`extra_fields`), every accepted dog's name exactly as intended,
conflicting duplicated cells counted, and `ingest` either publishing or naming the file.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.sources import read_forms
from flows.stages.ingest import ingest
from gruviz_core.errors import InputError
from storage.forms import latest_snapshot, load_snapshot

# Names whose cp1252 bytes are never valid UTF-8 (so a cp1252 line decodes back to them), and some
# that cp1252 cannot encode (those lines stay UTF-8).
NAMES = {
    "D1": "Zoë", "D2": "Señor Rápido", "D3": "Ballymac Éire", "D4": "Ærø Fjord", "D5": "O'Brien's Pet",
    "D6": "Bold, Brave", "D7": "Łukasz Flyer", "D8": "日本 Star", "D9": "<b>Bold</b> Move", "D10": 'Say "Hi"',
}
HEADER = ["dog_id", "dog_name", "race_id", "race_date", "track", "distance_m", "box", "finish_pos", "weight_kg",
          "sp_decimal", "note"]
REQUIRED_FIELDS = 5  # dog_id .. track: a short row keeps these

_row = st.fixed_dictionaries({
    "dog": st.sampled_from(sorted(NAMES)),
    "race": st.integers(1, 4),
    "date": st.sampled_from(["2024-03-01", "1/03/2024", "Friday 1st March 2024", "01/03/24"]),
    "box": st.integers(1, 8),
    "place": st.sampled_from(["1", "2", "3=", "F", "8"]),
    "note": st.one_of(st.just(""), st.sampled_from(["led, then faded", "line one\nline two", 'said "fast"', "x" * 200_000])),
    "damage": st.sampled_from(["none", "none", "trailing_comma", "trailing_commas", "extra_value", "missing_fields"]),
    "cut": st.integers(1, len(HEADER) - REQUIRED_FIELDS),
    "cp1252": st.booleans(),
})


def _line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)  # quotes any field holding a line break
    return out.getvalue()[:-2]


def _build(rows: list[dict], dup: str, bom: bool, wide: str, crlf: bool) -> tuple[bytes, int, int]:
    """(file bytes, rows with extra values, rows whose duplicated name column disagrees)."""
    header = HEADER[:2] + (["dog_name"] if dup != "none" else []) + HEADER[2:]
    lines, n_extra, n_conflict = [_line(header)], 0, 0
    cp_lines: set[int] = set()
    for r in rows:
        cells = [r["dog"], NAMES[r["dog"]], f"c:{r['race']}", r["date"], "Sale", "400", str(r["box"]), r["place"],
                 "30.5", "$3.20", r["note"]]
        if dup != "none":
            other = NAMES[r["dog"]] if dup == "agree" else "Somebody Else"
            n_conflict += dup == "disagree"
            cells.insert(2, other)
        if r["damage"] == "missing_fields":
            cells = cells[: len(cells) - r["cut"]]
        text = _line(cells)
        if r["damage"] == "trailing_comma":
            text += ","
        elif r["damage"] == "trailing_commas":
            text += ", ,,"
        elif r["damage"] == "extra_value":
            text += ",surprise"
            n_extra += 1
        if r["cp1252"]:
            cp_lines.add(len(lines))
        lines.append(text)
    nl = "\r\n" if crlf else "\n"
    if wide != "none":
        data = (nl.join(lines) + nl).encode(wide)
        return data, n_extra, n_conflict
    parts = []
    for i, text in enumerate(lines):
        try:
            parts.append(text.encode("cp1252") if i in cp_lines else text.encode("utf-8"))
        except UnicodeEncodeError:
            parts.append(text.encode("utf-8"))  # cp1252 has no such letter: this line stays UTF-8
    data = nl.encode().join(parts) + nl.encode()
    return (b"\xef\xbb\xbf" + data if bom else data), n_extra, n_conflict


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    rows=st.lists(_row, min_size=1, max_size=10),
    dup=st.sampled_from(["none", "none", "agree", "disagree"]),
    bom=st.booleans(),
    wide=st.sampled_from(["none", "none", "none", "utf-16", "utf-16-le", "utf-16-be"]),
    crlf=st.booleans(),
)
def test_hostile_csv_keeps_identity_and_names(rows, dup, bom, wide, crlf):
    data, n_extra, n_conflict = _build(rows, dup, bom, wide, crlf)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "hostile.csv"
        src.write_bytes(data)
        forms = read_forms([str(src)])
        s = forms.summary
        assert s.rows_in == len(rows)
        assert s.rows_in == s.accepted + s.rejected + s.duplicates_merged
        assert s.rejects_by_reason == ({"extra_fields": n_extra} if n_extra else {})
        assert s.warnings.get("duplicate_column_conflict", 0) == n_conflict
        for dog, name in zip(forms.runs["dog_id"], forms.runs["dog_name"]):
            assert name == NAMES[dog], (dog, name)
        home = Path(d) / "home"
        if s.accepted == 0:
            try:
                ingest([str(src)], home)
                raise AssertionError("an ingest with no accepted row must fail")
            except InputError as exc:
                assert "hostile.csv" in str(exc) and latest_snapshot(home) is None
        else:
            assert ingest([str(src)], home) == s
            assert len(load_snapshot(home)) == s.accepted
