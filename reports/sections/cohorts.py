"""The comparison section: settled vs settling races with its checks (within dog, the (w, delta, k) grid, the
market's own difference, the negative control), the reliance dose-response and the groups by races already
run; the numbers behind <details>. Calibration moved to the diagnostics (`reports.sections.saturation`)."""

from __future__ import annotations

from collections.abc import Mapping

from gruviz_core.results import RunResults
from reports.headline import record
from reports.model import Panel, Section
from reports.prose import COHORT_EXPLAIN, INTRO
from reports.sections.status import checks_panel, checks_table, dose_panel, status_panel

__all__ = ["comparison_section"]

_TITLE = "Settled vs settling races: associations, out of sample"


def comparison_section(results: RunResults) -> Section:
    """Is information saturation associated with the model's skill against the market, and do the checks agree."""
    head = record(results.headline)
    period = head.get("period") if isinstance(head.get("period"), Mapping) else {}
    if period.get("too_small"):
        note = COHORT_EXPLAIN["too-small-period"].format(
            races=int(period.get("races") or 0), min_races=int(period.get("min_races") or 0)
        )
        return Section("comparison", _TITLE, INTRO["comparison"], (Panel("Comparisons", "", note=note),))
    panels = [checks_panel(head), dose_panel(head), *status_panel(results.status_compare)]
    table = checks_table(head)
    if table is not None:
        panels.append(table)
    return Section("comparison", _TITLE, INTRO["comparison"], tuple(panels))
