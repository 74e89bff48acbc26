"""Canonical runs table -> leak-free ragged per-dog sequences, and the feature normaliser.

Each row of a dog's sequence is one race, in date order, with two vectors:

- `values` (known after the race): what the race showed about the dog: run time and
  sectional against a leak-free track/distance reference, margin, log place, placed, won, box,
  distance, grade level, weight change, days since the last run, the market's implied probability,
  and a missing flag for each nullable input. Raw: missing inputs are NaN (their flag says so).
- `context` (known before the race): box, distance, track (an integer index into a stored vocabulary,
  unknown tracks in bucket 0, which the model embeds), days since the last run, field size, the race's grade (level, kind) and the
  class change from the dog's last race, the dog's earlier starts and (shrunk) win rate at this track and
  at this distance, and the market's implied probability (renormalised within the
  race) and its log, so the conditional logit can start from the market's own odds.

Days since the last run are unknown (flagged) when a calendar month between the two runs has no
race at all in the table: a gap in the data, not a spell off.

No leakage: the reference time of a race uses only races on earlier dates at the same
track and distance, and per-dog features look back only, so a row's features never change
when later races are added.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from gruviz_core.errors import FeatureMismatchError, InputError
from gruviz_core.grades import GRADE_KINDS, grade_table, parse_grade
from gruviz_core.racing import renormalise
from gruviz_core.schema import YARDSTICKS, conform
from gruviz_core.sequences import Sequences, whole_group_ranges

__all__ = [
    "FEATURE_NAMES",
    "CONTEXT_NAMES",
    "MARKET_CONTEXT",
    "TRACKS",
    "TRACK_INDEX",
    "CATEGORICAL",
    "track_column",
    "track_index",
    "interaction_columns",
    "track_embedding_columns",
    "build_sequences",
    "ORDER_COLUMNS",
    "RACE_COLUMNS",
    "BLOCK_COLUMNS",
    "RaceColumns",
    "run_order",
    "race_columns",
    "dog_blocks",
    "sequences_block",
    "clean_runs",
    "yardstick_probs",
    "grade_number",
    "home_group",
    "Normaliser",
    "fit_normaliser",
    "column_index",
]

TRACKS: tuple[str, ...] = (
    # Australia and New Zealand (Iggy, thedogs)
    "Addington", "Albion Park", "Angle Park", "Ascot Park", "Ballarat", "Bendigo", "Broken Hill", "Bulli",
    "Bundaberg", "Cambridge", "Cannington", "Capalaba", "Casino", "Dapto", "Darwin", "Dubbo", "Gawler", "Geelong",
    "Gosford", "Goulburn", "Grafton", "Gunnedah", "Hatrick", "Healesville", "Hobart", "Horsham", "Ipswich",
    "Launceston", "Maitland", "Manawatu", "Mandurah", "Mount Gambier", "Murray Bridge", "Murray Bridge Straight",
    "Muswellbrook", "Northam", "Nowra", "Q Straight", "Q1 Lakeside", "Q2 Parklands", "Richmond",
    "Richmond Straight", "Rockhampton", "Sale", "Sandown Park", "Shepparton", "Taree", "Temora", "The Gardens",
    "The Meadows", "Townsville", "Traralgon", "Wagga", "Warragul", "Warrnambool", "Wentworth Park",
    # Great Britain (GBGB)
    "Central Park", "Crayford", "Doncaster", "Harlow", "Henlow", "Hove", "Kinsley", "Monmore", "Newcastle",
    "Nottingham", "Oxford", "Pelaw Grange", "Perry Barr", "Romford", "Sheffield", "Star Pelaw", "Suffolk Downs",
    "Sunderland", "Swindon", "Towcester", "Valley", "Yarmouth",
)
"""The stored track vocabulary: the context column `track_index` holds 1 + a track's position here (a learned
embedding in the model); a track not in it is 0. Fixed in code so sequences of any snapshot agree."""

TRACK_INDEX = "track_index"
"""Context column of the track's vocabulary index (0 unknown, 1..len(TRACKS))."""

CATEGORICAL: dict[str, int] = {TRACK_INDEX: len(TRACKS) + 1}
"""Integer-coded context columns and their number of levels: the normaliser leaves them raw (missing -> 0)."""

