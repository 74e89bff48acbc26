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
    panels = [*model.front, *(p for s in model.sections for p in s.panels)]
    return {p.figure.div_id: p.figure for p in panels if p.figure is not None}


def test_sections_headline_and_provenance(model):
    ids = [s.id for s in model.sections]
    mine = ["comparison", "abs-sum", "states", "reproducibility", "resilience", "divergence", "saturation", "trend",
            "data-quality"]
    assert [i for i in ids if i in mine] == mine  # page one's answer first; other owners' sections may sit between
    assert ids[:3] == mine[:3]
    assert {"saturation", "trend", "data-quality"} <= {s.id for s in model.sections if s.collapsed}
    head = {h.key: h for h in model.headline}
    assert "saturated_share" not in head and "plateau_median_km" not in head  # gone from page one
    assert head["race_nll.model"].label == "Race NLL, seed 0" and head["race_nll.model"].text == "1.82"
    assert head["race_nll.model"].delta_text == "-0.02" and head["race_nll.model"].tone == "good"
    assert head["race_nll.model_mean"].text == "1.816" and head["race_nll.rated"].text == "1.64"
    assert head["race_nll.market"].text == "1.471" and head["race_nll.uniform"].text == "1.954"
    assert head["period.races"].text == "5,400" and head["period.rows"].text == "43,200"
    assert model.previous_night == "2026-11-24"
    prov = dict(model.provenance)
    assert prov["data snapshot"] == "snap-9f8e7d6c5b4a" and prov["model set"] == "set-20261120-3seeds"
    assert prov["seeds"] == "0, 1, 2" and prov["device"] == "cpu" and prov["code version"] == "0.1.0+g1234abc"
    assert prov["cohort rule"].startswith("plateau-s v1 (")
    assert prov["evaluation period"] == "2026-06-01 to 2026-11-24, out of sample"
    assert prov["model set cutoff"] == "2026-05-31"
    assert model.period.startswith("Evaluated out of sample: races from 2026-06-01 to 2026-11-24 (5,400 races, 3,100 dogs")
    assert "after the model set's training cutoff 2026-05-31" in model.period
    assert model.scope == ("The step-indexed comparisons use 6,863 of 11,983 dogs (debut observed) and 51,175 of "
                           "88,551 runners, in 12,393 races.")
    # every section has something to show: no 'not computed' note on a complete run
    notes = [p.title for s in model.sections if s.id in mine for p in s.panels if p.note]
    notes += [p.title for p in model.front if p.note]
    assert not notes, notes


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


_READ = ("stats/dog.parquet", "stats/unit.parquet", "stats/step.parquet", "stats/plateau.parquet",
         "eval/calibration.parquet", "eval/status_compare.parquet", "eval/divergence.parquet")
"""Tables whose absence the page itself names (the reproducibility and resilience sections name theirs)."""


def test_missing_tables_say_not_computed(tmp_path):
    omit = set(TABLES) | {"stats/summary.json"}
    run = write_run(tmp_path / "bare", n_dogs=20, omit=omit)
    m = report_of(run, states="real")  # the real states reader: no states.zarr here
    notes = " ".join(p.note or "" for s in m.sections for p in s.panels)
    for rel in _READ:
        assert rel in notes, rel
    assert "Not provided" in notes  # no data quality given
    page = render(m)
    assert page.count('class="note"') >= len(_READ)
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
    import storage.store

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(storage.store.os, "replace", boom)
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
    from storage import runs

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
    return runs.publish_run(root, tmp)


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


# ---- page one (issue 24): the sentences, the checks, the family, the scorecard; one exemplar rule


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


def _findings(m: ReportModel) -> dict[str, str]:
    return {f.key: f.text for f in m.findings}


def _visible(html: str) -> str:
    """The page's text outside scripts (what a reader sees, figures aside), unescaped."""
    from html import unescape

    return unescape(re.sub(r"<script.*?</script>", " ", html, flags=re.S))


@pytest.mark.parametrize("name", ["found", "none", "fragile", "small", "period_small", "in_sample_null", "legacy"])
def test_page_email_and_summary_say_the_same_sentences(scenario, name):
    m, html, lines = scenario(name)
    assert list(lines)[0] == "Verdict" and lines["Verdict"] == m.verdict  # the summary artifact shows these lines
    for f in m.findings:
        assert lines[f.label] == f.text
    from markupsafe import escape

    for text in (m.verdict, m.period, *(f.text for f in m.findings)):
        assert str(escape(text)) in html
    seen = _visible(html)
    for gone in ("Saturated share", "no verdict tonight", "15 comparisons", "one in twenty", "By dog cohort",
                 "saturated share", "Threshold sensitivity", "It matters"):
        assert gone not in seen, gone


