"""Format adapters: a source file's raw table -> the canonical runs table plus rejected rows.

Pure and vectorised: a raw table (usually every cell a string, as read with `dtype=str`) goes in,
`Adapted(runs, rejects)` comes out. Reading files is `storage.forms`' job.

    canonical  CSV/Parquet with the canonical column names (gruviz_core.schema)
    iggy       Betfair data scientists' "Iggy" model results (Date, Track, Race Name, MarketId, Rug, Dog, WIN_RESULT, ...)
    thedogs    thedogs.com.au form guides (Dog Name, Sex, PLC, BOX, WGT, DIST, DATE, TRACK, G, TIME, WIN, ...)
    gbgb       GBGB API results (dogId, dogName, SP, resultPosition, ..., raceId, trackName, ...)

Every input row ends either in `runs` (with its `source_row`) or in `rejects` with a reason code
(see REASONS); the adapters never raise on a bad row, only on a bad file (missing column).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gruviz_core.errors import MissingColumnError, UnknownFormatError
from gruviz_core.schema import CANONICAL_COLUMNS, REQUIRED, conform

__all__ = [
    "FORMATS",
    "REASONS",
    "Adapted",
    "FormatSpec",
    "adapt",
    "detect_format",
    "display_name",
    "normalise_name",
    "parse_dates",
    "parse_margin",
    "parse_place",
    "parse_price",
    "parse_number",
]

REASONS: dict[str, str] = {
    "missing_dog_name": "no dog name (and no earlier row of the same dog to inherit it from)",
    "missing_dog_id": "no dog id",
    "missing_race_id": "no race id (MarketId, raceId, race_id)",
    "bad_date": "race date missing, unparseable or outside 1990-2099",
    "missing_track": "no track name",
    "not_run": "no result: scratched, void or not yet run",
    "bad_result": "result present but not understood (expected 1/0, a place like 1 or 1=, or letters)",
}
"""Reason codes a rejected row can carry, with what they mean."""


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
    "gbgb": FormatSpec(
        "gbgb", ("dogId", "raceId"), ("dogId", "dogName", "resultPosition", "trapNumber", "raceDate", "raceId", "trackName")
    ),
}
"""The adapters, in detection order."""


@dataclass(frozen=True)
class Adapted:
    """One source table after its adapter."""

    runs: pd.DataFrame
    """Canonical columns plus `source_row` (int64, 1-based data row of the source)."""
    rejects: pd.DataFrame
    """`source_row` (int64) and `reason` (a REASONS code) of every row not in `runs`."""


# ---------------------------------------------------------------- detection


def detect_format(columns: list[str] | pd.Index, *, where: str = "file") -> str:
    """The adapter whose signature columns are in the header; UnknownFormatError naming `where` otherwise."""
    cols = set(columns)
    for spec in FORMATS.values():
        if all(c in cols for c in spec.signature):
            return spec.name
    head = ", ".join(list(map(str, columns))[:12])
    raise UnknownFormatError(
        f"{where}: header not recognised ({head}); known formats: "
        + "; ".join(f"{s.name} (has {', '.join(s.signature)})" for s in FORMATS.values())
        + ". Name the format with --format/fmt= or fix the header."
    )


def adapt(raw: pd.DataFrame, fmt: str | None = None, *, where: str = "file") -> Adapted:
    """Raw source table -> canonical runs + rejects. Raises MissingColumnError/UnknownFormatError naming `where`."""
    if fmt is None:
        fmt = detect_format(raw.columns, where=where)
    if fmt not in FORMATS:
        raise UnknownFormatError(f"{where}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    missing = [c for c in FORMATS[fmt].required if c not in raw.columns]
    if missing:
        raise MissingColumnError(
            f"{where}: missing required column(s) {', '.join(missing)} for format {fmt!r}; "
            f"it needs {', '.join(FORMATS[fmt].required)}"
        )
    raw = raw.reset_index(drop=True)
    df = _ADAPTERS[fmt](raw)
    return _split(df, fmt)


# ---------------------------------------------------------------- field parsers (Series in, Series out)


def _per_unique(fn):
    """Run a text parser once per distinct value (dates, names, prices repeat a lot), then spread back."""

    @functools.wraps(fn)
    def wrapper(s: pd.Series, *args, **kwargs):
        textual = s.dtype == object or pd.api.types.is_string_dtype(s.dtype)
        if not textual or len(s) < 256:
            return fn(s, *args, **kwargs)
        codes, uniques = pd.factorize(s, use_na_sentinel=False)
        if len(uniques) > len(s) // 2:
            return fn(s, *args, **kwargs)
        res = fn(pd.Series(uniques, dtype=s.dtype), *args, **kwargs)
        return tuple(_spread(r, codes, s.index) for r in res) if isinstance(res, tuple) else _spread(res, codes, s.index)

    return wrapper


def _spread(res: pd.Series | pd.DataFrame, codes: np.ndarray, index: pd.Index):
    out = res.iloc[codes]
    out.index = index
    return out


def _text(s: pd.Series) -> pd.Series:
    """Cells as stripped strings, missing -> ''."""
    return s.astype("string").fillna("").str.strip()


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


@_per_unique
def parse_dates(s: pd.Series) -> pd.Series:
    """Dates in ISO (optionally with a time), d/m/Y, d/m/y or long form ('Saturday 15th February 2020') -> datetime64[ns].

    Unparseable or outside 1990-2099 -> NaT. Day first: these are Australian and British sources.
    """
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        d = s.dt.tz_localize(None) if getattr(s.dt, "tz", None) else s
        ymd = pd.DataFrame({"year": d.dt.year, "month": d.dt.month, "day": d.dt.day}, index=s.index)
        return _from_parts(ymd)
    t = _text(s)
    ymd = pd.DataFrame(np.nan, index=t.index, columns=["year", "month", "day"])
    iso = t.str.extract(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ].*)?$").astype(float)
    ymd[:] = iso.to_numpy()
    slash = t.str.extract(r"^(\d{1,2})/(\d{1,2})/(\d{2,4})$").astype(float)
    got = slash[0].notna()
    ymd.loc[got, "year"], ymd.loc[got, "month"], ymd.loc[got, "day"] = slash.loc[got, 2], slash.loc[got, 1], slash.loc[got, 0]
    long = t.str.extract(r"^(?:[A-Za-z]+,?\s+)?(\d{1,2})(?:st|nd|rd|th)?\s+([A-Za-z]+),?\s+(\d{2,4})$")
    got = long[0].notna()
    if got.any():
        mon = long.loc[got, 1].str.slice(0, 3).str.title().map({m[:3]: i + 1 for i, m in enumerate(_MONTHS)})
        ymd.loc[got, "year"] = long.loc[got, 2].astype(float)
        ymd.loc[got, "month"] = mon.astype(float)
        ymd.loc[got, "day"] = long.loc[got, 0].astype(float)
    ymd["year"] = ymd["year"].where(ymd["year"] >= 100, ymd["year"] + 2000)  # 24 -> 2024
    return _from_parts(ymd)


def _from_parts(ymd: pd.DataFrame) -> pd.Series:
    """(year, month, day) columns -> datetime64[ns]; impossible dates and years outside 1990-2099 -> NaT."""
    ok = ymd.notna().all(axis=1) & ymd["year"].between(1990, 2099) & ymd["month"].between(1, 12) & ymd["day"].between(1, 31)
    out = pd.Series(pd.NaT, index=ymd.index, dtype="datetime64[ns]")
    if ok.any():
        parts = ymd[ok].astype(int)
        out[ok] = pd.to_datetime(parts, errors="coerce").astype("datetime64[ns]")
    return out


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


# ---------------------------------------------------------------- adapters (raw -> canonical + `_reject`)


def _canonical(raw: pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(index=raw.index)
    df["dog_id"] = _text(raw["dog_id"])
    df["dog_name"] = display_name(raw["dog_name"])
    df["race_id"] = _text(raw["race_id"])
    df["race_date"] = parse_dates(raw["race_date"])
    df["track"] = display_name(raw["track"])
    df["distance_m"] = _int_in(_opt(raw, "distance_m"), 100, 2000, "Int32")
    df["grade"] = _text(_opt(raw, "grade"))
    df["box"] = _int_in(_opt(raw, "box"), 1, 10, "Int8")
    df["field_size"] = _int_in(_opt(raw, "field_size"), 1, 20, "Int8")
    df["finish_pos"] = _int_in(_opt(raw, "finish_pos"), 1, 20, "Int8")
    won = _parse_bool(_opt(raw, "won"))
    df["won"] = won.fillna(pd.Series(df["finish_pos"] == 1, dtype="boolean").where(df["finish_pos"].notna()))
    df["run_time_s"] = parse_number(_opt(raw, "run_time_s"), lo=5, hi=200)
    df["win_time_s"] = parse_number(_opt(raw, "win_time_s"), lo=5, hi=200)
    df["sectional_s"] = parse_number(_opt(raw, "sectional_s"), lo=0.5, hi=100)
    df["margin_lengths"] = parse_margin(_opt(raw, "margin_lengths"))
    df["weight_kg"] = parse_number(_opt(raw, "weight_kg"), lo=10, hi=60)
    df["sp_decimal"] = parse_price(_opt(raw, "sp_decimal"))
    df["bsp_decimal"] = parse_price(_opt(raw, "bsp_decimal"))
    src = _text(_opt(raw, "source"))
    df["source"] = src.where(src != "", "canonical")
    df["_reject"] = _basic_rejects(df)
    return df


def _iggy(raw: pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(index=raw.index)
    df["dog_id"] = normalise_name(raw["Dog"])
    df["dog_name"] = display_name(raw["Dog"])
    market = _text(raw["MarketId"]).str.replace(r"\.0$", "", regex=True)
    df["race_id"] = ("bf:" + market).where(market != "", "")
    df["race_date"] = parse_dates(raw["Date"])
    df["track"] = display_name(raw["Track"])
    parts = _race_name_parts(raw["Race Name"])
    df["distance_m"] = _int_in(parts[0], 100, 2000, "Int32")
    df["grade"] = parts[1].fillna("").str.strip()
    df["box"] = _int_in(raw["Rug"], 1, 10, "Int8")
    result = _text(raw["WIN_RESULT"])
    win = pd.to_numeric(result.where(result != ""), errors="coerce")
    df["won"] = pd.Series(win == 1, index=raw.index, dtype="boolean").where(win.isin([0, 1]))
    df["finish_pos"] = pd.Series(1, index=raw.index, dtype="Int8").where(df["won"].fillna(False).astype(bool))
    for col in ("run_time_s", "win_time_s", "sectional_s", "margin_lengths", "weight_kg", "sp_decimal"):
        df[col] = pd.Series(pd.NA, index=raw.index, dtype="Float64")
    df["bsp_decimal"] = parse_price(_opt(raw, "WIN_BSP"))
    df["source"] = "iggy"
    reject = _basic_rejects(df)
    reject = reject.mask((reject == "") & (result == ""), "not_run")
    reject = reject.mask((reject == "") & df["won"].isna(), "bad_result")
    df["_reject"] = reject
    # runners with a result; a dog listed twice in a market (it happens) counts once
    ran = df["dog_id"].where(reject == "")
    df["field_size"] = ran.groupby(df["race_id"]).transform("nunique").where(reject == "").astype("Int8")
    return df


def _place_columns(df: pd.DataFrame, place: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Set finish_pos and won from a place column (a non-finisher ran and lost); returns (place, parse state)."""
    pos, state = parse_place(place)
    df["finish_pos"] = pos
    df["won"] = pd.Series(pos == 1, dtype="boolean").where(state.isin(["finished", "dnf"]))
    df.loc[state == "dnf", "won"] = False
    return pos, state


