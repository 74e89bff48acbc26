"""Form files' bytes -> the canonical runs table, its rejects and its accounting; pure (bytes and names in).

Speed per row does not depend on how rows are split into files: each file's bytes are decoded on
their own (`parse_file`, safe to run in threads: gzip and sha256 release the GIL), CSV files with the
same header are concatenated and parsed by one pandas call, and every format's rows go through their
adapter in one vectorised pass, each row carrying its file and row (`build_forms`).

- Encodings: a BOM (UTF-8, UTF-16, UTF-32) decides; a file with no BOM whose bytes look like UTF-16
  (every other byte zero) is UTF-16. Otherwise a file is UTF-8, and only the byte sequences that are
  not valid UTF-8 are read as cp1252 (Latin-1 where cp1252 has no character): a correctly encoded
  `Zoë` stays `Zoë` beside a stray Latin-1 byte. The file's entry in the manifest says which.
- Rows: blank lines are not rows. A row shorter than the header is padded with empty cells; extra
  cells beyond the header that are empty (a trailing comma) are dropped; a row with non-empty extra
  cells is rejected as `extra_fields` (pandas would have shifted every column). A delimiter of tab or
  semicolon is used when the header has no comma but one of those. A last line with no line end
  (a file caught mid-write) is rejected as `cut_off`.
- Duplicated columns: the first non-empty value of the copies is used; rows where two copies hold
  different values are counted (warning `duplicate_column_conflict`) and the names are in the manifest.
- Warnings (counted per file, the row is kept): READ_WARNINGS here and gruviz_core.formats.WARNINGS
  (`bad_<column>`: a value present but not understood, kept as missing).
- Rows sharing (race_id, dog_id) are merged into one; every input row is accounted for:
  `rows_in = accepted + rejected + duplicates_merged`. The content id is a hash of the runs and
  rejects, so the same input gives the same id whatever the order or location of its files.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
import sys
import threading
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import PurePath

import numpy as np
import pandas as pd

from gruviz_core.errors import GruvizError, StoreError, UnreadableFileError
from gruviz_core.formats.adapters import Adapted, adapt, check_columns, detect_format
from gruviz_core.schema import CANONICAL, CANONICAL_COLUMNS, conform

__all__ = [
    "READ_WARNINGS",
    "SNAPSHOT_VERSION",
    "Forms",
    "InflateLimit",
    "IngestSummary",
    "Source",
    "build_forms",
    "parse_file",
    "raw_table",
]

KEY = ["race_id", "dog_id"]
"""One row per (dog, race): rows sharing this key are duplicates, merged."""
SORT = ["race_date", "race_id", "box", "dog_id"]
SNAPSHOT_VERSION = "forms-v2"
"""Bump when the canonical content of a snapshot changes meaning (it is part of the id).
v2: the `placed` column, Iggy second places, names from ids, implausible dates rejected."""

READ_WARNINGS: dict[str, str] = {
    "duplicate_column_conflict": "rows where two copies of a duplicated column hold different values (the first non-empty is used)",
    "decoded_cp1252": "byte sequences that were not valid UTF-8, read as cp1252/Latin-1",
    "no_result_column": "accepted rows of a canonical file with neither `won` nor `finish_pos` (kept: a result may be "
                        "unknown; no model can train or be evaluated on them)",
}
"""Warnings counted while reading files (the rows are kept)."""

_SLACK = 1
"""Fields beyond the header the shared parse makes room for; a row with more re-parses with the exact width."""


@dataclass(frozen=True)
class InflateLimit:
    """How far a compressed source file may inflate: beyond either bound it is refused, as a decompression bomb
    (a 1 MB gzip of 1 GB took 10.7 GB of memory before a bare MemoryError)."""

    max_bytes: int = 1 << 30
    """Decompressed bytes of one file (1 GiB: the real Iggy files are about 4 MB)."""
    max_ratio: float = 100.0
    """Decompressed / compressed size, checked once a file has inflated past `ratio_from_bytes` (CSV: about 3-15)."""
    ratio_from_bytes: int = 16 << 20
    """Small files may compress better than any bound; only inflation past this size is judged by its ratio."""


@dataclass(frozen=True)
class IngestSummary:
    """What an ingest did; also stored in the snapshot's manifest.json."""

    snapshot_id: str
    """Content hash of the snapshot (16 hex)."""
    rows_in: int
    """Data rows read from all files."""
    accepted: int
    """Rows in runs.parquet."""
    rejected: int
    """Rows in rejects.parquet."""
    duplicates_merged: int
    """Rows folded into another row of the same (dog, race)."""
    dogs: int
    """Distinct dog_id."""
    races: int
    """Distinct race_id."""
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    """Reason code -> rejected rows."""
    files: list[str] = field(default_factory=list)
    """Source files read, in the order read."""
    warnings: dict[str, int] = field(default_factory=dict)
    """Warning code -> count (READ_WARNINGS, gruviz_core.formats.WARNINGS); rows kept, values or bytes noted."""
    files_without_result: dict[str, int] = field(default_factory=dict)
    """File -> its accepted rows, for each canonical file with neither `won` nor `finish_pos` (no model can train
    or be evaluated on those rows)."""

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.accepted + self.rejected + self.duplicates_merged

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Forms:
    """Every source file read and adapted, duplicates merged; what a snapshot holds, before it is written."""

    runs: pd.DataFrame
    """The canonical runs table, one row per (dog, race), sorted (race_date, race_id, box, dog_id)."""
    rejects: pd.DataFrame
    """source_file, source_row, reason, raw (JSON of the row's cells)."""
    summary: IngestSummary
    """Counts; `snapshot_id` is the content id of runs and rejects."""
    files: list[dict]
    """Per file: path, sha256, bytes, encoding, format, rows, accepted, rejected, warnings (, duplicate_columns)."""