def test_page_one_sentences_read_the_record(scenario):
    """Page one's sentences on the Iggy-like night, each from numbers of the headline record."""
    m, _, _ = scenario("none")
    f = _findings(m)
    assert f["magnitude"] == ("Magnitude (tanh) saturation does not occur on this model: the largest |h| is 0.99 "
                              "and 0.13% of 497,574 states have any unit at or above 0.95.")
    assert "from 0.13 at race 1 to a long-run 0.33, reaching 90% of it by race 12 and 95% by race 16" in f["plateau"]
    assert "race 21 at the rule's defaults and races 14-53 across its (w, delta, k) grid" in f["plateau"]
    assert f["reliance"].startswith("Each race rewrites 0.35 of the state by race 16") and "0.52 at race 1" in f["reliance"]
    assert "0.077 [0.061, 0.095] nats per runner at race 1, 0.028 [0.025, 0.031] at races 41+" in f["gap"]
    assert "more sensitive: favourite flips 0.12 vs 0.037, +0.082 [+0.063, +0.1]" in f["resilience"]
    assert "not clearly more harmed" in f["resilience"]
    assert "Seeds pick different favourites in 13% of races" in f["reproducibility"]
    assert "The 3-seed mean's race NLL is 1.663 against 1.668 for seed 0 (-0.005)" in f["reproducibility"]
    assert "Fleiss' kappa): not estimable" in f["reproducibility"]


def test_the_iggy_night_says_no_robust_association_and_why(scenario):
    m, _, _ = scenario("none")
    v = m.verdict
    assert v.startswith("No robust association between information saturation and the model's gap to the market")
    assert "settled minus settling races at the same step -0.0099 [-0.018, -0.0022] (1,731 vs 3,723 dogs)" in v
    assert "within the same dogs, after minus before their plateau (step fixed effects), -0.0003 [-0.013, +0.011]" in v
    assert "5 of 6 moves of (w, delta, k) give an interval that includes 0." in v
    assert "The market's own log-loss differs by -0.061 [-0.075, -0.047] between the same groups, so the groups " \
           "differ mostly in who they are." in v
    assert "Negative control (step-1 races, predicted from h_0 = 0 for every dog): +0.002" in v
    # the family counts only the tests that produced an interval: main, within dog, six grid points
    assert ("The verdict's family: 8 tests that produced an interval; 2 of them exclude 0 after Holm's adjustment "
            "(settled minus settling, grid w=3).") in v
    assert "Associations, not causes." in v


def test_robust_and_fragile_are_worded_apart(scenario):
    robust, _, _ = scenario("found")
    assert robust.verdict.startswith("A robust association between information saturation")
    assert "0 of 6 moves" in robust.verdict and "the groups hold similar dogs for the market" in robust.verdict
    fragile, _, _ = scenario("fragile")
    assert fragile.verdict.startswith("An association that does not hold up across the checks")


def test_too_small_groups_print_sizes_not_intervals(scenario):
    m, html, _ = scenario("small")
    assert "below the minimum sizes to compare (24 vs 3,723 dogs, 9 vs 1,800 winners)" in m.verdict
    assert "+0.09" not in m.verdict and "-0.05" not in _visible(html)  # the too-small interval is never printed
    checks = {p.title: p for s in m.sections for p in s.panels}["The checks in numbers"].table
    main = dict(zip(checks.columns, checks.rows[0]))
    assert main["a - b"] is None and main["95% interval"] == "too small to compare"


def test_too_small_period_replaces_the_comparisons(scenario):
    m, html, lines = scenario("period_small")
    assert "The held-out period is too small to compare: 340 races" in m.verdict
    assert "association" not in m.verdict
    assert "Too small to compare (fewer than 2,000 races)." in m.period
    comp = next(s for s in m.sections if s.id == "comparison")
    assert [p.title for p in comp.panels] == ["Comparisons"] and comp.panels[0].note.startswith("The held-out period")
    assert "fig-checks" not in html and "fig-gap" in html
    assert lines["Verdict"] == m.verdict


def test_in_sample_unknown_is_said_plainly(scenario):
    m, _, lines = scenario("in_sample_null")
    assert m.verdict.startswith("The model set records no training date, so these comparisons may be in sample")
    assert "may be in sample" in m.period and "out of sample" not in m.period
    assert dict(m.provenance)["evaluation period"].endswith("may be in sample (no training date)")
    assert "may be in sample" in lines["Verdict"]


def test_an_older_headline_says_not_computed(scenario):
    m, html, _ = scenario("legacy")
    f = _findings(m)
    for key in ("magnitude", "plateau", "reliance", "gap", "resilience", "reproducibility"):
        assert "not computed for this run" in f[key], key
    assert m.scope is None
    assert next(p for p in m.front if p.title.startswith("Gap")).note is not None


