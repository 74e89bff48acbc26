"""Input drift (gruviz_core.drift) on simulated data: a stable feed is not flagged, a planted change is, and named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gruviz_core import synth
from gruviz_core.drift import DRIFT_COLUMNS, DriftParams, flagged_inputs, input_drift, psi, sequences_drift
from gruviz_core.features import TRACKS, build_sequences, fit_normaliser


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return synth.simulate(1500, 0)


def _windows(seqs, ref_q: float = 0.5, cur_q: tuple[float, float] = (0.55, 0.62)):
    """(training window, later window) row masks by race date quantiles."""
    d = seqs.race_date
    dates = np.unique(d)
    ref = d <= dates[int(len(dates) * ref_q)]
    cur = (d > dates[int(len(dates) * cur_q[0])]) & (d <= dates[int(len(dates) * cur_q[1])])
    return ref, cur


# ---------------------------------------------------------------- psi by hand


def test_psi_of_a_sample_against_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 5000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-12)
    assert psi(x, rng.normal(0, 1, 2000)) < 0.02
    small, large = psi(x, rng.normal(0.3, 1, 2000)), psi(x, rng.normal(1.0, 1, 2000))
    assert 0.05 < small < large and large > 0.5


def test_psi_of_levels_counts_a_level_the_reference_never_had():
    ref = np.repeat([1.0, 2.0, 3.0], 1000)
    cur = np.r_[np.repeat([1.0, 2.0, 3.0], 300), np.full(300, 4.0)]  # a quarter of tonight at a new level
    assert psi(ref, cur) > 1.0
    assert psi(ref, np.repeat([1.0, 2.0, 3.0], 300)) < 1e-3


def test_missing_clipped_and_the_table_columns():
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1, (4000, 1))
    cur = rng.normal(0, 1, (1000, 1))
    cur[:200, 0] = np.nan  # 20% missing tonight
    cur[200:300, 0] = 50.0  # 10% beyond the normaliser's clip
    t = input_drift(ref, cur, ["x"], mean=[0.0], std=[1.0], clip=8.0)
    assert tuple(t.columns) == DRIFT_COLUMNS
    row = t.iloc[0]
    assert row["missing_ref"] == 0.0 and row["missing_cur"] == pytest.approx(0.2)
    assert row["clipped_ref"] == 0.0 and row["clipped_cur"] == pytest.approx(0.1 / 0.8)
    assert row["flagged"] and "missing 0.0% -> 20.0%" in row["reason"] and "clipped" in row["reason"]
    assert row["n_ref"] == 4000 and row["n_cur"] == 1000


def test_too_few_rows_are_counted_never_flagged():
    ref = np.random.default_rng(2).normal(0, 1, (4000, 1))
    cur = np.full((20, 1), 40.0)
    row = input_drift(ref, cur, ["x"], mean=[0.0], std=[1.0], clip=8.0).iloc[0]
    assert row["clipped_cur"] == 1.0 and row["psi"] > 1.0
    assert not row["flagged"]


# ---------------------------------------------------------------- simulated nights


@pytest.mark.slow  # ~4 s
def test_a_stable_feed_is_not_flagged_at_the_default_threshold(runs):
    """Nights drawn from the training window's own population (other dogs): at most 5% of nights raise any flag."""
    seqs = build_sequences(runs)
    ref_all, _ = _windows(seqs)
    dog = np.repeat(np.arange(seqs.n_dogs), seqs.row_size)
    half = (dog % 2 == 0)
    norm = fit_normaliser(seqs, ref_all & half)
    pool = np.flatnonzero(ref_all & ~half)
    rng = np.random.default_rng(3)
    nights, flagged = 40, 0
    for _ in range(nights):
        cur = rng.choice(pool, int(rng.integers(200, 2000)), replace=False)
        table = sequences_drift(seqs, norm, ref_all & half, np.sort(cur))
        flagged += bool(table["flagged"].any())
        assert table["psi"].max() < 0.25
    assert flagged / nights <= 0.05


