"""The explorer (issue 17): pages built on demand from a real run, routed by `gruviz serve`, in Debian's chromium.

The store is made by the project's own pipeline pieces on tiny simulated races: random GRUs through
flows.stages.extract, stats through flows.stages.stats, published by storage.states.
"""

from __future__ import annotations

import http.client
import threading
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pytest

from reports.explorer import ExplorerApp, dog_href
from reports.render import plotly_js_path
from reports.serve import make_server
from storage.explore import ExploreStore
from storage.site import ensure_plotly_asset
from tests.report_fixtures import EVIL_NAME
from tests.stores import EXPLORE_NAMES, EXPLORE_RUN

RUN = EXPLORE_RUN
NIGHT = "2026-11-26"


NAMES = EXPLORE_NAMES


@pytest.fixture(scope="module")
def store(explore_store) -> Path:
    """conftest's explore_store (made by tests.stores.make_store, 30 dogs in 150 races named NAMES), read only."""
    return explore_store


@pytest.fixture(scope="module")
def app(store) -> ExplorerApp:
    return ExplorerApp(ExploreStore(store))


@pytest.fixture(scope="module")
def site(store, tmp_path_factory):
    """`gruviz serve`'s server (reports dir with the plotly asset + the explorer) in a thread on 127.0.0.1."""
    from flows.commands.serve import explorer
    from flows.stages.report import publish as publish_report
    from reports.render import render
    from tests.report_fixtures import report_of

    reports = tmp_path_factory.mktemp("reports")
    ensure_plotly_asset(reports, plotly_js_path())
    html = render(report_of(store / "runs" / RUN, states="real", watchlist=["Ebony Flash"]))
    publish_report(html, reports, NIGHT, headline={})
    (reports / "secret.txt").write_text("in the reports dir")
    server = make_server(reports, port=0, quiet=True, explore=explorer(store))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _get(site: str, path: str, method: str = "GET") -> tuple[int, str]:
    c = http.client.HTTPConnection(site, timeout=30)
    c.request(method, path)
    r = c.getresponse()
    body = r.read().decode("utf-8", "replace")
    c.close()
    return r.status, body


# ---------------------------------------------------------------- the page model and the routes


def test_search_is_a_case_insensitive_prefix_over_names_and_ids(app):
    r = app("/explore?q=eBoN")
    assert r.status == 200
    assert "Ebony Flash" in r.html and "Zippy Ebony" in r.html  # a name's start, then a word's start
    assert r.html.index("Ebony Flash") < r.html.index("Zippy Ebony")
    assert "Quick Silver" not in r.html
    assert dog_href(RUN, "D005") in app("/explore?q=d005").html  # ids too
    assert f"?run={RUN}" in app(f"/explore?run={RUN}").html


def test_dog_page_has_every_part_and_the_numbers_agree(app, store):
    from gruviz_core.explore import race_win_prob

    rec = ExploreStore(store).dog(RUN, "D005")
    t = len(rec.states.step)
    r = app(dog_href(RUN, "D005"))
    assert r.status == 200 and "Ebony Flash" in r.html
    assert r.html.count("<tr><td>") == t  # one row per race
    p = race_win_prob(rec.scores, rec.field_scores, rec.field_offsets)
    assert np.all((p[np.isfinite(p)] > 0) & (p[np.isfinite(p)] < 1))
    # the probabilities of a race's runners sum to 1 under each seed (softmax over the runners in the store)
    field = rec.field_scores[rec.field_offsets[0] : rec.field_offsets[1]]
    e = np.exp(field - field.max(axis=0))
    assert np.allclose((e / e.sum(axis=0)).sum(axis=0), 1)
    assert np.allclose(p[0], (e / e.sum(axis=0))[list(field[:, 0]).index(rec.scores[0, 0])], atol=1e-6)
    assert rec.s is not None and len(rec.s) == t and rec.band is not None
    assert "status before" in r.html and "undecided" in r.html  # the first races come before any check
    assert "plateau-s" in r.html and rec.cohort in r.html


def test_compare_adds_the_divergence(app):
    r = app(dog_href(RUN, "D005", vs="D008"))
    assert r.status == 200 and "Quick Silver" in r.html and "Two-dog divergence" in r.html


@pytest.mark.parametrize(
    "target, status",
    [
        ("/explore?q=a&q=b", 400),
        ("/explore?nope=1", 400),
        ("/explore?q=%ff", 400),
        ("/explore?run=../../etc", 400),
        ("/explore?run=no-such-run", 404),
        ("/explore/no-such-run/dog/D001", 404),
        (f"/explore/{RUN}/dog/D999", 404),
        (f"/explore/{RUN}/dog/D001?vs=D999", 404),
        (f"/explore/{RUN}/dog/D001?x=1", 400),
        (f"/explore/{RUN}/dog/" + "x" * 300, 400),
        (f"/explore/{RUN}/states.zarr/zarr.json", 404),
        (f"/explore/{RUN}/../../run.json", 404),
        ("/explore/..%2f..%2fetc/dog/passwd", 400),
    ],
)
def test_errors(app, target, status):
    r = app(target)
    assert r.status == status, (target, r.html[:400])
    assert "/tmp" not in r.html and "<script>alert" not in r.html


def test_unknown_dog_suggests_the_closest_names(app):
    r = app(f"/explore/{RUN}/dog/{quote('Ebony Flsh')}")
    assert r.status == 404 and "Ebony Flash" in r.html and dog_href(RUN, "D005") in r.html


