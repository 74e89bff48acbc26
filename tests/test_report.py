"""The nightly report: model from a fake run directory (read through storage.results), rendering, escaping, determinism, size, publishing."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from gruviz_core.errors import ConfigError, NotFoundError
from reports.figures import REDRAW, figure
from reports.model import MAX_FRAMES, ReportModel
from flows.stages.report import publish as publish_report
from storage.site import ASSET
from reports.render import plotly_js_path, render
from storage.results import read_run_results
from tests.report_fixtures import EVIL_NAME, TABLES, report_of, write_history, write_run

DQ = {  # as storage.forms writes the snapshot's manifest.json
    "rows_in": 100,
    "accepted": 90,
    "rejected": 7,
    "duplicates_merged": 3,
    "rejects_by_reason": {"no date": 5, "bad place": 2},
    "files": [
        {"path": "/data/ANZ_Greyhounds_2024_01.csv.gz", "format": "iggy", "rows": 100, "sha256": "0123456789abcdef"}
    ],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("run") / "run", n_dogs=80, max_steps=150, n_units=16, n_layers=2)


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> list[Path]:
    return write_history(tmp_path_factory.mktemp("hist"), ["2026-11-23", "2026-11-24"])


@pytest.fixture(scope="module")
def model(run_dir, history) -> ReportModel:
    return report_of(run_dir, history=history, data_quality=DQ)


@pytest.fixture(scope="module")
def html(model) -> str:
    return render(model)


def _panels(model: ReportModel) -> dict:
    return {p.figure.div_id: p.figure for s in model.sections for p in s.panels if p.figure is not None}


def test_sections_headline_and_provenance(model):
    assert [s.id for s in model.sections] == [
        "states",
        "abs-sum",
        "saturation",
        "cohorts",
        "reproducibility",
        "resilience",
        "divergence",
        "trend",
        "data-quality",
    ]
    head = {h.key: h for h in model.headline}
    assert head["model_log_loss"].text == "1.82"
    assert head["model_log_loss"].delta_text == "-0.02" and head["model_log_loss"].tone == "good"
    assert model.previous_night == "2026-11-24"
    prov = dict(model.provenance)
    assert prov["data snapshot"] == "snap-9f8e7d6c5b4a" and prov["model set"] == "set-20261120-3seeds"
    assert prov["seeds"] == "0, 1, 2" and prov["device"] == "cpu" and prov["code version"] == "0.1.0+g1234abc"
    assert prov["cohort rule"].startswith("plateau-f95 v1 (")
    assert "saturated dogs are predicted better" in model.verdict
    assert "At equal history length the difference is -0.05" in model.verdict
    # every section has something to show: no 'not computed' note on a complete run
    assert not [p.title for s in model.sections for p in s.panels if p.note]


def test_model_is_frozen_plain_data(model):
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.night = "x"  # type: ignore[misc]
    for spec in _panels(model).values():
        json.dumps(dataclasses.asdict(spec))  # plain data only: lists, numbers, strings


def test_escapes_text_from_data(html):
    assert EVIL_NAME not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # Plotly renders some tags in labels, so names go into the figure JSON entity-escaped too.
    assert "&lt;script&gt;alert(1)&lt;\\u002fscript&gt;" in html


def test_plotly_loaded_once_from_shared_asset(html, model):
    assert html.count("<script src=") == 1
    assert '<script src="../assets/plotly.min.js"></script>' in html
    assert "cdn.plot.ly" not in html and "https://" not in html.split("<body>")[0]
    inline = render(model, plotly_src=None)
    assert "<script src=" not in inline
    signature = plotly_js_path().read_text(encoding="utf-8")[:200]
    assert inline.count(signature) == 1


def test_deterministic_and_independent_of_paths(model, run_dir, history, html, tmp_path):
    again = render(report_of(run_dir, history=history, data_quality=DQ))
    assert again == html
    moved = shutil.copytree(run_dir, tmp_path / "elsewhere")
    other = render(report_of(moved, history=history, data_quality=DQ))
    assert other == html
    assert str(run_dir) not in html
    assert len(re.findall(r'id="fig-[a-z-]+"', html)) == len(_panels(model))


def test_animated_heatmap_contract(model):
    spec = _panels(model)["fig-states-anim"]
    fig = figure(spec)
    assert 1 < len(fig.frames) <= MAX_FRAMES  # the saturated exemplar has 150 races: sampled
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 2 and all(t.zmin == -1 and t.zmax == 1 for t in heat)
    assert [d.name for d in spec.dogs] == [EVIL_NAME, "DOG 000001"]  # most and least saturated
    for fr in fig.frames:  # frames update the veil traces' data only, never the layout or the heatmaps
        assert fr.layout is None or fr.layout.to_plotly_json() == {}
        assert list(fr.traces) == [2, 3] and all(t.type == "scatter" for t in fr.data)
    play, stop = fig.layout.updatemenus[0].buttons
    assert play.label == "Play" and stop.label == "Stop"
    # redraw is on: plotly.js drops heatmaps in redraw=False transitions (plotly.js#4491); frames stay data-only
    assert play.args[1]["frame"]["redraw"] is REDRAW and play.args[1]["transition"]["duration"] == 0
    assert len(fig.layout.sliders[0].steps) == len(fig.frames)
    assert fig.layout.xaxis.autorange is False and fig.layout.yaxis.autorange is False


def test_watchlist_by_name_then_exemplar(run_dir):
    m = report_of(run_dir, watchlist=["dog 000005", "no such dog"])
    dogs = _panels(m)["fig-states-anim"].dogs
    assert [d.id for d in dogs] == ["D000005", "D000000"]


def test_missing_tables_say_not_computed(tmp_path):
    omit = set(TABLES) | {"stats/summary.json"}
    run = write_run(tmp_path / "bare", n_dogs=20, omit=omit)
    m = report_of(run, states="real")  # the real states reader: no states.zarr here
    notes = " ".join(p.note or "" for s in m.sections for p in s.panels)
    for rel in TABLES:
        if rel != "stats/dog_step.parquet":  # only read together with step.parquet
            assert rel in notes, rel
    assert "Not provided" in notes  # no data quality given
    page = render(m)
    assert page.count('class="note"') >= len(TABLES) - 2
    # and a run with only some tables gone still renders the rest
    part = write_run(tmp_path / "part", n_dogs=20, omit={"eval/cka.parquet", "stats/unit.parquet"})
    pm = report_of(part)
    html = render(pm)
    assert "eval/cka.parquet is missing" in html and "stats/unit.parquet is missing" in html
    assert 'id="fig-states-anim"' in html


def test_data_quality_identity(model, tmp_path):
    dq = next(s for s in model.sections if s.id == "data-quality")
    assert "holds." in dq.panels[0].explain
    assert dq.panels[1].table.rows == (("no date", 5), ("bad place", 2))
    assert dq.panels[2].table.rows == (("ANZ_Greyhounds_2024_01.csv.gz", "iggy", 100, "0123456789ab"),)
    bad = report_of(write_run(tmp_path / "r", n_dogs=5), data_quality={**DQ, "rows_in": 101}, states="real")
    assert "DOES NOT HOLD" in next(s for s in bad.sections if s.id == "data-quality").panels[0].explain
    with pytest.raises(NotFoundError, match="does not exist"):
        read_run_results(tmp_path / "no-such-run")


def test_size_budget_at_100k_dogs(tmp_path):
    run = write_run(tmp_path / "big", n_dogs=100_000, max_steps=150, n_units=64, n_layers=1)
    page = render(report_of(run))
    assert len(page.encode("utf-8")) <= 3 * 1024 * 1024, f"page is {len(page) / 1e6:.2f} MB"


def test_publish_atomic_index_and_asset(html, tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    head = {"night": "2026-11-25", "dogs": 80, "model_log_loss": 1.82, "market_log_loss": 1.8, "saturated_share": 0.25}
    p2 = publish_report(html, reports, "2026-11-25", headline=head)
    p1 = publish_report(
        "<p>old</p>", reports, "2026-11-24", headline={**head, "night": "2026-11-24", "model_log_loss": 1.85}
    )
    assert p2 == reports / "2026-11-25" / "index.html" and p2.read_text(encoding="utf-8") == html
    assert (reports / ASSET).read_bytes() == plotly_js_path().read_bytes()
    index = (reports / "index.html").read_text(encoding="utf-8")
    assert index.index('href="2026-11-25/index.html"') < index.index('href="2026-11-24/index.html"')
    assert "-0.03" in index  # change in model log-loss since the night before
    first = {p: p.read_bytes() for p in reports.rglob("*") if p.is_file()}
    publish_report(html, reports, "2026-11-25", headline=head)
    assert {p: p.read_bytes() for p in reports.rglob("*") if p.is_file()} == first  # same inputs, same bytes
    assert not [p for p in reports.rglob("*.tmp")]
    # A failure while writing leaves the published page whole.
    import storage.atomic

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(storage.atomic.os, "replace", boom)
    with pytest.raises(OSError):
        publish_report("<p>new</p>", reports, "2026-11-24", headline=head)
    monkeypatch.undo()
    assert p1.read_text(encoding="utf-8") == "<p>old</p>"
    assert not [p for p in reports.rglob("*.tmp")]
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ConfigError):
            publish_report(html, reports, bad, headline=head)
    assert os.listdir(reports / "assets") == ["plotly.min.js"]


def _real_run(root: Path) -> Path:
    """A tiny run written by the real producers: storage.states (random GRUs), compute_stats, evaluate_run."""
    import numpy as np
    import torch

    from gruviz_core.cohorts import CohortRule
    from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU
    from flows.stages.evaluate import evaluate_run
    from flows.stages.extract import extract_run
    from flows.stages.stats import compute_stats
    from storage import states

    feats, ctx = ("time_z", "implied_prob", "won"), ("box", "market_prob")
    rng = np.random.default_rng(0)
    n_dogs, n_races, field = 30, 90, 6
    dog = np.concatenate([np.sort(rng.choice(n_dogs, field, replace=False)) for _ in range(n_races)])
    race = np.repeat(np.arange(n_races), field)
    order = np.lexsort((race, dog))
    dog, race = dog[order], race[order]
    sizes = np.bincount(dog, minlength=n_dogs)
    won = (rng.random(len(dog)) < 1 / field).astype(np.float32)
    names = np.array([f"Dog {i}" for i in range(n_dogs)], dtype=object)
    names[3] = EVIL_NAME
    inputs = dict(
        seqs_values=(rng.normal(size=(len(dog), len(feats))) * 2).astype(np.float32),
        context=rng.normal(size=(len(dog), len(ctx))).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        dog_id=np.array([f"D{i:03d}" for i in range(n_dogs)], dtype=object),
        dog_name=names,
        race_id=np.array([f"R{r}" for r in race], dtype=object),
        race_date=np.datetime64("2024-01-01") + race.astype("timedelta64[D]"),
        won=won,
        market_prob=np.full(len(dog), 1 / field, np.float32),
    )
    models = []
    for s in range(2):
        torch.manual_seed(s)
        m = RaceGRU(ModelConfig(len(feats), len(ctx), hidden_size=8, num_layers=1, seed=s))
        with torch.no_grad():
            m.gru.weight_ih_l0.mul_(4)  # so that some units saturate
        models.append(LoadedModel.wrap(m, feats, ctx, model_id=f"s{s}"))
    meta = {"snapshot_id": "snap-real", "model_set_id": "set-real", "night": "2026-11-26"}
    tmp = extract_run(root, "real", meta, models, device="cpu", chunk_rows=16, shard_chunks=4, **inputs)
    compute_stats(tmp, rule=CohortRule(w=3, k=2, delta=0.1, theta=0.2, low=0.02))
    evaluate_run(tmp, sample_dogs=20, n_boot=20)  # no models given: resilience is 'not computed'
    return states.publish_run(root, tmp)


def test_report_on_a_real_run(tmp_path):
    run = _real_run(tmp_path / "store")
    m = report_of(run, states="real")  # the real states reader, the real tables
    html = render(m)
    notes = [p.note for s in m.sections for p in s.panels if p.note]
    assert any("eval/resilience.parquet is missing" in n for n in notes)
    assert not any("stats/" in n for n in notes), notes
    states_fig = _panels(m)["fig-states-anim"]
    assert len(states_fig.dogs) == 2 and states_fig.dogs[0].n_units == 8
    assert dict(m.provenance)["data snapshot"] == "snap-real" and m.night == "2026-11-26"
    assert m.verdict and EVIL_NAME not in html


def test_headline_counts_are_exact_not_rounded():
    from reports.headline import headline_numbers

    nums = {h.key: h for h in headline_numbers({"dogs": 28731, "obs": 497574}, {"dogs": 28000, "obs": 497000})}
    assert nums["dogs"].text == "28,731" and nums["obs"].text == "497,574"
    assert nums["dogs"].delta_text == "+731"


def test_verdict_prefers_the_gap_to_the_market_over_raw_log_loss():
    import pandas as pd

    from reports.headline import verdict

    effect = pd.DataFrame([
        # raw log-loss: saturated dogs win more, so their log-loss is higher whatever the model does
        {"metric": "log_loss", "a": "saturated", "b": "unsaturated", "diff": 0.29, "lo": 0.25, "hi": 0.32, "adjust": "none"},
        {"metric": "log_loss_vs_market", "a": "saturated", "b": "unsaturated", "diff": -0.01, "lo": -0.03, "hi": 0.01,
         "adjust": "none"},
    ])
    text = verdict({"dogs": 28731, "saturated_share": 24 / 28731}, {}, 18.0, effect, None)
    assert "0.1% of 28,731 dogs have saturated hidden states" in text
    assert "No clear difference in the model's log-loss gap to the market" in text
    assert "0.29" not in text
    raw_only = verdict({"dogs": 10}, {}, None, effect[effect["metric"] == "log_loss"], None)
    assert "predicted worse, log-loss 0.29 higher" in raw_only
