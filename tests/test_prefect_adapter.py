"""The one adapter that reaches into Prefect's task runners (flows.runners._abandon): leaving a pool on an
error does not wait for running work. Fails, naming the attribute and the Prefect version, when an upgrade
moves what the adapter touches (then fix flows.runners and the prefect pin in pyproject.toml together)."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import prefect

from flows.runners import _abandon, _Processes, _Threads

VERSIONS = f"prefect {prefect.__version__}, Python {sys.version.split()[0]}"


def _moved(attribute: str, expected: str) -> str:
    return (f"{attribute} is no longer {expected} in {VERSIONS}: flows.runners._abandon relies on it to leave a "
            "pool without waiting for a hung block; find its new home, fix the adapter, and pin prefect to the "
            "range tested in pyproject.toml")


def test_a_thread_runner_left_on_an_error_does_not_wait_for_a_running_call():
    release = threading.Event()
    runner = _Threads(max_workers=1)
    runner.__enter__()
    executor = getattr(runner, "_executor", None)
    assert isinstance(executor, ThreadPoolExecutor), _moved("ThreadPoolTaskRunner._executor", "a ThreadPoolExecutor")
    running = executor.submit(release.wait, 30)
    t0 = time.monotonic()
    _leave_on_an_error(runner)
    took = time.monotonic() - t0
    release.set()
    assert took < 5, f"leaving the thread runner waited {took:.1f} s for its running call ({VERSIONS})"
    assert getattr(runner, "_executor", "missing") is None, _moved("ThreadPoolTaskRunner._executor", "cleared on exit")
    assert running.result(timeout=5) is True


def test_a_process_runner_left_on_an_error_terminates_its_processes():
    runner = _Processes(max_workers=1)
    runner.__enter__()
    executor = getattr(runner, "_executor", None)
    assert isinstance(executor, ProcessPoolExecutor), _moved("ProcessPoolTaskRunner._executor",
                                                              "a ProcessPoolExecutor")
    running = executor.submit(time.sleep, 60)
    if not hasattr(executor, "terminate_workers"):  # before Python 3.14 the adapter reads the pool's processes
        assert isinstance(getattr(executor, "_processes", None), dict), _moved("ProcessPoolExecutor._processes",
                                                                               "a dict of processes")
    _wait_until(running.running, 60)
    procs = list(getattr(executor, "_processes", {}).values())
    t0 = time.monotonic()
    _leave_on_an_error(runner)
    took = time.monotonic() - t0
    assert took < 30, f"leaving the process runner waited {took:.1f} s for its running call ({VERSIONS})"
    assert not [p for p in procs if p.is_alive()], f"pool processes still alive after the runner was left ({VERSIONS})"


def test_abandon_leaves_a_runner_without_a_pool_alone():
    runner = _Threads(max_workers=1)
    _abandon(runner)  # never entered: nothing to stop
    assert runner._executor is None


def _leave_on_an_error(runner) -> None:
    err = RuntimeError("the night failed")
    runner.__exit__(type(err), err, None)


def _wait_until(ready, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > end:
            raise TimeoutError(f"not ready after {timeout_s} s")
        time.sleep(0.05)


def test_the_thread_timeout_warning_flows_runners_quiets_is_still_prefects():
    """flows.runners.thread_timeout_said_once matches Prefect's warning by its text: it must still be logged so."""
    import inspect
    import re

    from prefect import task_engine

    from flows.runners import THREAD_TIMEOUT_WARNING

    source = re.sub(r'"\s*\n\s*"', "", inspect.getsource(task_engine))  # adjacent literals on several lines: one
    assert THREAD_TIMEOUT_WARNING in source, (
        f"prefect.task_engine no longer logs {THREAD_TIMEOUT_WARNING!r}... in {VERSIONS}: a night's log repeats "
        "Prefect's thread-timeout warning for every block; fix flows.runners.THREAD_TIMEOUT_WARNING")