@dataclass
class Source:
    """One file after decoding (parse_file): either a body for the shared CSV parse, or a frame of its own."""

    index: int
    """Position among the files read together: the `_file` of its rows."""
    name: str
    """The file's path as given: in messages, the manifest and rejects.parquet."""
    sha256: str
    """Of the bytes as read (compressed, for .gz)."""
    nbytes: int
    """Bytes as read."""
    encoding: str = "parquet"
    """As found: utf-8, utf-8-sig, utf-16-le, ..., cp1252, utf-8+cp1252; `parquet` for Parquet."""
    delimiter: str = ","
    header: tuple[str, ...] = ()
    """Header cells as written (stripped); CSV only."""
    body: bytes | None = None
    """UTF-8 data lines, no blank line, each ending in \\n, no quoted field spanning lines (shared parse)."""
    rows: int = 0
    frame: pd.DataFrame | None = None
    """Parquet, or a CSV parsed on its own (quoted newlines): header columns, `_extra`, `_file`, `_row`."""
    warnings: Counter = field(default_factory=Counter)
    duplicate_columns: list[str] = field(default_factory=list)
    cut: bool = False
    """CSV whose last data line has no line end (caught mid-write): that row is rejected as `cut_off`."""


# ---------------------------------------------------------------- public API


def parse_file(index: int, name: str, data: bytes, inflate: InflateLimit | None = None) -> Source:
    """One file's bytes -> a Source: decoded, header and body split (CSV) or a frame (Parquet, quoted newlines).
    `index`: the file's position among the files read together; `name`: its path, for messages and the manifest.
    The kind is the name's suffix (.csv, .csv.gz, .parquet); UnreadableFileError names the file."""
    src = Source(index=index, name=name, sha256=hashlib.sha256(data).hexdigest(), nbytes=len(data))
    lower = name.lower()
    try:
        if lower.endswith(".parquet"):
            _load_parquet(src, data)
        elif lower.endswith((".csv", ".csv.gz", ".txt", ".txt.gz")):
            if lower.endswith(".gz"):
                data = _gunzip(data, name, inflate or InflateLimit())
            _load_csv(src, data)
        else:
            raise UnreadableFileError(f"{name}: not a .csv, .csv.gz or .parquet file")
    except GruvizError:
        raise
    except Exception as exc:  # pyarrow/gzip/zlib raise many kinds; all mean "cannot read this file"
        raise UnreadableFileError(f"{name}: cannot be read ({type(exc).__name__}: {exc}); is it a CSV/Parquet file?") from exc
    return src


def raw_table(src: Source) -> pd.DataFrame:
    """One file's raw table: CSV cells as strings (decoded as the module says), Parquet as typed.

    Has an `_extra` column (JSON list of the cells beyond the header) only when some row has non-empty ones.
    """
    frame = src.frame if src.frame is not None else _group_frame([src])
    frame = frame.drop(columns=["_file", "_row"])
    if "_extra" in frame.columns and not (frame["_extra"] != "").any():
        frame = frame.drop(columns=["_extra"])
    return frame


