"""The canonical runs table: one row per (dog, race), whatever the source format."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from gruviz_core.errors import MissingColumnError

__all__ = [
    "CANONICAL", "CANONICAL_COLUMNS", "REQUIRED", "YARDSTICKS", "Column", "conform", "empty_runs", "placed_from_place",
]


@dataclass(frozen=True)
class Column:
    """One column of the canonical runs table."""

    name: str
    """Column name, units in the name."""
    dtype: str
    """pandas dtype (nullable extension types, so missing stays missing)."""
    required: bool
    """A row without it is rejected."""
    doc: str
    """What it holds."""


CANONICAL: tuple[Column, ...] = (
    Column("dog_id", "string", True, "stable dog key: source id if any, else normalised name"),
    Column("dog_name", "string", True, "display name, title case as the source spells it"),
    Column("race_id", "string", True, "race key, unique across sources (source-prefixed)"),
    Column("race_date", "datetime64[ns]", True, "local date of the race (midnight)"),
    Column("track", "string", True, "track name, title case"),
    Column("distance_m", "Int32", False, "race distance in metres"),
    Column("grade", "string", False, "grade or class as the source writes it"),
    Column("box", "Int8", False, "box / trap / rug number (9 and 10 are reserves)"),
    Column("field_size", "Int8", False, "runners that started in the race"),
    Column("finish_pos", "Int8", False, "finishing place, 1 = won; missing for non-finishers"),
    Column("won", "boolean", False, "won the race; missing when the result is unknown (scratched, void)"),
    Column("placed", "boolean", False,
           "finished in the paid places of the race's place market (Iggy PLACE_RESULT); a table without the column "
           "gets it from finish_pos and field_size (2 places up to 7 runners, 3 from 8); missing where unknown"),
    Column("run_time_s", "Float64", False, "the dog's run time in seconds"),
    Column("win_time_s", "Float64", False, "the winner's run time in seconds"),
    Column("sectional_s", "Float64", False, "first sectional time in seconds"),
    Column("margin_lengths", "Float64", False, "lengths behind the winner (0 for the winner)"),
    Column("weight_kg", "Float64", False, "the dog's weight in kilograms"),
    Column("sp_decimal", "Float64", False, "starting price, decimal odds"),
    Column("bsp_decimal", "Float64", False, "Betfair starting price, decimal odds"),
    Column("rated_price", "Float64", False,
           "the source's own rated (fair) price before the race, decimal odds (Iggy `Rated Price`): a yardstick "
           "to compare models with, never a model input; missing where the source has none"),
    Column("source", "string", True, "adapter that produced the row (canonical, iggy, thedogs, gbgb, synth)"),
)

CANONICAL_COLUMNS: tuple[str, ...] = tuple(c.name for c in CANONICAL)
YARDSTICKS: tuple[str, ...] = ("rated_price",)
"""Columns kept only to compare models with (another forecaster's prices): never read into features."""
REQUIRED: tuple[str, ...] = tuple(c.name for c in CANONICAL if c.required)
_DTYPES = {c.name: c.dtype for c in CANONICAL}


def empty_runs() -> pd.DataFrame:
    """An empty canonical runs table with the right dtypes."""
    return pd.DataFrame({c.name: pd.Series(dtype=c.dtype) for c in CANONICAL})


def conform(df: pd.DataFrame, *, where: str = "table") -> pd.DataFrame:
    """Columns in canonical order and dtypes; raises MissingColumnError naming `where`.

    A table without `placed` (older snapshots, the simulator) gets it from finish_pos and field_size.
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise MissingColumnError(
            f"{where}: missing required column(s) {', '.join(missing)}; "
            f"a canonical runs table needs {', '.join(REQUIRED)}"
        )
    out = pd.DataFrame(index=df.index)
    for name, dtype in _DTYPES.items():
        col = df[name] if name in df.columns else pd.Series(pd.NA, index=df.index)
        out[name] = col.astype(dtype)
    if "placed" not in df.columns:
        out["placed"] = placed_from_place(out["finish_pos"], out["field_size"])
    return out.reset_index(drop=True)


def placed_from_place(finish_pos: pd.Series, field_size: pd.Series) -> pd.Series:
    """(rows,) boolean: finished within the paid places (2 up to 7 runners, 3 from 8); <NA> if either is unknown."""
    pos, field = finish_pos.astype("Float64"), field_size.astype("Float64")
    places = (field >= 8).astype("Float64") + 2
    return (pos <= places).astype("boolean").where(pos.notna() & field.notna(), pd.NA).astype("boolean")
