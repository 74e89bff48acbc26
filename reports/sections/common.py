"""Small pure helpers shared by the section builders: rounding to lists, cohort order and colours, bands."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from gruviz_core.results import StatsSummary
from reports.model import COHORT_COLOURS, COHORT_ORDER, MIN_BAND_DOGS, Band, sig
from reports.prose import MISSING

__all__ = ["sigs", "ints", "missing", "cohorts_in", "colour", "by_layer", "bands", "nonempty", "per_dog"]


def sigs(values: Iterable[Any], digits: int = 4) -> list[float | None]:
    """Each value rounded by `sig`."""
    return [sig(v, digits) for v in values]


def ints(values: Iterable[Any]) -> list[int]:
    """Each value as a Python int."""
    return [int(v) for v in values]


def missing(rel: str) -> str:
    """The note of a panel whose input the run lacks."""
    return MISSING.format(rel=rel)


def nonempty(df: pd.DataFrame | None) -> bool:
    """The table exists and has rows (its columns are guaranteed by gruviz_core.tables)."""
    return df is not None and len(df) > 0


def cohorts_in(values: Iterable[str]) -> list[str]:
    """The cohorts present, known ones in display order first, then others sorted."""
    present = set(values)
    known = [c for c in COHORT_ORDER if c in present]
    return known + sorted(present - set(known))


def colour(cohort: str) -> str:
    """A cohort's colour."""
    return COHORT_COLOURS.get(cohort, "#374151")


def by_layer(df: pd.DataFrame | None, layer: int) -> pd.DataFrame | None:
    """The rows of one layer."""
    return None if df is None else df[df["layer"] == layer]


def bands(step: pd.DataFrame, q: str, cohorts: Sequence[str]) -> list[Band]:
    """Cohort bands of quantity q ('s' or 'f095') from stats/step.parquet, where enough dogs reach a step."""
    out = []
    for c in cohorts:
        sub = step[(step["cohort"] == c) & (step["n"] >= MIN_BAND_DOGS)].sort_values("step")
        if not len(sub):
            continue
        out.append(
            Band(
                name=c,
                color=colour(c),
                x=ints(sub["step"]),
                lo=sigs(sub[f"{q}_q25"]),
                mid=sigs(sub[f"{q}_q50"]),
                hi=sigs(sub[f"{q}_q75"]),
                n=ints(sub["n"]),
            )
        )
    return out


def per_dog(dog: pd.DataFrame | None, summary: StatsSummary | None) -> tuple[pd.DataFrame | None, int]:
    """One row per dog at the layer whose cohorts count (stats marks it `cohort_layer`), and that layer."""
    if dog is None or not len(dog):
        return dog, 0
    if dog["cohort_layer"].astype(bool).any():
        layer = int(dog.loc[dog["cohort_layer"].astype(bool), "layer"].iloc[0])
    elif summary is not None:
        layer = summary.cohort_layer
    else:
        layer = int(dog["layer"].max())
    return dog[dog["layer"] == layer].reset_index(drop=True), layer
