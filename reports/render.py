"""ReportModel -> HTML through one Jinja environment with autoescape; plotly.js loaded once per page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from reports.figures import figure_html
from reports.model import AnimHeatmapSpec, HeatmapSpec, ReportModel

__all__ = ["render", "render_index", "plotly_js_path", "ENV"]

ENV = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
"""The one template environment: every value from data is HTML-escaped unless it is a figure fragment."""


def _cell(v: Any) -> str:
    """A table cell: thousands separators for ints, 4 significant digits for floats, a dash for nothing."""
    if v is None:
        return "\u2013"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "\u2013"
        return f"{v:,.4g}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


ENV.filters["cell"] = _cell


def _wide(p: Any) -> bool:
    """A panel that needs the page's full width: heatmaps, figures of several panels, wide tables; the rest sit two
    to a row at desktop widths."""
    f = p.figure
    if f is not None:
        if isinstance(f, (AnimHeatmapSpec, HeatmapSpec)):
            return True
        if len(getattr(f, "panels", None) or getattr(f, "layers", None) or []) > 1 or getattr(f, "split", False):
            return True
    return p.table is not None and len(p.table.columns) > 4


ENV.tests["wide"] = _wide


def plotly_js_path() -> Path:
    """The plotly.min.js shipped with the installed plotly package (never a CDN)."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        from gruviz_core.errors import ConfigError

        raise ConfigError(f"plotly.min.js not found at {path}; reinstall plotly (pip install --force-reinstall plotly)")
    return path


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    return plotly_js_path().read_text(encoding="utf-8")


def _script_src(plotly_src: str) -> str:
    """The page lives at <night>/index.html: a relative asset path (relative to the reports dir) gains '../'."""
    if "://" in plotly_src or plotly_src.startswith("/") or plotly_src.startswith("../"):
        return plotly_src
    return "../" + plotly_src


def render(model: ReportModel, *, plotly_src: str | None = "assets/plotly.min.js") -> str:
    """The night's page. `plotly_src`: path of plotly.js relative to the reports directory (the page is
    one level down, so it is referenced as '../<plotly_src>'), an absolute URL/path as given, or None to
    inline plotly.js once (a self-contained single file)."""
    panels = [*model.front, *(p for s in model.sections for p in s.panels)]
    figures = {p.figure.div_id: Markup(figure_html(p.figure)) for p in panels if p.figure is not None}
    return ENV.get_template("report.html.j2").render(
        m=model,
        figures=figures,
        plotly_src=None if plotly_src is None else _script_src(plotly_src),
        plotly_inline=Markup(_plotly_js().replace("</script", "<\\/script")) if plotly_src is None else None,
    )


def render_index(nights: Sequence[Mapping[str, Any]], *, title: str = "gruviz nightly reports") -> str:
    """The list of all nights, newest first, with the headline trend (no plotly.js needed)."""
    rows = sorted(nights, key=lambda n: str(n["night"]), reverse=True)
    series = [_model_nll(r.get("headline", {})) for r in reversed(rows)]
    return ENV.get_template("index.html.j2").render(title=title, rows=rows, spark=Markup(_sparkline(series)))


def _model_nll(head: Mapping[str, Any]) -> Any:
    """The night's race NLL of the model; an older night's model log-loss where it has no race NLL."""
    r = head.get("race_nll")
    return r.get("model") if isinstance(r, Mapping) else head.get("model_log_loss")


def _sparkline(values: Sequence[Any], width: int = 360, height: int = 64) -> str:
    """An inline SVG line of the model's log-loss, oldest to newest, first and last values labelled."""
    pts = [(i, float(v)) for i, v in enumerate(values) if isinstance(v, (int, float)) and v == v]
    if len(pts) < 2:
        return ""
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    span = (hi - lo) or 1.0
    n = max(len(values) - 1, 1)
    left, right = 52, 52  # room for the labels

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + (width - left - right) * i / n, height - 8 - (height - 16) * (v - lo) / span

    coords = " ".join("{:.1f},{:.1f}".format(*xy(i, v)) for i, v in pts)
    (i0, v0), (i1, v1) = pts[0], pts[-1]
    x0, y0 = xy(i0, v0)
    x1, y1 = xy(i1, v1)
    return (
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="model race NLL by night, oldest to newest">'
        f'<polyline fill="none" stroke="#0f766e" stroke-width="2" points="{coords}"/>'
        f'<circle cx="{x0:.1f}" cy="{y0:.1f}" r="3" fill="#0f766e"/><circle cx="{x1:.1f}" cy="{y1:.1f}" r="3.5" fill="#0f766e"/>'
        f'<text x="{x0 - 6:.1f}" y="{y0 + 4:.1f}" text-anchor="end" font-size="12" fill="#4b5563">{v0:.4g}</text>'
        f'<text x="{x1 + 6:.1f}" y="{y1 + 4:.1f}" font-size="12" font-weight="600" fill="#111827">{v1:.4g}</text></svg>'
    )
