"""The task runner extraction blocks run on (GRUVIZ_TASK_RUNNER: threads, processes or dask), and the one
adapter that reaches into Prefect's task runners: leaving a pool on an error does not wait for a hung block.

Prefect's `cancel_all()` and `__exit__` shut the pool down with `wait=True`, so a block stuck in a blocking
call would hold the night to the call's end. No public API stops a pool without waiting; `_abandon` does,
through `ThreadPoolTaskRunner._executor` / `ProcessPoolTaskRunner._executor` (Prefect's) and, before
Python 3.14's `terminate_workers()`, `ProcessPoolExecutor._processes` (the standard library's).
tests/test_prefect_adapter.py fails, naming the attribute and the Prefect version, when an upgrade moves one.

`thread_timeout_said_once` quiets the warning Prefect logs for every task with a timeout that runs in a
worker thread (its timeout cannot interrupt a blocking call): for blocks the scheduler's backstop covers that
(flows.blocks), and the night's log says so once. It matches Prefect's message text, which the same test file
checks against the installed Prefect.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from flows.settings import Settings
from gruviz_core.errors import ConfigError

__all__ = ["block_runner", "thread_timeout_said_once", "THREAD_TIMEOUT_WARNING"]

THREAD_TIMEOUT_WARNING = "Timeout of %s seconds configured for this task, but the task is running in a worker thread"
"""The start of the warning prefect.task_engine logs (at WARNING, on `prefect.task_runs`) when a task with a
timeout starts in a worker thread."""


def block_runner(s: Settings, limit: int) -> TaskRunner:
    """The task runner extraction blocks run on (`s.task_runner`), `limit` blocks at once; enter it for their lifetime."""
    if s.task_runner == "threads":
        return _Threads(max_workers=limit)
    if s.task_runner == "processes":
        return _Processes(max_workers=limit)
    return _dask_runner(s, limit)


def _dask_runner(s: Settings, limit: int) -> TaskRunner:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("GRUVIZ_TASK_RUNNER=dask needs prefect-dask and dask.distributed: "
                          "pip install 'gruviz[dask]', or use threads or processes") from None
    if s.dask_address:
        return DaskTaskRunner(address=s.dask_address)
    workers = s.dask_workers or max(1, min(os.cpu_count() or 1, limit))
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": workers, "processes": True, "threads_per_worker": 1})


class _Threads(ThreadPoolTaskRunner):
    """Prefect's thread pool; left on an error, it does not wait for running blocks (a hung thread cannot be
    stopped from outside: it ends at its own block timeout or with the process, and the night ends now)."""

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is not None:
            _abandon(self)
        super().__exit__(exc_type, exc_value, traceback)


class _Processes(ProcessPoolTaskRunner):
    """Prefect's process pool (spawned processes); left on an error, it terminates its processes instead of
    waiting for running blocks (a hung block ends with its process)."""

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is not None:
            _abandon(self)
        super().__exit__(exc_type, exc_value, traceback)


def _abandon(runner: ThreadPoolTaskRunner | ProcessPoolTaskRunner) -> None:
    """Stop `runner`'s pool without waiting for its running work: threads are left to end on their own,
    processes are terminated. The only code that touches Prefect's private attributes; where an upgrade moved
    one it waits as Prefect does, rather than hide the night's own error behind an AttributeError."""
    executor = getattr(runner, "_executor", None)
    if isinstance(executor, ThreadPoolExecutor):
        executor.shutdown(wait=False, cancel_futures=True)
        runner._executor = None  # Prefect's own shutdown (wait=True) then finds nothing to wait for
    elif isinstance(executor, ProcessPoolExecutor):
        terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
        if terminate is not None:
            terminate()
            return
        for proc in list((getattr(executor, "_processes", None) or {}).values()):
            proc.terminate()


@contextlib.contextmanager
def thread_timeout_said_once(task_name: str) -> Iterator[None]:
    """Within the block, Prefect's thread-timeout warning is not logged for tasks named `task_name` (in this
    process); the caller says once what stands in for the timeout."""
    quiet = _NoThreadTimeoutWarning(task_name)
    logger = logging.getLogger("prefect.task_runs")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _NoThreadTimeoutWarning(logging.Filter):
    def __init__(self, task_name: str):
        super().__init__()
        self.task_name = task_name

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(record, "task_name", None) == self.task_name
                    and str(record.msg).startswith(THREAD_TIMEOUT_WARNING))