MIN_REFERENCE_RUNS = 5
"""Earlier runs at a track+distance needed before its reference time is trusted."""

def track_column(track: str) -> str:
    """Context column of a track: 'track_' + lower-case name, non-alphanumerics as '_' ('The Meadows' -> track_the_meadows)."""
    return "track_" + re.sub(r"[^a-z0-9]+", "_", str(track).strip().lower()).strip("_")


FEATURE_NAMES: tuple[str, ...] = (
    "time_z", "time_missing",
    "sectional_z", "sectional_missing",
    "margin_log", "margin_missing",
    "log_place", "place_missing",
    "won",
    "box", "box_missing",
    "distance_km", "distance_missing",
    "grade_level", "grade_missing",
    "placed", "placed_missing",
    "weight_change_kg", "weight_change_missing",
    "log_days_since", "days_missing",
    "implied_prob", "price_missing",
)

CONTEXT_NAMES: tuple[str, ...] = (
    "box", "box_missing",
    *(f"box_{b}" for b in range(1, 9)),
    "distance_km", "distance_missing",
    "log_days_since", "days_missing",
    "log_field_size",
    "grade_level", "grade_missing", "grade_change", "grade_change_missing",
    *(f"kind_{k}" for k in GRADE_KINDS),
    "form_track_starts", "form_track_win_rate", "form_dist_starts", "form_dist_win_rate",
    "market_prob", "market_logit", "market_missing",
    TRACK_INDEX,
)

MARKET_CONTEXT: tuple[str, ...] = ("market_prob", "market_logit", "market_missing")
"""Context columns from the price; leave them out to make the GRU learn from form alone."""



def track_index(tracks: Sequence[str] | pd.Series) -> np.ndarray:
    """(n,) int64 vocabulary index of each track name: 1 + its position in TRACKS, 0 when not in it.

    Names are compared as `track_column` spells them (case and punctuation do not matter)."""
    lookup = {track_column(t): i + 1 for i, t in enumerate(TRACKS)}
    names = pd.Series(np.asarray(tracks, dtype=object)).astype(str)
    return names.map(lambda t: lookup.get(track_column(t), 0)).to_numpy(dtype=np.int64)


def build_sequences(runs: pd.DataFrame) -> Sequences:
    """Canonical runs table -> one date-ordered sequence per dog, raw (unnormalised) features.

    Rows whose result is unknown (`won` and `finish_pos` both missing: scratched, void) are
    dropped: the dog did not run, so the race says nothing about it.

    The whole table at once; the features stage builds the same sequences block by block of dogs
    (`run_order`, `race_columns`, `dog_blocks`, `sequences_block`), which bounds its memory.
    """
    df = _clean(conform(runs, where="build_sequences"))
    if df.empty:
        raise InputError("build_sequences: no run with a known result in the table; nothing to build")
    return sequences_block(df, race_columns(df))


ORDER_COLUMNS: tuple[str, ...] = ("dog_id", "race_date", "race_id", "won", "finish_pos")
"""Canonical columns `run_order` reads: which rows have a result, and their order."""

RACE_COLUMNS: tuple[str, ...] = (
    "race_id", "race_date", "track", "distance_m", "run_time_s", "sectional_s", "sp_decimal", "bsp_decimal",
)
"""Canonical columns `race_columns` reads: what a row's features need from the other rows of the table."""

BLOCK_COLUMNS: tuple[str, ...] = (
    "dog_id", "dog_name", "race_id", "race_date", "track", "distance_m", "grade", "box", "field_size",
    "finish_pos", "won", "placed", "margin_lengths", "weight_kg",
)
"""Canonical columns `sequences_block` reads from a block's own rows."""


