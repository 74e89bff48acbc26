"""The race simulator: canonical, deterministic, consistent races, and form that carries signal."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from gruviz_core.errors import ConfigError
from gruviz_core.schema import CANONICAL, CANONICAL_COLUMNS
from gruviz_core.synth import dog_names, simulate


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return simulate(3000, seed=7)


def test_canonical_and_deterministic(runs):
    assert list(runs.columns) == list(CANONICAL_COLUMNS)
    assert {c.name: str(runs[c.name].dtype) for c in CANONICAL} == {c.name: c.dtype for c in CANONICAL}
    assert set(runs["source"]) == {"synth"}
    assert runs.drop(columns=["grade", "rated_price"]).notna().all().all()  # rated_price: a yardstick only real sources have
    pd.testing.assert_frame_equal(simulate(200, seed=3), simulate(200, seed=3))
    assert not simulate(200, seed=3).equals(simulate(200, seed=4))
    assert not runs.duplicated(["race_id", "dog_id"]).any()


def test_races_are_consistent(runs):
    g = runs.groupby("race_id")
    assert (g["field_size"].transform("size") == runs["field_size"]).all()
    assert runs["field_size"].between(6, 8).mean() > 0.99
    # places are 1..field, boxes distinct 1..field, one winner, who set the winning time 0 lengths ahead
    assert (g["finish_pos"].transform(lambda s: sorted(s) == list(range(1, len(s) + 1))).all())
    assert (g["box"].transform(lambda s: sorted(s) == list(range(1, len(s) + 1))).all())
    assert (g["won"].sum() == 1).all()
    winners = runs[runs["won"]]
    assert (winners["finish_pos"] == 1).all() and (winners["margin_lengths"] == 0).all()
    assert np.allclose(g["run_time_s"].transform("min"), runs["win_time_s"], atol=0.011)
    ordered = runs.sort_values(["race_id", "finish_pos"])
    assert (ordered.groupby("race_id")["margin_lengths"].diff().dropna() >= 0).all()
    assert g[["race_date", "track", "distance_m", "grade"]].nunique().max().max() == 1
    assert (runs["sp_decimal"] >= 1.01).all() and (runs["bsp_decimal"] >= 1.01).all()
    assert runs["weight_kg"].between(20, 45).all() and runs["sectional_s"].between(3, 8).all()


def test_careers_long_tail_and_dates(runs):
    per_dog = runs.groupby("dog_id").size()
    assert per_dog.min() >= 1 and per_dog.max() <= 150
    assert 10 <= per_dog.median() <= 15
    assert per_dog.max() >= 80 and (per_dog >= 50).mean() > 0.03
    d = runs.sort_values(["dog_id", "race_date"])
    assert (d.groupby("dog_id")["race_date"].diff().dropna() >= pd.Timedelta(0)).all()
    assert runs.groupby("dog_id")["dog_name"].nunique().max() == 1
    assert runs["dog_name"].nunique() == runs["dog_id"].nunique() == 3000


def test_form_carries_signal(runs):
    """Ability shows in form (a model can learn), the market knows something, boxes and tracks matter."""
    r = runs.sort_values(["dog_id", "race_date", "race_id"]).copy()
    r["k"] = r.groupby("dog_id").cumcount()
    n = r.groupby("dog_id")["k"].transform("size")
    long = r[n >= 12]
    first = long[long["k"] < n[n >= 12] // 2].groupby("dog_id")["finish_pos"].mean()
    second = long[long["k"] >= n[n >= 12] // 2].groupby("dog_id")["finish_pos"].mean()
    assert np.corrcoef(first, second.loc[first.index])[0, 1] > 0.3
    p = 1 / runs["bsp_decimal"]
    p = (p / p.groupby(runs["race_id"]).transform("sum")).clip(1e-6, 1 - 1e-6)
    y = runs["won"].astype(float)
    market_ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    q = (1 / runs["field_size"].astype(float)).clip(1e-6, 1 - 1e-6)
    uniform_ll = -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    assert market_ll < 0.9 * uniform_ll
    by_box = runs.groupby("box")["won"].mean()
    assert by_box[1] > by_box[5] + 0.02
    speed = (runs["distance_m"] / runs["run_time_s"]).groupby(runs["track"]).mean()
    assert speed.max() - speed.min() > 0.2  # m/s: tracks have their own time scales


def test_names_and_limits():
    names = dog_names(5000, np.random.default_rng(0))
    assert len(set(names)) == 5000
    assert not any(ch.isdigit() for name in names[:200] for ch in name)
    with pytest.raises(ConfigError):
        simulate(0, seed=1)


@pytest.mark.slow
def test_fast_enough():
    t0 = time.perf_counter()
    big = simulate(20_000, seed=1)
    assert time.perf_counter() - t0 < 20  # 100k dogs take ~6 s on a quiet core
    assert big["dog_id"].nunique() == 20_000


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_cli_synth(tmp_path, capsys, suffix):
    out = tmp_path / f"runs{suffix}"
    assert main(["synth", "--dogs", "40", "--seed", "2", "--out", str(out)]) == 0
    assert "40 dogs" in capsys.readouterr().out
    back = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    assert len(back) == len(simulate(40, seed=2))
    assert main(["synth", "--dogs", "5", "--out", str(tmp_path / "runs.txt")]) == 2
    assert "runs.txt" in capsys.readouterr().err
