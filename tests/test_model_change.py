"""A new model set taking over: detected from the previous published run, named first in the email, and the
page-one numbers under each set, largest change first."""

from __future__ import annotations

import json

import pytest

from gruviz_core.model_change import moved, page_one_numbers

OLD = {"race_nll": {"model_mean": 1.70, "model": 1.72, "market": 1.66},
       "main_effect": {"diff": 0.010, "comparable": True},
       "gap_by_race_count": [{"bucket": "1", "diff": 0.077}, {"bucket": "41+", "diff": 0.028}]}
NEW = {"race_nll": {"model_mean": 1.68, "model": 1.69, "market": 1.66},
       "main_effect": {"diff": 0.012, "comparable": True},
       "gap_by_race_count": [{"bucket": "1", "diff": 0.030}, {"bucket": "41+", "diff": 0.027}]}


def test_a_headline_against_itself_moves_nothing():
    rows = moved(OLD, OLD)
    assert rows and all(change == 0.0 for *_, change in rows)


def test_the_number_that_moved_most_comes_first():
    label, before, after, change = moved(OLD, NEW)[0]
    assert label == "gap to the market, races 1" and change == pytest.approx(-0.047)
    nums = page_one_numbers(OLD)
    assert nums["gap to the market, seed ensemble"] == pytest.approx(0.04)
    assert "settled - settling, same step" not in page_one_numbers({"main_effect": {"diff": 0.1, "comparable": False}})


def _published(root, run_id: str, night: str, set_id: str, headline: dict):
    d = root / "runs" / run_id
    (d / "eval").mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": run_id, "night": night, "model_set_id": set_id}))
    (d / "eval" / "headline.json").write_text(json.dumps(headline))
    (d / "_COMPLETE").write_text("")
    (root / "runs" / "LATEST").write_text(run_id)


def test_the_stage_the_email_and_the_section(tmp_path):
    from flows.stages import model_change as stage
    from reports.sections.model_change import model_change_sections
    from storage.results import read_run_results

    root = tmp_path / "home"
    _published(root, "2026-11-24-aaaa", "2026-11-24", "set-old", OLD)
    tonight = tmp_path / "tmp-run"
    (tonight / "eval").mkdir(parents=True)
    (tonight / "eval" / "headline.json").write_text(json.dumps(NEW))

    same = stage.run(tonight, root, "set-old")
    assert same["changed"] is False and same["previous_set"] == "set-old"
    assert stage.email_lines(tonight) == {}
    assert model_change_sections(read_run_results(tonight, tables=())) == ()

    rec = stage.run(tonight, root, "set-new")
    assert rec["changed"] and rec["previous_set"] == "set-old" and rec["previous_night"] == "2026-11-24"
    assert rec["moved"][0]["number"] == "gap to the market, races 1"
    line = stage.email_lines(tonight)["Model set"]
    assert line.startswith("a new model set, set-new, took over from set-old") and "gap to the market, races 1" in line
    (section,) = model_change_sections(read_run_results(tonight, tables=()))
    assert section.panels[-1].table.rows[0][0] == "gap to the market, races 1"  # night against night
    assert "did not run" in section.panels[0].note  # no sequences given: the same-race comparison is not made


def test_the_first_night_and_a_failure_are_not_a_change(tmp_path):
    from flows.stages import model_change as stage

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    assert stage.run(run, tmp_path / "empty-home", "set-a")["changed"] is False
    (tmp_path / "bad" / "runs").mkdir(parents=True)
    (tmp_path / "bad" / "runs" / "LATEST").write_bytes(b"\xff\xfe")
    rec = stage.run(run, tmp_path / "bad", "set-a")
    assert rec["changed"] in (False, None)
