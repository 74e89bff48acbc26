"""Data quality: the determinism watch (eval/determinism.json): watched dogs with the same races as last night,
under the same model set, must have the same stored states."""

from __future__ import annotations

from gruviz_core.results import RunResults
from reports.model import Panel, Section, Table, sig

__all__ = ["determinism_section"]

_ID, _TITLE = "determinism", "Data quality: determinism watch"
_INTRO = ("Does the same model on the same history give the same states tonight as last night? Watched dogs whose "
          "races did not change since last night, under the same model set, must have identical stored states "
          "(float16), gates and scores; a difference means the code, the settings, the libraries or the device "
          "changed what the model computes.")


def determinism_section(results: RunResults) -> Section:
    """The flagged dogs with their first differing race and the likely cause; collapsed when nothing is flagged."""
    rec = results.determinism_record
    if rec is None:
        return _note("Not computed for this run: the determinism watch did not run (eval/determinism.json is missing).")
    if rec.get("error"):
        return _note(f"The determinism watch failed: {rec['error']}. The rest of the report does not depend on it.")
    if not rec.get("checked"):
        return _note(f"Not checked tonight: {rec.get('note') or 'no reason recorded'}.")
    flagged = rec.get("flagged") or []
    scope = (f"{int(rec.get('compared') or 0)} of {int(rec.get('watched') or 0)} watched dogs ({rec.get('source')}) "
             f"had the same races as in run {rec.get('previous_run')} ({rec.get('previous_night')}); "
             f"{int(rec.get('history_changed') or 0)} raced or changed and were not compared.")
    if rec.get("missing"):
        scope += " Not found in both runs: " + ", ".join(map(str, rec["missing"][:10])) + "."
    if not flagged:
        return Section(_ID, _TITLE, _INTRO, (Panel("Watched dogs", scope, note="Every compared dog's states are "
                                                   "identical to last night's." + (f" {rec['note']}" if rec.get("note") else "")),),
                       collapsed=True)
    causes = "; ".join(rec.get("causes") or []) or "unknown"
    rows = tuple((str(f.get("dog_name") or ""), str(f["dog_id"]), int(f["seed"]), int(f["first_step"]),
                  str(f.get("race_date") or ""), ", ".join(f.get("arrays") or []), sig(f.get("max_abs"), 3))
                 for f in flagged)
    table = Table(("dog", "id", "seed", "first differing race", "its date", "differs in", "max |difference|"), rows)
    return Section(_ID, _TITLE, _INTRO, (Panel("Dogs whose states changed", f"{scope} Likely cause: {causes}.",
                                               table=table),))


def _note(text: str) -> Section:
    return Section(_ID, _TITLE, _INTRO, (Panel("Determinism watch", "", note=text),), collapsed=True)