def test_distances_in_yards_are_flagged_and_named(runs):
    seqs = build_sequences(runs)
    ref, cur = _windows(seqs)
    norm = fit_normaliser(seqs, ref)
    before = sequences_drift(seqs, norm, ref, cur)
    assert "distance_km" not in set(before.loc[before["flagged"], "input"])

    late = runs["race_date"] > seqs.race_date[cur].min()
    dist = runs["distance_m"].astype("Float64")
    yards = runs.assign(distance_m=dist.where(~late, (dist * 1.0936).round()).astype(runs["distance_m"].dtype))
    planted = build_sequences(yards)
    after = sequences_drift(planted, norm, ref, cur)
    hit = after.set_index("input")
    assert hit.loc["distance_km", "flagged"] and hit.loc["distance_km", "psi"] > 1.0
    assert any(line.startswith("distance_km (PSI") for line in flagged_inputs(after))
    assert list(after["input"]).count("distance_km") == 1  # the context's copy is the same input, checked once


def test_an_unseen_and_an_unknown_track_are_counted(runs):
    seqs = build_sequences(runs)
    ref, cur = _windows(seqs)
    norm = fit_normaliser(seqs, ref)
    seen = set(runs.loc[runs["race_date"] <= seqs.race_date[ref].max(), "track"])
    new_track = next(t for t in TRACKS if t not in seen)
    late = np.flatnonzero(runs["race_date"] > seqs.race_date[cur].min())
    changed = runs.copy()
    changed.loc[changed.index[late[::4]], "track"] = new_track  # every fourth later run at a track never trained on
    changed.loc[changed.index[late[1::8]], "track"] = "Nowhere Park"  # an eighth at a track not in the vocabulary
    after = sequences_drift(build_sequences(changed), norm, ref, cur).set_index("input")
    row = after.loc["track_index"]
    assert row["kind"] == "categorical"
    assert row["n_unseen"] == 1 and row["unseen_cur"] == pytest.approx(0.25, abs=0.05)
    assert row["unseen_levels"] == str(TRACKS.index(new_track) + 1)
    assert row["unknown_ref"] == 0.0 and row["unknown_cur"] == pytest.approx(0.125, abs=0.04)
    assert row["flagged"] and "not seen in training" in row["reason"] and "unknown" in row["reason"]


def test_params_threshold_moves_the_flag():
    rng = np.random.default_rng(4)
    ref, cur = rng.normal(0, 1, (5000, 1)), rng.normal(0.5, 1, (1000, 1))
    value = psi(ref[:, 0], cur[:, 0])
    assert input_drift(ref, cur, ["x"], params=DriftParams(psi_threshold=value / 2)).iloc[0]["flagged"]
    assert not input_drift(ref, cur, ["x"], params=DriftParams(psi_threshold=value * 2)).iloc[0]["flagged"]


# ---------------------------------------------------------------- the stage and the report


def _store(tmp_path, runs: pd.DataFrame, seqs, cutoff: str):
    """A store with the previous night's snapshot (runs to `cutoff`) and a model set trained to `cutoff`."""
    import json

    from storage.layout import StoreLayout

    layout = StoreLayout.at(tmp_path / "home")
    snap = layout.snapshot("prev")
    snap.mkdir(parents=True)
    runs[runs["race_date"] <= cutoff].to_parquet(snap / "runs.parquet", index=False)
    (snap / "manifest.json").write_text("{}")
    ms = layout.model_set("set-a")
    ms.mkdir(parents=True)
    ref = seqs.race_date <= np.datetime64(cutoff, "D")
    (ms / "normaliser.json").write_text(json.dumps(fit_normaliser(seqs, ref).to_dict()))
    (ms / "manifest.json").write_text(json.dumps({"set_id": "set-a", "seeds": [0], "cutoff": cutoff,
                                                  "early_stop_end": cutoff}))
    return layout.root


