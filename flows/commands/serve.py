"""`gruviz serve [--port P] [--dir D] [--store S]`: serve the reports directory and the explorer on 127.0.0.1,
read-only. The explorer (`/explore`) reads the store's published runs through storage.explore."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import typer

from flows.commands.options import namespace

if TYPE_CHECKING:
    from reports.explorer import ExplorerApp

__all__ = ["HELP", "command", "run", "resolve", "explorer"]

HELP = "Serve the published reports and the explorer on 127.0.0.1 (read-only, GET/HEAD only)."
DEFAULT_PORT = 8765


def command(
    port: Annotated[int | None, typer.Option(
        "--port", min=0, max=65535,
        help="port (default: the port of GRUVIZ_REPORTS_BASE_URL, else 8765; 0 = any free port)")] = None,
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="reports directory (default: settings' reports path, <GRUVIZ_HOME>/reports)")] = None,
    store: Annotated[str | None, typer.Option(
        "--store", help="store root whose published runs the explorer reads (default: GRUVIZ_HOME)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="do not log each request")] = False,
) -> int:
    return run(namespace(port=port, dir=directory, store=store, quiet=quiet))


def resolve(args: argparse.Namespace) -> tuple[Path, int]:
    """The directory and port to serve: flags first, then settings."""
    from flows.settings import load_settings

    s = load_settings()
    directory = Path(args.dir) if args.dir is not None else s.reports_path
    port = args.port
    if port is None:
        try:
            port = urlsplit(s.reports_base_url).port or DEFAULT_PORT
        except ValueError:
            port = DEFAULT_PORT
    return directory.expanduser().resolve(), int(port)


def explorer(store: str | None) -> ExplorerApp:
    """The explorer over the store root (`--store`, else GRUVIZ_HOME): a directory or an fsspec URL."""
    from flows.settings import load_settings
    from reports.explorer import ExplorerApp
    from storage.explore import ExploreStore

    return ExplorerApp(ExploreStore(store if store is not None else load_settings().home))


def run(args: argparse.Namespace) -> int:
    from reports.serve import HOST, make_server

    directory, port = resolve(args)
    server = make_server(directory, port=port, quiet=args.quiet, explore=explorer(getattr(args, "store", None)))
    print(f"serving {directory} at http://{HOST}:{server.server_port}/ (read-only; Ctrl-C to stop); "
          f"explorer at http://{HOST}:{server.server_port}/explore", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
