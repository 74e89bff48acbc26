"""The probe atlas (gruviz_core.probes, flows.stages.probe) on states where the truth is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gruviz_core import probes as pr
from gruviz_core import synth


def _runs(n_dogs: int = 400, seed: int = 0) -> pd.DataFrame:
    return synth.simulate(n_dogs, seed)


@pytest.fixture(scope="module")
def quantities() -> pd.DataFrame:
    return pr.known_quantities(_runs())


def _hand_set_states(q: pd.DataFrame, H: int = 12, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """(rows, 1, H) a recurrent state with known units: unit 3 integrates the won flag into the shrunk win rate
    (h_t = h_{t-1} + (won_t - h_{t-1}) / (t + 4), from 1/8), unit 5 copies the log days since the last run (0 where
    unknown), the rest is noise."""
    rng = np.random.default_rng(seed)
    n = len(q)
    h = rng.normal(0, 1, (n, 1, H)).astype(np.float32)
    won, step = q["last_won"].to_numpy(), q["starts"].to_numpy()
    rate = np.empty(n)
    for i in range(n):
        prev = pr.WIN_PRIOR_RATE if step[i] == 1 else rate[i - 1]
        rate[i] = prev + (won[i] - prev) / (step[i] + pr.WIN_PRIOR_RUNS)
    h[:, 0, 3] = rate + rng.normal(0, noise * rate.std(), n)
    h[:, 0, 5] = np.nan_to_num(q["log_days_since"].to_numpy(), nan=0.0) / 4
    return h


# ---------------------------------------------------------------- quantities


def test_known_quantities_by_hand():
    runs = pd.DataFrame({
        "dog_id": ["a"] * 4 + ["b"] * 2, "dog_name": ["A"] * 4 + ["B"] * 2,
        "race_id": ["r1", "r2", "r3", "r4", "r2", "r5"],
        "race_date": pd.to_datetime(["2024-01-01", "2024-01-08", "2024-01-10", "2024-02-01", "2024-01-08",
                                     "2024-01-20"]),
        "track": ["X", "X", "Y", "Y", "X", "X"], "distance_m": [400, 400, 500, 400, 400, 300],
        "grade": ["Gr5", "Gr5", "Mdn", "Heat", "Gr5", "FFA"], "box": [1, 2, 3, 4, 5, 6],
        "field_size": [8, 8, 8, 8, 8, 8], "finish_pos": [1, 3, 5, 2, 2, 1],
        "won": [True, False, False, False, False, True], "sp_decimal": [2.0, 4.0, 5.0, 3.0, 2.0, 1.5],
        "source": "canonical",
    })
    q = pr.known_quantities(runs).set_index(["dog_id", "race_id"])
    a = q.loc["a"]
    np.testing.assert_array_equal(a["starts"], [1, 2, 3, 4])
    np.testing.assert_allclose(a["win_rate"], [(1 + 0.5) / 5, 1.5 / 6, 1.5 / 7, 1.5 / 8])
    np.testing.assert_allclose(a["mean_pos_3"], [1, 2, 3, 10 / 3])
    np.testing.assert_allclose(a["log_days_since"].iloc[1:], np.log1p([7, 2, 22]))
    assert np.isnan(a["log_days_since"].iloc[0]) and np.isnan(a["track_change"].iloc[0])
    np.testing.assert_array_equal(a["track_change"].iloc[1:], [0, 1, 0])
    np.testing.assert_array_equal(a["last_placed"], [1, 1, 0, 1])  # 3 places in a field of 8
    np.testing.assert_allclose(a["grade_level"].iloc[:3], [5, 5, 8])
    assert np.isnan(a["grade_level"].iloc[3])  # a heat names no class
    # r2 has two priced runners (a at 4.0, b at 2.0): renormalised implied probabilities 1/3 and 2/3
    assert a.loc["r2", "market_last"] == pytest.approx(1 / 3) and q.loc[("b", "r2"), "market_last"] == pytest.approx(2 / 3)
    assert a.loc["r1", "market_next"] == pytest.approx(1 / 3)  # the next race's market, not the last one's
    assert np.isnan(a["market_next"].iloc[-1])
    assert pr.absent_quantities(q.reset_index()) == []
    no_prices = pr.known_quantities(runs.assign(sp_decimal=pd.NA, box=pd.NA))
    assert pr.absent_quantities(no_prices) == ["last_box", "market_last", "market_next"]


def test_align_rows_matches_by_dog_and_race(quantities):
    q = quantities
    pick = np.array([5, 2, 9, 9])
    got = pr.align_rows(q, q["dog_id"].to_numpy()[pick], q["race_id"].to_numpy()[pick])
    np.testing.assert_array_equal(got["starts"], q["starts"].to_numpy()[pick])
    unknown = pr.align_rows(q, np.array(["nobody"]), np.array(["r0"]))
    assert np.isnan(unknown["starts"]).all()


# ---------------------------------------------------------------- folds and control


def test_sampled_dogs_come_from_a_few_shards_and_fill_the_budget():
    size = np.random.default_rng(0).integers(0, 30, 2000)
    assert len(pr.sample_dogs(size, 10_000)) == (size > 0).sum()
    plain = pr.sample_dogs(size, 300, seed=1)
    assert len(plain) == len(np.unique(plain)) == 300 and (size[plain] > 0).all()
    picked = pr.sample_dogs(size, 300, seed=1, shard_rows=2000, shards=4)
    shard = ((np.cumsum(size) - size) // 2000)[picked]
    assert len(picked) == len(np.unique(picked)) == 300 and len(np.unique(shard)) == 4
    one_shard = pr.sample_dogs(size, 300, seed=1, shard_rows=10**9)  # fewer shards than asked: topped up
    assert len(one_shard) == 300 and (size[one_shard] > 0).all()



def test_folds_never_put_one_dog_on_both_sides(quantities):
    fold = pr.dog_folds(quantities["dog_id"].to_numpy(), 5, seed=3)
    per_dog = pd.Series(fold).groupby(quantities["dog_id"].to_numpy()).nunique()
    assert (per_dog == 1).all() and set(fold) == set(range(5))


def test_control_shuffles_among_dogs_within_race_count(quantities):
    q = quantities
    y, step = q["log_days_since"].to_numpy(), q["starts"].to_numpy()
    c = pr.control_shuffle(y, step, seed=1)
    np.testing.assert_array_equal(np.isnan(c), np.isnan(y))  # missing stays missing, in place
    ok = np.isfinite(y)
    for s in np.unique(step[ok]):  # the same values at each race count: the race-count distribution is kept
        m = ok & (step == s)
        np.testing.assert_array_equal(np.sort(c[m]), np.sort(y[m]))
    assert (c[ok] != y[ok]).mean() > 0.5  # and they moved between dogs
    starts = q["starts"].to_numpy()
    np.testing.assert_array_equal(pr.control_shuffle(starts, step), starts)  # race count itself: nothing to shuffle


# ---------------------------------------------------------------- probes and units


@pytest.fixture(scope="module")
def atlas(quantities):
    q = quantities
    h = _hand_set_states(q)
    params = pr.ProbeParams(n_boot=100)
    scores = pr.probe_scores(h, q, q["dog_id"].to_numpy(), q["starts"].to_numpy(), params)
    noise = pr.probe_scores(np.random.default_rng(9).normal(size=h.shape), q, q["dog_id"].to_numpy(),
                            q["starts"].to_numpy(), params)
    return h, scores, noise, pr.unit_correlations(h, q)


def _at(table: pd.DataFrame, quantity: str, bucket: str = "all") -> pd.Series:
    return table[(table["quantity"] == quantity) & (table["bucket"] == bucket)].iloc[0]


def test_a_unit_that_holds_a_quantity_gives_high_selective_scores(atlas):
    _, scores, _, _ = atlas
    for name in ("win_rate", "log_days_since"):
        r = _at(scores, name)
        assert r["metric"] == "r2" and r["score"] > 0.95 and r["lo"] <= r["score"] <= r["hi"]
        assert r["selectivity"] > 0.5 and r["sel_lo"] > 0, name
    won = _at(scores, "last_won")  # the integrator moves up after a win: the state tells a win apart
    assert won["metric"] == "auc" and won["score"] > 0.8 and won["sel_lo"] > 0
    # starts is the race count itself: its control task is the same task
    s = _at(scores, "starts")
    assert s["control"] == pytest.approx(s["score"]) and s["selectivity"] == pytest.approx(0.0)


def test_a_state_independent_of_the_quantities_scores_near_zero(atlas):
    _, _, noise, _ = atlas
    for name in ("win_rate", "log_days_since", "last_box", "market_next"):
        r = _at(noise, name)
        assert abs(r["score"]) < 0.03 and r["sel_lo"] <= 0 <= r["sel_hi"], name
        assert abs(r["control"]) < 0.03
    auc = _at(noise, "last_won")
    assert abs(auc["score"] - 0.5) < 0.05 and auc["sel_lo"] <= 0 <= auc["sel_hi"]


def test_scores_by_race_count_bucket(atlas, quantities):
    _, scores, _, _ = atlas
    b = scores[scores["quantity"] == "win_rate"].set_index("bucket")
    assert list(b.index) == [label for label, _, _ in pr.BUCKETS]
    at_one = quantities["starts"] == 1
    assert b.loc["1", "n_rows"] == at_one.sum() and b.loc["all", "n_dogs"] == quantities["dog_id"].nunique()
    assert b.loc["21+", "score"] > 0.9


def test_the_atlas_finds_the_right_unit(atlas):
    _, _, _, units = atlas
    best = units[units["rank"] == 1].set_index("quantity")
    assert best.loc["win_rate", "unit"] == 3 and best.loc["win_rate", "rho"] > 0.95
    assert best.loc["log_days_since", "unit"] == 5 and best.loc["log_days_since", "rho"] > 0.99
    labels = pr.unit_labels(units.assign(seed=0), seed=0, layer=0)
    assert labels[3][0] in ("win_rate", "mean_pos_5") and labels[5][0] == "log_days_since"


def test_spearman_matches_scipy_with_ties_and_missing_values():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(4)
    n = 300
    h = np.clip(rng.normal(size=(n, 1, 3)), -1, 1).astype(np.float32)  # saturated units tie at +-1
    q = pd.DataFrame({name: rng.integers(0, 4, n).astype(float) for name in (s.name for s in pr.QUANTITIES)})
    q.loc[rng.random(n) < 0.3, "last_box"] = np.nan
    got = pr.unit_correlations(h, q).set_index(["quantity", "unit"])["rho"]
    for name in ("starts", "last_box"):
        ok = np.isfinite(q[name].to_numpy())
        for u in range(3):
            want = spearmanr(h[ok, 0, u], q[name].to_numpy()[ok]).statistic
            assert got[(name, u)] == pytest.approx(want, abs=1e-9)


def test_auc_counts_ties_as_half_and_its_interval_covers_it():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0.0])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.5, 0.9, 0.2])
    pos, neg = p[y == 1], p[y == 0]
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert pr._auc(y, p) == pytest.approx(brute)
    dog = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    boot = pr._boot_weights(4, pr.ProbeParams(n_boot=500))
    np.testing.assert_allclose(pr._auc(y, p, dog=dog, boot=np.ones((1, 4))), [brute])  # every dog once: the estimate itself
    reps = pr._auc(y, p, dog=dog, boot=boot)
    assert np.nanquantile(reps, 0.025) <= brute <= np.nanquantile(reps, 0.975)


def test_absent_quantities_are_reported_not_scored(quantities):
    q = quantities.assign(market_last=np.nan, market_next=np.nan)
    h = np.random.default_rng(0).normal(size=(len(q), 2, 4))
    t = pr.probe_scores(h, q, q["dog_id"].to_numpy(), q["starts"].to_numpy(), pr.ProbeParams(n_boot=20))
    gone = t[t["quantity"].isin(["market_last", "market_next"])]
    assert len(gone) == 4 and gone["score"].isna().all() and gone["note"].str.startswith("absent").all()
    assert set(t["layer"]) == {0, 1}
    units = pr.unit_correlations(h, q)
    assert not units["quantity"].isin(["market_last", "market_next"]).any()


# ---------------------------------------------------------------- the stage


def _store(root, runs: pd.DataFrame, *, hidden: int = 8, seeds: int = 2):
    """A temporary run of random GRUs over the runs' own sequences (the real extraction path)."""
    import torch

    from flows.stages.extract import extract_run
    from gruviz_core.features import build_sequences, fit_normaliser
    from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU

    seqs = build_sequences(runs)
    v, c = fit_normaliser(seqs).apply(seqs.values, seqs.context)
    models = []
    for s in range(seeds):
        torch.manual_seed(s)
        m = RaceGRU(ModelConfig(len(seqs.feature_names), len(seqs.context_names), hidden_size=hidden, seed=s))
        models.append(LoadedModel.wrap(m, seqs.feature_names, seqs.context_names, model_id=f"s{s}"))
    return extract_run(root, "probe-run", {"snapshot_id": "snap"}, models, seqs_values=v, context=c,
                       offsets=seqs.offsets, dog_id=seqs.dog_id, dog_name=seqs.dog_name, race_id=seqs.race_id,
                       race_date=seqs.race_date, won=seqs.won, market_prob=seqs.market_prob, device="cpu")


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    from flows.stages.probe import probe_run

    runs = _runs(150, seed=2)
    tmp = _store(tmp_path_factory.mktemp("probe-store"), runs)
    record = probe_run(tmp, runs, dogs=100, params=pr.ProbeParams(n_boot=50))
    return tmp, record