@dataclass(frozen=True)
class RaceColumns:
    """The columns of each row that depend on other dogs' rows (its race, earlier races at its track and distance,
    the months with data), computed over the whole table in `run_order`; a block of dogs reads its slice (`rows`)."""

    runners: np.ndarray
    """(obs,) int64 rows (runners with a result) of the row's race."""
    market: np.ndarray
    """(obs,) float64 implied win probability renormalised within the race; NaN if any runner lacks a price."""
    own_implied: np.ndarray
    """(obs,) float64 the dog's own implied probability over the priced runners of its race; NaN without a price."""
    time_z: np.ndarray
    """(obs,) float64 run time against earlier dates at the same track and distance (std units); NaN if unknown."""
    sectional_z: np.ndarray
    """(obs,) float64 first sectional, likewise."""
    month_lo: int
    """First calendar month of the table (months since 1970-01)."""
    empty_before: np.ndarray
    """(months + 1,) int64 months from `month_lo` on without any race, strictly before each month."""

    def rows(self, start: int, stop: int) -> RaceColumns:
        """Rows [start, stop) (views; the month table is the whole table's)."""
        s = slice(start, stop)
        return replace(self, runners=self.runners[s], market=self.market[s], own_implied=self.own_implied[s],
                       time_z=self.time_z[s], sectional_z=self.sectional_z[s])


def run_order(keys: pd.DataFrame) -> np.ndarray:
    """(obs,) int64 positions in `keys` (ORDER_COLUMNS) of the rows `build_sequences` keeps, in its order.

    Rows with a known result (`won`, else `finish_pos`), stably by dog id, race date and race id as text: the
    order of `clean_runs`. Text columns may be pandas Categoricals (4 bytes a row)."""
    idx = np.flatnonzero(_known_won(keys).notna().to_numpy(dtype=bool))
    dog, race = _text_codes(keys["dog_id"])[idx], _text_codes(keys["race_id"])[idx]
    day = keys["race_date"].to_numpy("datetime64[ns]").astype(np.int64)[idx]
    return idx[np.lexsort((race, day, dog))].astype(np.int64)  # lexsort is stable: ties keep the table's order


def race_columns(rows: pd.DataFrame, order: np.ndarray | None = None) -> RaceColumns:
    """The race-level columns of `rows.iloc[order]` (RACE_COLUMNS of every row with a result, in `run_order`),
    gathered column by column: no reordered copy of the table is made."""
    def take(a: np.ndarray) -> np.ndarray:
        return a if order is None else a[order]

    race = take(_text_codes(rows["race_id"], ordered=False))
    price = take(_price(rows))
    market = renormalise(1.0 / price, race)
    own = _own_implied(price, race)
    runners = np.bincount(race)[race]
    del race, price
    date = take(rows["race_date"].to_numpy("datetime64[D]"))
    track, dist = take(_text_codes(rows["track"])), take(_num(rows["distance_m"]))
    time_z = _reference_z(take(_num(rows["run_time_s"])), track, dist, date)
    sect_z = _reference_z(take(_num(rows["sectional_s"])), track, dist, date)
    lo, empty_before = _month_cover(date)
    return RaceColumns(runners, market, own, time_z, sect_z, lo, empty_before)


def dog_blocks(dog_id: pd.Series, order: np.ndarray, rows_per_block: int) -> list[tuple[int, int]]:
    """[(start, stop)] ranges of `run_order` positions covering whole dogs, each the fewest dogs reaching
    `rows_per_block` rows (the last one fewer). dog_id: the table's (text or Categorical), order: `run_order`'s."""
    dog = _text_codes(dog_id, ordered=False)[order]
    return whole_group_ranges(np.r_[np.flatnonzero(np.r_[True, dog[1:] != dog[:-1]]), len(dog)], rows_per_block)


def sequences_block(df: pd.DataFrame, race: RaceColumns) -> Sequences:
    """Sequences of the rows `df` (BLOCK_COLUMNS of whole dogs, in `run_order`, results known) and their slice of
    the race-level columns; offsets count from the block's first row."""
    df = _result_known(df)
    dog_id = df["dog_id"].to_numpy(dtype=object)
    dog_first = np.r_[True, dog_id[1:] != dog_id[:-1]] if len(df) else np.zeros(0, bool)
    days = df["race_date"].to_numpy("datetime64[D]").astype(np.int64).astype(np.float64)
    gap = _gap_in_data(df["race_date"], race.month_lo, race.empty_before)
    days_since = np.where(dog_first | gap, np.nan, np.diff(days, prepend=np.nan))
    log_days = np.log1p(np.clip(days_since, 0.0, None))
    grades = grade_table(df["grade"])
    values = _values(df, race, dog_first, log_days, grades)
    context = _context(df, race, dog_first, log_days, grades)
    starts = np.flatnonzero(dog_first)
    offsets = np.r_[starts, len(df)].astype(np.int64)
    return Sequences(
        values=values,
        context=context,
        offsets=offsets,
        dog_id=dog_id[starts],
        dog_name=df["dog_name"].to_numpy(dtype=object)[starts],
        race_id=df["race_id"].to_numpy(dtype=object),
        race_date=df["race_date"].to_numpy("datetime64[D]"),
        won=df["won"].to_numpy(dtype=np.float32),
        market_prob=race.market.astype(np.float32),
        feature_names=FEATURE_NAMES,
        context_names=CONTEXT_NAMES,
    )