def test_kappa_is_printed_only_when_estimable():
    from reports.headline import repro_text

    assert "not estimable" in repro_text({"repro": {"kappa": "not estimable"}})
    assert "0.52" in repro_text({"repro": {"kappa": 0.5214}})
    assert "kappa" not in repro_text({"repro": {"churn": 0.12}})


def test_the_checks_figure_draws_only_intervals_one_series_per_thing(model):
    figs = _panels(model)
    checks = figs["fig-checks"].panels[0]
    assert [s.name for s in checks.series] == ["model's gap to the market", "market's own log-loss", "negative control"]
    assert checks.categories[0] == "settled - settling, same step" and len(checks.categories) == 10
    for s in checks.series:  # each category is drawn by exactly one series
        assert sum(v is not None for v in s.y) >= 1
    assert all(sum(s.y[i] is not None for s in checks.series) == 1 for i in range(len(checks.categories)))
    gap = figs["fig-gap"].panels[0]
    assert gap.categories == ["race 1", "races 2-5", "races 6-10", "races 11-20", "races 21-40", "races 41+"]
    assert gap.series[0].y[0] == 0.077 and gap.series[0].lo[0] == 0.061
    status = figs["fig-status-compare"].panels[0]
    assert [s.name for s in status.series] == ["settled", "settling", "undecided"]
    assert [s.name for s in figs["fig-reliance"].series] == ["write fraction u (median)", "movement m (median)"]
    for spec in figs.values():  # no figure is empty, no series named twice
        panels = getattr(spec, "panels", None) or [spec]
        for p in panels:
            names = [s.name for s in getattr(p, "series", [])]
            assert len(names) == len(set(names)), (spec.div_id, names)
            for s in getattr(p, "series", []):
                ys = getattr(s, "y", None)
                assert ys is None or any(v is not None for v in ys), (spec.div_id, s.name)


def test_scorecard_settled_vs_settling(model):
    card = {p.title: p for p in model.front}["Scorecard: settled vs settling races"].table
    rows = {r[1]: r for r in card.rows}
    assert rows["gap to the market (nats per runner)"][4] == "+0.031 [+0.012, +0.05]"
    assert rows["winner hit rate"][0] == "accuracy"
    assert any(r[0] == "reproducibility" for r in card.rows)


def test_one_exemplar_rule_typical_never_extreme():
    import pandas as pd

    from gruviz_core.exemplars import typical_dogs, typical_pair

    dogs = pd.DataFrame({
        "dog_index": range(8), "dog_id": [f"d{i}" for i in range(8)], "dog_name": [f"n{i}" for i in range(8)],
        "n_steps": [150, 40, 30, 12, 5, 60, 45, 35],
        "mean_s": [0.9, 0.30, 0.32, 0.10, 0.31, 0.5, 0.2, 0.35],
        "cohort": ["settled", "settled", "settled", "settled", "settled", "settling", "settling", "settling"],
    })
    t = typical_dogs(dogs)
    assert list(t["dog_id"]) == ["d2", "d7"]  # the median mean s of each status; d0 (extreme), d3 and d4 (few races) never
    assert typical_pair(dogs) == [("d2", "d7")]
    one = typical_dogs(dogs[dogs["cohort"] == "settled"])  # one status: its two most typical dogs
    assert list(one["dog_id"]) == ["d2", "d1"]
    assert typical_pair(dogs.iloc[:1]) == []


def test_the_verdict_escapes_text_from_data():
    from reports.headline import verdict_text

    head = {"main_effect": {"a": EVIL_NAME, "b": "settling", "comparable": False, "n_dogs_a": 3}}
    text = verdict_text(head)
    assert EVIL_NAME in text and "below the minimum sizes" in text
    from reports.model import ReportModel as RM

    m = RM(title="t", night="n", verdict=text, period=EVIL_NAME, scope=None, findings=(), front=(), headline=(),
           provenance=(), previous_night=None, sections=())
    page = render(m)
    assert EVIL_NAME not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2


def test_the_write_fraction_sentence_says_up_when_it_rises():
    from reports.headline import reliance_text

    rel = {"write_by_race": [{"race": 1, "median_write": 0.57}, {"race": 8, "median_write": 0.59}]}
    assert "0.59 of the state by race 8" in reliance_text(rel, {"race_95": 8}) and "up from 0.57" in reliance_text(rel, {"race_95": 8})
    rel["write_by_race"][1]["median_write"] = 0.35
    assert "down from 0.57 at race 1" in reliance_text(rel, {"race_95": 8})