def test_the_stage_writes_the_tables_and_its_record(probed):
    from gruviz_core.tables import TABLES
    from storage.layout import RunLayout

    tmp, record = probed
    probes = pd.read_parquet(tmp / "eval" / "probes.parquet")
    atlas = pd.read_parquet(tmp / "eval" / "unit_atlas.parquet")
    assert set(TABLES["probes"].names) <= set(probes.columns)
    assert set(TABLES["unit_atlas"].names) <= set(atlas.columns)
    assert set(probes["seed"]) == set(atlas["seed"]) == {0, 1}
    assert record["n_dogs"] == 100 and record["rows_matched"] == record["n_rows"] and record["error"] is None
    assert json.loads(RunLayout.at(tmp).probe_record.read_text()) == record
    # a GRU is told the last race's result and days off: its state holds them, out of sample
    assert _at(probes[probes["seed"] == 0], "last_won")["score"] > 0.6
    assert atlas.groupby(["seed", "quantity"])["unit"].nunique().eq(8).all()
    # the probed rows with their quantities, for the explorer's scatter
    rows = pd.read_parquet(tmp / "eval" / "probe_rows.parquet")
    assert set(TABLES["probe_rows"].names) <= set(rows.columns) and len(rows) == record["n_rows"]
    assert rows["dog_index"].nunique() == 100 and np.all(np.diff(rows["row"]) > 0)
    assert (rows.groupby("dog_index")["step"].min() == 1).all()