def clean_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The canonical runs table in the row order of `build_sequences` (known results, by dog, date, race).

    A team's own feature callable is given this table, so its rows line up with the sequences.
    """
    return _clean(conform(runs, where="clean_runs"))


def yardstick_probs(runs: pd.DataFrame, order: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Other forecasters' win probabilities per row of `build_sequences(runs)`: name -> (obs,) 1 / price of each
    `schema.YARDSTICKS` column the table has (NaN where unknown); columns with no price at all are left out.
    With `order` (`run_order` of the table), `runs` may hold only the yardstick columns and is not cleaned whole.

    For comparison only: `build_sequences` never reads these columns."""
    df = clean_runs(runs) if order is None else runs
    out = {}
    for name in YARDSTICKS:
        if name not in df.columns:
            continue
        price = _num(df[name]) if order is None else _num(df[name])[order]
        p = np.where(np.isfinite(price) & (price > 1.0), 1.0 / price, np.nan)
        if np.isfinite(p).any():
            out[name] = p
    return out


def _clean(df: pd.DataFrame) -> pd.DataFrame:
    """Known results only; `won` from the place where missing; sorted by dog, date, race."""
    df = _result_known(df)
    df = df[df["won"].notna()]
    return df.sort_values(["dog_id", "race_date", "race_id"], kind="stable").reset_index(drop=True)


def _known_won(df: pd.DataFrame) -> pd.Series:
    """(rows,) boolean `won`, from the place (1 = won) where missing; <NA> where neither is known."""
    won = df["won"].astype("boolean").copy()
    from_place = df["finish_pos"].notna() & won.isna()
    won[from_place] = df.loc[from_place, "finish_pos"] == 1
    return won


def _result_known(df: pd.DataFrame) -> pd.DataFrame:
    """`won` from the place where missing; dog and race ids as text (a Categorical's too)."""
    return df.assign(won=_known_won(df), dog_id=df["dog_id"].astype(str), race_id=df["race_id"].astype(str))


def _text_codes(s: pd.Series, *, ordered: bool = True) -> np.ndarray:
    """(rows,) int64 codes of a text column; with `ordered`, codes sort as the text does. A Categorical's codes (its
    categories put in order first), else pd.factorize's."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        cats = s.cat.categories
        if ordered and not cats.is_monotonic_increasing:
            s = s.cat.reorder_categories(cats.sort_values())
        return s.cat.codes.to_numpy().astype(np.int64)
    return pd.factorize(s.astype(str).to_numpy(), sort=ordered)[0].astype(np.int64)


def _month_cover(race_date: np.ndarray) -> tuple[int, np.ndarray]:
    """The table's first month and (months + 1,) int64 months without any race strictly before each month from it."""
    month = np.asarray(race_date).astype("datetime64[M]").astype(np.int64)
    if not len(month):
        return 0, np.zeros(1, np.int64)
    lo = int(month.min())
    covered = np.zeros(int(month.max()) - lo + 1, dtype=bool)
    covered[month - lo] = True
    return lo, np.r_[0, np.cumsum(~covered)]


def _gap_in_data(race_date: pd.Series, lo: int, empty_before: np.ndarray) -> np.ndarray:
    """(obs,) bool: a calendar month strictly between this row and the row before it has no race at all in the table
    (`lo`, `empty_before`: the whole table's `_month_cover`).

    Rows are by dog and date, so 'the row before' is the dog's previous run (the first row of a dog is
    ignored by the caller). Only months before the race's own month count: leak-free.
    """
    month = race_date.to_numpy("datetime64[M]").astype(np.int64)
    if not len(month):
        return np.zeros(0, dtype=bool)
    prev = np.r_[month[0], month[:-1]]
    return (empty_before[month - lo] - empty_before[np.minimum(prev, month) - lo + 1].clip(min=0)) > 0


