"""The grade parser on the grade strings found in the real Iggy, thedogs and GBGB files (one table)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gruviz_core.grades import GRADE_KINDS, grade_table, parse_grade

NAN = float("nan")

# (string as the source writes it, level, kind); Iggy strings are those of the Race Name field of the real files
TABLE = [
    ("Gr5", 5.0, "graded"), ("Gr4/5", 4.5, "graded"), ("Gr6", 6.0, "graded"), ("Gr6/7", 6.5, "graded"),
    ("Gr3/4", 3.5, "graded"), ("Gr7", 7.0, "graded"), ("Gr1/2/3", 2.0, "graded"), ("Gr 5/6", 5.5, "graded"),
    ("Gr 3/4/5", 4.0, "graded"), ("G5/6", 5.5, "graded"), ("G2/3/4", 3.0, "graded"),
    ("Mdn", 8.0, "maiden"), ("Nvce", 7.0, "novice"), ("Mdn/Gr6", 7.0, "graded"), ("Mdn/Gr5", 6.5, "graded"),
    ("Gr4/5/Mdn", 17.0 / 3.0, "graded"), ("Mdn/Gr4/5", 17.0 / 3.0, "graded"),
    ("M5", 5.0, "graded"), ("M2/3", 2.5, "graded"), ("M1/2/3", 2.0, "graded"), ("M2/M3", 2.5, "graded"),
    ("M12", 1.5, "graded"), ("M123", 2.0, "graded"), ("M/123", 2.0, "graded"), ("M1/M2/M3", 2.0, "graded"),
    ("C0", 0.0, "graded"), ("C4/5", 4.5, "graded"), ("B8", 8.0, "graded"),
    ("FFA", 0.0, "open"), ("Grp1", 0.0, "open"), ("Grp3", 0.0, "open"), ("Listed", 0.0, "open"),
    ("Inv", 0.0, "open"), ("INV", 0.0, "open"),
    ("Heat", NAN, "heat"), ("Heats", NAN, "heat"), ("Final", NAN, "final"), ("Semi", NAN, "final"),
    ("Rest", NAN, "restricted"), ("N/G", NAN, "non_graded"), ("S/E", NAN, "other"), ("Vets", NAN, "other"),
    ("Juv", NAN, "other"), ("Juv/Mdn", NAN, "other"), ("Match Race Outright Winner", NAN, "other"),
    ("TG1-4W", NAN, "other"),
    # thedogs form guides: the G column
    ("5", 5.0, "graded"), ("Maiden", 8.0, "maiden"), ("Novice", 7.0, "novice"), ("NG", NAN, "non_graded"),
    ("Grade 5", 5.0, "graded"), ("Tier 3 - Grade 5", 5.0, "graded"), ("Free For All", 0.0, "open"),
    ("Restricted Win", NAN, "restricted"),
    # GBGB raceClass: A1..A11 (A11 is grade 11), open races, sprint/stayers/hurdles ladders
    ("A4", 4.0, "graded"), ("A11", 11.0, "graded"), ("OR", 0.0, "open"), ("OR3", 0.0, "open"),
    ("D3", 3.0, "graded"), ("S6", 6.0, "graded"), ("HP", NAN, "other"), ("IV", 0.0, "open"),
    ("", NAN, "unknown"), ("???", NAN, "unknown"),
]


@pytest.mark.parametrize(("text", "level", "kind"), TABLE)
def test_grade_strings(text, level, kind):
    g = parse_grade(text)
    assert g.kind == kind and g.kind in GRADE_KINDS
    if np.isnan(level):
        assert np.isnan(g.level)
    else:
        assert g.level == pytest.approx(level)


def test_grade_table_parses_each_distinct_string_and_keeps_missing():
    s = pd.Series(["Gr5", None, "Heat", "Gr5"], dtype="string")
    t = grade_table(s)
    np.testing.assert_allclose(t["level"].to_numpy(), [5.0, NAN, NAN, 5.0])
    assert t["kind"].tolist() == ["graded", "unknown", "heat", "graded"]
