"""`gruviz serve [--port P] [--dir D] [--store S]`: serve the reports directory and the explorer on 127.0.0.1,
read-only. The explorer (`/explore`) reads the store's published runs through storage.explore."""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import urlsplit

from flows.settings import load_settings
from reports.explorer import ExplorerApp
from reports.serve import HOST, make_server
from storage.explore import ExploreStore

__all__ = ["HELP", "add_arguments", "run", "resolve", "explorer"]

HELP = "Serve the published reports and the explorer on 127.0.0.1 (read-only, GET/HEAD only)."
DEFAULT_PORT = 8765


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (default: the port of GRUVIZ_REPORTS_BASE_URL, else 8765; 0 = any free port)",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="reports directory (default: settings' reports path, <GRUVIZ_HOME>/reports)",
    )
    p.add_argument(
        "--store",
        type=str,
        default=None,
        help="store root whose published runs the explorer reads (default: GRUVIZ_HOME)",
    )
    p.add_argument("--quiet", action="store_true", help="do not log each request")


def resolve(args: argparse.Namespace) -> tuple[Path, int]:
    """The directory and port to serve: flags first, then settings."""
    s = load_settings()
    directory = Path(args.dir) if args.dir is not None else s.reports_path
    port = args.port
    if port is None:
        try:
            port = urlsplit(s.reports_base_url).port or DEFAULT_PORT
        except ValueError:
            port = DEFAULT_PORT
    return directory.expanduser().resolve(), int(port)


def explorer(store: str | Path | None) -> ExplorerApp:
    """The explorer over the store root (`--store`, else GRUVIZ_HOME): a directory or an fsspec URL."""
    return ExplorerApp(ExploreStore(store if store is not None else load_settings().home))


def run(args: argparse.Namespace) -> int:
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
