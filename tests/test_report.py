"""The nightly report: model from a fake run directory (read through storage.results), rendering, escaping, determinism, size, publishing."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from flows.stages.report import publish as publish_report
from gruviz_core.errors import ConfigError, NotFoundError
from reports.figures import REDRAW, figure
from reports.model import MAX_FRAMES, ReportModel
from reports.render import plotly_js_path, render
from storage.results import read_run_results
from storage.site import ASSET
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
    assert head["race_nll.model"].label == "Race NLL, model" and head["race_nll.model"].text == "1.82"
    assert head["race_nll.model"].delta_text == "-0.02" and head["race_nll.model"].tone == "good"
    assert head["race_nll.market"].text == "1.8" and head["race_nll.uniform"].text == "2.05"
    assert head["period.races"].text == "5,400" and head["plateau_median_km"].text == "18"
    assert model.previous_night == "2026-11-24"
    prov = dict(model.provenance)
    assert prov["data snapshot"] == "snap-9f8e7d6c5b4a" and prov["model set"] == "set-20261120-3seeds"
    assert prov["seeds"] == "0, 1, 2" and prov["device"] == "cpu" and prov["code version"] == "0.1.0+g1234abc"
    assert prov["cohort rule"].startswith("plateau-f-abs v2 (")
    assert prov["evaluation period"] == "2026-06-01 to 2026-11-24, out of sample"
    assert prov["model set cutoff"] == "2026-05-31"
    assert model.period.startswith("Evaluated out of sample: races from 2026-06-01 to 2026-11-24 (5,400 races, 3,100 dogs")
    assert "after the model set's training cutoff 2026-05-31" in model.period
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

    from flows.stages.evaluate import evaluate_run
    from flows.stages.extract import extract_run
    from flows.stages.stats import compute_stats
    from gruviz_core.cohorts import CohortRule
    from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU
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
    assert m.period and "It matters" not in m.verdict  # the evaluate stage records its period (issue 11)


def test_headline_counts_are_exact_not_rounded():
    from reports.headline import headline_numbers

    cur = {"period": {"races": 28731, "dogs": 4975}}
    nums = {h.key: h for h in headline_numbers(cur, {"period": {"races": 28000, "dogs": 4970}})}
    assert nums["period.races"].text == "28,731" and nums["period.dogs"].text == "4,975"
    assert nums["period.races"].delta_text == "+731"


# ---- the honest comparison (issue 11): one verdict, sizes, the too-small cases, a rule that finds nothing


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """The report model, page and email lines of a small fake run per scenario (built once each)."""
    from reports.email import email_summary

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            run = write_run(tmp_path_factory.mktemp(name) / "run", n_dogs=60, max_steps=80, scenario=name)
            m = report_of(run)
            head = json.loads((run / "eval" / "headline.json").read_text(encoding="utf-8"))
            cache[name] = (m, render(m), email_summary(head))
        return cache[name]

    return get


def _cohort_panels(m: ReportModel) -> dict:
    return {p.title: p for s in m.sections if s.id == "cohorts" for p in s.panels}


def _effects_rows(m: ReportModel) -> dict:
    table = _cohort_panels(m)["Comparisons side by side"].table
    return {r[0].split(":")[0]: dict(zip(table.columns, r)) for r in table.rows}


@pytest.mark.parametrize("name", ["found", "none", "small", "period_small", "zero_saturated", "in_sample_null"])
def test_page_email_and_summary_say_the_same_verdict(scenario, name):
    m, html, lines = scenario(name)
    assert lines["Verdict"] == m.verdict  # the summary artifact shows these same lines (flows.stages.notify)
    from markupsafe import escape

    assert str(escape(m.verdict)) in html and str(escape(m.period)) in html
    for gone in ("It matters", "it is about the state", "Flat lines mean the verdict does not hinge"):
        assert gone not in html and gone not in m.verdict
    assert "Associations, not causes" in m.verdict or "too small to compare" in m.verdict


def test_association_found_is_worded_as_an_association(scenario):
    m, html, _ = scenario("found")
    assert "Races predicted from a saturated state are associated with a worse gap to the market" in m.verdict
    assert "+0.031 (95% interval +0.012 to +0.05; 420 vs 900 dogs, 180 vs 400 winners)" in m.verdict
    assert "5 comparisons were made tonight" in m.verdict
    assert "Median time to plateau (Kaplan-Meier): race 18." in m.verdict
    assert "Race NLL: model 1.82, market 1.8, uniform 2.05." in m.verdict
    rows = _effects_rows(m)
    assert rows["main"]["reads as"] == "interval excludes 0" and rows["main"]["95% interval"] == "+0.012 to +0.05"
    assert rows["negative control"]["reads as"] == "no association detected at this size"
    assert rows["by dog cohort (includes selection)"]["a - b"] == "saturated - unsaturated"
    assert set(rows) == {"main", "negative control", "within dog", "by dog cohort (includes selection)", "dose trend"}
    panels = _cohort_panels(m)
    assert "flat means robust" in panels["Threshold sensitivity"].explain
    assert "Trend: +0.08 per unit of s (95% interval +0.01 to +0.15, 38,000 races)" in panels[
        "Dose-response: by saturation score before the race"
    ].explain
    assert panels["By dog cohort (includes selection)"].explain.startswith("Metrics of the dogs in each cohort")


def test_no_association_at_this_size(scenario):
    m, _, _ = scenario("none")
    assert "No association detected at this size" in m.verdict and "associated with a" not in m.verdict
    assert "Median time to plateau (Kaplan-Meier): not reached." in m.verdict
    assert _effects_rows(m)["main"]["reads as"] == "no association detected at this size"


def test_too_small_groups_print_sizes_not_intervals(scenario):
    m, html, _ = scenario("small")
    assert "Too small to compare saturated with unsaturated races at prediction time (24 vs 900 dogs, 9 vs 400" in m.verdict
    assert "95% interval" not in m.verdict and "associated with a" not in m.verdict
    main = _effects_rows(m)["main"]
    assert main["difference"] is None and main["reads as"] == "too small to compare"
    assert main["95% interval"] == "too small to compare (24 vs 900 dogs, 9 vs 400 winners)"
    assert "-0.05 to +0.23" not in html  # the interval of a too-small comparison is never printed
    assert "flat means robust" not in _cohort_panels(m)["Threshold sensitivity"].explain


def test_too_small_period_replaces_the_comparisons(scenario):
    m, html, lines = scenario("period_small")
    assert "The held-out period is too small to compare: 340 races" in m.verdict
    assert "associated" not in m.verdict and "No association" not in m.verdict
    assert "Too small to compare (fewer than 2,000 races)." in m.period
    panels = _cohort_panels(m)
    assert panels["Comparisons"].note.startswith("The held-out period is too small to compare: 340 races")
    for gone in ("By saturation status at prediction time", "Comparisons side by side", "Threshold sensitivity"):
        assert gone not in panels
    assert "fig-status-compare" not in html and "fig-tail-f" in html
    assert lines["Verdict"] == m.verdict


def test_zero_saturated_dogs_is_a_finding_with_the_tail_f_drawn(scenario):
    m, html, _ = scenario("zero_saturated")
    assert "The rule (plateau-f-abs v2, theta=0.25) finds no saturated dog among 60 dogs" in m.verdict
    tail = _cohort_panels(m)["Tail F_0.95 of decided dogs"]
    assert tail.note is None and tail.explain.startswith("The rule (plateau-f-abs v2, theta=0.25) finds no saturated dog")
    ecdf = tail.figure.series[0]
    assert ecdf.x[0] == 0 and ecdf.y[0] == 0 and ecdf.y[1] > 0.5  # the mass at 0 is a visible jump
    assert [s.name for s in tail.figure.series[1:]] == ["low (unsaturated below)", "theta (saturated at or above)"]
    assert "The grid did not move the groups" in _cohort_panels(m)["Threshold sensitivity"].explain
    groups = [s.name for s in _panels(m)["fig-status-compare"].panels[0].series]
    assert "saturated" not in groups and "unsaturated" in groups


def test_in_sample_unknown_is_said_plainly(scenario):
    m, _, lines = scenario("in_sample_null")
    assert m.verdict.startswith("The model set records no training date, so these comparisons may be in sample")
    assert "may be in sample" in m.period and "out of sample" not in m.period
    assert dict(m.provenance)["evaluation period"].endswith("may be in sample (no training date)")
    assert "may be in sample" in lines["Verdict"]


def test_every_cohort_figure_draws_one_series_per_group_or_source(model):
    figs = _panels(model)
    status = figs["fig-status-compare"].panels[0]
    assert [s.name for s in status.series] == ["saturated", "partial", "unsaturated", "undecided"]
    assert status.categories == ["1", "2-5", "6-10", "11-20", "21-40", "41+", "all"]
    assert all(s.lo is not None and s.hi is not None for s in status.series)
    assert [s.name for s in figs["fig-dose"].panels[0].series] == ["gap to the market (per-runner log-loss, model minus market)"]
    assert len(figs["fig-dose"].panels[0].categories) == 10
    for panel in figs["fig-calibration"].panels:  # model and market never merged into one line
        assert [s.name for s in panel.series] == ["model", "market", "perfect calibration"]
        assert all(t.endswith(" runners") for t in panel.series[0].text)
    assert [p.title for p in figs["fig-calibration"].panels] == ["all dogs", "saturated dogs", "unsaturated dogs"]
    for spec in figs.values():
        panels = getattr(spec, "panels", None) or [spec]
        for p in panels:
            names = [s.name for s in getattr(p, "series", [])]
            assert len(names) == len(set(names)), (spec.div_id, names)
    drawn = figure(figs["fig-calibration"])
    assert sorted({t.name for t in drawn.data}) == ["market", "model", "perfect calibration"]


def test_sensitivity_flat_means_robust_only_when_the_grid_moves_the_groups():
    import pandas as pd

    from reports.sections.status import sensitivity_reading

    def grid(sizes, intervals):
        rows = [dict(param="default", value=float("nan"), n_dogs_a=sizes[0], n_dogs_b=900, n_rows_a=1, n_rows_b=1,
                     diff=0.03, lo=0.01, hi=0.05, comparable=True)]
        for (p, v), n, (lo, hi) in zip((("theta", 0.15), ("theta", 0.35)), sizes[1:], intervals):
            rows.append(dict(param=p, value=v, n_dogs_a=n, n_dogs_b=900, n_rows_a=1, n_rows_b=1,
                             diff=(lo + hi) / 2, lo=lo, hi=hi, comparable=True))
        return pd.DataFrame(rows)

    assert "flat means robust" in sensitivity_reading(grid([400, 500, 300], [(0.0, 0.04), (0.02, 0.06)]))
    static = sensitivity_reading(grid([400, 400, 400], [(0.0, 0.04), (0.02, 0.06)]))
    assert "did not move the groups" in static and "robust here" not in static
    moved = sensitivity_reading(grid([400, 500, 300], [(0.0, 0.04), (0.06, 0.09)]))
    assert "theta=0.35" in moved and "depends on the rule" in moved and "robust here" not in moved


def test_the_verdict_escapes_text_from_data():
    from reports.headline import verdict_text

    head = {"dogs": 10, "cohort_counts": {"saturated": 2}, "rule": {"name": EVIL_NAME, "version": 2},
            "main_effect": None, "n_comparisons": 1}
    text = verdict_text(head)
    assert EVIL_NAME in text and "not computed for this run" in text
    from reports.model import ReportModel as RM

    m = RM(title="t", night="n", verdict=text, period=EVIL_NAME, headline=(), cohort_counts=(), provenance=(),
           previous_night=None, sections=())
    page = render(m)
    assert EVIL_NAME not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2
