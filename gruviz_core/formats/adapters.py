"""Format adapters: a source's raw table -> the canonical runs table plus rejected rows and warnings.

Pure and vectorised: a raw table (usually every cell a string, as read with `dtype=str`) goes in,
`Adapted(runs, rejects, warnings)` comes out. Reading form files' bytes is `gruviz_core.formats.reader`'s job; it hands the
rows of many files of one format to `adapt` in ONE table, with their provenance:

    _file   int, which file a row came from (per-file logic such as thedogs' carried-down names and
            per-race sums never crosses files); absent = one file, 0
    _row    int, the 1-based data row in that file; absent = 1..len(raw)
    _extra  str, the row's cells beyond the header when any is not empty ('' otherwise): such a row
            is misaligned and rejected as `extra_fields`
    _cut    bool, the row is its file's last line and has no line end (the file was caught mid-write):
            rejected as `cut_off`

Formats:

    canonical  CSV/Parquet with the canonical column names (gruviz_core.schema)
    iggy       Betfair data scientists' "Iggy" model results (Date, Track, Race Name, MarketId, Rug, Dog, WIN_RESULT, ...)
    thedogs    thedogs.com.au form guides (Dog Name, Sex, PLC, BOX, WGT, DIST, DATE, TRACK, G, TIME, WIN, ...)
    gbgb       GBGB API results (dogId, dogName, SP, resultPosition, ..., raceId, trackName, ...)

Every input row ends either in `runs` (with its `source_file`, `source_row`) or in `rejects` with a
reason code (see REASONS); the adapters never raise on a bad row, only on a bad table (missing
column). A value that is present but not understood in an accepted row (a weight of `abc`, a box
of 12) is kept as missing and counted in `warnings` (see WARNINGS), never dropped without a count.

A dog's identity is its id where the source has one (GBGB `dogId`, canonical `dog_id`, a thedogs
`Dog Id` column); a row with an id and no name is accepted with the id as its name, flagged in
`runs.name_from_id` so that a name from another row of the same dog can replace it.

Dates: ISO, d/m/Y, d/m/y and long form, day first. The accepted window is 1990-01-01 to
2099-12-31 (DATE_WINDOW): fixed, not relative to today, so that parsing never depends on the clock
and the same input always gives the same snapshot id. Two-digit years follow POSIX `%y`: 00-68 ->
2000-2068, 69-99 -> 1969-1999 (so `d/m/99` is 1999, never 2099). A real date outside the window
(`0001-01-01`, `1066-10-14`) is rejected as `implausible_date`, an impossible or unparseable one as
`bad_date`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gruviz_core.errors import MissingColumnError, UnknownFormatError
from gruviz_core.schema import CANONICAL_COLUMNS, REQUIRED, conform

__all__ = [
    "DATE_WINDOW",
    "FORMATS",
    "PROVENANCE",
    "REASONS",
    "WARNINGS",
    "Adapted",
    "FormatSpec",
    "adapt",
    "check_columns",
    "detect_format",
    "display_name",
    "normalise_name",
    "parse_dates",
    "parse_margin",
    "parse_number",
    "parse_place",
    "parse_price",
]

REASONS: dict[str, str] = {
    "extra_fields": "the row has more non-empty fields than the header has columns (misaligned: a stray comma?)",
    "cut_off": "the file's last line has no line end: the file was caught mid-write (or cut), so the row may be "
               "incomplete; it is read when the complete file is",
    "missing_dog_name": "no dog name and no dog id to stand in for it (and no earlier row of the same dog to inherit it from)",
    "missing_dog_id": "no dog id",
    "missing_race_id": "no race id (MarketId, raceId, race_id)",
    "bad_date": "race date missing, unparseable or impossible (31/02/2020)",
    "implausible_date": "a real date outside 1990-01-01..2099-12-31 (0001-01-01, a mistyped year)",
    "missing_track": "no track name",
    "not_run": "no result: scratched, void or not yet run",
    "bad_result": "result present but not understood (expected 1/0, a place like 1 or 1=, or letters)",
}
"""Reason codes a rejected row can carry, with what they mean."""

WARNINGS: dict[str, str] = {
    "bad_<column>": "an accepted row's value for the canonical <column> was present but unparseable or out of range; "
                    "kept as missing (e.g. bad_weight_kg: a weight of `abc` or 99)",
}
"""Warning codes counted per accepted row (the row is kept; the value is not)."""

PROVENANCE: tuple[str, ...] = ("_file", "_row", "_extra", "_cut")
"""Optional columns of a raw table that say where its rows came from (module docstring)."""

DATE_WINDOW: tuple[pd.Timestamp, pd.Timestamp] = (pd.Timestamp("1990-01-01"), pd.Timestamp("2099-12-31"))
"""Race dates outside this window are implausible (fixed: parsing must not depend on the clock)."""

_MISSING_TOKENS = frozenset({"", "-", "--", "NA", "N/A", "NAN", "NULL", "NONE"})
"""Cell spellings that mean 'no value' (not counted as a bad value)."""


@dataclass(frozen=True)
class FormatSpec:
    """What identifies a format and what it cannot do without."""

    name: str
    """Adapter name, also the `source` column of its rows."""
    signature: tuple[str, ...]
    """Columns whose presence identifies the format."""
    required: tuple[str, ...]
    """Columns without which the file cannot be read (MissingColumnError)."""


FORMATS: dict[str, FormatSpec] = {
    "canonical": FormatSpec("canonical", ("dog_id", "race_id"), tuple(c for c in REQUIRED if c != "source")),
    "iggy": FormatSpec(
        "iggy", ("MarketId", "WIN_RESULT"), ("Date", "Track", "Race Name", "MarketId", "Rug", "Dog", "WIN_RESULT")
    ),
    "thedogs": FormatSpec("thedogs", ("Dog Name", "PLC"), ("Dog Name", "PLC", "BOX", "DIST", "DATE", "TRACK")),
    # dogName may be absent or empty: the id is the identity (issue 13)
    "gbgb": FormatSpec("gbgb", ("dogId", "raceId"), ("dogId", "resultPosition", "trapNumber", "raceDate", "raceId", "trackName")),
}
"""The adapters, in detection order."""


@dataclass(frozen=True)
class Adapted:
    """One raw table (one file, or many files of one format) after its adapter."""

    runs: pd.DataFrame
    """Canonical columns, then `source_row` (int64, 1-based data row of its file), `source_file` (int64, the
    raw `_file`, else 0) and `name_from_id` (bool: the row had no name, `dog_name` is its id)."""
    rejects: pd.DataFrame
    """`source_file` (int64), `source_row` (int64) and `reason` (a REASONS code) of every row not in `runs`."""
    warnings: pd.DataFrame
    """`source_file` (int64), `source_row` (int64), `warning` (a WARNINGS code): one row per accepted row and
    value kept as missing although present."""


# ---------------------------------------------------------------- detection


def detect_format(columns: list[str] | pd.Index, *, where: str = "file") -> str:
    """The adapter whose signature columns are in the header; UnknownFormatError naming `where` otherwise."""
    cols = set(columns)
    for spec in FORMATS.values():
        if all(c in cols for c in spec.signature):
            return spec.name
    head = ", ".join([str(c) for c in columns if str(c) not in PROVENANCE][:12])
    raise UnknownFormatError(
        f"{where}: header not recognised ({head}); known formats: "
        + "; ".join(f"{s.name} (has {', '.join(s.signature)})" for s in FORMATS.values())
        + ". Name the format with --format/fmt= or fix the header."
    )


def check_columns(columns: list[str] | pd.Index, fmt: str, *, where: str = "file") -> None:
    """MissingColumnError naming `where` unless every required column of `fmt` is in `columns`."""
    if fmt not in FORMATS:
        raise UnknownFormatError(f"{where}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    cols = set(columns)
    missing = [c for c in FORMATS[fmt].required if c not in cols]
    if missing:
        raise MissingColumnError(
            f"{where}: missing required column(s) {', '.join(missing)} for format {fmt!r}; "
            f"it needs {', '.join(FORMATS[fmt].required)}"
        )


def adapt(raw: pd.DataFrame, fmt: str | None = None, *, where: str = "file") -> Adapted:
    """Raw source table -> canonical runs + rejects + warnings. Raises MissingColumnError/UnknownFormatError naming `where`."""
    if fmt is None:
        fmt = detect_format(raw.columns, where=where)
    check_columns(raw.columns, fmt, where=where)
    raw = raw.reset_index(drop=True)
    n = len(raw)
    file = raw["_file"].to_numpy(dtype=np.int64) if "_file" in raw.columns else np.zeros(n, np.int64)
    rows = raw["_row"].to_numpy(dtype=np.int64) if "_row" in raw.columns else np.arange(1, n + 1, dtype=np.int64)
    bad: dict[str, np.ndarray] = {}
    df = _ADAPTERS[fmt](_Cells(raw), file, bad)
    if "_extra" in raw.columns:
        extra = (_text(raw["_extra"]) != "").to_numpy(dtype=bool)
        df["_reject"] = df["_reject"].mask(extra, "extra_fields")
    if "_cut" in raw.columns:
        df["_reject"] = df["_reject"].mask(raw["_cut"].to_numpy(dtype=bool), "cut_off")
    return _split(df, file, rows, bad, fmt)


# ---------------------------------------------------------------- field parsers (Series in, Series out)


class _Cells:
    """A raw table whose text columns become categoricals on first use: each column is hashed once, and
    every parser that reads it then runs once per distinct value (dates, tracks, prices repeat a lot)."""

    def __init__(self, raw: pd.DataFrame):
        self._raw = raw
        self._cache: dict[str, pd.Series] = {}
        self.columns = raw.columns
        self.index = raw.index

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, col: str) -> pd.Series:
        if col not in self._cache:
            s = self._raw[col]
            textual = s.dtype == object or pd.api.types.is_string_dtype(s.dtype)
            if textual and len(s) >= 256:
                # factorize the Python strings as they are (astype("category") would convert them all first)
                codes, uniques = pd.factorize(s.to_numpy(dtype=object), use_na_sentinel=True)
                s = pd.Series(pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object)),
                              index=s.index, name=col)
            self._cache[col] = s
        return self._cache[col]


def _per_unique(fn):
    """Run a text parser once per distinct value (dates, names, prices repeat a lot), then spread back."""

    @functools.wraps(fn)
    def wrapper(s: pd.Series, *args, **kwargs):
        if isinstance(s.dtype, pd.CategoricalDtype):
            cats = s.cat.categories
            res = fn(pd.Series(np.asarray(cats, dtype=object), dtype=object), *args, **kwargs)
            codes = s.cat.codes.to_numpy()
            if (codes < 0).any():  # a missing cell: parse it as an empty one
                res_na = fn(pd.Series([""], dtype=object), *args, **kwargs)
                res = _append(res, res_na)
                codes = np.where(codes < 0, len(cats), codes)
            return tuple(_spread(r, codes, s.index) for r in res) if isinstance(res, tuple) else _spread(res, codes, s.index)
        textual = s.dtype == object or pd.api.types.is_string_dtype(s.dtype)
        if not textual or len(s) < 256:
            return fn(s, *args, **kwargs)
        codes, uniques = pd.factorize(s, use_na_sentinel=False)
        if len(uniques) > len(s) // 2:
            return fn(s, *args, **kwargs)
        res = fn(pd.Series(uniques, dtype=s.dtype), *args, **kwargs)
        return tuple(_spread(r, codes, s.index) for r in res) if isinstance(res, tuple) else _spread(res, codes, s.index)

    return wrapper


def _append(res, more):
    if isinstance(res, tuple):
        return tuple(_append(r, m) for r, m in zip(res, more))
    if isinstance(res, np.ndarray):
        return np.concatenate([res, more])
    return pd.concat([res, more], ignore_index=True)


def _spread(res: pd.Series | pd.DataFrame | np.ndarray, codes: np.ndarray, index: pd.Index):
    if isinstance(res, np.ndarray):
        return res[codes]
    out = res.iloc[codes]
    out.index = index
    return out


@_per_unique
def _text(s: pd.Series) -> pd.Series:
    """Cells as stripped strings, missing -> ''."""
    return s.astype("string").fillna("").str.strip()


@_per_unique
def _present(s: pd.Series) -> np.ndarray:
    """(rows,) bool: the cell holds a value (not empty, not a spelling of 'no value' such as `-` or `N/A`)."""
    if not (s.dtype == object or pd.api.types.is_string_dtype(s.dtype)):
        return s.notna().to_numpy(dtype=bool)
    return (~_text(s).str.upper().isin(_MISSING_TOKENS)).to_numpy(dtype=bool)


@_per_unique
def normalise_name(s: pd.Series) -> pd.Series:
    """Dog key from a name: upper case, single spaces. `Pin Up`, `PIN  UP ` -> `PIN UP`."""
    return _text(s).str.replace(r"\s+", " ", regex=True).str.upper()


@_per_unique
def display_name(s: pd.Series) -> pd.Series:
    """Display name: title case when the source shouts (all upper) or whispers (all lower), else as spelled."""
    t = _text(s).str.replace(r"\s+", " ", regex=True)
    flat = (t == t.str.upper()) | (t == t.str.lower())
    titled = t.str.title().str.replace(r"(?<=[A-Za-z])'S\b", "'s", regex=True)
    return t.where(~flat, titled)


_MONTHS = "January February March April May June July August September October November December".split()


def parse_dates(s: pd.Series) -> pd.Series:
    """Dates in ISO (optionally with a time), d/m/Y, d/m/y or long form ('Saturday 15th February 2020') -> datetime64[ns].

    Unparseable, impossible or outside DATE_WINDOW -> NaT. Day first: these are Australian and British
    sources. Two-digit years: 00-68 -> 20xx, 69-99 -> 19xx (POSIX %y).
    """
    return _parse_dates(s)[0]


@_per_unique
def _parse_dates(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(dates, implausible): dates as parse_dates; implausible True where a real date lies outside DATE_WINDOW."""
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        d = s.dt.tz_localize(None) if getattr(s.dt, "tz", None) else s
        ymd = pd.DataFrame({"year": d.dt.year, "month": d.dt.month, "day": d.dt.day}, index=s.index).astype(float)
        return _from_parts(ymd)
    t = _text(s)
    ymd = pd.DataFrame(np.nan, index=t.index, columns=["year", "month", "day"])
    iso = t.str.extract(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ].*)?$").astype(float)
    ymd[:] = iso.to_numpy()
    slash = t.str.extract(r"^(\d{1,2})/(\d{1,2})/(\d{2,4})$")
    got = slash[0].notna()
    if got.any():
        ymd.loc[got, "year"] = _full_year(slash.loc[got, 2])
        ymd.loc[got, "month"] = slash.loc[got, 1].astype(float)
        ymd.loc[got, "day"] = slash.loc[got, 0].astype(float)
    long = t.str.extract(r"^(?:[A-Za-z]+,?\s+)?(\d{1,2})(?:st|nd|rd|th)?\s+([A-Za-z]+),?\s+(\d{2,4})$")
    got = long[0].notna()
    if got.any():
        mon = long.loc[got, 1].str.slice(0, 3).str.title().map({m[:3]: i + 1 for i, m in enumerate(_MONTHS)})
        ymd.loc[got, "year"] = _full_year(long.loc[got, 2])
        ymd.loc[got, "month"] = mon.astype(float)
        ymd.loc[got, "day"] = long.loc[got, 0].astype(float)
    return _from_parts(ymd)


