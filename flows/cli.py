"""The `gruviz` command line (Typer): one module per subcommand under flows/commands/.

Each module `flows/commands/<name>.py` defines `HELP: str` and either `command` (a function whose
typed parameters are the options) or `app` (a Typer of subcommands, e.g. `model register|list`);
`run(args) -> int` does the work. A command whose module is missing is simply not offered.
`MULTI_VALUE` names options that take several values after one flag (`--source a.csv b.csv`).

main(argv) returns the exit code: 0 done, 1 a run that did not complete, 2 a usage error (bad
option or value, at parse time), a GruvizError, or a full or read-only disk, a denied file or an
unreachable object store (flows.failures) (`gruviz <command>: error: ...` on stderr, no traceback).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import typer

from flows.failures import described
from gruviz_core.errors import GruvizError

__all__ = ["main", "app", "COMMANDS"]

COMMANDS = ("demo", "synth", "ingest", "train", "model", "nightly", "serve")
HELP = "Look inside GRU models of greyhound race form."


def _modules() -> dict[str, ModuleType]:
    modules = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f"flows.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"flows.commands.{name}":
                continue
            raise
    return modules


def app(modules: dict[str, ModuleType] | None = None) -> typer.Typer:
    """The Typer application with every command module found."""
    root = typer.Typer(name="gruviz", help=HELP, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})
    for name, mod in (modules or _modules()).items():
        sub = getattr(mod, "app", None)
        if isinstance(sub, typer.Typer):
            root.add_typer(sub, name=name, help=mod.HELP)
        else:
            root.command(name, help=mod.HELP)(mod.command)
    return root


def main(argv: list[str] | None = None) -> int:
    # Prefect's temporary server would send telemetry from its SQLite database while the flow writes to it
    # ("database is locked" tracebacks on a busy machine); the user can still turn it on.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    modules = _modules()
    name = next((a for a in argv if not a.startswith("-")), "")
    multi = getattr(modules.get(name), "MULTI_VALUE", ())
    command = typer.main.get_command(app(modules))
    try:
        return int(command.main(args=_repeat_multi(argv, multi), prog_name="gruviz", standalone_mode=False) or 0)
    except GruvizError as exc:
        print(f"gruviz {name}: error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:  # --help
        return int(getattr(exc, "exit_code", 0) or 0)
    except typer.Abort:  # Ctrl-C, SIGTERM (flows.server.signals_raise): cleanups have run
        print("gruviz: interrupted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # a usage error: unknown option, bad value, at parse time
        _usage_error(exc)
        return int(getattr(exc, "exit_code", 2))
    except Exception as exc:  # a full or read-only disk, a denied file, an unreachable endpoint: said, not traced
        said = described(exc, _home(argv))
        if said is None:
            raise
        print(f"gruviz {name}: error: {said}", file=sys.stderr)
        return 2


def _home(argv: list[str]) -> str:
    """The store the command was given (--home, else GRUVIZ_HOME), as the user wrote it, for an error message."""
    for i, arg in enumerate(argv):
        if arg == "--home" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--home="):
            return arg.split("=", 1)[1]
    try:
        from flows.settings import load_settings

        return str(load_settings().home)
    except Exception:  # noqa: BLE001 - a settings error is not the error being described
        return os.environ.get("GRUVIZ_HOME") or "./gruviz-data"


def _usage_error(exc: Exception) -> None:
    """Usage, then `gruviz <command>: error: <what>` on stderr (argparse's shape)."""
    ctx = getattr(exc, "ctx", None)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = message.replace("Value error, ", "")  # pydantic's prefix on a refused choice or parser value
    if ctx is not None and not message:  # no command: the help was shown
        return
    if ctx is not None:
        print(ctx.get_usage(), file=sys.stderr)
        print(f"{ctx.command_path}: error: {message} (see {ctx.command_path} --help)", file=sys.stderr)
    else:
        print(f"gruviz: error: {message}", file=sys.stderr)


def _repeat_multi(argv: list[str], multi: tuple[str, ...]) -> list[str]:
    """`--source a b --json` -> `--source a --source b --json` for the options in `multi` (argparse's nargs='+')."""
    out: list[str] = []
    flag = None
    for arg in argv:
        if arg in multi:
            flag = arg
            out.append(arg)
        elif flag is not None and not arg.startswith("-") and out[-1] != flag:
            out += [flag, arg]
        else:
            if arg.startswith("-"):
                flag = None
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