def build_forms(loaded: list[Source], *, fmt: str | None = None) -> Forms:
    """Parse, adapt and merge every file (`loaded[i].index == i`, in file order); errors name the file.
    `fmt`: the format of every file, else detected from each header."""
    names = [src.name for src in loaded]
    frames, parts, adapters = _parse_and_adapt(loaded, fmt)
    runs_all = pd.concat([a.runs for a in parts], ignore_index=True) if parts else _empty_adapted_runs()
    warnings = [a.warnings for a in parts] + [_no_result_column(loaded, adapters, runs_all)]
    rejects = _reject_table(parts, frames, names)
    rows_in = sum(src.rows for src in loaded)
    runs, duplicates = _merge_duplicates(runs_all)
    counts = {"rows_in": rows_in, "accepted": len(runs), "rejected": len(rejects), "duplicates_merged": duplicates}
    if rows_in != len(runs) + len(rejects) + duplicates:
        raise StoreError(f"ingest accounting broken: {counts}; this is a bug in gruviz_core.formats.reader, "
                         "please report it")
    file_meta, totals = _file_meta(loaded, runs_all, rejects, warnings, adapters)
    by_reason = {str(k): int(v) for k, v in rejects["reason"].value_counts().sort_index().items()}
    summary = IngestSummary(
        snapshot_id=_content_id(runs, rejects),
        **counts,
        dogs=int(runs["dog_id"].nunique()),
        races=int(runs["race_id"].nunique()),
        rejects_by_reason=by_reason,
        files=names,
        warnings=totals,
        files_without_result={m["path"]: m["warnings"]["no_result_column"] for m in file_meta
                              if m["warnings"].get("no_result_column")},
    )
    return Forms(runs=runs, rejects=rejects, summary=summary, files=file_meta)


# ---------------------------------------------------------------- one file


_INFLATE_STEP = 8 << 20
"""Decompressed bytes produced per step, so that a bomb is stopped within a step of its bound."""


def _gunzip(data: bytes, name: str, limit: InflateLimit) -> bytes:
    """gzip members -> bytes, step by step; UnreadableFileError past `limit` (nothing beyond it is held)."""
    out: list[bytes] = []
    total = 0
    d = zlib.decompressobj(wbits=31)
    buf = data
    while True:
        chunk = d.decompress(buf, _INFLATE_STEP)
        total += len(chunk)
        out.append(chunk)
        _check_inflation(name, total, len(data), limit)
        buf = d.unconsumed_tail
        if d.eof:
            if not d.unused_data.strip(b"\0"):
                break
            d, buf = zlib.decompressobj(wbits=31), d.unused_data  # the next member of a concatenated gzip
        elif not buf and len(chunk) < _INFLATE_STEP:
            raise EOFError("compressed file ended before the end-of-stream marker was reached (truncated?)")
    return b"".join(out)


def _check_inflation(name: str, total: int, packed: int, limit: InflateLimit) -> None:
    if total > limit.max_bytes:
        raise UnreadableFileError(
            f"{name}: inflates to more than {limit.max_bytes / 2**20:,.0f} MiB (GRUVIZ_MAX_INFLATED_MB) from "
            f"{packed / 2**20:,.1f} MiB; refused as a possible decompression bomb. Check the file, or raise the "
            "setting if it is real form data")
    if total > limit.ratio_from_bytes and total > limit.max_ratio * packed:
        raise UnreadableFileError(
            f"{name}: inflates more than {limit.max_ratio:g} times its size ({packed:,} bytes -> over {total:,}; "
            "form data compresses 3-15 times); refused as a possible decompression bomb. Check the file, or "
            "raise GRUVIZ_MAX_INFLATE_RATIO if it is real form data")


def _load_parquet(src: Source, data: bytes) -> None:
    frame = pd.read_parquet(io.BytesIO(data))
    names = [str(c).strip().lstrip("\ufeff") for c in frame.columns]
    frame.columns = range(len(names))
    src.frame = _named(frame, names, np.full(len(frame), src.index), src)
    src.frame["_row"] = np.arange(1, len(frame) + 1, dtype=np.int64)
    src.rows = len(frame)


def _load_csv(src: Source, data: bytes) -> None:
    data, src.encoding, fallback = _decode(data, src.name)
    if fallback:
        src.warnings["decoded_cp1252"] += fallback
    data = data.replace(b"\xef\xbb\xbf", b"")  # BOMs, also mid-file where files were concatenated
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data[re.match(rb"(?:[ \t]*\n)*", data).end():]  # blank lines before the header
    nl = data.find(b"\n")
    head, body = (data, b"") if nl < 0 else (data[:nl], data[nl + 1:])
    if not head.strip():
        raise UnreadableFileError(f"{src.name}: empty file (no header line); remove it or add a header")
    src.delimiter = _delimiter(head)
    src.cut = nl >= 0 and not data.endswith(b"\n") and bool(data[data.rfind(b"\n") + 1:].strip())
    if b'"' in data and _quotes_span_lines(data):
        _parse_alone(src, data)
        return
    src.header = tuple(next(csv.reader([head.decode("utf-8")], delimiter=src.delimiter)))
    if body and not body.endswith(b"\n"):
        body += b"\n"
    if b"\n\n" in body or b"\n " in body or b"\n\t" in body or body[:1] in (b" ", b"\t", b"\n"):
        body = re.sub(rb"(?m)^[ \t]*\n", b"", body)  # blank lines are not rows
    src.body, src.rows = body, body.count(b"\n")


