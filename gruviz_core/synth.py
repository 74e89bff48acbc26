"""A race simulator: realistic canonical runs for the demo, tests and benchmarks.

Dogs have a latent ability that rises early in a career, drifts as a random walk and fades late;
tracks have their own speeds, distances and box biases; a meeting's dogs are graded into fields
of 6-8 of similar ability; a run's performance is ability + box bias + early speed + noise, from
which come times, places, margins and sectionals; the market prices dogs from a noisy view of
ability. Everything is vectorised over runs (no per-race Python loop) and seeded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gruviz_core.errors import ConfigError
from gruviz_core.schema import conform

__all__ = ["simulate", "dog_names"]

_PREFIXES = (
    "Sebon Shima Zipping Fanta Aston Bekim Wow Mepunga Hara Orson Tiggerlong Slippery Fernando Barcia "
    "Jarvis Nangar Lektra Pearlite Cosmic Blazing Swift Lochinvar Dyna Kooringa Bella Maximum Ollie Rapid "
    "Magic Star Black Silver Golden Wild Lucky Big Little Miss Mister Ronnie Allen Zambora Tornado Bold "
    "Keybow Bogie Jimmy Sky Storm Royal Flying Burning Iron Neon Midnight Spring Desert Ocean River"
).split()
_WORDS = (
    "Rocket Lyric Sparkle Jasper Comet Theory Bear Amber Ethan Rocks Gill Diva Fury Knight Fright Special "
    "Code Benji Tilley Envy Royale Legend Lee Mack Yogi Show Bus Tree Dancer Warrior Gaze Flash Pink Man "
    "Fun Gundi Dash Lina Hurricane Assent Threat Cost Emptiness Amber Snappy Boy Girl Queen King Prince "
    "Princess Bullet Arrow Blaze Bolt Charm Chase Dream Echo Flame Ghost Halo Jet Jewel Kiss Lady Magic "
    "Meteor Nova Opal Pepper Quest Rebel Ruby Sable Shadow Spirit Storm Thunder Tiger Viper Whisper Wish "
    "Zephyr Bandit Blue Cash Dancer Diamond Dusty Eagle Falcon Fox Gem Hero Ice Jazz Joker Luna Maverick "
    "Mystic Ninja Nugget Onyx Pirate Raven Rio Rogue Saint Scout Spark Sunny Titan Turbo Velvet Wolf"
).split()
_WORDS = tuple(w for w in dict.fromkeys(_WORDS) if w not in _PREFIXES)
_MIDDLES = (
    "Brave Quick Sweet Lady Sir Dusty Shady Rusty Happy Crazy Mighty Fancy Hidden Proud Sneaky Rolling "
    "Roaring Dancing Smokin Classy Cheeky Sassy Grand Dashing Silent Secret Daring Savvy Jolly Noble"
).replace("Dusty ", "Fiery ").replace("Lady ", "Plucky ").split()
_SUFFIXES = "Express Flyer Lad Lass Kid Belle Rose Jack Bale Runner Jnr Magnet Boss Ace Rider Chaser Dasher".split()
_TRACKS = (
    "Albion Park, Angle Park, Ballarat, Bendigo, Bulli, Cannington, Capalaba, Casino, Dapto, Dubbo, "
    "Gawler, Geelong, Goulburn, Gosford, Grafton, Healesville, Hobart, Horsham, Ipswich, Launceston, "
    "Maitland, Mandurah, Mount Gambier, Murray Bridge, Nowra, Richmond, Rockhampton, Sale, Sandown Park, "
    "Shepparton, Temora, The Gardens, The Meadows, Townsville, Traralgon, Wagga, Warragul, Warrnambool, "
    "Wentworth Park, Addington"
).split(", ")
_DISTANCES = np.array([300, 342, 380, 395, 400, 425, 450, 457, 460, 515, 520, 530, 595, 600, 715])
_BOX_BIAS = np.array([0.25, 0.08, 0.0, -0.05, -0.08, -0.05, 0.0, 0.12, -0.1, -0.15])  # boxes 1..10
_GRADES = np.array(["Gr7", "Gr6", "Gr5", "Gr4", "Gr3", "FFA"])
_LENGTH_S = 0.07
"""One length at greyhound speed, in seconds."""


def dog_names(n: int, rng: np.random.Generator) -> np.ndarray:
    """n unique, realistic-ish names ("Sebon Rocket", "Zipping Brave Comet"). (n,) object."""
    p, w, m = len(_PREFIXES), len(_WORDS), len(_MIDDLES)
    short = p * w * (m + 1)  # "Prefix [Middle] Word"
    space = short * (len(_SUFFIXES) + 1)  # ... [Suffix], only when many names are needed
    if n > space // 2:
        raise ConfigError(f"simulate: at most {space // 2} unique dog names; asked for {n} dogs")
    idx = rng.choice(short if n <= short // 2 else space, size=n, replace=False)
    si, rest = np.divmod(idx, short)
    pi, rest = np.divmod(rest, w * (m + 1))
    wi, vi = np.divmod(rest, m + 1)
    pre, word = np.array(_PREFIXES, dtype=object), np.array(_WORDS, dtype=object)
    mid = np.where(vi == 0, "", np.array(("",) + tuple(_MIDDLES), dtype=object)[vi] + " ")
    suffix = np.where(si == 0, "", " " + np.array(("",) + tuple(_SUFFIXES), dtype=object)[si])
    return pre[pi] + " " + mid + word[wi] + suffix


SEASON_DAYS = 1095
"""With an `end` night, racing starts this many days before it and dogs debut throughout."""


def simulate(n_dogs: int, seed: int, *, start: str | None = None, end: str | None = None) -> pd.DataFrame:
    """Canonical runs of `n_dogs` simulated dogs (source "synth"), deterministic for a seed.

    With `end` (the night simulated), racing ends on that day: races after it have not happened yet
    (careers still under way are cut there) and, unless `start` is given, racing starts SEASON_DAYS
    before it. Without `end`, racing starts on `start` (default 2023-01-01) and careers run out.
    """
    if n_dogs < 1:
        raise ConfigError(f"simulate: n_dogs must be >= 1, got {n_dogs}")
    rng = np.random.default_rng(seed)
    dogs = _dogs(n_dogs, rng, SEASON_DAYS if end is not None else 730)  # with a night, dogs debut all season
    slots = _slots(dogs, rng)
    races = _fields(slots, rng)
    runs = _race(races, dogs, rng)
    if end is None:
        return _table(runs, dogs, pd.Timestamp(start or "2023-01-01"))
    last = pd.Timestamp(end)
    table = _table(runs, dogs, pd.Timestamp(start) if start else last - pd.Timedelta(days=SEASON_DAYS))
    return table[pd.to_datetime(table["race_date"]) <= last].reset_index(drop=True)


# ---------------------------------------------------------------- stages


def _dogs(n: int, rng: np.random.Generator, debut_days: int = 730) -> dict[str, np.ndarray]:
    """Per dog: career length, base ability, early speed, weight, home track, first day."""
    n_tracks = int(np.clip(round(n / 500), 2, len(_TRACKS)))  # about 500 dogs a track, as in Australia
    home_p = 1.0 / np.arange(1, n_tracks + 1) ** 0.6
    career = np.clip(np.round(np.exp(rng.normal(np.log(12.0), 1.0, n))), 1, 150).astype(np.int64)
    base = rng.normal(0.0, 1.0, n)
    return {
        "career": career,
        "base": base,
        "early": 0.5 * base + rng.normal(0.0, 0.85, n),
        "weight": np.clip(rng.normal(31.0, 3.0, n), 24.0, 40.0),
        "home": rng.choice(n_tracks, size=n, p=home_p / home_p.sum()),
        "first_day": rng.integers(0, debut_days, n),
        "gap_scale": rng.uniform(2.0, 5.0, n),
        "n_tracks": np.array(n_tracks),
        "name": dog_names(n, rng),
    }


def _slots(d: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every (dog, k-th start): day, track, current ability. (runs,) arrays."""
    career = d["career"]
    n_runs = int(career.sum())
    dog = np.repeat(np.arange(len(career)), career)
    starts = np.concatenate([[0], np.cumsum(career)[:-1]])
    k = np.arange(n_runs) - starts[dog]  # 0-based start number within the career
    gaps = np.where(k == 0, 0.0, 4.0 + rng.gamma(2.0, d["gap_scale"][dog]))
    day = d["first_day"][dog] + _cumsum_within(gaps, starts, dog)
    walk = _cumsum_within(rng.normal(0.0, 0.08, n_runs), starts, dog)
    ability = d["base"][dog] + 0.5 * (1 - np.exp(-k / 6.0)) - 0.012 * np.maximum(k - 60, 0) + walk
    away = rng.random(n_runs) < 0.2
    track = np.where(away, rng.integers(0, int(d["n_tracks"]), n_runs), d["home"][dog])
    return {"dog": dog, "k": k, "day": np.floor(day).astype(np.int64), "track": track, "ability": ability,
            "grading": ability + rng.normal(0.0, 0.4, n_runs)}


