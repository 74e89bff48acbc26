"""Grade strings of the Iggy, thedogs and GBGB formats -> a class level and a kind, from one table.

A level is a number on the source's own ladder, lower = better class: open class (FFA, group,
listed, invitation, GBGB OR) 0, grades 1..7 as written (a range such as 'Gr4/5' is its mean),
novice 7, maiden 8. A kind says what sort of race it is where the string says no class
('Heat', 'Final', 'Rest', 'N/G', 'S/E', 'Vets', ...): those have no level (NaN) but a kind, so
the model can still tell a heat from a non-graded race. 'Grp3' is group class (level 0), not
grade 3; 'Mdn/Gr6' is the mean of maiden and grade 6.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Grade", "GRADE_KINDS", "parse_grade", "grade_table"]

OPEN_LEVEL = 0.0
"""Level of open-class races (FFA, group, listed, invitation, GBGB open race)."""
NOVICE_LEVEL = 7.0
"""Level of a novice race."""
MAIDEN_LEVEL = 8.0
"""Level of a maiden race (below the lowest grade)."""


@dataclass(frozen=True)
class Grade:
    """One parsed grade string."""

    level: float
    """Class level, lower = better (0 open class, 1..7 grades, 8 maiden); NaN when the string gives none."""
    kind: str
    """One of GRADE_KINDS."""


GRADE_KINDS: tuple[str, ...] = (
    "graded", "maiden", "novice", "open", "heat", "final", "restricted", "non_graded", "other", "unknown",
)
"""What sort of race: the kinds the context carries as flags ('unknown': empty or unparsed)."""

# (pattern on the normalised string, kind, level or None for 'from the digits'); first match wins.
# Words that name a series stage come first: 'Heat', 'Semi', 'Final' say nothing of the class.
_WORDS: tuple[tuple[str, str, float | None], ...] = (
    (r"^heats?$|\bheat\b", "heat", np.nan),
    (r"semi|final", "final", np.nan),
    (r"^rest\b|restricted", "restricted", np.nan),
    (r"^n/?g$|non[- ]?graded", "non_graded", np.nan),
    (r"^(grp|group|g)\s*[1-3]$|^grp|group|listed|^ffa$|free for all|^inv\b|invit|^or\d*$|^iv$|open|^ks$", "open",
     OPEN_LEVEL),
    (r"^s/?e$|special|vets?\b|veteran|juv|match|^hp$|^hcp$|handicap|trial|^tg", "other", np.nan),
)
_MAIDEN = re.compile(r"ma?i?de?n|mdn")
_NOVICE = re.compile(r"nov|nvce")
_TIER = re.compile(r"tier\s*\d+\s*-?\s*")
_LADDER = re.compile(r"(gr?(?:ade)?|grd|[a-z]|mixed|class)?\s*(\d+)(?:\s*-\s*(\d+))?")
_PREFIX_ONLY = re.compile(r"gr?|m")


def parse_grade(text: object) -> Grade:
    """One grade string -> Grade (level, kind); see the module docstring for the ladder."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or text is pd.NA:
        return Grade(np.nan, "unknown")
    g = _TIER.sub("", str(text).strip().lower()).strip()
    if not g:
        return Grade(np.nan, "unknown")
    for pattern, kind, level in _WORDS:
        if re.search(pattern, g):
            return Grade(float(level), kind)
    levels, kinds, alone = [], [], ""
    for p in (p.strip() for p in g.split("/")):
        if not p or _PREFIX_ONLY.fullmatch(p):  # 'M/123': the prefix stands alone, and holds for what follows
            alone = p
            continue
        if _MAIDEN.search(p):
            levels.append(MAIDEN_LEVEL)
            kinds.append("maiden")
            continue
        if _NOVICE.search(p):
            levels.append(NOVICE_LEVEL)
            kinds.append("novice")
            continue
        m = _LADDER.fullmatch(p)
        if not m:
            return Grade(np.nan, "unknown")
        prefix, num, upper = m.group(1) or alone, m.group(2), m.group(3)
        if upper:  # '1-4': a range
            levels.append((int(num) + int(upper)) / 2.0)
        elif prefix in ("m", "gr", "g") and len(num) > 1 and len(num) <= 3:  # 'M123', 'M12': mixed grades 1, 2, 3
            levels.extend(float(d) for d in num)
        else:  # GBGB 'A11' is grade 11
            levels.append(float(num))
        kinds.append("graded")
    if not levels:
        return Grade(np.nan, "unknown")
    return Grade(float(np.mean(levels)), kinds[0] if len(set(kinds)) == 1 else "graded")


def grade_table(grades: pd.Series) -> pd.DataFrame:
    """(n,) grade strings -> DataFrame with float `level` and string `kind`, parsed once per distinct string."""
    s = grades.astype("string")
    uniq = pd.unique(s.fillna(""))
    parsed = {u: parse_grade(u) for u in uniq}
    key = s.fillna("")
    return pd.DataFrame({
        "level": key.map({u: g.level for u, g in parsed.items()}).astype(np.float64).to_numpy(),
        "kind": key.map({u: g.kind for u, g in parsed.items()}).astype(str).to_numpy(),
    }, index=grades.index)
