"""The notify stage's content: the labelled headline numbers that the email and the summary artifact share."""

from __future__ import annotations

from pathlib import Path

from flows.stages.report import headline_of
from reports.email import email_summary
from storage.tables import has_table, read_table

__all__ = ["email_lines"]


def email_lines(run_dir: str, watchlist: list[str]) -> dict[str, str]:
    """Labelled headline numbers for the email, with exemplar and watchlist dogs by name."""
    run = Path(run_dir)
    dogs = None
    if has_table(run, "dog"):
        dogs = read_table(run, "dog", columns=["dog_id", "dog_name", "cohort", "plateau_step", "cohort_layer"])
        dogs = dogs[dogs["cohort_layer"]]
    return email_summary(headline_of(run), dogs, tuple(watchlist))