def test_a_failing_stage_leaves_a_note_not_an_error(tmp_path, probed):
    from flows.stages.probe import run
    from storage.layout import RunLayout

    tmp, _ = probed
    out = tmp_path / "run"
    (out / "eval").mkdir(parents=True)
    record = run(out, tmp_path, "no-such-snapshot")  # no states, no snapshot: recorded, not raised
    assert record["error"] and json.loads(RunLayout.at(out).probe_record.read_text())["error"] == record["error"]


# ---------------------------------------------------------------- the report


def _section(results):
    from reports.sections.probes import probes_section

    return probes_section(results)


def test_the_report_renders_the_section_from_the_stage_tables(probed):
    from reports.build import build_report
    from reports.render import render
    from reports.specs import GroupedSpec, Lines2Spec, MatrixSpec
    from storage.results import read_run_results

    tmp, record = probed
    results = read_run_results(tmp)
    assert results.probe_record == record and results.probes is not None and results.unit_atlas is not None
    s = _section(results)
    assert s.title == "What the state knows"
    kinds = [type(p.figure) for p in s.panels if p.figure is not None]
    assert kinds == [GroupedSpec, Lines2Spec, MatrixSpec]
    summary = s.panels[0]
    assert "selectivity" in summary.explain and "Probed 100 of 150 dogs" in summary.explain
    heat = s.panels[-1].figure
    assert len(heat.y) == 8 and len(heat.x) == len(pr.QUANTITIES) - len(record["absent"])
    html = render(build_report(results), plotly_src=None)
    assert 'id="probes"' in html and "What the state knows" in html and "fig-unit-atlas" in html


