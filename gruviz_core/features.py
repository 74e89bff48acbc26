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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from gruviz_core.errors import FeatureMismatchError, InputError
from gruviz_core.grades import GRADE_KINDS, grade_table, parse_grade
from gruviz_core.racing import race_codes, renormalise
from gruviz_core.schema import YARDSTICKS, conform
from gruviz_core.sequences import Sequences

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
    """
    df = _clean(conform(runs, where="build_sequences"))
    if df.empty:
        raise InputError("build_sequences: no run with a known result in the table; nothing to build")
    race = race_codes(df["race_id"].to_numpy())
    dog_first = np.r_[True, df["dog_id"].to_numpy()[1:] != df["dog_id"].to_numpy()[:-1]]
    days = df["race_date"].to_numpy("datetime64[D]").astype(np.int64).astype(np.float64)
    days_since = np.where(dog_first | _gap_in_data(df["race_date"]), np.nan, np.diff(days, prepend=np.nan))
    log_days = np.log1p(np.clip(days_since, 0.0, None))
    market = _market_prob(df, race)
    grades = grade_table(df["grade"])
    values = _values(df, race, dog_first, log_days, market, grades)
    context = _context(df, race, dog_first, log_days, market, grades)
    starts = np.flatnonzero(dog_first)
    offsets = np.r_[starts, len(df)].astype(np.int64)
    return Sequences(
        values=values,
        context=context,
        offsets=offsets,
        dog_id=df["dog_id"].to_numpy(dtype=object)[starts],
        dog_name=df["dog_name"].to_numpy(dtype=object)[starts],
        race_id=df["race_id"].to_numpy(dtype=object),
        race_date=df["race_date"].to_numpy("datetime64[D]"),
        won=df["won"].to_numpy(dtype=np.float32),
        market_prob=market.astype(np.float32),
        feature_names=FEATURE_NAMES,
        context_names=CONTEXT_NAMES,
    )


def clean_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The canonical runs table in the row order of `build_sequences` (known results, by dog, date, race).

    A team's own feature callable is given this table, so its rows line up with the sequences.
    """
    return _clean(conform(runs, where="clean_runs"))


