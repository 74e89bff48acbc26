"""The stats and evaluate stages on a small real store written by storage.states with random RaceGRUs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from flows.stages.evaluate import evaluate_run
from flows.stages.extract import extract_run
from flows.stages.stats import compute_stats
from gruviz_core import stats as st
from gruviz_core.cohorts import CohortRule
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU
from gruviz_core.tables import TABLES
from storage import states
from storage.layout import EVAL_TABLES, STATS_TABLES

FEATURES = ("time_z", "time_missing", "implied_prob", "price_missing", "won")
CONTEXT = ("box", "market_prob")

OTHER_STAGES = ("probes", "unit_atlas", "probe_rows", "drift")
"""Run tables the probe and drift stages write, not these two."""
CONTRACT = {f"{'stats' if name in STATS_TABLES else 'eval'}/{name}.parquet": TABLES[name].names
            for name in STATS_TABLES + EVAL_TABLES if name in TABLES and name not in OTHER_STAGES}
"""The tables the stats and evaluate stages write, with their columns from gruviz_core.tables (the contract)."""


def _races(n_dogs=60, n_races=180, field=6, seed=0):
    """Race-structured ragged inputs: each race has `field` runners, one winner, a market price."""
    rng = np.random.default_rng(seed)
    runners = [np.sort(rng.choice(n_dogs, size=field, replace=False)) for _ in range(n_races)]
    dog = np.concatenate(runners)
    race = np.repeat(np.arange(n_races), field)
    won = np.zeros(len(dog), np.float32)
    won[np.arange(n_races) * field + rng.integers(0, field, n_races)] = 1
    mp = rng.dirichlet(np.ones(field), size=n_races).ravel().astype(np.float32)
    order = np.lexsort((race, dog))  # by dog, then race (date order)
    dog, race, won, mp = dog[order], race[order], won[order], mp[order]
    sizes = np.bincount(dog, minlength=n_dogs)
    keep = sizes > 0
    remap = np.cumsum(keep) - 1
    dog = remap[dog]
    sizes = sizes[keep]
    n = len(dog)
    return dict(
        seqs_values=(rng.normal(size=(n, len(FEATURES))) * 2).astype(np.float32),
        context=rng.normal(size=(n, len(CONTEXT))).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        dog_id=np.array([f"D{i:03d}" for i in range(len(sizes))], dtype=object),
        dog_name=np.array([f"Dog {i}" for i in range(len(sizes))], dtype=object),
        race_id=np.array([f"R{r}" for r in race], dtype=object),
        race_date=np.datetime64("2024-01-01") + race.astype("timedelta64[D]"),
        won=won, market_prob=mp,
    )


def _models(n_seeds=2, hidden=8, layers=2):
    out = []
    for s in range(n_seeds):
        torch.manual_seed(7 + s)
        m = RaceGRU(ModelConfig(len(FEATURES), len(CONTEXT), hidden_size=hidden, num_layers=layers, seed=7 + s))
        with torch.no_grad():  # large input weights so some units saturate
            m.gru.weight_ih_l0.mul_(4)
        out.append(LoadedModel.wrap(m, FEATURES, CONTEXT, model_id=f"s{s}"))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    inputs, models = _races(), _models()
    tmp = extract_run(root, "run1", {"snapshot_id": "snap"}, models, device="cpu", chunk_rows=16,
                             shard_chunks=4, **inputs)
    rule = CohortRule(w=3, k=2, delta=0.1, theta=0.2, low=0.02)
    summary = compute_stats(tmp, rule=rule)
    headline = evaluate_run(tmp, models=models, values=inputs["seqs_values"], context=inputs["context"],
                                     offsets=inputs["offsets"], feature_names=FEATURES, sample_dogs=40, n_boot=40,
                            min_races=1)
    return tmp, inputs, summary, headline


def test_tables_have_the_contract_columns(run):
    tmp, _, summary, headline = run
    for rel, cols in CONTRACT.items():
        df = pd.read_parquet(tmp / rel)
        missing = set(cols) - set(df.columns)
        assert not missing, f"{rel} lacks {missing}"
        assert len(df) > 0 or rel == "eval/cka.parquet", rel  # 60 dogs: fewer than the 200 the CKA curve needs
    assert "delta" in pd.read_parquet(tmp / "stats" / "dog_step.parquet").columns  # on disk, not read back
    assert not list(tmp.glob("stats/.*.tmp")) and not list(tmp.glob("eval/.*.tmp"))
    s = json.loads((tmp / "stats" / "summary.json").read_text())
    assert s["rule"]["name"] == "plateau-s" and len(s["effective_dim"]) == 2
    assert {"magnitude", "plateau_curve", "km_grid", "reliance"} <= set(s)
    assert sum(s["cohort_counts"].values()) == s["n_dogs"]
    assert json.loads((tmp / "run.json").read_text())["cohort_rule"] == s["rule"]
    assert headline["model_log_loss"] > 0 and headline["has_market"]
    assert not [n for n in headline["notes"] if n.startswith("resilience skipped")]
    errors = headline["largest_errors"]  # the last race day's worst-predicted runners, for the explorer links
    assert 0 < len(errors) <= 5 and len({e["race_date"] for e in errors}) == 1
    assert [e["error"] for e in errors] == sorted((e["error"] for e in errors), reverse=True)


F16 = 2.0**-12
"""Largest float16 rounding error of a value in [-1, 1] (half a unit in the last place at 0.5..1)."""


def test_block_summaries_match_the_decoded_states(run):
    """Issue 26: the stats stage now aggregates what the blocks computed from their float32 states; the old path
    computed the same from the stored float16 states. Both ways agree within float16 rounding, seed by seed."""
    from flows.stages.stats import seed_scan

    tmp, inputs, _, _ = run
    reader = states.open_states(tmp, allow_incomplete=True)
    step = reader.rows()["step"].to_numpy()
    H = reader.n_units
    for k in range(len(reader.seeds)):
        old = st.scan_seed(reader.iter_chunks(k), step, reader.n_obs, reader.n_layers)  # decodes h, z, r
        new = seed_scan(reader, k)  # decodes nothing
        assert new.rows_missing == old.rows_missing == 0
        np.testing.assert_allclose(new.s, old.s, atol=F16)
        np.testing.assert_allclose(new.max_abs, old.max_abs, atol=F16)
        np.testing.assert_allclose(new.write, old.write, atol=F16)
        np.testing.assert_allclose(new.delta, old.delta, atol=2 * F16 * np.sqrt(H))
        big = new.s > 0.05  # relative movement: the norm's rounding matters only for tiny states
        np.testing.assert_allclose(new.move[big], old.move[big], rtol=0.02, atol=2 * F16 * np.sqrt(H))
        np.testing.assert_array_equal(new.move[step == 1], 1.0)  # a dog's first race moves from h_0 = 0
        flips = np.abs(new.f - old.f)  # a unit within a rounding of tau may count on one side only
        assert flips.max() <= 1 / H + 1e-6 and (flips > 0).mean() < 0.02
        assert new.moments.n == old.moments.n == reader.n_obs
        np.testing.assert_allclose(new.moments.mean, old.moments.mean, atol=F16)
        np.testing.assert_allclose(new.moments.variance(), old.moments.variance(), rtol=0.01, atol=1e-5)
        np.testing.assert_allclose(new.moments.effective_dim(), old.moments.effective_dim(), rtol=1e-3)
        for gate in ("z", "r"):
            for a, b in zip(new.gates[gate].fractions(), old.gates[gate].fractions()):
                np.testing.assert_allclose(a, b, atol=0.01)
        rule = CohortRule(w=3, k=2, delta=0.1, theta=0.2, low=0.02)
        p_new = st.dog_layer_table(new, step, inputs["offsets"], rule, 1)["plateau_step"]
        p_old = st.dog_layer_table(old, step, inputs["offsets"], rule, 1)["plateau_step"]
        same = (p_new == p_old) | (np.isnan(p_new) & np.isnan(p_old))
        assert same.mean() >= 0.95  # a relative change within a rounding of delta may move a plateau


def test_stats_tables_are_the_stored_summaries(run):
    from flows.stages.stats import seed_scan

    tmp, inputs, _, _ = run
    reader = states.open_states(tmp, allow_incomplete=True)
    scan = seed_scan(reader, 0)
    ds = pd.read_parquet(tmp / "stats" / "dog_step.parquet").sort_values(["dog_index", "step", "layer"])
    np.testing.assert_array_equal(ds["s"].to_numpy().reshape(-1, 2), scan.s)
    np.testing.assert_array_equal(ds["delta"].to_numpy().reshape(-1, 2), scan.delta)
    np.testing.assert_array_equal(ds["f095"].to_numpy().reshape(-1, 2), scan.f[:, :, 1])
    rs = pd.read_parquet(tmp / "stats" / "row_summary.parquet")
    one = rs[rs.seed == 1].sort_values(["dog_index", "step", "layer"])
    np.testing.assert_array_equal(one["move"].to_numpy().reshape(-1, 2), reader.row_summaries(1)["move"])
    summ = json.loads((tmp / "stats" / "summary.json").read_text())
    np.testing.assert_allclose(summ["effective_dim"], scan.moments.effective_dim(), rtol=1e-12)
    assert summ["bytes_scanned"] == 0
    dogs = pd.read_parquet(tmp / "stats" / "dog.parquet")
    top = dogs[dogs.cohort_layer].sort_values("dog_index")
    want = [st.plateau_step(scan.s[a:b, 1], w=3, delta=0.1, k=2)
            for a, b in zip(inputs["offsets"][:-1], inputs["offsets"][1:])]
    np.testing.assert_array_equal(top["plateau_step"].to_numpy(), want)


def test_eval_tables_make_sense(run):
    tmp, _, _, headline = run
    cm = pd.read_parquet(tmp / "eval" / "cohort_metrics.parquet")
    assert {"model", "model_mean", "market", "uniform"} <= set(cm.source)
    all_ll = cm[(cm.cohort == "all") & (cm.metric == "log_loss")].set_index("source")["n_rows"]
    assert all_ll.nunique() == 1  # every source on the same rows
    res = pd.read_parquet(tmp / "eval" / "resilience.parquet")
    assert set(res.perturbation) >= {"drop_last", "blank_last", "noise_time", "missing", "truncate", "duplicate"}
    assert set(res.scope) == {"dog", "within-dog", "feed"}
    ok = res[res.status == "ok"]
    assert (ok.state_divergence >= 0).all() and ok.flip_rate.between(0, 1).all() and (ok.kl >= 0).all()
    assert (ok.d_nll_lo <= ok.d_nll + 1e-12).all() and (ok.d_nll <= ok.d_nll_hi + 1e-12).all()
    assert ok.changed_share.between(0, 1).all() and ok.damage_share.between(0, 1).all()
    latest = ok[(ok.scope == "dog") & (ok.perturbation == "drop_last") & (ok.severity == 1)]
    assert len(latest) and latest[["abs_dlogp", "flip_rate", "d_nll"]].notna().all().all()
    assert ok[ok.scope == "within-dog"].d_nll.isna().all()  # harm only on held-out races
    rep = pd.read_parquet(tmp / "eval" / "repro.parquet")
    assert "fleiss_kappa" in set(rep.metric) and (rep.n >= 0).all()
    div = pd.read_parquet(tmp / "eval" / "divergence.parquet")
    assert (div.distance >= 0).all() and div.step.min() == 1


def test_cka_curve_on_the_run_has_n_and_a_baseline_near_zero(run):
    from flows.stages.evaluate import _cka

    tmp, *_ = run
    reader = states.open_states(tmp, allow_incomplete=True)
    dogs = pd.read_parquet(tmp / "stats" / "dog.parquet")
    dogs = dogs[dogs["cohort_layer"]].sort_values("dog_index").reset_index(drop=True)
    cka = _cka(reader, dogs, seed=0, n_boot=20, n_per_step=40, min_dogs=20)
    assert len(cka) and (cka["n"] >= 20).all() and (cka["n"] <= 40).all()
    have = dogs["n_steps"].to_numpy()
    for t, n in zip(cka["step"], cka["n"]):
        assert n == min(40, int((have >= t).sum()))
    assert cka["cka_perm"].abs().max() < 0.3 + cka["cka"].abs().max()


def test_evaluate_without_models_skips_resilience(run, tmp_path):
    tmp, *_ = run
    headline = evaluate_run(tmp, models=None, n_boot=20, min_races=1)
    assert "resilience" not in headline["tables"] and headline["notes"]


def test_resilience_unperturbed_scores_match_the_store(run):
    tmp, inputs, _, _ = run
    from gruviz_core import resilience as rs

    models = _models()
    reader = states.open_states(tmp, allow_incomplete=True)
    off = inputs["offsets"]
    dogs = np.arange(10)
    hists = [inputs["seqs_values"][off[d]:off[d + 1] - 1] for d in dogs]
    last = off[dogs + 1] - 1
    s, h = rs.final_scores(models[0], hists, inputs["seqs_values"][last], inputs["context"][last])
    np.testing.assert_allclose(s, reader.scores()[last, 0], atol=1e-5)
    for i, d in enumerate(dogs):
        want = reader.dog_at(int(d), 0).h[-2, -1] if off[d + 1] - off[d] > 1 else np.zeros(8)
        np.testing.assert_allclose(h[i], want, atol=2e-3)  # store is float16


def test_prefetch_keeps_order_and_passes_errors():
    assert list(states.prefetch(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("reader failed")

    with pytest.raises(ValueError, match="reader failed"):
        list(states.prefetch(broken()))


def test_resilience_on_a_second_core_equals_inline_and_raises_its_errors(run, monkeypatch):
    """evaluate_run runs resilience in a background thread when it has two cores: the same tables as
    running it inline (one core), and an error inside it fails the stage with that error."""
    from flows.stages import evaluate as stage

    tmp, inputs, _, _ = run
    kw = dict(models=_models(), values=inputs["seqs_values"], context=inputs["context"], offsets=inputs["offsets"],
              feature_names=FEATURES, sample_dogs=40, n_boot=40, min_races=1)
    got = {}
    for cores in (2, 1):
        monkeypatch.setattr(stage, "_usable_cores", lambda cores=cores: cores)
        evaluate_run(tmp, **kw)
        got[cores] = pd.read_parquet(tmp / "eval" / "resilience.parquet")
    assert len(got[2]) > 0
    pd.testing.assert_frame_equal(got[2], got[1], check_exact=False, rtol=1e-6, atol=1e-9)
    monkeypatch.setattr(stage, "_usable_cores", lambda: 2)

    def broken(*a, **k):
        raise RuntimeError("resilience broke")

    monkeypatch.setattr(stage, "_resilience", broken)
    with pytest.raises(RuntimeError, match="resilience broke"):
        evaluate_run(tmp, **kw)


def test_headline_carries_the_record_the_checks_read(run):
    from gruviz_core.headline import Headline

    tmp, _, _, headline = run
    on_disk = json.loads((tmp / "eval" / "headline.json").read_text())
    h = Headline.from_dict(on_disk)
    assert h.rule["name"] == "plateau-s"
    for e in (h.main_effect, h.within_dog):
        assert e is not None and {e.a, e.b} <= {"settled", "settling", "after plateau", "before plateau"}
    assert {g.param for g in h.grid} == {"w", "delta", "k"} and len(h.grid) == 6
    assert set(h.composition) == {"market_log_loss", "market_win_rate"}
    assert {"max_abs", "share_states_any_095"} <= set(h.magnitude) and 0 < h.magnitude["max_abs"] < 1
    assert [b.bucket for b in h.gap_by_race_count][0] == "1"
    assert len(h.ensemble["by_seed"]) == 2 and h.ensemble["race_nll"] is not None
    assert h.verdict is not None and h.verdict.kind in ("robust", "fragile", "none", "not_comparable")
    assert h.scope["debut_runners"] <= h.scope["runners"]
    assert Headline.from_dict(h.to_dict()) == h  # the record round-trips


def test_a_yardstick_is_scored_on_the_races_where_every_runner_has_its_price():
    from flows.stages.evaluate import _yardstick_nll

    race = np.array([0, 0, 1, 1, 2, 2])
    won = np.array([1.0, 0, 0, 1, 1, 0])
    sel = np.arange(6)
    rated = np.array([0.8, 0.2, 0.5, 0.5, np.nan, 0.4])  # race 2 lacks a price: left out
    sources = {"model_mean": np.full(6, 0.5), "market": np.full(6, 0.5)}
    out = _yardstick_nll({"rated_price": rated}, sel, sources, won, race)["rated_price"]
    assert out["races"] == 2
    assert out["race_nll"] == pytest.approx(-(np.log(0.8) + np.log(0.5)) / 2)
    assert out["model_mean"] == pytest.approx(-np.log(0.5))


def test_page_one_reproducibility_numbers_come_from_the_repro_table():
    from flows.stages.compare import repro_headline

    repro = pd.DataFrame({
        "metric": ["top_pick_churn", "prob_spread", "fleiss_kappa", "fleiss_kappa"], "by": ["all", "all", "step", "step"],
        "scope": ["all", "all", "settled/settling", "settled/settling"], "step": [np.nan, np.nan, 20.0, 25.0],
        "value": [0.137, 0.013, np.nan, 0.2], "lo": [0.13, 0.012, np.nan, 0.18], "hi": [0.14, 0.014, np.nan, 0.23],
        "n": [12393, 88551, 900, 800], "n_of": ["races", "runners", "dogs", "dogs"],
        "note": ["", "", "not estimable: one label (settling) covers 97% of the 900 decided dogs' labels", ""]})
    h = repro_headline(repro)
    assert h["churn"]["value"] == pytest.approx(0.137) and h["spread"]["n"] == 88551
    assert "not estimable" in h["kappa"] and "0." not in h["kappa"].split("covers")[0]  # no number for kappa itself
    assert repro_headline(repro, kappa_step=25)["kappa"].startswith("0.20 [0.18, 0.23] at race 25")
