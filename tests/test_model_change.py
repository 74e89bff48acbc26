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


def _same(cka_hi: float = 0.75) -> dict:
    """A same-race record as the stage writes it (two numbers, two CKA races)."""
    row = {"number": "race NLL, seed ensemble", "unit": "nats per race", "n": 500, "before": 1.68, "before_lo": 1.62,
           "before_hi": 1.74, "after": 1.85, "after_lo": 1.82, "after_hi": 1.89, "change": 0.17, "lo": 0.12,
           "hi": 0.22}
    effect = {**row, "number": "settled - settling, same step", "unit": "nats per runner, model - market",
              "change": 0.038, "lo": None, "hi": None}
    cka = [{"step": t, "n": 1000, "cka": 0.7, "lo": 0.66, "hi": cka_hi, "cka_perm": 0.0} for t in (1, 20)]
    return {"previous_set": "set-old", "current_set": "set-new", "previous_seeds": [0, 1], "current_seeds": [0, 1],
            "races": 505, "runners": 3596, "dogs": 2999, "start": "2026-03-03", "end": "2026-06-30",
            "numbers": [row, effect], "disagreement": {}, "status_agreement": [], "cka": cka, "error": None}


def test_the_section_says_only_what_its_numbers_show():
    """Iggy, issue 29: 'below 0 is better for every number' was said of settled - settling too (a difference between
    groups of dogs); 'within one set the seeds' CKA sits near its ceiling' was said with no number behind it; the
    night-against-night panel called race NLL 'nats per runner'."""
    import pandas as pd

    from gruviz_core.results import RunResults
    from reports.sections.model_change import model_change_sections

    seeds = pd.DataFrame({"step": [1, 20], "seed_a": 0, "seed_b": 1, "cka": [0.99, 0.97]})
    rec = {"changed": True, "current_set": "set-new", "previous_set": "set-old", "previous_night": "2026-12-08",
           "moved": [{"number": "race NLL, seed ensemble", "before": 1.669, "after": 1.823, "change": 0.154}],
           "same_races": _same()}

    def panels(seed_cka, **same):
        results = RunResults(name="x", meta={}, summary=None, headline={}, cka=seed_cka,
                             model_change_record={**rec, "same_races": {**_same(), **same}})
        (section,) = model_change_sections(results)
        return {p.title: p for p in section.panels}

    got = panels(seeds)
    same = got["The two sets on the same races"].explain
    assert "every number" not in same and "settled - settling is a difference between two groups" in same
    cka = got["The two sets' states (CKA)"]
    assert cka.table.columns[-1] == "tonight's seeds (CKA)" and [r[-1] for r in cka.table.rows] == [0.99, 0.97]
    assert "CKA is 0.70 to 0.70, their seeds' 0.97 to 0.99" in cka.explain
    assert "at all 2 races the two sets' interval lies below" in cka.explain and "ceiling" not in cka.explain
    high = panels(seeds, cka=_same(cka_hi=0.98)["cka"])["The two sets' states (CKA)"].explain
    assert "at 1 of these 2 races" in high and "represents the dogs differently" not in high  # 0.98 > 0.97 at race 20
    assert "no CKA between its own seeds" in panels(None)["The two sets' states (CKA)"].explain
    nights = got["Numbers under each set, night against night"].explain
    assert "race NLL and the overall gap to the market in nats per race" in nights


def test_the_email_gives_a_per_race_number_its_unit(tmp_path):
    from flows.stages import model_change as stage
    from gruviz_core.model_change import unit_of

    assert unit_of("race NLL, seed 0") == unit_of("gap to the market, seed ensemble") == "nats per race"
    assert unit_of("gap to the market, races 1") == unit_of("settled - settling, same step") == "nats per runner"
    root = tmp_path / "home"
    _published(root, "2026-11-24-aaaa", "2026-11-24", "set-old", OLD)
    tonight = tmp_path / "tmp-run"
    (tonight / "eval").mkdir(parents=True)
    worse = {**NEW, "race_nll": {"model_mean": 1.90, "model": 1.91, "market": 1.66}}
    (tonight / "eval" / "headline.json").write_text(json.dumps(worse))
    stage.run(tonight, root, "set-new")
    line = stage.email_lines(tonight)["Model set"]
    assert "moved most: race NLL, seed ensemble" in line and "nats per race, last night's" in line