def _num(s: pd.Series) -> np.ndarray:
    return s.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _values(
    df: pd.DataFrame, race: RaceColumns, dog_first: np.ndarray, log_days: np.ndarray, grades: pd.DataFrame,
) -> np.ndarray:
    """(obs, len(FEATURE_NAMES)) float32; NaN where an input is missing."""
    time_z, sect_z = race.time_z, race.sectional_z
    margin = np.log1p(np.clip(_num(df["margin_lengths"]), 0.0, 50.0))
    place = np.log(np.clip(_num(df["finish_pos"]), 1.0, None))
    box = _num(df["box"])
    dist_km = _num(df["distance_m"]) / 1000.0
    grade = grades["level"].to_numpy(np.float64)
    placed = _placed(df, race.runners)
    weight = _num(df["weight_kg"])
    weight_change = np.where(dog_first, np.nan, np.diff(weight, prepend=np.nan))
    cols = {
        "time_z": time_z, "sectional_z": sect_z, "margin_log": margin, "log_place": place,
        "won": df["won"].to_numpy(dtype=np.float64), "box": box, "distance_km": dist_km,
        "grade_level": grade, "placed": placed, "weight_change_kg": np.clip(weight_change, -5.0, 5.0),
        "log_days_since": log_days, "implied_prob": race.own_implied,
    }
    flags = {
        "time_missing": time_z, "sectional_missing": sect_z, "margin_missing": margin,
        "place_missing": place, "box_missing": box, "distance_missing": dist_km,
        "grade_missing": grade, "placed_missing": placed, "weight_change_missing": weight_change, "days_missing": log_days,
        "price_missing": cols["implied_prob"],
    }
    for name, src in flags.items():
        cols[name] = ~np.isfinite(src)
    return _float32_columns(FEATURE_NAMES, cols)


def _float32_columns(names: tuple[str, ...], cols: dict[str, np.ndarray]) -> np.ndarray:
    """(obs, len(names)) float32 of cols[name], filled column by column (each popped from `cols`): no
    float64 (obs, columns) stack, which made the features stage's peak (about 450 B per row at 37 columns)."""
    out = np.empty((len(cols[names[0]]), len(names)), np.float32)
    for i, name in enumerate(names):
        out[:, i] = cols.pop(name)
    return out


