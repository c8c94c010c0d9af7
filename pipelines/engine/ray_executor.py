"""The Ray executor: each task of a phase becomes one Ray task on a running cluster, which calls
`execute_task` on whichever node Ray picks, so the outputs are the bytes the local executor writes. Every
node must see the output folder at the same path (a shared file system), as with Slurm.

A task lost with its node (killed, preempted, out of memory) is submitted again by this driver, up to
`max_retries` times, with a log line; Ray's own retries are off so each loss is seen and logged here. A task
that raises fails the run with its own error, as on the local executor."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import IncompleteRun, ThresherError
from thresher.pipelines.engine.executor import execute_task, phase_records, start_phase
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.plan import Plan
from thresher.pipelines.engine.progress import Reporter, SilentReporter

log = logging.getLogger("thresher")


@dataclass
class RayOptions:
    address: str = "auto"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None  # bytes
    max_retries: int = 3  # resubmissions of a task lost with its node
    poll_seconds: float = 1.0  # how often the driver wakes while waiting (so Ctrl-C is seen)


def _run_task(output: str, phase_index: int, task_index: int) -> dict[str, Any]:
    """What a Ray worker runs. Returns plain JSON so no thresher class has to be pickled across."""
    return execute_task(storage.location(output), phase_index, task_index).model_dump(mode="json")


def _no_cluster(address: str, why: str) -> ThresherError:
    return ThresherError(
        f"no Ray cluster at {address} ({why}): start one with `ray start --head` or pass "
        "--ray-address HOST:PORT"
    )


def connect(address: str) -> Any:
    """Connect this process to a running cluster (never start one) and return the `ray` module."""
    # Before Ray is imported: its usage-stats reporting reads this at import and init.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        import ray
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        raise ThresherError("--executor ray needs Ray: pip install 'thresher[ray]'") from None

    if ray.is_initialized():
        return ray
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or address
    if "://" not in address:  # ray:// (Ray Client) goes to ray.init as it is
        # ray.init waits minutes on an address nobody listens on; a plain connect answers at once. The
        # address is resolved as ray.init resolves it (`auto`: the cluster started on this machine;
        # localhost: this node's IP, where Ray listens), with Ray's own function (pinned Ray version).
        try:
            resolved = canonicalize_bootstrap_address(address)
        except (ConnectionError, ValueError) as exc:
            raise _no_cluster(address, str(exc).split(". ")[0].rstrip(".")) from None
        if resolved is None:  # `local`: Ray would start a cluster of its own
            raise _no_cluster(address, "`local` would start a new cluster")
        host, _, port = resolved.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except OSError as exc:
            raise _no_cluster(address, f"{resolved}: {exc.strerror or exc}") from None
        address = resolved
    try:
        ray.init(
            address=address,
            log_to_driver=False,
            logging_level=logging.ERROR,
            runtime_env={"env_vars": storage.environment()},
        )
    except (ConnectionError, RuntimeError) as exc:
        raise _no_cluster(address, str(exc).splitlines()[0]) from None
    return ray


class RayExecutor:
    """Runs the tasks of each phase as Ray tasks and moves on only when all of them have finished."""

    def __init__(self, options: RayOptions, reporter: Reporter | None = None) -> None:
        self.options = options
        self.reporter = reporter or SilentReporter()

    def run(self, plan: Plan) -> list[TaskRecord]:
        ray = connect(self.options.address)
        resources: dict[str, Any] = {"num_cpus": self.options.num_cpus, "num_gpus": self.options.num_gpus}
        if self.options.memory is not None:
            resources["memory"] = self.options.memory
        remote = ray.remote(_run_task).options(max_retries=0, **resources)
        records: list[TaskRecord] = []
        for phase_index, phase in enumerate(plan.phases):
            pending = start_phase(plan, phase_index, self.reporter)
            self._run_phase(ray, remote, plan, phase_index, pending)
            self.reporter.phase_finished(phase.name)
            records += phase_records(plan, phase_index)
        return records

    def _run_phase(self, ray: Any, remote: Any, plan: Plan, phase_index: int, pending: list[int]) -> None:
        from ray.exceptions import (
            NodeDiedError,
            ObjectLostError,
            OutOfMemoryError,
            RayTaskError,
            WorkerCrashedError,
        )

        # What Ray raises for a task whose worker or node went away (SIGKILLed node: NodeDiedError; its
        # worker seen dying first: WorkerCrashedError; memory monitor kill: OutOfMemoryError), as opposed
        # to an error the task itself raised (RayTaskError).
        lost_errors = (NodeDiedError, WorkerCrashedError, ObjectLostError, OutOfMemoryError)
        output, phase = str(plan.output), plan.phases[phase_index]

        def submit(i: int) -> Any:
            return remote.remote(output, phase_index, i)

        running = {submit(i): i for i in pending}
        losses = dict.fromkeys(pending, 0)
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=self.options.poll_seconds)
                for ref in ready:
                    i = running.pop(ref)
                    try:
                        record = TaskRecord.model_validate(ray.get(ref))
                    except lost_errors as exc:
                        losses[i] += 1
                        key = phase.tasks[i].key
                        first_line = str(exc).split(". ")[0]
                        if losses[i] > self.options.max_retries:
                            raise IncompleteRun(
                                f"{plan.stage}/{phase.name}: task {key} was lost {losses[i]} times "
                                f"({type(exc).__name__}: {first_line}); run the same command again to "
                                "resume"
                            ) from None
                        log.warning(
                            "%s/%s: task %s lost with its Ray worker or node (%s); running it again "
                            "(retry %d of %d)",
                            plan.stage,
                            phase.name,
                            key,
                            type(exc).__name__,
                            losses[i],
                            self.options.max_retries,
                        )
                        running[submit(i)] = i
                        continue
                    except RayTaskError as exc:
                        # The task's own exception, not Ray's wrapper with a remote traceback, so the CLI
                        # prints it as one line the way it does for the local executor.
                        if isinstance(exc.cause, BaseException):
                            raise exc.cause from None
                        raise
                    if record.counts is not None:
                        self.reporter.rows(record.counts.rows_in)  # per task: workers send no progress
                    self.reporter.task_finished(record)
        except BaseException:
            # A failed or interrupted phase leaves nothing running on the cluster (a task stopped half
            # way leaves only temp files; writes are atomic).
            for ref in running:
                ray.cancel(ref)
            raise