def _delimiter(head: bytes) -> str:
    """Comma, unless the header has none and has tabs (Excel 'Unicode text') or semicolons."""
    if b"," in head:
        return ","
    return "\t" if b"\t" in head else ";" if b";" in head else ","


def _quotes_span_lines(data: bytes) -> bool:
    """True if some line has an odd number of quote characters (a quoted field may hold a newline)."""
    return any(line.count(b'"') & 1 for line in data.split(b"\n") if b'"' in line)



# ---------------------------------------------------------------- decoding


_tls = threading.local()


def _cp1252_fallback(exc: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler: the bytes that are not valid UTF-8 are read as cp1252 (Latin-1 where undefined)."""
    bad = exc.object[exc.start:exc.end]
    _tls.fallback = getattr(_tls, "fallback", 0) + 1
    out = []
    for b in bad:
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(b))
    return "".join(out), exc.end


codecs.register_error("gruviz-cp1252", _cp1252_fallback)

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def _decode(data: bytes, name: str) -> tuple[bytes, str, int]:
    """Bytes of a text file -> (UTF-8 bytes, encoding as found, byte sequences read by the cp1252 fallback)."""
    wide = next(((bom, enc) for bom, enc in _BOMS if data.startswith(bom)), None)
    if wide is None and (enc := _looks_utf16(data)):
        wide = (b"", enc)
    if wide is not None:
        bom, enc = wide
        try:
            return data[len(bom):].decode(enc).encode("utf-8"), enc, 0
        except UnicodeDecodeError as exc:
            raise UnreadableFileError(f"{name}: looks like {enc.upper()} but is not valid {enc.upper()} ({exc}); "
                                      "save it again as UTF-8") from exc
    enc = "utf-8"
    if data.startswith(codecs.BOM_UTF8):
        data, enc = data[len(codecs.BOM_UTF8):], "utf-8-sig"
    try:
        data.decode("utf-8")
        return data, enc, 0
    except UnicodeDecodeError:
        pass
    _tls.fallback = 0
    text = data.decode("utf-8", errors="gruviz-cp1252")
    n = _tls.fallback
    valid_multibyte = len(text) < len(data)  # fewer characters than bytes: some UTF-8 beside the fallback bytes
    return text.encode("utf-8"), (enc + "+cp1252" if valid_multibyte else "cp1252"), n


def _looks_utf16(data: bytes) -> str | None:
    """'utf-16-le'/'utf-16-be' when a BOM-less file has a zero in every other byte (ASCII text in UTF-16)."""
    sample = data[:4096]
    if len(sample) < 4 or sample.count(0) < len(sample) // 4:
        return None
    return "utf-16-le" if sample[1::2].count(0) >= sample[0::2].count(0) else "utf-16-be"


# ---------------------------------------------------------------- parsing


def _parse_alone(src: Source, data: bytes) -> None:
    """A CSV whose quoted fields may span lines: Python's csv module, rows and fields exact."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # huge fields are data, not an error
    text = data.decode("utf-8")
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=src.delimiter, strict=True))
    except csv.Error as exc:
        if "end of data" in str(exc) or "EOF" in str(exc):
            raise UnreadableFileError(f"{src.name}: a quoted field is never closed ({exc}); "
                                      "every row after it would be swallowed. Fix the quote.") from exc
        rows = list(csv.reader(io.StringIO(text), delimiter=src.delimiter))
    rows = [r for r in rows if r and not (len(r) == 1 and not r[0].strip())]
    src.header = tuple(rows[0])
    body = rows[1:]
    width = max([len(src.header)] + [len(r) for r in body])
    padded = [r + [""] * (width - len(r)) for r in body]
    src.frame = _named(pd.DataFrame(padded, columns=range(width), dtype=object) if padded else
                       pd.DataFrame(columns=range(width), dtype=object),
                       _clean_names(src.header), np.full(len(body), src.index), src)
    src.frame["_row"] = np.arange(1, len(body) + 1, dtype=np.int64)
    src.rows = len(body)


def _group_frame(group: list[Source]) -> pd.DataFrame:
    """The rows of CSV files sharing one header and delimiter, parsed by ONE pandas call when possible."""
    body = b"".join(s.body for s in group)
    counts = np.array([s.rows for s in group], dtype=np.int64)
    delim = group[0].delimiter
    cells = _parse_body(body, delim, len(group[0].header))
    if len(cells) != counts.sum():  # pandas split rows differently from our line count: file by file
        return pd.concat([_group_frame([s]) for s in group], ignore_index=True) if len(group) > 1 else \
            _alone_frame(group[0])
    file = np.repeat(np.array([s.index for s in group], dtype=np.int64), counts)
    frame = _named(cells, _clean_names(group[0].header), file, *group)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    frame["_row"] = np.arange(len(frame), dtype=np.int64) - starts + 1
    return frame


