"""Simulated thedogs.com.au form guides, from the runs of `gruviz_core.synth.simulate`.

A form guide is one CSV per upcoming race: every runner's last starts, newest first, with the
dog's name (`3. ZIPPING ROSIE`, rug number first) only on its first row, in thedogs' layout:

    Dog Name,Sex,PLC,BOX,WGT,DIST,DATE,TRACK,G,TIME,WIN,BON,1 SEC,MGN,W/2G,PIR,SP

The same past start appears in the guide of every later race of the dog, so a season of guides
repeats most runs several times (the ingest merges them). Pure: tables in, texts out; writing
them to files is the caller's job (bench/ingest.py, tests).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gruviz_core.errors import ConfigError

__all__ = ["HEADER", "FormGuides", "form_guides"]

HEADER = "Dog Name,Sex,PLC,BOX,WGT,DIST,DATE,TRACK,G,TIME,WIN,BON,1 SEC,MGN,W/2G,PIR,SP"
"""thedogs.com.au form-guide columns."""


@dataclass(frozen=True)
class FormGuides:
    """Form-guide CSV texts and the runs they list."""

    files: dict[str, str]
    """File name (`<date>_<track>_<race>.csv`) -> CSV text, header first; one per upcoming race."""
    listed: pd.DataFrame
    """The canonical runs written into the guides, each once (a row per distinct (dog, race))."""
    rows: int
    """Data rows over all files (a start listed in several guides counts each time)."""


def form_guides(runs: pd.DataFrame, n_guides: int, seed: int, *, starts: int = 5) -> FormGuides:
    """Form guides of `n_guides` races of `runs` (canonical, as simulate gives), each runner's last `starts` starts.

    Races are drawn (seeded) among those with a runner that has raced before; a debutant has no rows.
    """
    if n_guides < 1 or starts < 1:
        raise ConfigError(f"form_guides: n_guides and starts must be >= 1, got {n_guides} and {starts}")
    rng = np.random.default_rng(seed)
    r = runs.sort_values(["dog_id", "race_date", "race_id"], kind="stable").reset_index(drop=True)
    dog = r["dog_id"].to_numpy(dtype=object)
    first = np.r_[True, dog[1:] != dog[:-1]]
    k = np.arange(len(r)) - np.maximum.accumulate(np.where(first, np.arange(len(r)), 0))  # start number
    race = r["race_id"].to_numpy(dtype=object)
    candidates = pd.unique(race[k >= 1])
    if len(candidates) < n_guides:
        raise ConfigError(f"form_guides: only {len(candidates)} races have a runner with past starts; "
                          f"asked for {n_guides} guides (simulate more dogs)")
    chosen = rng.choice(len(candidates), n_guides, replace=False)
    guide_of = pd.Series(np.arange(n_guides), index=candidates[np.sort(chosen)])
    runner = np.flatnonzero(pd.Series(race).isin(guide_of.index).to_numpy())
    depth = np.minimum(k[runner], starts)
    rep = np.repeat(runner, depth)
    j = np.arange(len(rep)) - np.repeat(np.cumsum(depth) - depth, depth) + 1  # 1 = the latest start
    hist = rep - j
    rows = pd.DataFrame({
        "guide": guide_of.reindex(race[rep]).to_numpy(),
        "rug": r["box"].to_numpy()[rep].astype(int),
        "j": j,
        "hist": hist,
    }).sort_values(["guide", "rug", "j"], kind="stable")
    lines = _lines(r, rows, rng)
    return FormGuides(files=_files(r, rows, lines, guide_of), listed=r.iloc[np.unique(rows["hist"])]
                      .reset_index(drop=True), rows=len(rows))


def _lines(r: pd.DataFrame, rows: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """(rows,) CSV lines in the form-guide layout."""
    h = rows["hist"].to_numpy()
    dog_codes, dog_index = np.unique(r["dog_id"].to_numpy(dtype=object), return_inverse=True)
    shout = rng.random(len(dog_codes)) < 0.5  # some guides spell names in capitals
    sex = np.where(rng.random(len(dog_codes)) < 0.5, "D", "B")
    name = r["dog_name"].to_numpy(dtype=object)
    d = dog_index[h]
    shown = np.where(shout[d], pd.Series(name[h]).str.upper().to_numpy(dtype=object), name[h])
    head = rows["j"].to_numpy() == 1
    order = r.sort_values(["race_id", "finish_pos"], kind="stable")
    by_race = order.groupby("race_id", sort=False)["dog_name"]
    first_name, second_name = by_race.nth(0), by_race.nth(1)
    winner = r["race_id"].map(pd.Series(first_name.to_numpy(), index=order.loc[first_name.index, "race_id"]))
    second = r["race_id"].map(pd.Series(second_name.to_numpy(), index=order.loc[second_name.index, "race_id"]))
    won = (r["finish_pos"] == 1).to_numpy(dtype=bool)
    w2g = np.where(won, second.fillna("").to_numpy(dtype=object), winner.fillna("").to_numpy(dtype=object))
    # best of the night: the fastest winning time at the meeting over the same distance
    meeting = r["race_date"].dt.strftime("%Y%m%d") + r["track"].astype(str) + r["distance_m"].astype(str)
    best = r["win_time_s"].astype(float).groupby(meeting).transform("min")
    fav = r["sp_decimal"].astype(float) == r["sp_decimal"].astype(float).groupby(r["race_id"]).transform("min")
    margin_second = r["race_id"].map(
        r.loc[r["finish_pos"] == 2].drop_duplicates("race_id").set_index("race_id")["margin_lengths"].astype(float))
    margin = np.where(won, margin_second.to_numpy(dtype=float, na_value=np.nan),
                      r["margin_lengths"].to_numpy(dtype=float, na_value=np.nan))
    place = r["finish_pos"].to_numpy(dtype=float, na_value=np.nan)
    box = r["box"].to_numpy(dtype=float, na_value=np.nan)
    cols = [
        np.where(head, rows["rug"].astype(str).to_numpy(dtype=object) + ". " + shown, ""),
        np.where(head, sex[d], ""),
        _fmt(place, "{:.0f}")[h],
        _fmt(box, "{:.0f}")[h],
        _fmt(r["weight_kg"], "{:.1f}")[h],
        _fmt(r["distance_m"], "{:.0f}")[h],
        r["race_date"].dt.strftime("%d/%m/%Y").to_numpy(dtype=object)[h],
        r["track"].astype(str).to_numpy(dtype=object)[h],
        r["grade"].fillna("").astype(str).to_numpy(dtype=object)[h],
        _fmt(r["run_time_s"], "{:.2f}")[h],
        _fmt(r["win_time_s"], "{:.2f}")[h],
        _fmt(best, "{:.2f}")[h],
        _fmt(r["sectional_s"], "{:.2f}")[h],
        _fmt(margin, "{:.2f}")[h],
        w2g[h],
        _fmt(np.clip(box, 1, 8) * 10 + np.clip(place, 1, 8), "{:.0f}")[h],
        np.where(fav.to_numpy(dtype=bool), _fmt(r["sp_decimal"], "${:.2f}") + "F",
                 _fmt(r["sp_decimal"], "${:.2f}"))[h],
    ]
    out = cols[0].astype(object)
    for c in cols[1:]:
        out = out + "," + c.astype(object)
    return out


def _fmt(x, spec: str) -> np.ndarray:
    """(n,) object strings; '' where missing."""
    v = pd.Series(np.asarray(pd.Series(x).astype("Float64").to_numpy(dtype=float, na_value=np.nan)))
    uniq, inv = np.unique(v.fillna(np.inf).to_numpy(), return_inverse=True)
    text = np.array(["" if not np.isfinite(u) else spec.format(u) for u in uniq], dtype=object)
    return text[inv]


def _files(r: pd.DataFrame, rows: pd.DataFrame, lines: np.ndarray, guide_of: pd.Series) -> dict[str, str]:
    """One CSV text per guide: the header, then its rows (already in guide, rug, newest-first order)."""
    g = rows["guide"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    by_race = r.drop_duplicates("race_id").set_index("race_id")
    names = {}
    for a, b in itertools.pairwise(bounds):
        race_id = guide_of.index[g[a]]
        row = by_race.loc[race_id]
        slug = str(row["track"]).lower().replace(" ", "-")
        name = f"{row['race_date']:%Y-%m-%d}_{slug}_{str(race_id).split(':')[-1]}.csv"
        names[name] = HEADER + "\n" + "\n".join(lines[a:b]) + "\n"
    return names
