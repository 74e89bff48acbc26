"""`gruviz nightly`: run the nightly flow on demand."""

from __future__ import annotations

import argparse
from typing import Annotated

import typer

from flows.commands.options import (
    DEVICE_METAVAR,
    Home,
    Json,
    Quiet,
    ShowProgress,
    cohort_rules,
    device,
    namespace,
    progress_shown,
)
from flows.output import dumps_strict

__all__ = ["HELP", "MULTI_VALUE", "command", "run", "report_state"]

HELP = "Run the nightly flow now: ingest (optional), extract, statistics, report, email."
MULTI_VALUE = ("--source",)
CohortRule = cohort_rules()


def command(
    source: Annotated[list[str] | None, typer.Option(
        "--source", metavar="PATH...",
        help="form data to ingest first (files, directories, globs); default: GRUVIZ_SOURCES, else the latest snapshot")] = None,
    night: Annotated[str | None, typer.Option(
        "--date", metavar="YYYY-MM-DD", help="night of the run (default: today in GRUVIZ_TIMEZONE)")] = None,
    home: Home = None,
    model_set: Annotated[str | None, typer.Option("--model-set", help="model set id (default: the current one)")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", parser=device, metavar=DEVICE_METAVAR, help="torch device (default: GRUVIZ_DEVICE or auto)")] = None,
    cohort_rule: Annotated[CohortRule | None, typer.Option(
        "--cohort-rule", help="named cohort rule (default: GRUVIZ_COHORT_RULE)")] = None,
    as_json: Json = False,
    progress: ShowProgress = False,
    quiet: Quiet = False,
) -> int:
    """Progress: dogs extracted of all."""
    return run(namespace(
        source=source or None, night=night, home=home, model_set=model_set, device=device,
        cohort_rule=cohort_rule and cohort_rule.value,
        json=as_json, progress=progress, quiet=quiet))


def run(args: argparse.Namespace) -> int:
    from flows.nightly import nightly
    from flows.preflight import preflight_nightly
    from flows.server import prefect_api, signals_raise
    from flows.settings import load_settings

    rule = getattr(args, "cohort_rule", None)
    s = load_settings(home=args.home, device=args.device, cohort_rule=rule)
    preflight_nightly(s, night=args.night, model_set=args.model_set, sources=args.source or s.sources)  # before a server
    with signals_raise(), prefect_api():  # the temporary Prefect server dies with this command
        with progress_shown(args):
            state = nightly(source=args.source, night=args.night, home=args.home, model_set=args.model_set,
                            device=args.device, cohort_rule=rule, return_state=True)
        return report_state(state, as_json=args.json)


def report_state(state, *, as_json: bool = False) -> int:
    """Print where the report is and the flow run id; non-zero exit when the run did not complete."""
    run_id = str(state.state_details.flow_run_id)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException) or not isinstance(result, dict):
        result = {}
    out = {"flow_run_id": run_id, "state": state.name, "message": state.message, **result}
    if as_json:
        print(dumps_strict(out))
    else:
        if result.get("report"):
            print(f"report: {result['report']}")
            print(f"link:   {result['url']}")
        print(f"flow run: {run_id} ({state.name})")
        if not state.is_completed():
            print(f"message: {state.message}")
    return 0 if state.is_completed() else 1