def test_the_section_says_why_the_atlas_is_missing():
    from gruviz_core.results import RunResults

    failed = _section(RunResults("r", {}, None, {}, probe_record={"error": "LookupError: no runs"}))
    assert failed.panels[0].note == "Probe atlas not computed: LookupError: no runs"
    absent = _section(RunResults("r", {}, None, {}))
    assert "eval/probes.parquet" in absent.panels[0].note


def test_the_section_names_absent_quantities(probed):
    import dataclasses

    from storage.results import read_run_results

    tmp, record = probed
    results = read_run_results(tmp)
    rec = dict(record, absent=["market_last", "market_next"])
    s = _section(dataclasses.replace(results, probe_record=rec))
    assert "Not in this source (absent, not zero)" in s.panels[0].explain


def test_starts_is_its_own_control_and_out_of_the_ranking(probed):
    from storage.results import read_run_results

    tmp, _ = probed
    results = read_run_results(tmp)
    starts = _at(results.probes[results.probes["seed"] == 0], "starts")
    assert starts["score"] == starts["control"]  # shuffling within race count leaves race count as it is
    summary = _section(results).panels[0]
    rows = {r[0]: r for r in summary.table.rows}
    mine = rows["races run so far"]
    assert mine[6].startswith("its own control") and mine[7] is None
    assert summary.table.rows[-1] is mine  # after every ranked quantity
    assert "races run so far" not in summary.explain.split(" Probed ")[0]  # no sentence ranks it
    # a tail sentence never says 'little' unless its selectivity interval reaches 0
    assert "holds little" not in summary.explain


