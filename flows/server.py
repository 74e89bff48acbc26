"""The Prefect API for a CLI command: the configured server, else a temporary one that dies with the command.

Prefect's own temporary server is a child process stopped only by an atexit hook, so a command
killed by a signal (SIGTERM, SIGKILL) leaves it running, reparented to PID 1, with about 200 MB.
`prefect_api()` starts the same server itself, with the kernel told to kill it when the command
dies (PR_SET_PDEATHSIG, Linux), and stops it when the command ends in any other way, after the logs and
events still queued for it are sent. With
PREFECT_API_URL set (a persistent `prefect server start`), it starts nothing.

`signals_raise()` turns SIGTERM/SIGHUP into KeyboardInterrupt, so a terminated command unwinds:
the flow is marked crashed, a failed night removes its temporary run, the server is stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from gruviz_core.errors import ConfigError

__all__ = ["prefect_api", "signals_raise"]

_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def prefect_api() -> Iterator[str | None]:
    """Yield the API URL of a temporary server bound to this process's life, or None when one is configured."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = _start(port, log)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(proc, url, log)
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _send_queued()
    finally:
        _stop(proc)
        log.close()


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread (so cleanups run)."""

    def _raise(signum, _frame):
        raise KeyboardInterrupt(f"terminated by {signal.Signals(signum).name}")

    old = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _start(port: int, log) -> subprocess.Popen:
    import prefect
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on"]
    parent = os.getpid()
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: _die_with(parent))


def _die_with(parent: int) -> None:
    """In the child before exec: SIGTERM when the parent dies; if it already has, exit now."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _wait_healthy(proc: subprocess.Popen, url: str, log) -> None:
    import httpx
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    deadline = time.monotonic() + float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    log.seek(0)
    tail = log.read()[-2000:].decode("utf-8", "replace")
    raise ConfigError(f"the temporary Prefect server on {url} did not start (exit {proc.poll()}): {tail.strip()}; "
                      "or run `prefect server start` and set PREFECT_API_URL")


def _send_queued(timeout_s: float = 5.0) -> None:
    """Send the logs and events still queued for the server before it stops (Prefect's test harness does the
    same): a log sent to a stopped server prints '--- Error logging to API ---' at exit. Each waits at most
    `timeout_s`."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
