"""A read-only static server for the reports directory, on loopback only.

GET and HEAD only (anything else: 405); only for a Host of 127.0.0.1 or localhost at its port (421: DNS
rebinding); no path outside the directory is reachable (`..`, encoded
`%2e%2e`, backslashes and symlinks pointing out all answer 404); no directory listings; no dotfiles
(`.publish.lock`, `.deleted.*`, editor droppings: 404); a connection idle for `idle_timeout_s` is closed.
"""

from __future__ import annotations

import errno
import os
import posixpath
import sys
from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gruviz_core.errors import ConfigError

__all__ = ["ReportsHandler", "make_server", "HOST"]

IDLE_TIMEOUT_S = 30.0
"""Seconds a connection may stay silent before the server closes it (a stuck client holds no thread)."""
HOST = "127.0.0.1"
"""The only address the server binds: reports are for this machine (put a real web server in front to share)."""

# Belt and braces for "nothing leaves the machine": the page may only load from this server. plotly.js
# needs 'unsafe-eval' (its animations stop without it) and the figures are inline scripts.
_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class ReportsHandler(SimpleHTTPRequestHandler):
    """Static files under `directory`, read-only."""

    server_version = "gruviz-serve"
    sys_version = ""
    quiet = False
    explore: Callable[[str], Any] | None = None
    """Answers `/explore...` targets with .status and .html (reports.explorer.ExplorerApp); None: no explorer."""

    def version_string(self) -> str:
        return self.server_version

    def _resolve(self) -> str | None:
        """The file a request names, or None when it would leave the served directory."""
        root = os.path.realpath(self.directory)
        raw = unquote(urlsplit(self.path).path, errors="strict") if "%" in self.path else urlsplit(self.path).path
        parts = raw.split("/")
        if any(p.startswith(".") or "\\" in p or "\x00" in p for p in parts):  # '..', '.', dotfiles
            return None
        full = os.path.realpath(os.path.join(root, *[p for p in parts if p]))
        if full != root and not full.startswith(root + os.sep):
            return None
        if any(p.startswith(".") for p in os.path.relpath(full, root).split(os.sep) if p != "."):
            return None  # a symlink that lands on a dotfile inside
        if raw.endswith("/") and not full.endswith(os.sep):
            full += os.sep  # keep the trailing slash: SimpleHTTPRequestHandler redirects on it
        return full

    def translate_path(self, path: str) -> str:  # noqa: D401 - http.server's hook
        resolved = self._resolve()
        # A path that does not exist: the base class answers 404.
        return (
            resolved if resolved is not None else posixpath.join(os.path.realpath(self.directory), ".gruviz-not-found")
        )

    def _host_ok(self) -> bool:
        """The Host header names this server (127.0.0.1 or localhost, with its port), or is absent (HTTP/1.0): a
        page on another site whose name was rebound to 127.0.0.1 (DNS rebinding) sends its own name and is refused."""
        host = self.headers.get("Host")
        if host is None:
            return True
        port = self.server.server_address[1]
        names = ("127.0.0.1", "localhost")
        allowed = {f"{n}:{port}" for n in names} | (set(names) if port == 80 else set())
        return host.strip().lower() in allowed

    def send_head(self):  # type: ignore[override]
        if not self._host_ok():
            self.send_error(421, "Misdirected Request: this server answers only for 127.0.0.1 and localhost")
            return None
        if self.explore is not None and (self.path == "/explore" or self.path.startswith(("/explore/", "/explore?"))):
            return self._send_explore()
        try:
            resolved = self._resolve()
        except UnicodeDecodeError:
            resolved = None
        if resolved is None:
            self.send_error(404, "Not found")
            return None
        return super().send_head()

    def _send_explore(self) -> BytesIO:
        answer = self.explore(self.path)  # type: ignore[misc]
        body = answer.html.encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return BytesIO(body)

    def list_directory(self, path):  # type: ignore[override]
        self.send_error(404, "No directory listings")
        return None

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("Cache-Control", "no-cache")
        if self.explore is not None:  # reports' pages reveal their explorer links on seeing it
            self.send_header("X-Gruviz-Explorer", "/explore")
        super().end_headers()

    def _refuse(self) -> None:
        self.send_response(405, "Method Not Allowed")
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse
    do_PROPFIND = do_PROPPATCH = do_MKCOL = do_COPY = do_MOVE = do_LOCK = do_UNLOCK = _refuse

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")


def make_server(
    directory: str | Path, *, port: int = 8765, quiet: bool = False, idle_timeout_s: float = IDLE_TIMEOUT_S,
    explore: Callable[[str], Any] | None = None,
) -> ThreadingHTTPServer:
    """A server for `directory` bound to 127.0.0.1:`port` (0 picks a free port); call serve_forever().
    `explore` answers the explorer's pages (`/explore...`; reports.explorer.ExplorerApp)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(
            f"reports directory {directory} does not exist; publish a report first (gruviz nightly / gruviz demo) "
            "or pass --dir"
        )
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"port {port} is out of range; expected 0-65535 (0 picks a free port)")
    attrs = {"quiet": quiet, "timeout": idle_timeout_s,  # StreamRequestHandler.timeout: per-connection socket timeout
             "explore": None if explore is None else staticmethod(explore)}
    handler = partial(type("Handler", (ReportsHandler,), attrs), directory=str(directory.resolve()))
    try:
        server = ThreadingHTTPServer((HOST, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {HOST} is already in use (another gruviz serve?); "
                              "stop it, or pass --port N (or --port 0 for any free port)") from None
        raise ConfigError(f"cannot listen on {HOST}:{port} ({exc.strerror or exc}); pass another --port") from None
    server.daemon_threads = True
    return server
