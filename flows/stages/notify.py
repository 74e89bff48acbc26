"""The notify stage's content: the labelled headline numbers that the email and the summary artifact share."""

from __future__ import annotations

from reports.email import email_summary
from storage.results import read_run_results

__all__ = ["email_lines"]


def email_lines(run_dir: str, watchlist: list[str]) -> dict[str, str]:
    """Labelled headline numbers for the email, with exemplar and watchlist dogs by name."""
    results = read_run_results(run_dir, tables=("dog",))
    dogs = None
    if results.dog is not None:
        dogs = results.dog[["dog_id", "dog_name", "cohort", "plateau_step", "cohort_layer"]]
        dogs = dogs[dogs["cohort_layer"]]
    return email_summary(dict(results.headline), dogs, tuple(watchlist))