def _placed(df: pd.DataFrame, runners: np.ndarray) -> np.ndarray:
    """(obs,) 1 if the dog finished in the places (first 2 of fields under 8, first 3 else), 0 if not; NaN unknown."""
    pos = _num(df["finish_pos"])
    field = _num(df["field_size"])
    field = np.where(np.isfinite(field), field, runners)
    places = np.where(field < 8, 2.0, 3.0)
    out = np.where(np.isfinite(pos), (pos <= places).astype(np.float64), np.nan)
    if "placed" in df.columns:  # the source's own flag (Iggy's PLACE_RESULT: placed, place unknown) wins
        given = df["placed"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        out = np.where(np.isfinite(given), given, out)
    return out


def _context(
    df: pd.DataFrame, race: RaceColumns, dog_first: np.ndarray, log_days: np.ndarray, grades: pd.DataFrame,
) -> np.ndarray:
    """(obs, len(CONTEXT_NAMES)) float32; NaN where an input is missing."""
    box = _num(df["box"])
    dist_km = _num(df["distance_m"]) / 1000.0
    field = race.runners.astype(np.float64)
    market = race.market
    cols: dict[str, np.ndarray] = {
        "box": box, "box_missing": ~np.isfinite(box),
        "distance_km": dist_km, "distance_missing": ~np.isfinite(dist_km),
        "log_days_since": log_days, "days_missing": ~np.isfinite(log_days),
        "log_field_size": np.log(field),
        "market_prob": market, "market_logit": np.log(np.clip(market, 1e-4, 1.0)), "market_missing": ~np.isfinite(market),
    }
    for b in range(1, 9):
        cols[f"box_{b}"] = box == b
    level = grades["level"].to_numpy(np.float64)
    change = np.where(dog_first, np.nan, level - np.r_[np.nan, level[:-1]])
    cols |= {"grade_level": level, "grade_missing": ~np.isfinite(level),
             "grade_change": change, "grade_change_missing": ~np.isfinite(change)}
    kind = grades["kind"].to_numpy(dtype=str)
    for k in GRADE_KINDS:
        cols[f"kind_{k}"] = kind == k
    cols[TRACK_INDEX] = track_index(df["track"])
    for name, key in (("track", df["track"].astype(str)), ("dist", df["distance_m"].astype("string").fillna("?"))):
        starts, wins = _earlier_runs(df["dog_id"], key, df["won"])
        cols[f"form_{name}_starts"] = np.log1p(starts)
        cols[f"form_{name}_win_rate"] = (wins + FORM_PRIOR_RUNS / 8.0) / (starts + FORM_PRIOR_RUNS)
    return _float32_columns(CONTEXT_NAMES, cols)


FORM_PRIOR_RUNS = 4.0
"""A dog's win rate at a track or distance is shrunk towards 1 in 8 as if it had this many runs there at that rate."""


def _earlier_runs(dog: pd.Series, key: pd.Series, won: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(obs,) runs and wins of the dog with the same key (track, distance) on its earlier rows only.

    Rows are by dog and date (a dog runs once a day), so the rows before a row are its earlier races."""
    w = won.astype("Float64").to_numpy(dtype=np.float64, na_value=0.0)
    g = pd.DataFrame({"dog": dog.to_numpy(), "key": key.to_numpy(), "w": w}).groupby(["dog", "key"], sort=False)
    starts = g.cumcount().to_numpy(dtype=np.float64)
    wins = g["w"].cumsum().to_numpy(dtype=np.float64) - w
    return starts, wins


def _price(df: pd.DataFrame) -> np.ndarray:
    """(obs,) decimal price: BSP, else SP; NaN when neither is a usable price (> 1)."""
    bsp, sp = _num(df["bsp_decimal"]), _num(df["sp_decimal"])
    price = np.where(np.isfinite(bsp) & (bsp > 1.0), bsp, sp)
    return np.where(np.isfinite(price) & (price > 1.0), price, np.nan)


def _own_implied(price: np.ndarray, race: np.ndarray) -> np.ndarray:
    """(obs,) the dog's own implied probability, renormalised over the priced runners of its race."""
    p = 1.0 / price
    ok = np.isfinite(p)
    tot = np.bincount(race, weights=np.where(ok, p, 0.0))
    return np.where(ok, p / np.where(tot > 0, tot, np.nan)[race], np.nan)


REFERENCE_ROWS = 1 << 21
"""Rows of whole tracks per batch of `_reference_z`: its grouping's working memory follows a batch, not the table."""


def _reference_z(x: np.ndarray, track: np.ndarray, dist: np.ndarray, date: np.ndarray) -> np.ndarray:
    """(obs,) time x in std units against earlier dates at the same track and distance; NaN if unknown.
    track: (obs,) int codes; dist: (obs,) metres (NaN unknown); date: (obs,) datetime64[D].

    A track's references read its own rows only, so tracks go in batches of about REFERENCE_ROWS rows, each
    track's rows in table order (the sums add the same numbers in the same order as over the whole table).
    """
    out = np.full(len(x), np.nan)
    by_track = np.argsort(track, kind="stable")
    edges = np.r_[0, np.flatnonzero(np.diff(track[by_track])) + 1, len(x)]  # each track's run in by_track
    for a, b in whole_group_ranges(edges, REFERENCE_ROWS):
        rows = by_track[a:b]
        out[rows] = _tracks_reference_z(x[rows], track[rows], dist[rows], date[rows])
    return out


def _tracks_reference_z(x: np.ndarray, track: np.ndarray, dist: np.ndarray, date: np.ndarray) -> np.ndarray:
    """`_reference_z` of whole tracks' rows. Per (track, distance, date): count, sum and sum of squares; cumulated
    over dates and shifted by one date, so a race's reference uses strictly earlier days only."""
    ok = np.isfinite(x) & np.isfinite(dist)
    if not ok.any():
        return np.full(len(x), np.nan)
    key = pd.DataFrame({
        "track": track, "dist": np.nan_to_num(dist, nan=-1.0), "date": date,
        "n": ok.astype(np.float64), "s": np.where(ok, x, 0.0), "ss": np.where(ok, x * x, 0.0),
    })
    groups = key.groupby(["track", "dist", "date"], sort=True)
    day = groups[["n", "s", "ss"]].sum()
    g = groups.ngroup().to_numpy()  # each row's (track, distance, date) group; -1 without a date
    del key, groups
    before = day.groupby(level=["track", "dist"], sort=False).cumsum() - day  # strictly earlier dates
    ref = np.vstack([before.to_numpy(), np.full((1, 3), np.nan)])  # row -1: no group, no reference
    n, s, ss = ref[g, 0], ref[g, 1], ref[g, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
        std = np.sqrt(np.clip(ss / n - mean * mean, 0.0, None))
        z = (x - mean) / std
    good = ok & (n >= MIN_REFERENCE_RUNS) & (std > 1e-6)
    return np.where(good, np.clip(z, -5.0, 5.0), np.nan)


def grade_number(grade: str) -> float:
    """Class level of a grade string (gruviz_core.grades: 'Gr4/5' -> 4.5, maiden 8, novice 7, open class 0; NaN
    where the string gives no class, e.g. 'Heat')."""
    return parse_grade(grade).level


def interaction_columns(context_names: Sequence[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Positions of the box one-hots (box_1..box_8) and of track one-hot columns (`track_*` other than
    `track_index`; sets built before the track embedding) in `context_names`, for a box x track table over
    one-hots; empty when either is absent."""
    box = tuple(i for i, n in enumerate(context_names) if re.fullmatch(r"box_\d+", n))
    track = tuple(i for i, n in enumerate(context_names) if n.startswith("track_") and n != TRACK_INDEX)
    return (box, track) if box and track else ((), ())


def track_embedding_columns(context_names: Sequence[str]) -> tuple[int, tuple[int, ...]]:
    """Position of `track_index` in `context_names` (-1 if absent) and of the box one-hots (for the model's box x
    track table, looked up by track); box positions empty when the track index is absent."""
    names = list(context_names)
    if TRACK_INDEX not in names:
        return -1, ()
    return names.index(TRACK_INDEX), tuple(i for i, n in enumerate(names) if re.fullmatch(r"box_\d+", n))


def home_group(seqs: Sequences) -> np.ndarray:
    """(dog,) int64: each dog's most frequent track, so training batches keep co-runners together."""
    names = list(seqs.context_names)
    if TRACK_INDEX in names:
        bucket = np.nan_to_num(seqs.context[:, names.index(TRACK_INDEX)], nan=0.0).astype(np.int64)
        n_levels = int(bucket.max()) + 1 if len(bucket) else 1
    else:
        idx = [i for i, n in enumerate(names) if n.startswith("track_")]
        if not idx:
            return np.zeros(seqs.n_dogs, dtype=np.int64)
        bucket = np.argmax(seqs.context[:, idx], axis=1)  # (obs,)
        n_levels = len(idx)
    dog = np.repeat(np.arange(seqs.n_dogs), seqs.row_size)
    counts = np.zeros((seqs.n_dogs, n_levels), dtype=np.int64)
    np.add.at(counts, (dog, bucket), 1)
    return np.argmax(counts, axis=1).astype(np.int64)


def column_index(available: Sequence[str], wanted: Sequence[str], *, what: str) -> np.ndarray:
    """Positions of `wanted` names in `available`; FeatureMismatchError naming the unknown ones."""
    pos = {n: i for i, n in enumerate(available)}
    unknown = [n for n in wanted if n not in pos]
    if unknown:
        raise FeatureMismatchError(
            f"{what}: unknown name(s) {', '.join(unknown)}; available: {', '.join(available)}"
        )
    return np.array([pos[n] for n in wanted], dtype=np.int64)


@dataclass(frozen=True)
class Normaliser:
    """Per-column mean/std fitted on the training period; saved with the model, applied before it."""

    feature_names: tuple[str, ...]
    """Columns of `values` it expects, in order."""
    context_names: tuple[str, ...]
    """Columns of `context` it expects, in order."""
    values_mean: tuple[float, ...]
    """Mean of each values column (0 for binary columns, which are left as they are)."""
    values_std: tuple[float, ...]
    """Std of each values column (1 for binary columns)."""
    context_mean: tuple[float, ...]
    """Mean of each context column."""
    context_std: tuple[float, ...]
    """Std of each context column."""
    clip: float = 8.0
    """Standardised values are clipped to [-clip, clip], so one wild input cannot saturate the GRU alone."""
    categorical: tuple[str, ...] = ()
    """Integer-coded context columns (e.g. `track_index`) passed through raw, missing -> 0, never clipped."""

    def apply(self, values: np.ndarray, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (obs, F), (obs, C) -> standardised float32, missing (NaN) -> 0 (its flag says so)."""
        ctx = _standardise(context, self.context_mean, self.context_std, self.clip, "context")
        for name in self.categorical:
            i = self.context_names.index(name)
            ctx[:, i] = np.nan_to_num(np.asarray(context[:, i], dtype=np.float32), nan=0.0)
        return _standardise(values, self.values_mean, self.values_std, self.clip, "values"), ctx

    def select(self, feature_names: Sequence[str], context_names: Sequence[str]) -> Normaliser:
        """The same normaliser restricted/reordered to the named columns."""
        fi = column_index(self.feature_names, feature_names, what="normaliser features")
        ci = column_index(self.context_names, context_names, what="normaliser context")
        return Normaliser(
            tuple(feature_names), tuple(context_names),
            tuple(np.asarray(self.values_mean)[fi].tolist()), tuple(np.asarray(self.values_std)[fi].tolist()),
            tuple(np.asarray(self.context_mean)[ci].tolist()), tuple(np.asarray(self.context_std)[ci].tolist()),
            self.clip, tuple(n for n in self.categorical if n in context_names),
        )

    @classmethod
    def identity(cls, feature_names: Sequence[str], context_names: Sequence[str]) -> Normaliser:
        """No scaling, missing -> 0: for models that bring no normaliser of their own."""
        f, c = len(feature_names), len(context_names)
        return cls(tuple(feature_names), tuple(context_names), (0.0,) * f, (1.0,) * f, (0.0,) * c, (1.0,) * c, 1e9)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names), "context_names": list(self.context_names),
            "values_mean": list(self.values_mean), "values_std": list(self.values_std),
            "context_mean": list(self.context_mean), "context_std": list(self.context_std),
            "clip": self.clip, "categorical": list(self.categorical),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normaliser:
        return cls(
            tuple(d["feature_names"]), tuple(d["context_names"]),
            tuple(float(v) for v in d["values_mean"]), tuple(float(v) for v in d["values_std"]),
            tuple(float(v) for v in d["context_mean"]), tuple(float(v) for v in d["context_std"]),
            float(d.get("clip", 8.0)), tuple(d.get("categorical", ())),
        )


def _standardise(x: np.ndarray, mean: Sequence[float], std: Sequence[float], clip: float, what: str) -> np.ndarray:
    if x.shape[1] != len(mean):
        raise FeatureMismatchError(f"normaliser: {what} has {x.shape[1]} columns, the normaliser expects {len(mean)}")
    z = (np.asarray(x, dtype=np.float64) - np.asarray(mean)) / np.asarray(std)
    return np.clip(np.nan_to_num(z, nan=0.0, posinf=clip, neginf=-clip), -clip, clip).astype(np.float32)


def fit_normaliser(seqs: Sequences, rows: np.ndarray | None = None) -> Normaliser:
    """Mean/std of every column over `rows` (bool (obs,), e.g. the training period); binary and categorical
    (`CATEGORICAL`) columns untouched."""
    sel = slice(None) if rows is None else np.asarray(rows, dtype=bool)
    vm, vs = _moments(seqs.values[sel])
    cm, cs = _moments(seqs.context[sel])
    cat = tuple(n for n in seqs.context_names if n in CATEGORICAL)
    raw = {seqs.context_names.index(n) for n in cat}
    cm = tuple(0.0 if i in raw else m for i, m in enumerate(cm))
    cs = tuple(1.0 if i in raw else m for i, m in enumerate(cs))
    return Normaliser(seqs.feature_names, seqs.context_names, vm, vs, cm, cs, categorical=cat)


def _moments(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    means, stds = [], []
    for col in np.asarray(x, dtype=np.float64).T:
        col = col[np.isfinite(col)]
        binary = col.size == 0 or np.isin(col, (0.0, 1.0)).all()
        sd = float(col.std()) if not binary else 1.0
        means.append(0.0 if binary else float(col.mean()))
        stds.append(sd if sd > 1e-6 else 1.0)
    return tuple(means), tuple(stds)
