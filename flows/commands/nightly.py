"""`gruviz nightly`: run the nightly flow on demand."""

from __future__ import annotations

import argparse

from flows.output import dumps_strict

HELP = "Run the nightly flow now: ingest (optional), extract, statistics, report, email."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", nargs="+", help="Form data to ingest first (files, directories, globs); default: the latest snapshot")
    p.add_argument("--date", dest="night", help="Night of the run, YYYY-MM-DD (default: today in GRUVIZ_TIMEZONE)")
    p.add_argument("--home", help="Store root (default GRUVIZ_HOME or ./gruviz-data)")
    p.add_argument("--model-set", help="Model set id (default: the current one)")
    p.add_argument("--device", help="Torch device (default GRUVIZ_DEVICE or auto)")
    p.add_argument("--json", action="store_true", help="Print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    from flows.nightly import nightly
    from flows.preflight import preflight_nightly
    from flows.server import prefect_api, signals_raise
    from flows.settings import load_settings

    s = load_settings(home=args.home, device=args.device)
    preflight_nightly(s, night=args.night, model_set=args.model_set, sources=args.source)  # before a server starts
    with signals_raise(), prefect_api():  # the temporary Prefect server dies with this command
        state = nightly(source=args.source, night=args.night, home=args.home, model_set=args.model_set,
                        device=args.device, return_state=True)
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
