"""The explorer's unit pages (issue 27): what each unit tracks best, linked from every dog page, in chromium.

The store is tests.test_explorer's (random GRUs through the real extract, stats and publish); its probe atlas
is gruviz_core.probes.unit_correlations on the store's own states against quantities the store carries
(race count, the won flag, the market's probability), written where the probe stage writes it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gruviz_core import probes as pr
from gruviz_core.explore import extreme_dogs, unit_by_step, units_tracking
from reports.explorer import ExplorerApp, dog_href, track_href, unit_href
from reports.render import plotly_js_path
from reports.serve import make_server
from storage.explore import ExploreStore
from storage.site import ensure_plotly_asset
from storage.states import open_states
from storage.tables import write_table
from tests.report_fixtures import EVIL_NAME
from tests.stores import copy_store
from tests.test_explorer import RUN, _clean, _watched

HIDDEN = 8
"""The explore store's units a layer (tests.stores.make_store's default)."""


@pytest.fixture(scope="module")
def store(explore_store, tmp_path_factory) -> Path:
    """A copy of conftest's explore_store with the probe stage's unit_atlas and probe_rows tables added."""
    root = copy_store(explore_store, tmp_path_factory.mktemp("explore-units") / "store")
    run_dir = root / "runs" / RUN
    reader = open_states(run_dir)
    assert reader.n_units == HIDDEN
    rows = reader.rows()
    q = pd.DataFrame({s.name: np.full(len(rows), np.nan) for s in pr.QUANTITIES})
    q["starts"] = rows["step"].to_numpy(np.float64)
    q["last_won"] = rows["won"].to_numpy(np.float64)
    q["market_last"] = rows["market_prob"].to_numpy(np.float64)
    atlas = []
    for k in range(len(reader.seeds)):
        h = np.concatenate([c.h for c in reader.iter_chunks(k)])
        atlas.append(pr.unit_correlations(h, q).assign(seed=k))
    write_table(run_dir, "unit_atlas", pd.concat(atlas, ignore_index=True))
    # the probe's rows, as the stage writes them: every 3rd dog, in an order the page must sort back to store order
    idx = reader.index()
    dog_of = np.repeat(np.arange(len(idx)), idx["row_size"].to_numpy())
    keep = np.flatnonzero(dog_of % 3 == 0)[::-1]
    write_table(run_dir, "probe_rows", pd.concat([pd.DataFrame({
        "dog_index": dog_of[keep], "step": rows["step"].to_numpy()[keep], "row": keep}),
        q.iloc[keep].reset_index(drop=True)], axis=1))
    return root


@pytest.fixture(scope="module")
def atlas(store) -> pd.DataFrame:
    return pd.read_parquet(store / "runs" / RUN / "eval" / "unit_atlas.parquet")


@pytest.fixture(scope="module")
def app(store) -> ExplorerApp:
    return ExplorerApp(ExploreStore(store))


def _payload(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="explore-data">(.*?)</script>', html, re.S)[1])


# ---------------------------------------------------------------- the sums


def test_unit_by_step_quartiles_only_where_enough_rows():
    step = np.array([1, 1, 1, 1, 2, 2, 3])
    value = np.array([0.0, 1.0, 2.0, 3.0, 5.0, np.nan, 7.0])
    q = unit_by_step(step, value, min_rows=2)
    assert q.step.tolist() == [1] and q.n.tolist() == [4]  # step 2 has one finite value, step 3 one
    assert (q.lo[0], q.mid[0], q.hi[0]) == (0.75, 1.5, 2.25)


def test_extreme_dogs_ranks_means_of_dogs_with_enough_races():
    dog = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    value = np.array([0.9, 0.8, 1.0, -0.5, -0.4, -0.6, 0.1, 0.0, np.nan, 5.0])
    high, low = extreme_dogs(dog, value, k=2, min_races=3)
    assert [d.dog_index for d in high] == [0, 1] and [d.dog_index for d in low] == [1, 0]  # dogs 2, 3: too few
    assert high[0].mean == pytest.approx(0.9) and high[0].n == 3


# ---------------------------------------------------------------- the pages


def test_every_dog_page_links_each_unit_with_what_it_tracks_best(app, atlas):
    labels = pr.unit_labels(atlas, seed=0, layer=0)
    for dog in ("D000", "D003", "D005"):
        html = app(dog_href(RUN, dog)).html
        shown = re.findall(r'class="unit-link" href="([^"]+)">unit (\d+)</a> <small title="[^"]*">(\w+) \(([-0-9.]+)\)',
                           html)
        assert [h for h, *_ in shown] == [unit_href(RUN, 0, 0, u) for u in range(HIDDEN)]
        for _, u, quantity, rho in shown:
            assert quantity == labels[int(u)][0] and float(rho) == pytest.approx(labels[int(u)][1], abs=0.006)
        assert "no probe atlas" not in html


def test_unit_page_shows_the_atlas_numbers_and_the_sample(app, atlas, store):
    a = atlas[(atlas["seed"] == 1) & (atlas["layer"] == 0)]
    unit = int(a.loc[(a["quantity"] == "starts") & (a["rank"] == 1), "unit"].iloc[0])
    r = app(unit_href(RUN, 1, 0, unit))
    assert r.status == 200
    mine = a[a["unit"] == unit].assign(m=lambda d: d["rho"].abs()).sort_values("m", ascending=False)
    best = mine.iloc[0]
    assert re.search(r'id="unit-label">([^<]+)<', r.html)[1] == dict((q.name, q.doc) for q in pr.QUANTITIES)[
        best["quantity"]]
    rows = re.findall(r'<tr><td><a class="track-link" href="([^"]+)">([^<]+)</a></td><td>([^<]+)</td><td>(\d+)</td>',
                      r.html.split('id="quantities"')[1])
    assert len(rows) == len(mine) == 3  # the three quantities the store carries, largest |rho| first
    assert [float(x[2]) for x in rows] == pytest.approx(mine["rho"].round(3).tolist(), abs=1e-3)
    assert [int(x[3]) for x in rows] == mine["rank"].tolist()
    assert [x[0] for x in rows] == [track_href(RUN, q) for q in mine["quantity"]]
    # the figure's quartiles are the sample's: this small store is read whole
    reader = open_states(store / "runs" / RUN)
    h = np.concatenate([c.h for c in reader.iter_chunks(1)])[:, 0, unit]
    step = reader.rows()["step"].to_numpy()
    p = _payload(r.html)
    s = p["step"].index(3)
    assert p["mid"][s] == pytest.approx(np.median(h[step == 3]), abs=1e-4)
    assert p["n"][s] == int((step == 3).sum())
    # the dogs where it runs highest, linked, and the neighbours and the other seed linked
    assert len(re.findall(r'class="dog-link"', r.html)) == 10
    assert unit_href(RUN, 0, 0, unit) in r.html and "unit 0 of seed" not in r.html


def test_units_that_track_a_quantity_lists_the_best_units_of_every_seed(app, atlas):
    r = app(track_href(RUN, "starts"))
    assert r.status == 200
    shown = re.findall(r'<tr><td><a class="unit-link" href="([^"]+)">unit (\d+)</a></td><td>([^<]+)</td><td>(\d+)</td>'
                       r'<td>(\d+)</td><td>(\d+)</td>', r.html)
    a = atlas[(atlas["quantity"] == "starts") & (atlas["rank"] <= 5)]
    assert len(shown) == len(a) == 5 * 2  # 2 seeds x 1 layer x the 5 best
    seeds = open_states_seeds(app)
    want = a.assign(m=-a["rho"].abs()).sort_values(["m", "seed", "layer", "unit"])
    assert [h for h, *_ in shown] == [unit_href(RUN, k, la, u) for k, la, u in zip(want["seed"], want["layer"], want["unit"])]
    assert [float(x[2]) for x in shown] == pytest.approx(want["rho"].round(3).tolist(), abs=1e-3)
    assert [int(x[3]) for x in shown] == want["rank"].tolist()
    assert [int(x[4]) for x in shown] == [seeds[k] for k in want["seed"]]
    assert [t.unit for t in units_tracking(atlas, "starts")] == want["unit"].tolist()
    # every seed's rank 1 is listed, and the choice holds the atlas's quantities only
    assert sorted(int(x[3]) for x in shown).count(1) == 2
    assert re.findall(r'<option value="(\w+)"', r.html) == ["starts", "last_won", "market_last"]
    assert 'selected>races run so far' in r.html
    # reached from the search page and from a unit page
    assert f'href="{track_href(RUN)}"' in app(f"/explore?run={RUN}").html
    assert f'href="{track_href(RUN, "starts")}"' in app(unit_href(RUN, 0, 0, 0)).html


def open_states_seeds(app):
    return app.source.atlas(RUN).seeds


@pytest.mark.parametrize("target, status, text", [
    ("/units", 200, "Choose a quantity"),
    ("/units?q=win_rate", 200, "no unit with a defined correlation"),  # a quantity the store does not carry
    ("/units?q=%3Cscript%3Ealert(1)%3C/script%3E", 400, "unknown quantity"),
    ("/units?q=starts&q=last_won", 400, "given twice"),
    ("/units?x=1", 400, "unknown parameter"),
])
def test_units_search_answers_and_escapes(app, target, status, text):
    r = app(f"/explore/{RUN}{target}")
    assert r.status == status and text in r.html, r.html[:400]
    assert "<script>alert(1)" not in r.html
    assert app("/explore/nosuchrun/units?q=starts").status == 404


def test_unit_page_scatter_is_the_probe_rows_against_the_store(app, atlas, store):
    reader = open_states(store / "runs" / RUN)
    probe_rows = pd.read_parquet(store / "runs" / RUN / "eval" / "probe_rows.parquet").sort_values("row")
    for seed, unit in ((0, 2), (1, 5)):
        a = atlas[(atlas["seed"] == seed) & (atlas["layer"] == 0) & (atlas["unit"] == unit)]
        best = a.iloc[int(np.argmax(a["rho"].abs().to_numpy()))]
        r = app(unit_href(RUN, seed, 0, unit))
        sc = _payload(r.html)["scatter"]
        known = probe_rows[np.isfinite(probe_rows[best["quantity"]])]
        h = np.concatenate([c.h for c in reader.iter_chunks(seed)])[known["row"].to_numpy(), 0, unit]
        assert sc["x"] == pytest.approx(known[best["quantity"]].round(4).tolist(), abs=1e-4)
        assert sc["y"] == pytest.approx(h.astype(np.float64).round(4).tolist(), abs=1e-4)
        assert sc["step"] == known["step"].tolist()
        assert f"rho {best['rho']:.2f}" in sc["title"] and 'id="unit-scatter"' not in r.html  # drawn by the script
        assert 'id="scatter-section"' in r.html


def test_unit_page_scatter_keeps_whole_dogs_under_the_cap(store, monkeypatch):
    import storage.explore as se

    monkeypatch.setattr(se, "SCATTER_ROWS", 200)
    src = ExploreStore(store)
    rec = src.unit(RUN, 0, 0, 1)
    drawn = src._run(RUN)._probe_rows
    assert 0 < len(drawn) <= 200 and np.all(np.diff(drawn["row"]) > 0)
    assert set(rec.probe_row) <= set(drawn["row"]) and len(rec.probe_row)
    size = open_states(store / "runs" / RUN).index()["row_size"].to_numpy()
    for d, n in zip(*np.unique(drawn["dog_index"], return_counts=True)):
        assert n == size[d] and d % 3 == 0  # every race of each drawn dog, and only the probe's dogs


def test_hostile_name_is_escaped_on_unit_pages(app):
    for u in range(HIDDEN):
        html = app(unit_href(RUN, 0, 0, u)).html
        assert EVIL_NAME not in html
    seen = [u for u in range(HIDDEN) if "&lt;script&gt;alert(1)&lt;/script&gt;" in app(unit_href(RUN, 0, 0, u)).html]
    assert seen, "the hostile dog is among no unit's extremes: the test proves nothing"


@pytest.mark.parametrize("path, status", [
    ("/0/0/8", 404), ("/2/0/0", 404), ("/0/1/0", 404), ("/x/0/0", 400), ("/0/0/-1", 400), ("/0/0/1e3", 400),
    ("/0/0/" + "9" * 40, 400), ("/0/0/0?x=1", 400), ("/0/0", 404), ("/0/0/0/0", 404),
])
def test_unit_page_errors(app, path, status):
    r = app(f"/explore/{RUN}/unit{path}")
    assert r.status == status, (path, r.html[:300])
    assert "/tmp" not in r.html


def test_without_an_atlas_the_pages_say_so(app, store):
    from reports.explorer import dog_page

    src = ExploreStore(store)
    rec = src.dog(RUN, "D005")
    page = dog_page(dataclasses.replace(rec, unit_labels=None))
    assert page.units_note and all(u.quantity is None for _, links in page.units for u in links)

    class NoAtlas:
        def __getattr__(self, name):
            return getattr(src, name)

        def unit(self, run_id, seed, layer, unit):
            return dataclasses.replace(src.unit(run_id, seed, layer, unit), quantities=(), best_units={},
                                       atlas_note="This run has no probe atlas (eval/unit_atlas.parquet).")

    r = ExplorerApp(NoAtlas())(unit_href(RUN, 0, 0, 2))
    assert r.status == 200 and "no probe atlas" in r.html and 'id="quantities"' not in r.html
    assert _payload(r.html)["step"]  # the value by race count is still drawn


# ---------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def site(store):
    reports = store.parent / "reports"
    ensure_plotly_asset(reports, plotly_js_path())
    server = make_server(reports, port=0, quiet=True, explore=ExplorerApp(ExploreStore(store)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.browser
def test_dog_page_to_unit_page_in_chromium(browser, site):  # noqa: F811 - browser is the fixture
    page, seen = _watched(browser)
    page.goto(f"http://{site}{dog_href(RUN, 'D003')}", wait_until="load")
    page.wait_for_selector("body[data-ready='1']")
    link = page.locator("a.unit-link").nth(3)
    quantity = link.evaluate("a => a.parentElement.querySelector('small').textContent").split(" ")[0]
    link.click()
    page.wait_for_selector("body[data-ready='1']")
    assert page.url.endswith(unit_href(RUN, 0, 0, 3))
    assert page.inner_text("#unit-name").startswith("Unit 3")
    assert page.inner_text("#unit-label") == {q.name: q.doc for q in pr.QUANTITIES}[quantity]
    assert page.locator("#steps .js-plotly-plot").count() == 1
    assert page.locator("#steps .js-plotly-plot svg.main-svg").count() >= 1
    assert page.locator("#quantities tbody tr").count() == 3
    assert page.locator("#scatter .js-plotly-plot svg.main-svg").count() >= 1
    page.locator("a.dog-link").first.click()  # and back to a dog
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("a.unit-link").count() == HIDDEN
    _clean(seen, site)
    page.close()


@pytest.mark.browser
def test_search_to_units_that_track_to_unit_page_in_chromium(browser, site, atlas):  # noqa: F811 - fixture
    page, seen = _watched(browser)
    page.goto(f"http://{site}/explore", wait_until="load")
    page.locator("#track-link").click()
    page.wait_for_selector("body[data-ready='1']")
    page.select_option("#track-q", "market_last")
    page.locator("#track-go").click()
    page.wait_for_selector("#track-units")
    assert page.url.endswith(track_href(RUN, "market_last"))
    a = atlas[atlas["quantity"] == "market_last"]
    best = a.iloc[int(np.argmax(a["rho"].abs().to_numpy()))]
    first = page.locator("#track-units a.unit-link").first
    assert first.get_attribute("href") == unit_href(RUN, int(best["seed"]), int(best["layer"]), int(best["unit"]))
    first.click()
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#unit-name").startswith(f"Unit {int(best['unit'])}")
    assert page.locator("#steps .js-plotly-plot").count() == 1
    _clean(seen, site)
    page.close()