def _full_year(y: pd.Series) -> pd.Series:
    """Year digits -> year: 4 (or 3) digits as written; 2 digits by POSIX %y (00-68 -> 20xx, 69-99 -> 19xx)."""
    v = y.astype(float)
    two = y.str.len() == 2
    return v.where(~two, np.where(v <= 68, 2000 + v, 1900 + v))


def _from_parts(ymd: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(year, month, day) columns -> (datetime64[ns] or NaT, implausible: a real date outside DATE_WINDOW)."""
    lo, hi = DATE_WINDOW
    shaped = ymd.notna().all(axis=1) & ymd["month"].between(1, 12) & ymd["day"].between(1, 31)
    in_years = shaped & ymd["year"].between(lo.year, hi.year)
    out = pd.Series(pd.NaT, index=ymd.index, dtype="datetime64[ns]")
    if in_years.any():
        parts = ymd[in_years].astype(int)
        out[in_years] = pd.to_datetime(parts, errors="coerce").astype("datetime64[ns]")
    # a year outside the window with a possible month/day is a real (if odd) date: implausible, not garbage
    outside_years = shaped & ~ymd["year"].between(lo.year, hi.year) & (ymd["day"] <= _month_days(ymd["month"]))
    outside_window = out.notna() & ((out < lo) | (out > hi))
    out[outside_window] = pd.NaT
    return out, (outside_years | outside_window)


def _month_days(month: pd.Series) -> pd.Series:
    days = np.array([np.nan, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
    m = month.fillna(0).clip(0, 12).astype(int).to_numpy()
    return pd.Series(days[m], index=month.index)


@_per_unique
def parse_number(s: pd.Series, *, lo: float = -np.inf, hi: float = np.inf, strip: str = "") -> pd.Series:
    """Numbers (Float64); unparseable or outside [lo, hi] -> <NA>. `strip`: a regex of decorations to remove."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        x = s.astype("Float64")
    else:
        t = _text(s)
        if strip:
            t = t.str.replace(strip, "", regex=True)
        x = pd.to_numeric(t.where(t != ""), errors="coerce").astype("Float64")
    x = x.mask(~np.isfinite(x.fillna(0).to_numpy(dtype=float)))
    return x.mask((x < lo) | (x > hi))


@_per_unique
def parse_price(s: pd.Series) -> pd.Series:
    """Decimal odds from `$2.80F`, `2.8`, `11/10F`, `EVS`/`Evens` -> Float64; nonsense or < 1.01 -> <NA>."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return parse_number(s, lo=1.01, hi=10000)
    t = _text(s).str.upper().str.replace(r"^\$|\s+|(?:[JC]?F|J)$", "", regex=True)
    out = pd.to_numeric(t.where(t != ""), errors="coerce").astype("Float64")
    frac = t.str.extract(r"^(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)$").astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        fr = 1.0 + frac[0] / frac[1]
    out = out.fillna(pd.Series(fr, index=t.index).astype("Float64"))
    out = out.mask(t.isin(["EVS", "EVENS", "EVEN", "EV"]), 2.0)
    return parse_number(out, lo=1.01, hi=10000)


@_per_unique
def parse_place(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Finishing places -> (finish_pos Int8, state), state one of 'finished', 'dnf' (letters), 'empty', 'bad'.

    `1`, `1=` (dead heat), `2nd`, `1.0` -> finished; `F`, `DNF`, `T`, `N` ... -> dnf (no place, did not win).
    """
    t = _text(s).str.upper()
    m = t.str.extract(r"^(\d{1,2})(?:\.0+)?\s*(?:ST|ND|RD|TH)?\s*=?$")[0]
    pos = pd.to_numeric(m, errors="coerce")
    pos = pos.where((pos >= 1) & (pos <= 20))
    state = pd.Series("bad", index=t.index, dtype=object)
    state[t == ""] = "empty"
    state[t.str.fullmatch(r"[A-Z]{1,4}")] = "dnf"
    state[pos.notna()] = "finished"
    return pos.astype("Int8"), state


_MARGIN_WORDS = {"DH": 0.0, "NSE": 0.05, "NOSE": 0.05, "SHD": 0.1, "SH": 0.1, "HD": 0.2, "NK": 0.3, "DIS": np.nan}


@_per_unique
def parse_margin(s: pd.Series) -> pd.Series:
    """Margins in lengths from `2.75`, `2.75L`, `1 1/2`, `3/4`, `Hd`, `Nk`, `DH` ... -> Float64 (0..100)."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return parse_number(s, lo=0, hi=100)
    t = _text(s).str.upper().str.replace(r"L$", "", regex=True).str.strip()
    out = pd.to_numeric(t.where(t != ""), errors="coerce").astype("Float64")
    fr = t.str.extract(r"^(?:(\d+)\s+)?(\d+)/(\d+)$").astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = fr[0].fillna(0) + fr[1] / fr[2]
    out = out.fillna(pd.Series(frac, index=t.index).astype("Float64"))
    out = out.fillna(t.map(_MARGIN_WORDS).astype("Float64"))
    return parse_number(out, lo=0, hi=100)


@_per_unique
def _parse_bool(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("boolean")
    t = _text(s).str.lower()
    out = pd.Series(pd.NA, index=t.index, dtype="boolean")
    out[t.isin(["true", "1", "1.0", "yes", "y", "t"])] = True
    out[t.isin(["false", "0", "0.0", "no", "n", "f"])] = False
    return out


def _int_in(s: pd.Series, lo: int, hi: int, dtype: str) -> pd.Series:
    x = parse_number(s, lo=lo, hi=hi, strip=r"(?i)m$")
    x = x.mask(x.round() != x)
    return x.astype(dtype)


def _opt(raw: pd.DataFrame, col: str) -> pd.Series:
    """An optional column, or an all-empty one."""
    return raw[col] if col in raw.columns else pd.Series("", index=raw.index, dtype="string")


def _checked(bad: dict[str, np.ndarray], name: str, raw: pd.DataFrame, col: str, parsed: pd.Series,
             understood: frozenset[str] = frozenset()) -> pd.Series:
    """`parsed` unchanged; records in `bad[name]` the rows whose raw `col` held a value that parsed to missing."""
    if col not in raw.columns:
        return parsed
    lost = _present(raw[col]) & parsed.isna().to_numpy(dtype=bool)
    if understood and lost.any():
        lost &= ~_text(raw[col]).str.upper().isin(understood).to_numpy(dtype=bool)
    if lost.any():
        bad[name] = bad[name] | lost if name in bad else lost
    return parsed


def _num(bad, name: str, raw: pd.DataFrame, col: str, **kw) -> pd.Series:
    return _checked(bad, name, raw, col, parse_number(_opt(raw, col), **kw))


def _int(bad, name: str, raw: pd.DataFrame, col: str, lo: int, hi: int, dtype: str) -> pd.Series:
    return _checked(bad, name, raw, col, _int_in(_opt(raw, col), lo, hi, dtype))


RATED_PRICE_MAX = 1e6
"""A rated price is a model's fair price, not a market's: Iggy rates long shots above 10,000 (two rows in 510k)."""


def _price(bad, name: str, raw: pd.DataFrame, col: str) -> pd.Series:
    return _checked(bad, name, raw, col, parse_price(_opt(raw, col)))


def _margin(bad, raw: pd.DataFrame, col: str) -> pd.Series:
    return _checked(bad, "margin_lengths", raw, col, parse_margin(_opt(raw, col)), frozenset({"DIS"}))


def _dates(df: pd.DataFrame, s: pd.Series) -> pd.Series:
    """Sets df['race_date']; returns the implausible mask (a real date outside DATE_WINDOW)."""
    dates, implausible = _parse_dates(s)
    df["race_date"] = dates
    return implausible


@dataclass(frozen=True)
class _Races:
    """Dense codes of each row's race within its file and of its dog: per-race counts without hashing strings
    again, and never mixing two files' copies of a race."""

    race: np.ndarray
    """(rows,) int64 in 0..n_races-1: (file, race_id)."""
    dog: np.ndarray
    """(rows,) int64 in 0..n_dogs-1."""
    n_races: int
    n_dogs: int

    @classmethod
    def of(cls, race_id: pd.Series, dog_id: pd.Series, file: np.ndarray) -> _Races:
        r = pd.factorize(race_id)[0].astype(np.int64)
        race, uniq = pd.factorize(r * (int(file.max()) + 1 if len(file) else 1) + file)
        dog, dogs = pd.factorize(dog_id)
        return cls(race.astype(np.int64), dog.astype(np.int64), max(len(uniq), 1), max(len(dogs), 1))

    def rows(self, mask: np.ndarray) -> np.ndarray:
        """(rows,) rows in `mask` in each row's race."""
        return np.bincount(self.race[mask], minlength=self.n_races)[self.race]

    def dogs(self, mask: np.ndarray) -> np.ndarray:
        """(rows,) distinct dogs among the rows in `mask` in each row's race."""
        pairs = pd.unique(self.race[mask] * self.n_dogs + self.dog[mask])
        return np.bincount(pairs // self.n_dogs, minlength=self.n_races)[self.race]

    def listing_rows(self, mask: np.ndarray) -> np.ndarray:
        """(rows,) rows in `mask` with each row's (race, dog)."""
        listing = pd.factorize(self.race * self.n_dogs + self.dog)[0]
        return np.bincount(listing[mask], minlength=int(listing.max()) + 1 if len(listing) else 1)[listing]


def _find_column(raw: pd.DataFrame, *spellings: str) -> str | None:
    """The first raw column whose name, lower case without spaces/underscores, is one of `spellings`."""
    for c in raw.columns:
        if str(c).lower().replace(" ", "").replace("_", "") in spellings:
            return c
    return None


def _id_name(df: pd.DataFrame, ident: pd.Series, name: pd.Series) -> None:
    """Sets dog_name (display; the id where the name is empty) and the name_from_id flag."""
    shown = display_name(name)
    fallback = (shown == "") & (ident != "")
    df["dog_name"] = shown.mask(fallback, ident)
    df["_name_from_id"] = fallback.to_numpy(dtype=bool)


# ---------------------------------------------------------------- adapters (raw -> canonical + `_reject`)


def _canonical(raw: pd.DataFrame, file: np.ndarray, bad: dict) -> pd.DataFrame:
    df = pd.DataFrame(index=raw.index)
    df["dog_id"] = _text(raw["dog_id"])
    _id_name(df, df["dog_id"], raw["dog_name"])
    df["race_id"] = _text(raw["race_id"])
    implausible = _dates(df, raw["race_date"])
    df["track"] = display_name(raw["track"])
    df["distance_m"] = _int(bad, "distance_m", raw, "distance_m", 100, 2000, "Int32")
    df["grade"] = _text(_opt(raw, "grade"))
    df["box"] = _int(bad, "box", raw, "box", 1, 10, "Int8")
    df["field_size"] = _int(bad, "field_size", raw, "field_size", 1, 20, "Int8")
    df["finish_pos"] = _int(bad, "finish_pos", raw, "finish_pos", 1, 20, "Int8")
    won = _checked(bad, "won", raw, "won", _parse_bool(_opt(raw, "won")))
    df["won"] = won.fillna(pd.Series(df["finish_pos"] == 1, dtype="boolean").where(df["finish_pos"].notna()))
    if "placed" in raw.columns:  # else conform derives it from finish_pos and field_size
        df["placed"] = _checked(bad, "placed", raw, "placed", _parse_bool(raw["placed"]))
    df["run_time_s"] = _num(bad, "run_time_s", raw, "run_time_s", lo=5, hi=200)
    df["win_time_s"] = _num(bad, "win_time_s", raw, "win_time_s", lo=5, hi=200)
    df["sectional_s"] = _num(bad, "sectional_s", raw, "sectional_s", lo=0.5, hi=100)
    df["margin_lengths"] = _margin(bad, raw, "margin_lengths")
    df["weight_kg"] = _num(bad, "weight_kg", raw, "weight_kg", lo=10, hi=60)
    df["sp_decimal"] = _price(bad, "sp_decimal", raw, "sp_decimal")
    df["bsp_decimal"] = _price(bad, "bsp_decimal", raw, "bsp_decimal")
    df["rated_price"] = _num(bad, "rated_price", raw, "rated_price", lo=1.01, hi=RATED_PRICE_MAX)
    src = _text(_opt(raw, "source"))
    df["source"] = src.where(src != "", "canonical")
    df["_reject"] = _basic_rejects(df, implausible)
    return df


def _iggy(raw: pd.DataFrame, file: np.ndarray, bad: dict) -> pd.DataFrame:
    df = pd.DataFrame(index=raw.index)
    df["dog_id"] = normalise_name(raw["Dog"])
    df["dog_name"] = display_name(raw["Dog"])
    df["_name_from_id"] = False
    market = _id_text(raw["MarketId"])
    df["race_id"] = ("bf:" + market).where(market != "", "")
    implausible = _dates(df, raw["Date"])
    df["track"] = display_name(raw["Track"])
    parts = _race_name_parts(raw["Race Name"])
    df["distance_m"] = _checked(bad, "distance_m", raw, "Race Name", _int_in(parts[0], 100, 2000, "Int32"))
    df["grade"] = parts[1].fillna("").str.strip()
    df["box"] = _int(bad, "box", raw, "Rug", 1, 10, "Int8")
    result = _text(raw["WIN_RESULT"])
    win = parse_number(raw["WIN_RESULT"]).to_numpy(dtype=float, na_value=np.nan)
    df["won"] = pd.Series(win == 1, index=raw.index, dtype="boolean").where((win == 0) | (win == 1))
    df["finish_pos"] = pd.Series(1, index=raw.index, dtype="Int8").where(df["won"].fillna(False).astype(bool))
    for col in ("run_time_s", "win_time_s", "sectional_s", "margin_lengths", "weight_kg", "sp_decimal"):
        df[col] = pd.Series(pd.NA, index=raw.index, dtype="Float64")
    df["bsp_decimal"] = _price(bad, "bsp_decimal", raw, "WIN_BSP")
    df["rated_price"] = _num(bad, "rated_price", raw, "Rated Price", lo=1.01, hi=RATED_PRICE_MAX)  # a yardstick only
    df["source"] = "iggy"
    reject = _basic_rejects(df, implausible)
    reject = reject.mask((reject == "") & (result == ""), "not_run")
    reject = reject.mask((reject == "") & df["won"].isna(), "bad_result")
    df["_reject"] = reject
    ok = (reject == "").to_numpy(dtype=bool)
    races = _Races.of(df["race_id"], df["dog_id"], file)
    # runners with a result; a dog listed twice in a market (it happens) counts once
    df["field_size"] = pd.Series(races.dogs(ok), index=df.index).where(ok).astype("Int8")
    _iggy_places(df, raw, races, ok, bad)
    return df


def _iggy_places(df: pd.DataFrame, raw: pd.DataFrame, races: _Races, ok: np.ndarray, bad: dict) -> None:
    """`placed` from PLACE_RESULT, and finish_pos 2 where the place market makes it certain.

    A race has a place market when any runner placed (none in fields under 5). A winner is placed.
    With exactly one winner and exactly two placed runners, the other placed runner came second; with
    three placed, second and third are not told apart and finish_pos stays missing (placed is True).
    """
    value = parse_number(_opt(raw, "PLACE_RESULT")).to_numpy(dtype=float, na_value=np.nan)
    known = (value == 0) | (value == 1)
    raw_placed = value == 1
    won = df["won"].fillna(False).to_numpy(dtype=bool)
    market = races.rows(raw_placed & ok) > 0
    placed_now = (raw_placed | won) & market
    placed = pd.Series(placed_now, index=df.index, dtype="boolean").where(market & (known | won))
    if "PLACE_RESULT" in raw.columns:
        lost = _present(raw["PLACE_RESULT"]) & ~known
        if lost.any():
            bad["placed"] = lost
    # distinct dogs: a dog listed twice in a market (it happens) is one runner; listed twice with
    # different results, it is not certain to be second
    n_placed, n_won = races.dogs(placed_now & ok), races.dogs(won & ok)
    all_placed = races.listing_rows(ok & ~placed_now) == 0
    second = ok & placed_now & all_placed & ~won & (n_won == 1) & (n_placed == 2)
    df["placed"] = placed
    df.loc[second, "finish_pos"] = 2


def _place_columns(df: pd.DataFrame, place: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Set finish_pos and won from a place column (a non-finisher ran and lost); returns (place, parse state)."""
    pos, state = parse_place(place)
    df["finish_pos"] = pos
    df["won"] = pd.Series(pos == 1, dtype="boolean").where(state.isin(["finished", "dnf"]))
    df.loc[state == "dnf", "won"] = False
    df["placed"] = pd.Series(pd.NA, index=df.index, dtype="boolean")
    return pos, state


def _thedogs(raw: pd.DataFrame, file: np.ndarray, bad: dict) -> pd.DataFrame:
    df = pd.DataFrame(index=raw.index)
    _thedogs_identity(df, raw, file)
    implausible = _dates(df, raw["DATE"])
    df["track"] = display_name(raw["TRACK"])
    df["distance_m"] = _int(bad, "distance_m", raw, "DIST", 100, 2000, "Int32")
    df["grade"] = _text(_opt(raw, "G"))
    df["box"] = _int(bad, "box", raw, "BOX", 1, 10, "Int8")
    _, state = _place_columns(df, raw["PLC"])
    df["field_size"] = pd.Series(pd.NA, index=raw.index, dtype="Int8")
    df["run_time_s"] = _num(bad, "run_time_s", raw, "TIME", lo=5, hi=200)
    df["win_time_s"] = _num(bad, "win_time_s", raw, "WIN", lo=5, hi=200)
    df["sectional_s"] = _num(bad, "sectional_s", raw, "1 SEC", lo=0.5, hi=100)
    df["margin_lengths"] = _margin(bad, raw, "MGN")
    df.loc[df["finish_pos"] == 1, "margin_lengths"] = 0.0
    df["weight_kg"] = _num(bad, "weight_kg", raw, "WGT", lo=10, hi=60, strip=r"(?i)kg$")
    df["sp_decimal"] = _price(bad, "sp_decimal", raw, "SP")
    df["bsp_decimal"] = pd.Series(pd.NA, index=raw.index, dtype="Float64")
    df["source"] = "thedogs"
    # no race id in a form guide: date, track, distance, grade and the winner's time identify the race
    df["race_id"] = _race_key(df)
    reject = _basic_rejects(df, implausible)
    reject = reject.mask((reject == "") & (state == "empty"), "not_run")
    df["_reject"] = reject.mask((reject == "") & (state == "bad"), "bad_result")
    return df


def _race_key(df: pd.DataFrame) -> pd.Series:
    """`td:<date>:<TRACK>:<distance>:<GRADE>:<winner's time>`, built once per distinct race."""
    parts = df[["race_date", "track", "distance_m", "grade", "win_time_s"]]
    codes = pd.factorize(pd.util.hash_pandas_object(parts, index=False).to_numpy())[0]
    u = parts.iloc[np.unique(codes, return_index=True)[1]].reset_index(drop=True)
    key = (
        "td:" + pd.Series(u["race_date"]).dt.strftime("%Y-%m-%d").fillna("")
        + ":" + u["track"].astype("string").str.upper()
        + ":" + u["distance_m"].astype("string").fillna("")
        + ":" + u["grade"].astype("string").str.upper()
        + ":" + u["win_time_s"].round(2).astype("string").fillna("")
    )
    return pd.Series(key.to_numpy(dtype=object)[codes], index=df.index, dtype="string")


def _thedogs_identity(df: pd.DataFrame, raw: pd.DataFrame, file: np.ndarray) -> None:
    """dog_id and dog_name of form-guide rows: a dog's block of rows starts at its named first row.

    The name (`1. ZIPPING ROSIE`) is only on a dog's first row; the rows below are its earlier starts,
    within the same file. Where the guide has a dog id column, a new id also starts a block, the id is
    the identity (`td:<id>`) and a block without a name shows its id.
    """
    name = _without_rug(raw["Dog Name"])
    new_file = np.r_[True, file[1:] != file[:-1]] if len(file) else np.zeros(0, bool)
    start = (name != "").to_numpy(dtype=bool) | new_file
    id_col = _find_column(raw, "dogid")
    ident = None
    if id_col is not None:
        ident = _id_text(raw[id_col])
        has = (ident != "").to_numpy(dtype=bool)
        seen = ident.where(has).groupby(file).ffill()
        before = seen.groupby(file).shift().fillna("")
        start |= has & (ident != before).to_numpy(dtype=bool)
    block = np.cumsum(start)
    carried = name.where(start).ffill().fillna("")  # every block begins at a start row: no leak between dogs
    if ident is None:
        df["dog_id"] = normalise_name(carried)
        df["dog_name"] = display_name(carried)
        df["_name_from_id"] = False
        return
    block_id = ident.where(ident != "").groupby(block).transform("first").fillna("")
    df["dog_id"] = ("td:" + block_id).where(block_id != "", normalise_name(carried))
    _id_name(df, block_id, carried)


@_per_unique
def _id_text(s: pd.Series) -> pd.Series:
    """An id cell as text: `548001.0` (an id that went through a float) -> `548001`."""
    return _text(s).str.replace(r"\.0$", "", regex=True)


@_per_unique
def _without_rug(s: pd.Series) -> pd.Series:
    """`1. ZIPPING ROSIE` -> `ZIPPING ROSIE` (a form guide puts the rug number before the name)."""
    return _text(s).str.replace(r"^\d+\.\s*", "", regex=True)


@_per_unique
def _race_name_parts(s: pd.Series) -> pd.DataFrame:
    """`R1 530m Gr5` (also `R10 457 M5`, `R12 352mHeat`) -> columns 0: distance text, 1: grade."""
    return _text(s).str.extract(r"^(?:R\d+\s+)?(\d{3,4})\s*m?(?:\s*(.+))?$")


def _gbgb(raw: pd.DataFrame, file: np.ndarray, bad: dict) -> pd.DataFrame:
    df = pd.DataFrame(index=raw.index)
    dog = _id_text(raw["dogId"])
    df["dog_id"] = ("gbgb:" + dog).where(dog != "", "")
    _id_name(df, dog, _opt(raw, "dogName"))
    race = _id_text(raw["raceId"])
    df["race_id"] = ("gbgb:" + race).where(race != "", "")
    implausible = _dates(df, raw["raceDate"])
    df["track"] = display_name(raw["trackName"])
    df["distance_m"] = _int(bad, "distance_m", raw, "raceDistance", 100, 2000, "Int32")
    df["grade"] = _text(_opt(raw, "raceClass"))
    df["box"] = _int(bad, "box", raw, "trapNumber", 1, 10, "Int8")
    pos, state = _place_columns(df, raw["resultPosition"])
    df["run_time_s"] = _num(bad, "run_time_s", raw, "resultRunTime", lo=5, hi=200)
    df["win_time_s"] = _num(bad, "win_time_s", raw, "raceWinTime", lo=5, hi=200)
    df["sectional_s"] = _num(bad, "sectional_s", raw, "resultSectionalTime", lo=0.5, hi=100)
    df["weight_kg"] = _num(bad, "weight_kg", raw, "resultDogWeight", lo=10, hi=60)
    df["sp_decimal"] = _price(bad, "sp_decimal", raw, "SP")
    df["bsp_decimal"] = pd.Series(pd.NA, index=raw.index, dtype="Float64")
    df["source"] = "gbgb"
    reject = _basic_rejects(df, implausible)
    reject = reject.mask((reject == "") & (state == "empty"), "not_run")
    reject = reject.mask((reject == "") & (state == "bad"), "bad_result")
    df["_reject"] = reject
    ok = reject == ""
    races = _Races.of(df["race_id"], df["dog_id"], file)
    df["field_size"] = pd.Series(races.dogs(ok.to_numpy(dtype=bool)), index=df.index).where(ok).astype("Int8")
    gap = _margin(bad, raw, "resultBtnDistance")
    df["margin_lengths"] = _behind_winner(pd.Series(races.race, index=df.index), pos, gap, ok)
    return df


def _behind_winner(race: pd.Series, pos: pd.Series, gap: pd.Series, ok: pd.Series) -> pd.Series:
    """GBGB gives each dog's distance to the dog ahead; lengths behind the winner is their running sum by place."""
    out = pd.Series(pd.NA, index=race.index, dtype="Float64")
    use = ok & pos.notna()
    if not use.any():
        return out
    sub = pd.DataFrame({"race": race[use], "pos": pos[use].astype(int), "gap": gap[use].astype(float)})
    sub.loc[sub["pos"] == 1, "gap"] = 0.0
    sub = sub.sort_values(["race", "pos"], kind="stable")
    missing = sub["gap"].isna().astype(int).groupby(sub["race"]).cumsum()
    total = sub["gap"].fillna(0).groupby(sub["race"]).cumsum()
    # a dead heat shares its place: the second dog of `2=` is not further behind
    same = sub["pos"].eq(sub.groupby("race")["pos"].shift()) & sub["race"].eq(sub["race"].shift())
    total = total.mask(same).ffill()
    out[sub.index] = total.mask(missing > 0).astype("Float64")
    return out


def _basic_rejects(df: pd.DataFrame, implausible: pd.Series) -> pd.Series:
    """First failing check of the columns every format must fill; '' when the row is fine."""
    reason = pd.Series("", index=df.index, dtype=object)
    checks = [
        ("missing_dog_name", df["dog_name"] == ""),
        ("missing_dog_id", df["dog_id"] == ""),
        ("missing_race_id", df["race_id"] == ""),
        ("bad_date", df["race_date"].isna() & ~implausible),
        ("implausible_date", implausible),
        ("missing_track", df["track"] == ""),
    ]
    for code, bad in reversed(checks):
        reason[bad.to_numpy(dtype=bool)] = code
    return reason


_ADAPTERS = {"canonical": _canonical, "iggy": _iggy, "thedogs": _thedogs, "gbgb": _gbgb}


def _split(df: pd.DataFrame, file: np.ndarray, rows: np.ndarray, bad: dict[str, np.ndarray], fmt: str) -> Adapted:
    reject = df["_reject"].to_numpy(dtype=object)
    rejected = reject != ""
    rejects = pd.DataFrame({"source_file": file[rejected], "source_row": rows[rejected],
                            "reason": reject[rejected].astype(str)})
    good = df.loc[~rejected, [c for c in CANONICAL_COLUMNS if c in df.columns]].copy()
    good["grade"] = good["grade"].where(good["grade"] != "")
    runs = conform(good, where=fmt)
    runs["source_row"] = rows[~rejected]
    runs["source_file"] = file[~rejected]
    runs["name_from_id"] = df["_name_from_id"].to_numpy(dtype=bool)[~rejected]
    parts = [
        pd.DataFrame({"source_file": file[m], "source_row": rows[m], "warning": f"bad_{name}"})
        for name, lost in sorted(bad.items())
        if (m := lost & ~rejected).any()
    ]
    warnings = (pd.concat(parts, ignore_index=True) if parts else
                pd.DataFrame({"source_file": np.array([], np.int64), "source_row": np.array([], np.int64),
                              "warning": np.array([], dtype=object)}))
    return Adapted(runs=runs, rejects=rejects, warnings=warnings)
