"""When a new model set took over tonight: which, from which, and the page-one numbers under each (eval/model_change)."""

from __future__ import annotations

from gruviz_core.results import RunResults
from reports.model import Panel, Section, Table, sig

__all__ = ["model_change_sections"]

_ID, _TITLE = "model-change", "A new model set took over"
_INTRO = ("Tonight's model set is not the one that ran last night. Before reading a change in tonight's numbers as "
          "a change in the dogs, read how the numbers moved with the model.")
_EXPLAIN = ("Page-one numbers (nats per runner) under last night's set on last night's data, and under tonight's set "
            "on tonight's: largest change first. Both the model and a night of data changed between them; the same "
            "races under both sets are not compared here.")


def model_change_sections(results: RunResults) -> tuple[Section, ...]:
    """The section when a new set took over; none on an ordinary night."""
    rec = results.model_change_record
    if not rec or not rec.get("changed"):
        return ()
    intro = (f"{_INTRO} Tonight: {rec.get('current_set')}; last night ({rec.get('previous_night') or '?'}, run "
             f"{rec.get('previous_run') or '?'}): {rec.get('previous_set')}.")
    rows = tuple((str(m["number"]), sig(m["before"]), sig(m["after"]), sig(m["change"]))
                 for m in rec.get("moved") or [] if isinstance(m, dict))
    if not rows:
        note = "Last night's run has no headline numbers to set against tonight's."
        return (Section(_ID, _TITLE, intro, (Panel("Numbers under each set", "", note=note),)),)
    table = Table(("number", f"last night ({rec.get('previous_set')})", f"tonight ({rec.get('current_set')})",
                   "change"), rows)
    return (Section(_ID, _TITLE, intro, (Panel("Numbers under each set", _EXPLAIN, table=table),)),)
