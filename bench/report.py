"""Benchmark the nightly report: build + render time and page size at 10k and 100k dogs' tables, and the
time to first render (every figure drawn) in headless chromium. Prints one JSON line.

    flock /tmp/gruviz-heavy.lock .venv/bin/python bench/report.py [--dogs 10000 100000] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.stages.report import publish as publish_report  # noqa: E402
from reports.render import render  # noqa: E402
from reports.serve import make_server  # noqa: E402
from tests.report_fixtures import report_of, write_history, write_run  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")


def _one(root: Path, n_dogs: int) -> tuple[dict, str]:
    run = write_run(root / f"run-{n_dogs}", n_dogs=n_dogs, max_steps=150, n_units=64, n_layers=1)
    history = write_history(root / f"hist-{n_dogs}", ["2026-11-22", "2026-11-23", "2026-11-24"])
    t0 = time.perf_counter()
    model = report_of(run, history=history)  # reading the run through storage.results included
    t1 = time.perf_counter()
    html = render(model)
    t2 = time.perf_counter()
    size = len(html.encode("utf-8"))
    return {
        "dogs": n_dogs,
        "dog_step_mb": round((run / "stats" / "dog_step.parquet").stat().st_size / 1e6, 1),
        "build_s": round(t1 - t0, 3),
        "render_s": round(t2 - t1, 3),
        "page_mb": round(size / 1e6, 3),
    }, html


def _first_render_ms(reports: Path, night: str) -> float | None:
    if not CHROMIUM.exists():
        return None
    from playwright.sync_api import sync_playwright

    server = make_server(reports, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = b.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{server.server_port}/{night}/index.html", wait_until="commit")
            page.wait_for_function(
                "document.readyState === 'complete' && document.querySelectorAll('.js-plotly-plot').length > 0 && "
                "Array.from(document.querySelectorAll('.js-plotly-plot')).every(d => d.querySelector('svg.main-svg'))",
                polling=20,
                timeout=60_000,
            )
            ms = page.evaluate("performance.now()")
            b.close()
            return round(ms, 1)
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dogs", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args(argv)
    out: dict = {"bench": "report", "runs": []}
    with tempfile.TemporaryDirectory(prefix="gruviz-bench-report-") as tmp:
        root = Path(tmp)
        html = ""
        for n in args.dogs:
            res, html = _one(root, n)
            out["runs"].append(res)
        reports = root / "reports"
        publish_report(html, reports, "2026-11-25", headline={"dogs": args.dogs[-1]})
        out["plotly_js_mb"] = round((reports / "assets" / "plotly.min.js").stat().st_size / 1e6, 2)
        out["first_render_ms"] = None if args.no_browser else _first_render_ms(reports, "2026-11-25")
        out["first_render_dogs"] = args.dogs[-1]
    out["budget_mb"] = 3.0
    out["within_budget"] = all(r["page_mb"] <= 3.0 for r in out["runs"])
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