def _alone_frame(src: Source) -> pd.DataFrame:
    """Last resort for one file pandas split differently from its lines: the csv module, rows exact."""
    _parse_alone(src, _join_header(src.header, src.delimiter) + b"\n" + (src.body or b""))
    return src.frame


def _join_header(cells: tuple[str, ...], delim: str) -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delim, lineterminator="").writerow(cells)
    return out.getvalue().encode("utf-8")


def _parse_body(body: bytes, delim: str, header_fields: int) -> pd.DataFrame:
    """Data lines -> (rows, K) Python strings, K >= the most fields on any line: short rows padded with ''.

    pandas raises on a row with more fields than `names`, except on the FIRST row, which it would cut
    silently (index_col=False) or take as the index: the width always covers the first row.
    """
    if not body:
        return pd.DataFrame(columns=range(1), dtype=object)
    first = body[: body.find(b"\n")]
    width = max(header_fields + _SLACK, first.count(delim.encode()) + 1)
    try:
        return _read_cells(body, delim, width)
    except pd.errors.ParserError:
        # a row with even more fields: the exact width (quoted delimiters only over-count)
        width = max(line.count(delim.encode()) for line in body.split(b"\n")) + 1
        return _read_cells(body, delim, width)


def _read_cells(body: bytes, delim: str, width: int) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(body), header=None, names=range(width), index_col=False, dtype=object,
                       na_filter=False, sep=delim, quotechar='"', skip_blank_lines=True, engine="c", encoding="utf-8")


def _clean_names(header: tuple[str, ...]) -> list[str]:
    names = [str(c).strip().lstrip("\ufeff").strip() for c in header]
    return [n if n else f"Unnamed: {i}" for i, n in enumerate(names)]


def _named(cells: pd.DataFrame, names: list[str], file: np.ndarray, *owners: Source) -> pd.DataFrame:
    """Positional cells -> header-named columns (duplicates coalesced and counted), `_extra`, `_file`."""
    n, h = len(cells), len(names)
    out: dict[str, pd.Series | np.ndarray] = {}
    first: dict[str, int] = {}
    for pos, name in enumerate(names):
        col = cells[pos] if pos in cells.columns else pd.Series("", index=cells.index, dtype=object)
        if name not in first:
            first[name] = pos
            out[name] = col
            continue
        for src in owners:
            if name not in src.duplicate_columns:
                src.duplicate_columns.append(name)
        out[name], conflict = _coalesce(out[name], col)
        if conflict.any():
            hits = np.bincount(file[conflict], minlength=max(s.index for s in owners) + 1)
            for src in owners:
                if hits[src.index]:
                    src.warnings["duplicate_column_conflict"] += int(hits[src.index])
    frame = pd.DataFrame(out, index=cells.index)
    frame.columns = list(out)
    extra_cols = [c for c in cells.columns if isinstance(c, (int, np.integer)) and c >= h]
    frame["_extra"] = _extra_cells(cells[extra_cols]) if extra_cols else ""
    frame["_file"] = file.astype(np.int64) if n else np.array([], np.int64)
    return frame.reset_index(drop=True)


def _up_to_last_value(cells: list[str]) -> list[str]:
    """Cells up to the last non-empty one (the shared parse pads every row to one width)."""
    while cells and not cells[-1].strip():
        cells.pop()
    return cells