def test_auc_and_r2_selectivity_are_ranked_on_one_scale():
    from reports.sections.probes import _ranked

    a = pd.DataFrame({"quantity": ["last_won", "win_rate", "track_change"], "metric": ["auc", "r2", "auc"],
                      "selectivity": [0.49, 0.85, 0.1]})
    assert _ranked(a)["quantity"].tolist() == ["last_won", "win_rate", "track_change"]  # 0.98, 0.85, 0.2


def test_a_layer_with_no_scored_quantity_renders_a_note_not_an_empty_figure(probed):
    """A small night (60 dogs, 512 units) can leave every probe score NaN: the report says so and renders (an
    empty grouped figure divided by zero rows and failed the night)."""
    import dataclasses

    from reports.build import build_report
    from reports.render import render
    from storage.results import read_run_results

    tmp, _ = probed
    results = read_run_results(tmp)
    unscored = dataclasses.replace(results, probes=results.probes.assign(score=np.nan))
    scores = _section(unscored).panels[1]
    assert scores.figure is None and "no quantity" in scores.note
    assert "What the state knows" in render(build_report(unscored), plotly_src=None)


@pytest.mark.parametrize("kind", ["continuous", "few_levels", "one", "all_tied"])
def test_ranks_are_scipys_average_ranks(kind):
    from scipy.stats import rankdata

    rng = np.random.default_rng(4)
    y = {"continuous": rng.normal(size=500), "few_levels": rng.integers(0, 4, size=500).astype(float),
         "one": np.array([3.0]), "all_tied": np.full(7, 2.0)}[kind]
    np.testing.assert_array_equal(pr._ranks(y), rankdata(y))