def test_hostile_name_is_escaped(app):
    r = app(dog_href(RUN, "D003"))
    assert r.status == 200 and EVIL_NAME not in r.html and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.html
    s = app("/explore?q=%3Cscr")
    assert EVIL_NAME not in s.html and "&lt;script&gt;" in s.html


def test_server_routes_the_explorer_and_nothing_else_is_readable(site):
    assert _get(site, "/explore")[0] == 200
    assert _get(site, "/explore", "HEAD")[0] == 200
    assert _get(site, "/secret.txt")[0] == 200  # the reports dir is served as before
    for path in (f"/explore/{RUN}/dog/..%2F..%2F..%2Fetc%2Fpasswd", "/explore/../../etc/passwd",
                 f"/explore/{RUN}/states.zarr/zarr.json", "/exploreX", "/../store/runs/LATEST"):
        status, body = _get(site, path)
        assert status in (400, 404), (path, status)
        assert "root:" not in body and RUN + "\n" != body
    c = http.client.HTTPConnection(site, timeout=10)
    c.request("POST", "/explore")
    assert c.getresponse().status == 405


# ---------------------------------------------------------------- in the browser


def _watched(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = {"console": [], "errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: seen["console"].append((m.type, m.text)))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    return page, seen


def _clean(seen, site):
    assert not seen["errors"], seen["errors"]
    assert not [c for c in seen["console"] if c[0] == "error"], seen["console"]
    outside = [u for u in seen["requests"] if urlsplit(u).scheme in ("http", "https", "ws", "wss")
               and urlsplit(u).netloc != site]
    assert not outside, outside
    assert not seen["dialogs"], seen["dialogs"]


@pytest.mark.browser
def test_search_open_play_compare_in_chromium(browser, site):
    page, seen = _watched(browser)
    page.goto(f"http://{site}/explore", wait_until="load")
    page.fill("#q", "ebo")
    page.press("#q", "Enter")
    page.wait_for_selector("a.hit")
    assert page.locator("a.hit").all_inner_texts()[:2] == ["Ebony Flash", "Zippy Ebony"]
    page.locator("a.hit", has_text="Ebony Flash").click()
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#dog-name") == "Ebony Flash"
    n_figs = page.locator(".js-plotly-plot").count()
    assert n_figs >= 6 and page.locator(".js-plotly-plot svg.main-svg").count() >= n_figs
    assert any(u.endswith("/assets/plotly.min.js") for u in seen["requests"])
    page.click("#play")
    page.wait_for_function("Number(document.getElementById('race-now').textContent) >= 5", timeout=10_000)
    page.click("#stop")
    page.wait_for_timeout(300)
    stopped = page.inner_text("#race-now")
    page.wait_for_timeout(400)
    assert page.inner_text("#race-now") == stopped  # Stop stops
    page.fill("#vs-q", "quick")
    page.click("#vs-find")
    page.wait_for_selector("a.vs-hit")
    page.locator("a.vs-hit", has_text="Quick Silver").click()
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#vs-name") == "Quick Silver"
    assert page.locator("#divergence .js-plotly-plot").count() == 1
    assert page.locator("#anim .js-plotly-plot").count() == 2  # both dogs side by side
    _clean(seen, site)
    page.close()


@pytest.mark.browser
def test_hostile_name_shows_as_text_in_chromium(browser, site):
    page, seen = _watched(browser)
    page.goto(f"http://{site}{dog_href(RUN, 'D003')}", wait_until="load")
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#dog-name") == EVIL_NAME
    assert EVIL_NAME in (page.locator(".js-plotly-plot .gtitle").first.text_content() or "")
    page.goto(f"http://{site}/explore?q=%3Cscr", wait_until="load")
    assert page.locator("a.hit").all_inner_texts() == [EVIL_NAME]
    _clean(seen, site)
    page.close()


@pytest.mark.browser
def test_report_links_to_the_explorer_only_when_served(browser, site, tmp_path):
    page, seen = _watched(browser)
    page.goto(f"http://{site}/{NIGHT}/index.html", wait_until="load")
    page.wait_for_selector("a.explore-link", state="attached")  # the dogs' table sits behind a closed <details>
    page.locator("details:has(a.explore-link) > summary").first.click()  # opened as a reader would
    page.wait_for_selector("a.explore-link")
    hrefs = page.locator("a.explore-link").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert dog_href(RUN, "D005") in hrefs  # the watchlist dog
    page.locator(f"a.explore-link[href='{dog_href(RUN, 'D005')}']").click()
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#dog-name") == "Ebony Flash"
    _clean(seen, site)
    # the static file, opened from disk: the paths stay text, nothing fails
    status, html = _get(site, f"/{NIGHT}/index.html")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "plotly.min.js").write_bytes(plotly_js_path().read_bytes())
    (tmp_path / "night").mkdir()
    (tmp_path / "night" / "index.html").write_text(html, encoding="utf-8")
    static, seen2 = _watched(browser)
    static.goto((tmp_path / "night" / "index.html").as_uri(), wait_until="load")
    static.wait_for_timeout(300)
    assert static.locator("a.explore-link").count() == 0 and dog_href(RUN, "D005") in static.text_content("main")
    assert not seen2["errors"], seen2["errors"]
    page.close()
    static.close()
