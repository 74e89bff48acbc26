"""Leak-free sequences from a canonical runs table, and the normaliser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gruviz_core.errors import FeatureMismatchError
from gruviz_core.features import (
    CATEGORICAL,
    CONTEXT_NAMES,
    FEATURE_NAMES,
    TRACK_INDEX,
    TRACKS,
    Normaliser,
    build_sequences,
    clean_runs,
    fit_normaliser,
    grade_number,
    home_group,
    interaction_columns,
    track_column,
    track_embedding_columns,
    track_index,
)
from gruviz_core.formats import adapt
from gruviz_core.grades import GRADE_KINDS
from gruviz_core.schema import CANONICAL_COLUMNS, YARDSTICKS, conform


def toy_runs(n_dogs: int = 60, n_races: int = 200, seed: int = 0, *, tracks: int = 3) -> pd.DataFrame:
    """A canonical table with a learnable signal: latent ability decides wins, times and prices."""
    rng = np.random.default_rng(seed)
    ability = rng.normal(0.0, 1.0, n_dogs)
    home = rng.integers(0, tracks, n_dogs)
    rows = []
    for r in range(n_races):
        track = r % tracks
        pool = np.flatnonzero(home == track)
        field = rng.choice(pool, size=min(len(pool), int(rng.integers(6, 9))), replace=False)
        perf = 1.5 * ability[field] + rng.gumbel(size=len(field))
        order = np.argsort(-perf)
        place = np.empty(len(field), dtype=int)
        place[order] = np.arange(1, len(field) + 1)
        p = np.exp(1.5 * ability[field] + rng.normal(0, 0.3, len(field)))
        p = p / p.sum() * 1.15
        for i, d in enumerate(field):
            run_time = 30.0 + track - 0.15 * perf[i] + rng.normal(0, 0.05)
            rows.append({
                "dog_id": f"D{d:04d}", "dog_name": f"Dog {d}", "race_id": f"R{r:05d}",
                "race_date": pd.Timestamp("2024-01-01") + pd.Timedelta(days=r // tracks),
                "track": f"Track {track}", "distance_m": 500, "grade": "Gr5", "box": i + 1,
                "field_size": len(field), "finish_pos": place[i], "won": place[i] == 1,
                "run_time_s": run_time, "win_time_s": np.nan, "sectional_s": run_time / 3.0,
                "margin_lengths": (place[i] - 1) * 1.5, "weight_kg": 30.0 + d % 5,
                "sp_decimal": np.nan, "bsp_decimal": max(1.0 / p[i], 1.01), "source": "synth",
            })
    return conform(pd.DataFrame(rows))


def _by_key(seqs) -> pd.DataFrame:
    dog = np.repeat(seqs.dog_id, seqs.row_size)
    cols = {f"v:{n}": seqs.values[:, i] for i, n in enumerate(seqs.feature_names)}
    cols |= {f"c:{n}": seqs.context[:, i] for i, n in enumerate(seqs.context_names)}
    return pd.DataFrame({"dog": dog, "race": seqs.race_id, **cols}).set_index(["dog", "race"]).sort_index()


def test_shapes_names_and_order():
    runs = toy_runs()
    seqs = build_sequences(runs.sample(frac=1.0, random_state=1))
    assert seqs.values.shape == (len(runs), len(FEATURE_NAMES))
    assert seqs.context.shape == (len(runs), len(CONTEXT_NAMES))
    assert seqs.offsets[-1] == len(runs) and seqs.n_dogs == runs["dog_id"].nunique()
    for d in range(seqs.n_dogs):
        dates = seqs.race_date[seqs.dog_rows(d)]
        assert (np.diff(dates.astype(np.int64)) >= 0).all()
    assert set(np.unique(seqs.won)) <= {0.0, 1.0}
    np.testing.assert_allclose(pd.Series(seqs.market_prob).groupby(seqs.race_id).sum(), 1.0, rtol=1e-5)


def test_no_leakage_when_later_races_are_added():
    runs = toy_runs(n_races=240)
    cut = runs["race_date"] < runs["race_date"].quantile(0.6)
    early, full = _by_key(build_sequences(runs[cut])), _by_key(build_sequences(runs))
    pd.testing.assert_frame_equal(early, full.loc[early.index])


def test_reference_uses_earlier_dates_only():
    runs = toy_runs(n_races=120)
    seqs = build_sequences(runs)
    t = seqs.feature_names.index("time_z")
    first_dates = seqs.race_date <= np.sort(np.unique(seqs.race_date))[4]
    # fewer than 5 earlier runs at the first meetings: no reference yet, flagged missing
    assert np.isnan(seqs.values[seqs.race_date == seqs.race_date.min(), t]).all()
    assert np.isfinite(seqs.values[~first_dates, t]).mean() > 0.9
    miss = seqs.values[:, seqs.feature_names.index("time_missing")]
    np.testing.assert_array_equal(miss == 1, np.isnan(seqs.values[:, t]))


def test_missing_inputs_are_flagged_and_unknown_results_dropped():
    runs = toy_runs(n_races=60)
    runs.loc[0:9, "weight_kg"] = pd.NA
    runs.loc[0:3, "bsp_decimal"] = pd.NA
    runs.loc[20, ["won", "finish_pos"]] = pd.NA
    seqs = build_sequences(runs)
    assert seqs.n_obs == len(runs) - 1
    ctx = seqs.context_names
    assert np.isnan(seqs.market_prob).sum() >= 4
    np.testing.assert_array_equal(seqs.context[:, ctx.index("market_missing")] == 1, np.isnan(seqs.market_prob))
    days_missing = seqs.values[:, seqs.feature_names.index("days_missing")]
    assert days_missing[seqs.offsets[:-1]].all() and days_missing.sum() == seqs.n_dogs


def test_grade_numbers():
    assert grade_number("Gr4/5") == 4.5
    assert grade_number("Mdn") == 8.0 and grade_number("Nvce") == 7.0 and grade_number("FFA") == 0.0
    assert grade_number("Grp3") == 0.0 and grade_number("Mdn/Gr6") == 7.0
    assert np.isnan(grade_number("Heat"))


NEW_INPUTS = (
    ["v:placed", "v:placed_missing", "v:grade_level", "v:grade_missing", "v:log_days_since", "v:days_missing",
     "c:grade_level", "c:grade_change", "c:grade_change_missing", "c:log_days_since", "c:days_missing"]
    + [f"c:kind_{k}" for k in GRADE_KINDS] + ["c:track_index"]
    + ["c:form_track_starts", "c:form_track_win_rate", "c:form_dist_starts", "c:form_dist_win_rate"]
)


@pytest.mark.parametrize("column", NEW_INPUTS)
def test_new_inputs_use_only_earlier_rows(column):
    """Changing everything about the later races (result, grade, track, month gaps) changes no earlier row."""
    runs = _varied(toy_runs(n_races=240))
    later = runs["race_date"] >= runs["race_date"].quantile(0.6)
    changed = runs.copy()
    rng = np.random.default_rng(5)
    changed.loc[later, "finish_pos"] = rng.permutation(changed.loc[later, "finish_pos"].to_numpy())
    changed.loc[later, "won"] = changed.loc[later, "finish_pos"] == 1
    changed.loc[later, "grade"] = rng.choice(["Heat", "Gr7", "Mdn", "FFA"], int(later.sum()))
    changed.loc[later, "track"] = "Nowhere Park"
    changed.loc[later, "race_date"] = changed.loc[later, "race_date"] + pd.Timedelta(days=120)  # makes a gap
    a, b = _by_key(build_sequences(runs)), _by_key(build_sequences(changed))
    early = a.index[a.index.get_level_values("race").isin(runs.loc[~later, "race_id"])]
    pd.testing.assert_series_equal(a.loc[early, column], b.loc[early, column])
    assert not a[column].isna().all()


def _varied(runs: pd.DataFrame) -> pd.DataFrame:
    """Grades and tracks that vary, as in real files."""
    grades = np.array(["Gr5", "Gr4/5", "Mdn", "Heat", "Final", "FFA", "N/G", "Gr6"])
    runs = runs.copy()
    codes = runs["race_id"].str[1:].astype(int).to_numpy()
    runs["grade"] = pd.array(grades[codes % len(grades)], dtype="string")
    runs["track"] = runs["track"].map({"Track 0": "Ballarat", "Track 1": "Sandown Park", "Track 2": "Mars"})
    return runs


def test_grade_change_and_kind_of_the_upcoming_race():
    runs = _varied(toy_runs(n_races=60))
    seqs = build_sequences(runs)
    ctx = {n: seqs.context[:, i] for i, n in enumerate(seqs.context_names)}
    lv = ctx["grade_level"]
    d0 = seqs.dog_rows(0)
    rows = np.arange(d0.start, d0.stop) if isinstance(d0, slice) else np.asarray(d0)
    expected = np.r_[np.nan, lv[rows][1:] - lv[rows][:-1]]
    np.testing.assert_allclose(ctx["grade_change"][rows], expected)
    np.testing.assert_array_equal(ctx["grade_change_missing"] == 1, np.isnan(ctx["grade_change"]))
    kinds = np.stack([ctx[f"kind_{k}"] for k in GRADE_KINDS], axis=1)
    np.testing.assert_array_equal(kinds.sum(axis=1), 1.0)  # exactly one kind per race
    heat = seqs.race_id == runs.loc[runs["grade"] == "Heat", "race_id"].iloc[0]
    assert (ctx["kind_heat"][heat] == 1).all() and np.isnan(lv[heat]).all()


def test_track_vocabulary_and_unknown_bucket():
    runs = _varied(toy_runs(n_races=60))
    seqs = _by_key(build_sequences(runs))
    assert not [n for n in CONTEXT_NAMES if n.startswith("track_") and n != TRACK_INDEX]  # no one-hot columns
    assert track_column("The Meadows") == "track_the_meadows"
    np.testing.assert_array_equal(track_index(["Ballarat", "the meadows", "SANDOWN PARK", "Mars", ""]),
                                  [TRACKS.index("Ballarat") + 1, TRACKS.index("The Meadows") + 1,
                                   TRACKS.index("Sandown Park") + 1, 0, 0])
    r = runs.set_index(["dog_id", "race_id"]).loc[seqs.index]
    expected = r["track"].map({"Ballarat": TRACKS.index("Ballarat") + 1, "Sandown Park": TRACKS.index("Sandown Park") + 1,
                               "Mars": 0}).to_numpy(dtype=float)
    np.testing.assert_array_equal(seqs["c:track_index"].to_numpy(), expected)
    assert (expected == 0).any() and (expected > 0).any()
    col, box = track_embedding_columns(CONTEXT_NAMES)
    assert CONTEXT_NAMES[col] == TRACK_INDEX and len(box) == 8 and CATEGORICAL[TRACK_INDEX] == len(TRACKS) + 1
    assert interaction_columns(CONTEXT_NAMES) == ((), ())  # the one-hot table only for sets from before


def test_normaliser_leaves_the_track_index_raw():
    seqs = build_sequences(_varied(toy_runs(n_races=60)))
    norm = fit_normaliser(seqs)
    assert norm.categorical == (TRACK_INDEX,) and Normaliser.from_dict(norm.to_dict()) == norm
    i = seqs.context_names.index(TRACK_INDEX)
    _, c = norm.apply(seqs.values, seqs.context)
    np.testing.assert_array_equal(c[:, i], seqs.context[:, i])  # not standardised, not clipped at 8
    sub = norm.select(["won"], ["box", TRACK_INDEX])
    assert sub.categorical == (TRACK_INDEX,) and norm.select(["won"], ["box"]).categorical == ()


def test_placed_flag_from_the_place_and_field():
    runs = toy_runs(n_races=40)
    runs.loc[5, "finish_pos"] = pd.NA
    if "placed" in runs:
        runs.loc[5, "placed"] = pd.NA  # the source does not say either
    seqs = _by_key(build_sequences(runs))
    r = runs.set_index(["dog_id", "race_id"]).loc[seqs.index]
    places = np.where(r["field_size"].astype(float) < 8, 2, 3)
    pos = r["finish_pos"].astype(float).to_numpy()
    known = np.isfinite(pos)
    np.testing.assert_array_equal(seqs["v:placed"].to_numpy()[known], (pos[known] <= places[known]).astype(float))
    assert np.isnan(seqs["v:placed"].to_numpy()[~known]).all() and (seqs["v:placed_missing"].to_numpy()[~known] == 1).all()


def test_days_since_is_unknown_across_a_month_without_data():
    runs = toy_runs(n_races=240)  # 80 days from 2024-01-01: January to March
    feb = runs["race_date"].dt.month == 2
    runs = runs[~feb]  # no race at all in February: a gap in the data
    seqs = build_sequences(runs)
    days = seqs.values[:, seqs.feature_names.index("log_days_since")]
    prev = np.r_[np.datetime64("NaT"), seqs.race_date[:-1]].astype("datetime64[D]")
    first = np.zeros(seqs.n_obs, bool)
    first[seqs.offsets[:-1]] = True
    across = ~first & (prev < np.datetime64("2024-02-01")) & (seqs.race_date >= np.datetime64("2024-03-01"))
    assert across.sum() > 10 and np.isnan(days[across]).all()
    assert np.isfinite(days[~first & ~across]).all()
    ctx = seqs.context[:, seqs.context_names.index("days_missing")]
    np.testing.assert_array_equal(ctx == 1, first | across)


def test_normaliser_round_trip_and_apply():
    seqs = build_sequences(toy_runs(n_races=80))
    norm = fit_normaliser(seqs, seqs.race_date < np.datetime64("2024-01-15"))
    again = Normaliser.from_dict(norm.to_dict())
    assert again == norm
    v, c = norm.apply(seqs.values, seqs.context)
    assert v.dtype == np.float32 and np.isfinite(v).all() and np.isfinite(c).all()
    won = seqs.feature_names.index("won")
    np.testing.assert_array_equal(v[:, won], seqs.values[:, won])  # binary columns untouched
    sub = norm.select(["won", "box"], ["market_prob"])
    v2, _ = sub.apply(seqs.values[:, [won, seqs.feature_names.index("box")]], seqs.context[:, [ctx_i(seqs)]])
    np.testing.assert_array_equal(v2[:, 1], v[:, seqs.feature_names.index("box")])
    with pytest.raises(FeatureMismatchError, match="nope"):
        norm.select(["nope"], [])


def ctx_i(seqs) -> int:
    return seqs.context_names.index("market_prob")


def test_home_group_is_the_most_frequent_track():
    seqs = build_sequences(toy_runs(n_races=60, tracks=3))
    g = home_group(seqs)
    assert g.shape == (seqs.n_dogs,) and len(np.unique(g)) <= 3


def test_the_sources_placed_flag_wins_where_the_place_is_unknown():
    """Iggy pays three places in big fields without saying who was second or third: placed, place unknown."""
    runs = toy_runs(n_races=40)
    runs["placed"] = pd.array([pd.NA] * len(runs), dtype="boolean")
    runs.loc[7, "finish_pos"] = pd.NA
    runs.loc[7, "placed"] = True
    seqs = _by_key(build_sequences(runs))
    key = (runs.loc[7, "dog_id"], runs.loc[7, "race_id"])
    assert seqs.loc[key, "v:placed"] == 1.0


def test_iggy_rated_price_is_a_canonical_yardstick_column():
    raw = pd.DataFrame({
        "Date": ["2024-01-01"] * 3, "Track": ["Albion Park"] * 3, "Race Name": ["R1 520m Mdn"] * 3,
        "MarketId": ["223079794"] * 3, "Rug": ["1", "2", "3"], "Dog": ["Rather Flash", "Hudson Pink", "Absolution"],
        "Rated Price": ["2.93", "", "6.15"], "WIN_RESULT": ["1", "0", "0"], "WIN_BSP": ["3.1", "12", "5"],
    })
    runs = conform(adapt(raw, "iggy").runs)
    assert "rated_price" in CANONICAL_COLUMNS and "rated_price" in YARDSTICKS
    np.testing.assert_allclose(runs["rated_price"].to_numpy(dtype=float, na_value=np.nan), [2.93, np.nan, 6.15])
    assert conform(toy_runs(n_races=5))["rated_price"].isna().all()  # NaN where the source has none


def test_rated_price_never_reaches_the_feature_matrix():
    runs = toy_runs(n_races=80)
    rng = np.random.default_rng(1)
    a = build_sequences(runs.assign(rated_price=rng.uniform(1.5, 30.0, len(runs))))
    b = build_sequences(runs.assign(rated_price=np.where(runs["won"].astype(bool), 1.01, 99.0)))  # a perfect tip
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.context, b.context)
    assert not [n for n in (*a.feature_names, *a.context_names) if "rated" in n]


def test_form_at_the_track_and_distance_counts_earlier_runs_only():
    runs = _varied(toy_runs(n_races=120))
    seqs = build_sequences(runs)
    r = clean_runs(runs)  # the rows of the sequences, in their order (by dog, date)
    ctx = {n: seqs.context[:, i] for i, n in enumerate(seqs.context_names)}
    won = r["won"].astype(float)
    for key, name in (("track", "track"), ("distance_m", "dist")):
        starts, wins = np.zeros(len(r)), np.zeros(len(r))
        for i in range(len(r)):  # the slow way: every earlier row of the same dog with the same key
            same = (r["dog_id"][:i] == r["dog_id"][i]) & (r[key][:i] == r[key][i]) & (r["race_date"][:i] < r["race_date"][i])
            starts[i], wins[i] = same.sum(), won[:i][same].sum()
        np.testing.assert_allclose(ctx[f"form_{name}_starts"], np.log1p(starts), rtol=1e-6)
        np.testing.assert_allclose(ctx[f"form_{name}_win_rate"], (wins + 0.5) / (starts + 4.0), rtol=1e-6)
        assert (starts == 0).any() and (wins > 0).any()


@pytest.fixture(scope="module")
def snapshot_store(tmp_path_factory):
    """A store with one simulated snapshot (~120 dogs) made awkward: unknown results (dropped), places without
    `won`, missing prices, sectionals, weights, grades and field sizes, a month without any race."""
    from flows.stages.ingest import ingest
    from gruviz_core.synth import simulate

    root = tmp_path_factory.mktemp("blocks")
    runs = simulate(120, 5)
    rng = np.random.default_rng(5)
    n = len(runs)
    pick = lambda share: rng.random(n) < share  # noqa: E731
    runs.loc[pick(0.03), ["won", "finish_pos"]] = pd.NA  # no result: dropped
    runs.loc[pick(0.05), "won"] = pd.NA  # known from the place
    for col, share in (("bsp_decimal", 0.05), ("sp_decimal", 0.3), ("sectional_s", 0.1), ("weight_kg", 0.1),
                       ("grade", 0.05), ("field_size", 0.1), ("margin_lengths", 0.05)):
        runs.loc[pick(share), col] = pd.NA
    runs["rated_price"] = (runs["bsp_decimal"] * rng.uniform(0.8, 1.2, n)).where(pick(0.9))  # a yardstick
    month = runs["race_date"].dt.to_period("M")
    runs = runs[month != month.unique()[len(month.unique()) // 2]]  # a month without data
    src = root / "src.parquet"
    runs.to_parquet(src)
    return root, ingest([str(src)], root).snapshot_id


@pytest.mark.parametrize("block_rows", [1, 50, 1_000_000])
def test_the_stage_builds_block_by_block_exactly_what_build_sequences_builds_whole(snapshot_store, block_rows,
                                                                                    monkeypatch):
    """Blocks of one dog, of ~50 rows (races whose runners sit in several blocks) and one block, the reference
    times a track or a few at a time: every array equal to the whole-table build's, bit for bit."""
    from flows.stages import features as stage
    from gruviz_core import features
    from storage.forms import load_snapshot
    from storage.sequences import load_sequences

    root, snap = snapshot_store
    want = build_sequences(load_snapshot(root, snap))
    monkeypatch.setattr(features, "REFERENCE_ROWS", block_rows)
    path = stage.sequences_path(root, snap).parent / f"b{block_rows}" / "sequences.zarr"
    stage.build(root, snap, path, block_rows=block_rows)
    got = load_sequences(path)
    assert got.n_dogs == want.n_dogs and got.n_obs == want.n_obs and want.n_dogs > 100
    for name in ("values", "context", "offsets", "won", "market_prob", "race_date"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("dog_id", "dog_name", "race_id"):
        assert list(getattr(got, name)) == list(getattr(want, name)), name
    assert (got.feature_names, got.context_names) == (FEATURE_NAMES, CONTEXT_NAMES)


def test_blocks_hold_whole_dogs_and_cover_every_row():
    from gruviz_core.features import dog_blocks

    dogs = pd.Series(["b", "b", "a", "c", "c", "c", "a"])
    order = np.array([2, 6, 0, 1, 3, 4, 5])  # a a b b c c c
    assert dog_blocks(dogs, order, 1) == [(0, 2), (2, 4), (4, 7)]
    assert dog_blocks(dogs, order, 3) == [(0, 4), (4, 7)]
    assert dog_blocks(dogs, order, 100) == [(0, 7)]
    assert dog_blocks(dogs.iloc[:0], order[:0], 3) == []


def test_run_order_is_clean_runs_order_with_text_as_categories():
    """The order of the rows with a result, from the text columns as sorted-category codes, is clean_runs' order."""
    from gruviz_core.features import ORDER_COLUMNS, run_order

    runs = toy_runs(n_dogs=40, n_races=60)
    runs.loc[runs.index[::7], ["won", "finish_pos"]] = pd.NA
    runs.loc[runs.index[::5], "won"] = pd.NA
    runs = runs.sample(frac=1.0, random_state=1).reset_index(drop=True)
    keys = runs[list(ORDER_COLUMNS)].astype({"dog_id": "category", "race_id": "category"})
    got = runs.iloc[run_order(keys)].reset_index(drop=True)
    want = clean_runs(runs)
    assert list(got["dog_id"]) == list(want["dog_id"]) and list(got["race_id"]) == list(want["race_id"])


def test_the_snapshots_yardsticks_are_read_from_a_few_columns_in_sequence_order(snapshot_store):
    from flows.stages.train import snapshot_yardsticks
    from gruviz_core.features import yardstick_probs
    from storage.forms import load_snapshot

    root, snap = snapshot_store
    want = yardstick_probs(load_snapshot(root, snap))
    got = snapshot_yardsticks(root, snap, len(want["rated_price"]))
    assert list(got) == ["rated_price"]
    np.testing.assert_array_equal(got["rated_price"], want["rated_price"])
