"""What one array element runs: its share of a phase's tasks, one after another, stopping cleanly when
Slurm signals it. A task that is stopped writes no record, and its outputs go through temp files, so
nothing partial is left and the task runs again when the element is requeued."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from thresher.pipelines.engine.executor import execute_task
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.slurm.queue import requeue

log = logging.getLogger("thresher")
REQUEUE_WAIT = 300


class Interrupted(BaseException):
    """Slurm asked the element to stop. A BaseException, so no task mistakes it for its own failure and
    writes a failure marker."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    # SIGTERM: preempted, requeued or cancelled (Slurm requeues the job itself when it means to).
    # SIGUSR1: the time limit is near (--signal=B:USR1@N); the element requeues itself.
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def element_tasks(tasks: list[int], per_element: int, element: int) -> list[int]:
    return tasks[element * per_element : (element + 1) * per_element]


def run_element(output: Path, phase_index: int, tasks: list[int]) -> list[TaskRecord]:
    """Run these tasks (finished ones are skipped); on SIGUSR1 requeue this element and exit, on SIGTERM
    exit (both with 128 + the signal, as a shell would)."""
    records = []
    try:
        with _stop_on_signals():
            for index in tasks:
                records.append(execute_task(output, phase_index, index))
    except Interrupted as stopped:
        # An array's first element shares its id with the whole array: name the element itself.
        array, element = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job = f"{array}_{element}" if array and element else os.environ.get("SLURM_JOB_ID")
        if stopped.signum == signal.SIGUSR1 and job:
            log.warning("time limit near: task stopped; requeueing job %s", job)
            refused = requeue(job)
            if refused:
                log.error("could not requeue job %s: %s", job, refused)
            else:
                # Slurm ends the job itself as it requeues it. Exiting first would race with that: an
                # exit status reaching slurmd before the requeue marks the element FAILED, which cancels
                # the chain behind it. So wait for Slurm's SIGTERM and die of it.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                time.sleep(REQUEUE_WAIT)
                log.error("job %s was not stopped within %d s of its requeue", job, REQUEUE_WAIT)
        else:
            log.warning("stopped by %s after %d of %d task(s)", stopped, len(records), len(tasks))
        raise SystemExit(128 + stopped.signum) from None
    return records