def yardstick_probs(runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """Other forecasters' win probabilities per row of `build_sequences(runs)`: name -> (obs,) 1 / price of each
    `schema.YARDSTICKS` column the table has (NaN where unknown); columns with no price at all are left out.

    For comparison only: `build_sequences` never reads these columns."""
    df = clean_runs(runs)
    out = {}
    for name in YARDSTICKS:
        price = _num(df[name])
        p = np.where(np.isfinite(price) & (price > 1.0), 1.0 / price, np.nan)
        if np.isfinite(p).any():
            out[name] = p
    return out


def _clean(df: pd.DataFrame) -> pd.DataFrame:
    """Known results only; `won` from the place where missing; sorted by dog, date, race."""
    won = df["won"].copy()
    from_place = df["finish_pos"].notna() & won.isna()
    won[from_place] = df.loc[from_place, "finish_pos"] == 1
    df = df.assign(won=won)[won.notna()]
    df = df.assign(dog_id=df["dog_id"].astype(str), race_id=df["race_id"].astype(str))
    return df.sort_values(["dog_id", "race_date", "race_id"], kind="stable").reset_index(drop=True)


def _gap_in_data(race_date: pd.Series) -> np.ndarray:
    """(obs,) bool: a calendar month strictly between this row and the row before it has no race at all.

    Rows are by dog and date, so 'the row before' is the dog's previous run (the first row of a dog is
    ignored by the caller). Only months before the race's own month count: leak-free.
    """
    month = race_date.to_numpy("datetime64[M]").astype(np.int64)
    if not len(month):
        return np.zeros(0, dtype=bool)
    lo = int(month.min())
    covered = np.zeros(int(month.max()) - lo + 1, dtype=bool)
    covered[month - lo] = True
    empty_before = np.r_[0, np.cumsum(~covered)]  # empty months strictly before index i
    prev = np.r_[month[0], month[:-1]]
    return (empty_before[month - lo] - empty_before[np.minimum(prev, month) - lo + 1].clip(min=0)) > 0


def _num(s: pd.Series) -> np.ndarray:
    return s.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _values(
    df: pd.DataFrame, race: np.ndarray, dog_first: np.ndarray, log_days: np.ndarray, market: np.ndarray,
    grades: pd.DataFrame,
) -> np.ndarray:
    """(obs, len(FEATURE_NAMES)) float32; NaN where an input is missing."""
    time_z = _reference_z(df, "run_time_s")
    sect_z = _reference_z(df, "sectional_s")
    margin = np.log1p(np.clip(_num(df["margin_lengths"]), 0.0, 50.0))
    place = np.log(np.clip(_num(df["finish_pos"]), 1.0, None))
    box = _num(df["box"])
    dist_km = _num(df["distance_m"]) / 1000.0
    grade = grades["level"].to_numpy(np.float64)
    placed = _placed(df, race)
    weight = _num(df["weight_kg"])
    weight_change = np.where(dog_first, np.nan, np.diff(weight, prepend=np.nan))
    cols = {
        "time_z": time_z, "sectional_z": sect_z, "margin_log": margin, "log_place": place,
        "won": df["won"].to_numpy(dtype=np.float64), "box": box, "distance_km": dist_km,
        "grade_level": grade, "placed": placed, "weight_change_kg": np.clip(weight_change, -5.0, 5.0),
        "log_days_since": log_days, "implied_prob": _own_implied(df, race),
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


def _placed(df: pd.DataFrame, race: np.ndarray) -> np.ndarray:
    """(obs,) 1 if the dog finished in the places (first 2 of fields under 8, first 3 else), 0 if not; NaN unknown."""
    pos = _num(df["finish_pos"])
    field = _num(df["field_size"])
    field = np.where(np.isfinite(field), field, np.bincount(race)[race])
    places = np.where(field < 8, 2.0, 3.0)
    out = np.where(np.isfinite(pos), (pos <= places).astype(np.float64), np.nan)
    if "placed" in df.columns:  # the source's own flag (Iggy's PLACE_RESULT: placed, place unknown) wins
        given = df["placed"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        out = np.where(np.isfinite(given), given, out)
    return out


def _context(
    df: pd.DataFrame, race: np.ndarray, dog_first: np.ndarray, log_days: np.ndarray, market: np.ndarray,
    grades: pd.DataFrame,
) -> np.ndarray:
    """(obs, len(CONTEXT_NAMES)) float32; NaN where an input is missing."""
    box = _num(df["box"])
    dist_km = _num(df["distance_m"]) / 1000.0
    field = np.bincount(race)[race].astype(np.float64)
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


def _market_prob(df: pd.DataFrame, race: np.ndarray) -> np.ndarray:
    """(obs,) implied win probability renormalised within the race; NaN if any runner lacks a price."""
    return renormalise(1.0 / _price(df), race)


def _own_implied(df: pd.DataFrame, race: np.ndarray) -> np.ndarray:
    """(obs,) the dog's own implied probability, renormalised over the priced runners of its race."""
    p = 1.0 / _price(df)
    ok = np.isfinite(p)
    tot = np.bincount(race, weights=np.where(ok, p, 0.0))
    return np.where(ok, p / np.where(tot > 0, tot, np.nan)[race], np.nan)


def _reference_z(df: pd.DataFrame, col: str) -> np.ndarray:
    """(obs,) time in std units against earlier dates at the same track and distance; NaN if unknown.

    Per (track, distance, date): count, sum and sum of squares; cumulated over dates and shifted
    by one date, so a race's reference uses strictly earlier days only.
    """
    x = _num(df[col])
    dist = _num(df["distance_m"])
    ok = np.isfinite(x) & np.isfinite(dist)
    if not ok.any():
        return np.full(len(df), np.nan)
    key = pd.DataFrame({
        "track": df["track"].astype(str).to_numpy(), "dist": np.nan_to_num(dist, nan=-1.0),
        "date": df["race_date"].to_numpy("datetime64[D]"),
        "n": ok.astype(np.float64), "s": np.where(ok, x, 0.0), "ss": np.where(ok, x * x, 0.0),
    })
    day = key.groupby(["track", "dist", "date"], sort=True)[["n", "s", "ss"]].sum()
    before = day.groupby(level=["track", "dist"], sort=False).cumsum() - day  # strictly earlier dates
    ref = before.reindex(pd.MultiIndex.from_frame(key[["track", "dist", "date"]])).to_numpy()
    n, s, ss = ref[:, 0], ref[:, 1], ref[:, 2]
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
