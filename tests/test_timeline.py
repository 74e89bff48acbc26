"""The index of nights shows the model-set timeline: which set ran which night, and where it changed."""

from __future__ import annotations

from reports.render import plotly_js_path, render_index
from storage.site import list_nights, publish_report


def test_the_index_names_each_nights_set_and_marks_the_change(tmp_path):
    for night, set_id in (("2026-11-20", "set-old"), ("2026-11-21", "set-old"), ("2026-11-22", "set-new"),
                          ("2026-11-23", "set-new")):
        publish_report("<html></html>", tmp_path, night, headline={}, plotly_js=plotly_js_path(),
                       render_index=render_index, facts={"model_set_id": set_id})
    publish_report("<html></html>", tmp_path, "2026-11-19", headline={}, plotly_js=plotly_js_path(),
                   render_index=render_index)  # a night published before the timeline: no set recorded
    nights = {n["night"]: n for n in list_nights(tmp_path)}
    assert nights["2026-11-19"]["model_set_id"] is None
    assert [nights[d]["model_changed"] for d in sorted(nights)] == [False, False, False, True, False]
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert 'id="model-sets"' in page
    assert "2026-11-22: set-new <strong>took over from the night before</strong>" in page
    assert "2026-11-20 (first listed): set-old" in page
    assert page.count("<strong>new</strong>") == 1