def test_the_stage_flags_yards_and_the_report_and_email_name_it(tmp_path, runs):
    from flows.stages import drift as stage
    from gruviz_core.results import RunResults
    from reports.sections.drift import drift_section
    from storage.results import read_run_results
    from storage.sequences import save_sequences

    dates = np.sort(runs["race_date"].unique())
    cutoff, tonight = str(dates[len(dates) // 2])[:10], dates[int(len(dates) * 0.6)]
    runs = runs[runs["race_date"] <= tonight]
    late = runs["race_date"] > np.datetime64(cutoff)
    dist = runs["distance_m"].astype("Float64")
    planted = runs.assign(distance_m=dist.where(~late, (dist * 1.0936).round()).astype(runs["distance_m"].dtype))
    seqs = build_sequences(planted)
    root = _store(tmp_path, runs, build_sequences(runs), cutoff)
    save_sequences(seqs, tmp_path / "seq.zarr")
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    record = stage.drift_run(run_dir, root, "set-a", tmp_path / "seq.zarr", "tonight", previous_snapshot="prev")
    assert record["error"] is None and record["current"] == "runs new since snapshot prev"
    assert record["current_rows"] == int(late.sum()) and record["reference_rows"] > record["current_rows"]
    assert any(f.startswith("distance_km") for f in record["flagged"])

    results = read_run_results(run_dir, tables=("drift",))
    section = drift_section(results)
    assert not section.collapsed
    flags = section.panels[0].table
    assert flags is not None and "distance_km" in [row[0] for row in flags.rows]
    line = stage.email_lines(run_dir)["Input drift"]
    assert "distance_km" in line and "flagged" in line

    # a failure is a note in the record, the report and the email, never an exception
    broken = stage.run(tmp_path / "run2", root, "no-such-set", tmp_path / "seq.zarr", "tonight")
    assert broken["error"]
    assert "failed" in drift_section(RunResults(name="x", meta={}, summary=None, headline={},
                                                drift_record=broken)).panels[0].note
    assert stage.email_lines(tmp_path / "run2")["Input drift"].startswith("not checked")


def test_a_quiet_night_still_says_what_was_compared(runs):
    """Iggy, issue 29: with nothing flagged the panel showed only 'No input is flagged tonight.', dropping which rows
    were compared with which; the share threshold read '5%' for five percentage points."""
    from gruviz_core.results import RunResults
    from reports.sections.drift import drift_section

    seqs = build_sequences(runs)
    window, _ = _windows(seqs)
    half = np.repeat(np.arange(seqs.n_dogs), seqs.row_size) % 2 == 0  # tonight: other dogs of the same window
    ref, cur = window & half, window & ~half
    table = sequences_drift(seqs, fit_normaliser(seqs, ref), ref, cur)
    assert not table["flagged"].any()
    record = {"current": "runs new since snapshot prev", "current_rows": int(cur.sum()), "reference_rows": int(ref.sum()),
              "reference": "training window (races to 2026-01-01)", "psi_threshold": 0.25, "share_threshold": 0.05,
              "share_z": 4.0, "min_rows": 200, "error": None}
    section = drift_section(RunResults(name="x", meta={}, summary=None, headline={}, drift=table,
                                       drift_record=record))
    first = section.panels[0]
    top = table.loc[table["psi"].idxmax()]
    assert first.note is None and first.explain.startswith(f"No input is flagged tonight ({len(table)} checked; "
                                                           f"the largest PSI is {float(top.psi):.3g} ({top.input})).")
    assert f"Tonight: {int(cur.sum()):,} rows" in first.explain and "by more than 5 percentage points" in first.explain
    assert "sample" not in first.explain
    # a training window past max_ref_rows is sampled: the panel says how many of its rows were compared
    small = sequences_drift(seqs, fit_normaliser(seqs, ref), ref, cur, DriftParams(max_ref_rows=1000))
    sampled = drift_section(RunResults(name="x", meta={}, summary=None, headline={}, drift=small, drift_record=record))
    assert f"reference: {int(ref.sum()):,} rows, the training window (races to 2026-01-01), of which a fixed random " \
           "sample of 1,000 is compared." in sampled.panels[0].explain