def _coalesce(a: pd.Series, b: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """First non-empty of two copies of a column; (values, rows where both hold different values)."""
    ta, tb = a.astype("string").fillna("").str.strip(), b.astype("string").fillna("").str.strip()
    conflict = ((ta != "") & (tb != "") & (ta != tb)).to_numpy(dtype=bool)
    return a.where(ta != "", b), conflict


def _extra_cells(extra: pd.DataFrame) -> pd.Series:
    """JSON list of a row's cells beyond the header (up to its last non-empty one) where any is not empty, else ''."""
    filled = np.zeros(len(extra), dtype=bool)
    for c in extra.columns:
        v = extra[c].to_numpy(dtype=object)
        some = np.flatnonzero((v != "") & pd.notna(v))
        if len(some):
            filled[some] |= np.array([bool(str(x).strip()) for x in v[some]], dtype=bool)
    out = pd.Series("", index=extra.index, dtype=object)
    if filled.any():
        out[filled] = [json.dumps(_up_to_last_value([str(v) for v in r]), ensure_ascii=False)
                       for r in extra[filled].itertuples(index=False)]
    return out


# ---------------------------------------------------------------- adapting, in one pass per format


def _parse_and_adapt(loaded: list[Source], fmt: str | None) -> tuple[list[pd.DataFrame], list[Adapted], dict[int, str]]:
    """Raw frames (one per header group, or per file parsed alone), the adapted parts (one per format for the
    CSV rows of all files, one per Parquet file: it keeps its dtypes) and each file's adapter."""
    groups: dict[tuple, list[Source]] = {}
    frames: list[pd.DataFrame] = []
    parts: list[Adapted] = []
    by_fmt: dict[str, list[pd.DataFrame]] = {}
    adapters: dict[int, str] = {}
    for src in loaded:
        if src.frame is None:
            groups.setdefault((src.delimiter, src.header), []).append(src)
            continue
        f = adapters[src.index] = _format_of(src.frame.columns, fmt, src.name)
        frames.append(src.frame)
        if src.encoding == "parquet":
            parts.append(adapt(src.frame, f, where=src.name))
        else:
            by_fmt.setdefault(f, []).append(src.frame)
    for group in groups.values():
        f = _format_of(_clean_names(group[0].header), fmt, _group_where(group))
        adapters.update((src.index, f) for src in group)
        frame = _group_frame(group)
        frames.append(frame)
        by_fmt.setdefault(f, []).append(frame)
    _mark_cut(frames, loaded)
    for f, group_frames in by_fmt.items():
        table = group_frames[0] if len(group_frames) == 1 else _union(group_frames)
        parts.append(adapt(table, f, where=f"{f} files"))
    return frames, parts, adapters


def _mark_cut(frames: list[pd.DataFrame], loaded: list[Source]) -> None:
    """A `_cut` column (formats.PROVENANCE) on the frames holding the last row of a file caught mid-write."""
    last = np.zeros(len(loaded) + 1, dtype=np.int64)  # file index -> its cut row (0: none)
    for src in loaded:
        if src.cut:
            last[src.index] = src.rows
    if not last.any():
        return
    for frame in frames:
        f = frame["_file"].to_numpy(np.int64)
        frame["_cut"] = frame["_row"].to_numpy(np.int64) == np.where(last[f] > 0, last[f], -1)


def _union(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames of one format with different headers -> one table; a column a file lacks is empty there."""
    columns = list(dict.fromkeys(c for f in frames for c in f.columns))
    filled = [f.assign(**{c: "" for c in columns if c not in f.columns})[columns] for f in frames]
    return pd.concat(filled, ignore_index=True, sort=False)


def _format_of(columns, fmt: str | None, where) -> str:
    f = fmt or detect_format(list(columns), where=str(where))
    check_columns(list(columns), f, where=str(where))
    return f


def _group_where(group: list[Source]) -> str:
    more = len(group) - 1
    return group[0].name + (f" (and {more} other file(s) with the same header)" if more else "")


def _empty_adapted_runs() -> pd.DataFrame:
    runs = conform(pd.DataFrame(columns=CANONICAL_COLUMNS))
    runs["source_row"] = pd.Series(dtype=np.int64)
    runs["source_file"] = pd.Series(dtype=np.int64)
    runs["name_from_id"] = pd.Series(dtype=bool)
    return runs


# ---------------------------------------------------------------- rejects, merging, accounting


_REJECT_COLS = {"source_file": "string", "source_row": "int64", "reason": "string", "raw": "string"}


def _reject_table(parts: list[Adapted], frames: list[pd.DataFrame], files: list[str]) -> pd.DataFrame:
    """Every rejected row with its file's path and its cells as JSON (the columns of its own header)."""
    rej = pd.concat([a.rejects for a in parts], ignore_index=True) if parts else pd.DataFrame(
        {"source_file": np.array([], np.int64), "source_row": np.array([], np.int64), "reason": []})
    if rej.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _REJECT_COLS.items()})
    rej_file, rej_row = rej["source_file"].to_numpy(np.int64), rej["source_row"].to_numpy(np.int64)
    raw = np.empty(len(rej), dtype=object)
    for frame in frames:
        # a file's rows are contiguous in its frame, rows 1..n in order: position = file's start + row - 1
        f = frame["_file"].to_numpy(np.int64)
        if not len(f):
            continue
        starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])
        start_of = np.full(len(files), -1, dtype=np.int64)
        start_of[f[starts]] = starts
        hit = start_of[rej_file] >= 0
        if not hit.any():
            continue
        pos = np.full(len(rej), -1, dtype=np.int64)
        pos[hit] = start_of[rej_file[hit]] + rej_row[hit] - 1
        if not (frame["_row"].to_numpy(np.int64)[pos[hit]] == rej_row[hit]).all():
            raise StoreError("ingest provenance broken (rows of a file not contiguous); this is a bug in gruviz_core.formats.reader")
        cols = [c for c in frame.columns if c not in ("_file", "_row", "_extra", "_cut")]
        cells = frame.iloc[pos[hit]]
        table = cells[cols]
        if not all(table[c].dtype == object for c in cols):  # Parquet: typed cells as text
            table = table.astype("string").fillna("").astype(object)
        extra = cells["_extra"].to_numpy(dtype=object) if "_extra" in cells.columns else [""] * len(cells)
        records = []
        for values, x in zip(table.to_numpy(dtype=object).tolist(), extra):
            r = dict(zip(cols, ("" if v is None else str(v) for v in values)))
            if x:
                r["_extra"] = json.loads(x)
            records.append(r)
        raw[np.flatnonzero(hit)] = [json.dumps(r, ensure_ascii=False, sort_keys=False) for r in records]
    paths = np.array(files, dtype=object)
    out = pd.DataFrame({"source_file": paths[rej["source_file"].to_numpy(np.int64)],
                        "source_row": rej["source_row"].to_numpy(np.int64),
                        "reason": rej["reason"].astype(str).to_numpy(), "raw": raw}).astype(_REJECT_COLS)
    return out.sort_values(["source_file", "source_row"], kind="stable").reset_index(drop=True)


