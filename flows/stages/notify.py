"""The notify stage's content: the labelled headline numbers that the email and the summary artifact share."""

from __future__ import annotations

from reports.email import email_summary
from storage.results import read_run_results

__all__ = ["email_lines"]


def email_lines(run_dir: str, watchlist: list[str]) -> dict[str, str]:
    """The email's labelled lines: page one's sentences, the typical dogs (the page's exemplar rule) and watchlist dogs."""
    results = read_run_results(run_dir, tables=("dog",))
    dogs = None
    if results.dog is not None:
        dogs = results.dog[["dog_index", "dog_id", "dog_name", "cohort", "plateau_step", "n_steps", "mean_s", "cohort_layer"]]
        dogs = dogs[dogs["cohort_layer"]]
    return email_summary(dict(results.headline), dogs, tuple(watchlist))