def _fields(s: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Grade each meeting's dogs into fields of 6-8: sort by (day, track, grading), cut in runs of 6-8."""
    order = np.lexsort((s["grading"], s["track"], s["day"]))
    s = {key: v[order] for key, v in s.items()}
    n = len(order)
    sizes = rng.integers(6, 9, size=n // 6 + 2)
    cuts = np.cumsum(sizes)
    race = np.searchsorted(cuts, np.arange(n), side="right")
    # a dog twice in one field (only when dogs are few): it keeps the first start
    first = np.unique(race * (len(s["dog"]) + 1) + s["dog"], return_index=True)[1]
    keep = np.zeros(n, bool)
    keep[first] = True
    s = {key: v[keep] for key, v in s.items()}
    _, race = np.unique(race[keep], return_inverse=True)  # dense race index, still sorted
    s["race"] = race
    return s


def _race(s: dict[str, np.ndarray], d: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Boxes, performances, times, places, margins, sectionals, weights and prices of every run."""
    race = s["race"]
    n, n_races = len(race), int(race[-1]) + 1 if len(race) else 0
    bounds = np.flatnonzero(np.r_[True, race[1:] != race[:-1]])  # first row of each race
    field = np.diff(np.r_[bounds, n])
    # a race takes the day and track of its first runner in (day, track, grading) order
    r_day, r_track = s["day"][bounds], s["track"][bounds]
    n_tracks = int(d["n_tracks"])
    t_rng = np.random.default_rng(int(rng.integers(2**32)))
    track_dists = np.sort(np.stack([t_rng.choice(_DISTANCES, 3, replace=False) for _ in range(n_tracks)]), axis=1)
    track_speed = t_rng.normal(16.6, 0.35, n_tracks)  # m/s
    track_bias = _BOX_BIAS[None, :] + t_rng.normal(0.0, 0.06, (n_tracks, 10))
    r_dist = track_dists[r_track, rng.choice(3, n_races, p=[0.45, 0.4, 0.15])]
    # boxes: a random order within the field
    box = _rank_within(race, rng.random(n), bounds) + 1
    track, dist = r_track[race], r_dist[race]
    dog = s["dog"]
    early = d["early"][dog]
    short = np.clip((520 - dist) / 220.0, 0.0, 1.0)  # early speed matters more over short trips
    perf = s["ability"] + track_bias[track, box - 1] + 0.35 * early * short + rng.normal(0.0, 1.0, n)
    base_time = dist / (track_speed[track] * (1 - 0.00008 * (dist - 400)))
    exact = base_time * (1 - 0.008 * perf) + rng.normal(0.0, 0.01, n)
    place = _rank_within(race, exact, bounds) + 1
    win_exact = np.minimum.reduceat(exact, bounds)[race]
    sectional = (5.3 * track_speed.mean() / track_speed[track]) * (1 - 0.012 * (early + rng.normal(0, 0.7, n)))
    est_sp = s["ability"] + track_bias[track, box - 1] + rng.normal(0.0, 0.6, n)
    est_bsp = s["ability"] + track_bias[track, box - 1] + rng.normal(0.0, 0.45, n)
    p_sp = _softmax_within(1.3 * est_sp, bounds, race)
    p_bsp = _softmax_within(1.3 * est_bsp, bounds, race)
    r_grade = _grades(s, race, bounds)
    return {
        "dog": dog,
        "race": race,
        "day": r_day[race],
        "track": track,
        "dist": dist,
        "grade": r_grade[race],
        "box": box,
        "field": field[race],
        "place": place,
        "run_time": np.round(exact, 2),
        "win_time": np.round(win_exact, 2),
        "sectional": np.round(sectional, 2),
        "margin": np.round((exact - win_exact) / _LENGTH_S * 4) / 4,
        "weight": np.round(d["weight"][dog] + rng.normal(0.0, 0.3, n), 1),
        # bookmakers' SP carries a 20% overround, Betfair's about 1%; both markets stop at 1000
        "sp": np.clip(np.round(1.0 / (p_sp * 1.2), 1), 1.1, 501.0),
        "bsp": np.clip(np.round(1.0 / (p_bsp * 1.01), 2), 1.01, 1000.0),
    }


def _grades(s: dict[str, np.ndarray], race: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Maiden when the field is mostly debutants, else by the field's mean grading key."""
    counts = np.diff(np.r_[bounds, len(race)])
    mean_key = np.add.reduceat(s["grading"], bounds) / counts
    debut = np.add.reduceat((s["k"] < 2).astype(float), bounds) / counts
    q = np.quantile(mean_key, [0.15, 0.4, 0.7, 0.88, 0.97]) if len(mean_key) else np.zeros(5)
    grade = _GRADES[np.searchsorted(q, mean_key)]
    return np.where(debut > 0.5, "Mdn", grade)


def _table(r: dict[str, np.ndarray], d: dict[str, np.ndarray], start: pd.Timestamp) -> pd.DataFrame:
    n_dogs = len(d["career"])
    dog_ids = np.array([f"syn:{i:07d}" for i in range(n_dogs)], dtype=object)
    race_ids = np.char.add("syn:r", np.char.zfill(np.arange(int(r["race"].max()) + 1 if len(r["race"]) else 0).astype(str), 8))
    df = pd.DataFrame(
        {
            "dog_id": dog_ids[r["dog"]],
            "dog_name": d["name"][r["dog"]],
            "race_id": race_ids[r["race"]],
            "race_date": start + pd.to_timedelta(r["day"], unit="D"),
            "track": np.array(_TRACKS, dtype=object)[r["track"]],
            "distance_m": r["dist"],
            "grade": r["grade"],
            "box": r["box"],
            "field_size": r["field"],
            "finish_pos": r["place"],
            "won": r["place"] == 1,
            "run_time_s": r["run_time"],
            "win_time_s": r["win_time"],
            "sectional_s": r["sectional"],
            "margin_lengths": r["margin"],
            "weight_kg": r["weight"],
            "sp_decimal": r["sp"],
            "bsp_decimal": r["bsp"],
            "source": "synth",
        }
    )
    df = df.sort_values(["race_date", "race_id", "box"], kind="stable")
    return conform(df, where="synth")


# ---------------------------------------------------------------- helpers on contiguous groups


def _cumsum_within(x: np.ndarray, starts: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each group (groups contiguous, `starts` their first rows)."""
    c = np.cumsum(x)
    before = np.r_[0.0, c][starts]  # sum of everything before each group
    return c - before[group]


def _rank_within(group: np.ndarray, key: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """0-based rank of `key` within each contiguous group."""
    order = np.lexsort((key, group))
    pos = np.empty(len(key), np.int64)
    pos[order] = np.arange(len(key)) - np.repeat(bounds, np.diff(np.r_[bounds, len(key)]))
    return pos


def _softmax_within(z: np.ndarray, bounds: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Softmax of z within each contiguous group."""
    e = np.exp(z - np.maximum.reduceat(z, bounds)[group])
    return e / np.add.reduceat(e, bounds)[group]