def _no_result_column(loaded: list[Source], adapters: dict[int, str], runs_all: pd.DataFrame) -> pd.DataFrame:
    """A `no_result_column` warning (source_file, warning) per accepted row of each canonical file whose header
    has neither `won` nor `finish_pos` (the CSV files of a format are adapted together, so the adapter cannot tell)."""
    bare = [src.index for src in loaded if adapters.get(src.index) == "canonical"
            and not {"won", "finish_pos"} & {str(c) for c in (src.frame.columns if src.frame is not None
                                                               else _clean_names(src.header))}]
    file = runs_all["source_file"].to_numpy(np.int64) if len(runs_all) else np.zeros(0, np.int64)
    hit = file[np.isin(file, bare)]
    return pd.DataFrame({"source_file": hit, "warning": np.full(len(hit), "no_result_column", dtype=object)})


def _file_meta(loaded: list[Source], runs_all: pd.DataFrame, rejects: pd.DataFrame,
               warnings: list[pd.DataFrame], adapters: dict[int, str]) -> tuple[list[dict], dict[str, int]]:
    """Per-file entries of the manifest (format: the `source` of its rows, else its adapter), and the warning totals."""
    n = len(loaded)
    accepted = np.bincount(runs_all["source_file"].to_numpy(np.int64), minlength=n)
    fmt_of = runs_all.groupby("source_file")["source"].first().to_dict() if len(runs_all) else {}
    rejected = rejects["source_file"].value_counts().to_dict()
    warn = pd.concat(warnings, ignore_index=True) if warnings else pd.DataFrame(columns=["source_file", "warning"])
    per_file = warn.groupby(["source_file", "warning"]).size() if len(warn) else pd.Series(dtype=np.int64)
    totals: Counter = Counter()
    meta = []
    for src in loaded:
        w = Counter(src.warnings)
        if len(per_file) and src.index in per_file.index.get_level_values(0):
            w.update({str(k): int(v) for k, v in per_file.loc[src.index].items()})
        totals.update(w)
        entry = {"path": src.name, "sha256": src.sha256, "bytes": src.nbytes, "encoding": src.encoding,
                 "rows": src.rows, "format": fmt_of.get(src.index, adapters.get(src.index, "unknown")),
                 "accepted": int(accepted[src.index]), "rejected": int(rejected.get(src.name, 0)),
                 "warnings": dict(sorted(w.items()))}
        if src.duplicate_columns:
            entry["duplicate_columns"] = list(src.duplicate_columns)
        meta.append(entry)
    return meta, dict(sorted(totals.items()))