def _thedogs(raw: pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(index=raw.index)
    # the name is only on a dog's first row; following rows are its earlier starts
    nm = _text(raw["Dog Name"]).str.replace(r"^\d+\.\s*", "", regex=True)
    nm = nm.where(nm != "").ffill().fillna("")
    df["dog_id"] = normalise_name(nm)
    df["dog_name"] = display_name(nm)
    df["race_date"] = parse_dates(raw["DATE"])
    df["track"] = display_name(raw["TRACK"])
    df["distance_m"] = _int_in(raw["DIST"], 100, 2000, "Int32")
    df["grade"] = _text(_opt(raw, "G"))
    df["box"] = _int_in(raw["BOX"], 1, 10, "Int8")
    _, state = _place_columns(df, raw["PLC"])
    df["field_size"] = pd.Series(pd.NA, index=raw.index, dtype="Int8")
    df["run_time_s"] = parse_number(_opt(raw, "TIME"), lo=5, hi=200)
    df["win_time_s"] = parse_number(_opt(raw, "WIN"), lo=5, hi=200)
    df["sectional_s"] = parse_number(_opt(raw, "1 SEC"), lo=0.5, hi=100)
    df["margin_lengths"] = parse_margin(_opt(raw, "MGN"))
    df.loc[df["finish_pos"] == 1, "margin_lengths"] = 0.0
    df["weight_kg"] = parse_number(_opt(raw, "WGT"), lo=10, hi=60, strip=r"(?i)kg$")
    df["sp_decimal"] = parse_price(_opt(raw, "SP"))
    df["bsp_decimal"] = pd.Series(pd.NA, index=raw.index, dtype="Float64")
    df["source"] = "thedogs"
    # no race id in a form guide: date, track, distance, grade and the winner's time identify the race
    key = (
        df["race_date"].dt.strftime("%Y-%m-%d").fillna("")
        + ":" + df["track"].str.upper()
        + ":" + df["distance_m"].astype("string").fillna("")
        + ":" + df["grade"].str.upper()
        + ":" + df["win_time_s"].round(2).astype("string").fillna("")
    )
    df["race_id"] = "td:" + key
    reject = _basic_rejects(df)
    reject = reject.mask((reject == "") & (state == "empty"), "not_run")
    df["_reject"] = reject.mask((reject == "") & (state == "bad"), "bad_result")
    return df


@_per_unique
def _race_name_parts(s: pd.Series) -> pd.DataFrame:
    """`R1 530m Gr5` (also `R10 457 M5`) -> columns 0: distance text, 1: grade."""
    return _text(s).str.extract(r"^(?:R\d+\s+)?(\d{3,4})\s*m?(?:\s+(.*))?$")


def _gbgb(raw: pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(index=raw.index)
    dog = _text(raw["dogId"]).str.replace(r"\.0$", "", regex=True)
    df["dog_id"] = ("gbgb:" + dog).where(dog != "", "")
    df["dog_name"] = display_name(raw["dogName"])
    race = _text(raw["raceId"]).str.replace(r"\.0$", "", regex=True)
    df["race_id"] = ("gbgb:" + race).where(race != "", "")
    df["race_date"] = parse_dates(raw["raceDate"])
    df["track"] = display_name(raw["trackName"])
    df["distance_m"] = _int_in(_opt(raw, "raceDistance"), 100, 2000, "Int32")
    df["grade"] = _text(_opt(raw, "raceClass"))
    df["box"] = _int_in(raw["trapNumber"], 1, 10, "Int8")
    pos, state = _place_columns(df, raw["resultPosition"])
    df["run_time_s"] = parse_number(_opt(raw, "resultRunTime"), lo=5, hi=200)
    df["win_time_s"] = parse_number(_opt(raw, "raceWinTime"), lo=5, hi=200)
    df["sectional_s"] = parse_number(_opt(raw, "resultSectionalTime"), lo=0.5, hi=100)
    df["weight_kg"] = parse_number(_opt(raw, "resultDogWeight"), lo=10, hi=60)
    df["sp_decimal"] = parse_price(_opt(raw, "SP"))
    df["bsp_decimal"] = pd.Series(pd.NA, index=raw.index, dtype="Float64")
    df["source"] = "gbgb"
    reject = _basic_rejects(df)
    reject = reject.mask((reject == "") & (state == "empty"), "not_run")
    reject = reject.mask((reject == "") & (state == "bad"), "bad_result")
    df["_reject"] = reject
    ok = reject == ""
    df["field_size"] = df["dog_id"].where(ok).groupby(df["race_id"]).transform("nunique").where(ok).astype("Int8")
    df["margin_lengths"] = _behind_winner(df["race_id"], pos, parse_margin(_opt(raw, "resultBtnDistance")), ok)
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


def _basic_rejects(df: pd.DataFrame) -> pd.Series:
    """First failing check of the columns every format must fill; '' when the row is fine."""
    reason = pd.Series("", index=df.index, dtype=object)
    checks = [
        ("missing_dog_name", df["dog_name"] == ""),
        ("missing_dog_id", df["dog_id"] == ""),
        ("missing_race_id", df["race_id"] == ""),
        ("bad_date", df["race_date"].isna()),
        ("missing_track", df["track"] == ""),
    ]
    for code, bad in reversed(checks):
        reason[bad.to_numpy(dtype=bool)] = code
    return reason


_ADAPTERS = {"canonical": _canonical, "iggy": _iggy, "thedogs": _thedogs, "gbgb": _gbgb}


def _split(df: pd.DataFrame, fmt: str) -> Adapted:
    reject = df["_reject"].to_numpy(dtype=object)
    bad = reject != ""
    rows = np.arange(1, len(df) + 1, dtype=np.int64)
    rejects = pd.DataFrame({"source_row": rows[bad], "reason": reject[bad].astype(str)})
    good = df.loc[~bad, [c for c in CANONICAL_COLUMNS if c in df.columns]].copy()
    good["grade"] = good["grade"].where(good["grade"] != "")
    runs = conform(good, where=fmt)
    runs["source_row"] = rows[~bad]
    return Adapted(runs=runs, rejects=rejects)
