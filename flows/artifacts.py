"""The Prefect artifacts a run leaves in the UI: the nightly's report link, headline summary, cohort metrics
table and extraction progress; the train flow's validation summary."""

from __future__ import annotations

import html
import json

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

__all__ = ["ExtractionProgress", "nightly_artifacts", "train_artifacts"]


class ExtractionProgress:
    """The run's "extraction-progress" artifact: the share of dogs extracted, in percent."""

    def __init__(self) -> None:
        self._id = create_progress_artifact(0.0, key="extraction-progress", description="Dogs extracted (%)")

    def update(self, done: int, total: int) -> None:
        """Set it to `done` of `total` dogs (a dog straddling two blocks counts twice: capped at 100)."""
        update_progress_artifact(self._id, min(100.0, 100.0 * done / max(total, 1)))


def nightly_artifacts(url: str, night: str, lines: dict[str, str], run_dir: str) -> None:
    """The report link, the headline `lines` as a markdown table, and the run's cohort metrics table."""
    create_link_artifact(url, link_text=f"gruviz report {night}", key="nightly-report",
                         description="The published nightly report")
    md = [f"# gruviz nightly {night}", "", f"[Open the report]({url})", "", "| | |", "|---|---|"]
    md += [f"| {_md(k)} | {_md(v)} |" for k, v in lines.items()]
    create_markdown_artifact("\n".join(md), key="nightly-summary", description="Headline numbers")
    metrics = _cohort_metrics_rows(run_dir)
    if metrics:
        create_table_artifact(metrics, key="cohort-metrics", description="Cohort metrics with 95% intervals")


def train_artifacts(report: dict) -> None:
    """The model set's scalar facts and validation metrics (TrainReport.to_dict()) as markdown."""
    lines = [f"# Model set `{report.get('set_id')}`", ""]
    lines += [f"- **{k}**: {v}" for k, v in report.items() if not isinstance(v, (dict, list))]
    create_markdown_artifact("\n".join(lines), key="train-summary", description="Validation metrics vs baselines")


def _md(text: str) -> str:
    """Data text safe inside a markdown table cell (the UI renders markdown)."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _cohort_metrics_rows(run_dir: str) -> list[dict]:
    from storage.tables import has_table, read_table

    if not has_table(run_dir, "cohort_metrics"):
        return []
    df = read_table(run_dir, "cohort_metrics").round(5)
    return json.loads(df.to_json(orient="records"))