def _merge_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per (race_id, dog_id): duplicates give each column its first non-missing value, in content order.

    Content order (independent of file order): race_date, race_id, box (missing last), dog_id, then a hash
    of the whole row. The result is sorted by (race_date, race_id, box, dog_id).
    """
    from_id = df["name_from_id"].to_numpy(dtype=bool)
    # a name that is only the dog's id stands aside for a real name from any other row of the dog
    fallback = df.loc[from_id].drop_duplicates("dog_id").set_index("dog_id")["dog_name"]
    df = df.drop(columns=["source_file", "source_row", "name_from_id"])
    if from_id.any():
        df["dog_name"] = df["dog_name"].mask(from_id)
    if df.empty:
        return _one_display_name(conform(df, where="merged runs"), fallback), 0
    race, n_races = _codes(df["race_id"], sort=True)
    dog, n_dogs = _codes(df["dog_id"], sort=True)
    date, n_dates = _codes(df["race_date"], sort=True)
    box = df["box"].astype("Float64").fillna(11).to_numpy(dtype=np.int64, na_value=11).clip(0, 11)
    group, n_groups = _codes(race * n_dogs + dog)
    in_group = np.bincount(group, minlength=n_groups)[group] > 1
    row_hash = np.zeros(len(df), dtype=np.uint64)  # the tie-break, only needed within a group
    if in_group.any():
        row_hash[in_group] = pd.util.hash_pandas_object(df[in_group], index=False).to_numpy()
    if n_dates * n_races * 12 * n_dogs < 2**62:  # one composite key sorts as (date, race, box, dog)
        order = np.lexsort((row_hash, ((date * n_races + race) * 12 + box) * n_dogs + dog))
    else:
        order = np.lexsort((row_hash, dog, box, race, date))
    df = df.take(order).reset_index(drop=True)
    group, in_group = group[order], in_group[order]
    n_dup = 0
    if in_group.any():
        clash = df[in_group]
        merged = clash.groupby(group[in_group], sort=False).first()
        n_dup = len(clash) - len(merged)
        leaders = np.flatnonzero(in_group & ~pd.Series(group).duplicated().to_numpy())
        merged = merged.loc[group[leaders]]  # in the leaders' order
        for col in df.columns:  # the leader takes the group's first non-missing values (usually its own)
            now, best = df[col].iloc[leaders].reset_index(drop=True), merged[col].reset_index(drop=True)
            if not now.equals(best.astype(now.dtype)):
                values = df[col].array.copy()
                values[leaders] = best.astype(df[col].dtype).array
                df[col] = values
        # each group is now its leader (first in content order), whose sort keys are the group's
        keep = ~in_group
        keep[leaders] = True
        df = df[keep].reset_index(drop=True)
    runs = df if _is_canonical(df) else conform(df, where="merged runs")
    return _one_display_name(runs, fallback), n_dup


def _codes(values: pd.Series | np.ndarray, sort: bool = False) -> tuple[np.ndarray, int]:
    """(rows,) int64 codes (in value order when `sort`; missing -> -1) and how many distinct values."""
    codes, uniques = pd.factorize(values, sort=sort)
    return codes.astype(np.int64), max(len(uniques), 1)


def _is_canonical(df: pd.DataFrame) -> bool:
    return list(df.columns) == list(CANONICAL_COLUMNS) and all(
        str(df[c.name].dtype) == c.dtype for c in CANONICAL)


def _one_display_name(runs: pd.DataFrame, fallback: pd.Series) -> pd.DataFrame:
    """A dog spelled differently across files gets one display name: its most frequent, ties alphabetical;
    a dog known only by id shows its id."""
    if runs.empty:
        return runs
    dog, n_dogs = _codes(runs["dog_id"])
    name, names = pd.factorize(runs["dog_name"], sort=True)  # alphabetical codes; missing -1
    pair, pairs = pd.factorize(dog * (len(names) + 1) + name + 1)
    if len(pairs) > n_dogs or (name < 0).any():  # some dog has several spellings, or only its id
        count = np.bincount(pair)
        pair_dog, pair_name = pairs // (len(names) + 1), pairs % (len(names) + 1) - 1
        rank = np.lexsort((pair_name, -count, pair_name < 0, pair_dog))  # named first, most rows, then a-z
        first = rank[np.r_[True, pair_dog[rank][1:] != pair_dog[rank][:-1]]]
        best = np.full(n_dogs, -1, dtype=np.int64)
        best[pair_dog[first]] = pair_name[first]
        chosen = best[dog]
        spelled = np.append(np.asarray(names, dtype=object), None)  # -1: no name but the id
        shown = pd.Series(spelled[chosen], index=runs.index, dtype="string")
        shown = shown.mask(chosen < 0)
        if len(fallback):
            shown = shown.fillna(runs["dog_id"].map(fallback).astype("string"))
        runs["dog_name"] = shown
    return runs


def _content_id(runs: pd.DataFrame, rejects: pd.DataFrame) -> str:
    h = hashlib.sha256(SNAPSHOT_VERSION.encode())
    h.update(",".join(f"{c}:{runs[c].dtype}" for c in runs.columns).encode())
    h.update(pd.util.hash_pandas_object(runs, index=False).to_numpy().tobytes())
    # rejects by content (file name, not its directory; row; reason; cells), order-free
    rej = pd.DataFrame(
        {"f": rejects["source_file"].map(lambda p: PurePath(p).name), "r": rejects["source_row"],
         "why": rejects["reason"], "raw": rejects["raw"]}
    )
    hr = np.sort(pd.util.hash_pandas_object(rej, index=False).to_numpy()) if len(rej) else np.array([], np.uint64)
    h.update(hr.tobytes())
    return h.hexdigest()[:16]
