"""The published nightly page in Debian's chromium (Playwright), served by `gruviz serve` on loopback."""

from __future__ import annotations

import json
import threading
from urllib.parse import urlsplit

import pytest

from flows.stages.report import publish as publish_report
from reports.render import render
from reports.serve import make_server
from tests.conftest import REPO
from tests.report_fixtures import EVIL_NAME, report_of, write_history, write_run

pytestmark = pytest.mark.browser

ARTIFACTS = REPO / "ci-artifacts"
NIGHT = "2026-11-25"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Publish a report (with an evil dog name) and serve the reports directory; yields the base URL."""
    base = tmp_path_factory.mktemp("browser")
    run = write_run(base / "run", n_dogs=300, max_steps=140, n_units=24, n_layers=1, night=NIGHT)
    history = write_history(base / "hist", ["2026-11-22", "2026-11-23", "2026-11-24"])
    dq = {
        "rows_in": 1210,
        "accepted": 1180,
        "rejected": 20,
        "duplicates_merged": 10,
        "rejects_by_reason": {"no race date": 12, "unparseable place": 8},
    }
    model = report_of(run, history=history, data_quality=dq)
    reports = base / "reports"
    for h in history:  # earlier nights, so the index has a trend
        head = json.loads((h / "eval" / "headline.json").read_text())
        publish_report("<p>earlier night</p>", reports, h.name, headline=head)
    publish_report(render(model), reports, NIGHT, headline=json.loads((run / "eval" / "headline.json").read_text()))
    server = make_server(reports, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def loaded(browser, site):
    """The night's page, loaded once, with everything the page did recorded."""
    page = browser.new_page(viewport={"width": 1300, "height": SCREEN_PX})
    seen = {"console": [], "errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: seen["console"].append((m.type, m.text)))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))

    def on_dialog(d):
        seen["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    page.goto(f"{site}/{NIGHT}/index.html", wait_until="load")
    page.wait_for_function(
        "document.querySelectorAll('.js-plotly-plot .main-svg').length >= document.querySelectorAll('.js-plotly-plot').length"
    )
    yield page, seen
    page.close()


def test_loads_clean_and_offline(loaded, site):
    page, seen = loaded
    assert not seen["errors"], seen["errors"]
    assert not [c for c in seen["console"] if c[0] == "error"], seen["console"]
    origin = urlsplit(site).netloc
    outside = [
        u
        for u in seen["requests"]
        if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).netloc != origin
    ]
    assert not outside, outside
    assert any(u.endswith("/assets/plotly.min.js") for u in seen["requests"])


def test_every_figure_renders(loaded):
    page, _ = loaded
    n = page.locator(".js-plotly-plot").count()
    with_svg = page.evaluate(
        "Array.from(document.querySelectorAll('.js-plotly-plot')).filter(d => d.querySelector('svg.main-svg')).length"
    )
    assert n >= 12 and with_svg == n


def test_evil_name_is_text_and_no_dialog(loaded):
    page, seen = loaded
    assert EVIL_NAME in page.inner_text("main")
    assert page.evaluate("document.querySelectorAll('.figure script:not([type])').length") == page.evaluate(
        "document.querySelectorAll('.js-plotly-plot').length"
    )  # each figure's own script
    assert page.evaluate("document.querySelectorAll('script:not([type]):not([src])').length") == page.evaluate(
        "document.querySelectorAll('.js-plotly-plot').length"
    ) + 2  # and the page's two (redraw on open, explorer links): no injected one
    assert not seen["dialogs"]


def test_play_advances_the_slider(loaded):
    page, seen = loaded
    fig = "document.getElementById('fig-states-anim')"
    assert page.evaluate(f"{fig}.layout.sliders[0].active") == 0
    page.locator("#fig-states-anim .updatemenu-button").filter(has_text="Play").click()
    page.wait_for_function(f"{fig}.layout.sliders[0].active >= 5", timeout=10_000)
    page.locator("#fig-states-anim .updatemenu-button").filter(has_text="Stop").click()
    page.wait_for_timeout(300)
    stopped = page.evaluate(f"{fig}.layout.sliders[0].active")
    page.wait_for_timeout(500)
    assert page.evaluate(f"{fig}.layout.sliders[0].active") == stopped  # Stop stops
    # The veil moved off the races already shown, and both heatmaps are still painted under it.
    assert page.evaluate(f"{fig}.data[2].x[0]") > 1.5
    assert page.locator("#fig-states-anim g.hm image").count() == 2
    assert not seen["dialogs"]


SCREEN_PX = 800
"""One screen's height at 1300 px wide (a laptop's viewport below the browser's bars)."""


def test_page_reads_in_about_eight_screens_before_anything_is_opened(browser, site):
    page = browser.new_page(viewport={"width": 1300, "height": SCREEN_PX})
    page.goto(f"{site}/{NIGHT}/index.html", wait_until="load")
    page.wait_for_function(
        "document.querySelectorAll('.js-plotly-plot .main-svg').length >= document.querySelectorAll('.js-plotly-plot').length"
    )
    assert page.evaluate("Array.from(document.querySelectorAll('details')).every(d => !d.open)")
    height = page.evaluate("document.documentElement.scrollHeight")
    screens = height / SCREEN_PX
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report-height.txt").write_text(f"{height} px = {screens:.2f} screens of {SCREEN_PX} px at 1300 px\n")
    assert screens <= 8.5, f"the page is {screens:.1f} screens ({height} px) before any <details> is opened"
    # page one answers first: the verdict, the findings, the gap chart and the scorecard, all in the first screens
    top = page.evaluate("document.querySelector('#fig-gap').getBoundingClientRect().top")
    assert top < 2.5 * SCREEN_PX
    # a figure drawn inside a closed <details> takes its width when opened
    page.locator("#saturation summary").first.click()
    page.wait_for_timeout(300)
    width = page.evaluate("document.querySelector('#fig-calibration .main-svg').getBoundingClientRect().width")
    room = page.evaluate("document.querySelector('#fig-calibration').parentElement.getBoundingClientRect().width")
    assert width > 0.9 * room > 400
    page.close()


def test_index_lists_nights_and_screenshot(loaded, browser, site):
    page, _ = loaded
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    page.screenshot(path=str(ARTIFACTS / "report-top.png"))  # what the email's reader sees first
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000
    index = browser.new_page()
    index.goto(f"{site}/index.html")
    nights = index.locator("table.data tbody tr td:first-child a").all_inner_texts()
    assert nights == [NIGHT, "2026-11-24", "2026-11-23", "2026-11-22"]
    index.screenshot(path=str(ARTIFACTS / "index.png"), full_page=True)
    index.close()
