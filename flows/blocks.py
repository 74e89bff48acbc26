"""The extraction block scheduler: every block of a run on the task runner chosen by settings, at most
`blocks_in_flight` at once, while watching the night's deadline and each block's backstop.

Prefect's task timeout cannot interrupt a blocking call in a worker thread (threads and Dask), so the
scheduler keeps its own clock: past the night's deadline it raises DeadlinePassed, and on a block still
running `block_backstop_s` after it was submitted, BlockTimeoutError; leaving the runner then does not wait
for the stuck block (flows.runners).
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import Future

from prefect import Task
from prefect.logging import get_run_logger

from flows.artifacts import ExtractionProgress
from flows.progress import report as progress_report
from flows.runners import block_runner, thread_timeout_said_once
from flows.settings import Settings
from gruviz_core.errors import GruvizError

__all__ = ["BlockProgress", "BlockTimeoutError", "DeadlinePassed", "block_backstop_s", "run_blocks"]


class BlockTimeoutError(GruvizError, TimeoutError):
    """A block ran well past GRUVIZ_BLOCK_TIMEOUT_S without its task ending (stuck where Prefect's own task
    timeout cannot reach it: a blocking call in a worker thread)."""


class DeadlinePassed(TimeoutError):
    """The night's deadline passed; the flow turns it into its NightlyTimeoutError."""


def block_backstop_s(block_task: Task, block_timeout_s: float) -> float:
    """How long the scheduler waits on one block before failing the night: every attempt of `block_task`
    (its retries and their delays) at `block_timeout_s`, plus a grace (10% of the timeout, at least 5 s)
    in which Prefect's own task timeout ends it the usual way when it can."""
    retries, delay = block_task.retries, float(block_task.retry_delay_seconds or 0)
    return (retries + 1) * block_timeout_s + retries * delay + max(5.0, 0.1 * block_timeout_s)


def run_blocks(block_task: Task, plan: dict, s: Settings, deadline: float) -> None:
    """Run `block_task` for every block of `plan`, a window of `s.blocks_in_flight` futures topped up as they
    complete; raises the first block's failure (the run stays unpublished). `deadline`: time.monotonic()."""
    n, total, limit = int(plan["n_blocks"]), max(int(plan.get("n_dogs", 0)), 1), s.blocks_in_flight
    timed = block_task.with_options(timeout_seconds=s.block_timeout_s)
    backstop_s = block_backstop_s(block_task, s.block_timeout_s)
    progress = ExtractionProgress()
    get_run_logger().info("extracting %d block(s) on %s, at most %d in flight; a block still running %g s after "
                          "it started (GRUVIZ_BLOCK_TIMEOUT_S=%g per attempt, retries and a grace) fails the night, "
                          "even when stuck in a blocking call that its task timeout cannot interrupt",
                          n, s.task_runner, limit, backstop_s, s.block_timeout_s)
    finished: queue.Queue = queue.Queue()
    done_dogs, next_block = 0, 0
    due: dict[Future, tuple[float, int]] = {}  # in-flight future -> (backstop time, block)
    with thread_timeout_said_once(block_task.name), block_runner(s, limit) as runner:
        while next_block < n or due:
            while next_block < n and len(due) < limit:
                fut = runner.submit(timed, {"plan": plan, "block": next_block, "device": s.device,
                                            "batch_size": s.batch_size, "torch_threads": s.torch_threads})
                due[fut] = (time.monotonic() + backstop_s, next_block)
                fut.add_done_callback(finished.put)
                next_block += 1
            fut = _next_finished(finished, deadline, due, s.block_timeout_s, backstop_s)
            del due[fut]
            done_dogs += fut.result()
            progress.update(done_dogs, total)
            progress_report("extract", min(done_dogs, total), total, unit="dogs")  # the CLI's bar
    progress.update(total, total)


def _next_finished(finished: queue.Queue, deadline: float, due: dict, block_timeout_s: float, backstop_s: float,
                   poll_s: float = 5.0) -> Future:
    """The next block future to finish; DeadlinePassed past `deadline`, BlockTimeoutError past a block's
    backstop in `due` ({future: (time, block)}). Short waits, so nothing blocks for long."""
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise DeadlinePassed("the night's deadline passed while blocks were running")
        late = min(due.values()) if due else (deadline, -1)
        if now >= late[0]:
            raise BlockTimeoutError(
                f"block {late[1]} was still running {backstop_s:g} s after it started (every attempt at "
                f"GRUVIZ_BLOCK_TIMEOUT_S={block_timeout_s:g} s, and a grace), and its task did not end (stuck in a "
                "blocking call where the task timeout cannot reach it); the night stops here, nothing is published")
        try:
            return finished.get(timeout=max(0.01, min(poll_s, deadline - now, late[0] - now)))
        except queue.Empty:
            continue


class BlockProgress:
    """Logs a block's own progress (dogs done of its dogs) at most every `every_s` seconds, from whichever
    process runs it; the run's progress artifact counts finished blocks."""

    def __init__(self, block: int, every_s: float = 30.0):
        self.block, self.every_s, self._last = block, every_s, time.monotonic()

    def __call__(self, done: int, in_block: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            get_run_logger().info("block %d: %d of %d dogs", self.block, done, in_block)
