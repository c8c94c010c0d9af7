"""Running a stage: plan it, run its phases task by task (skipping finished ones), then write the manifest."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures import Executor as FutureExecutor
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from thresher.pipelines.engine import atomic, storage
from thresher.pipelines.engine.digest import file_digest, value_digest
from thresher.pipelines.engine.errors import IncompleteRun, ThresherError, UsageError, filesystem_error
from thresher.pipelines.engine.lock import LOCK_NAMES, holds_only_lock, output_lock
from thresher.pipelines.engine.manifest import (
    MANIFEST_NAME,
    FileRecord,
    InputLineage,
    Manifest,
    RowCounts,
    TaskRecord,
    library_versions,
)
from thresher.pipelines.engine.no_pandas import pandas_kept_out
from thresher.pipelines.engine.plan import InputDigests, Plan, build_plan, run_identity
from thresher.pipelines.engine.progress import Reporter, SilentReporter
from thresher.pipelines.engine.registry import get_stage
from thresher.pipelines.engine.shards import DROPPED_DIR, STATE_DIR, ShardSet
from thresher.pipelines.engine.stage import (
    COUNTERS_KEY,
    TASKS_SIDE_BY_SIDE,
    Stage,
    StageContext,
    StageParams,
    TaskContext,
    sum_counters,
)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------------------
# Planning


def _check_output(output: Path, stage: str, input_path: Path) -> None:
    if output.resolve() == input_path.resolve():
        raise UsageError(f"{output}: output directory must differ from the input")
    if output.exists() and not output.is_dir():
        raise UsageError(f"{output}: output exists and is not a directory")
    if not output.exists() or holds_only_lock(output):
        return
    owner = None
    if (output / MANIFEST_NAME).exists():
        owner = Manifest.read(output).stage
    elif (output / STATE_DIR / "plan.json").exists():
        owner = Plan.read(output).stage
    if owner is None:
        raise ThresherError(
            f"{output}: directory is not empty and was not written by thresher; choose a new output directory"
        )
    if owner != stage:
        raise ThresherError(
            f"{output}: holds the output of stage '{owner}', not '{stage}'; choose another output directory"
        )


def plan_stage(
    stage_name: str,
    params: StageParams | dict[str, Any],
    input_path: Path,
    output: Path,
    seed: int = 0,
    limit: int | None = None,
) -> tuple[Plan, bool]:
    """Validate the input, plan the phases and write the plan. Returns (plan, already_finished)."""
    cls = get_stage(stage_name)
    if isinstance(params, dict):
        params = cls.Params.model_validate(params)
    input_path, output = storage.location(input_path), storage.resolved(output)
    _check_output(output, cls.name, input_path)
    shard_set = None
    if cls.input_kind == "shards":
        probe = cls(params, StageContext(input_path, output, seed))
        shard_set = ShardSet.open(
            input_path, probe.required_columns(), probe.string_columns(), params.column_flags()
        )
        if limit is not None:
            shard_set = shard_set.limited(limit)
    stage = cls(params, StageContext(input_path, output, seed, shard_set, limit))
    identity = run_identity(stage)
    if (output / MANIFEST_NAME).exists():
        if Manifest.read(output).fingerprint == identity.fingerprint:
            return Plan.read(output), True
        # New params or inputs: the old manifest no longer describes what will be here.
        (output / MANIFEST_NAME).unlink()
    plan = build_plan(stage, identity)
    stage.check_phases(plan.phases)  # a phase with no method bound to it fails here, before any task
    storage.make_dirs(output)
    plan.write()
    return plan, False


# ---------------------------------------------------------------------------------------------------------
# One task: the unit a pool worker or a Slurm array task runs


def _digest_index(plan: Plan, phase_index: int) -> InputDigests:
    return InputDigests(plan, phase_index)


def task_fingerprint(plan: Plan, phase_index: int, task_index: int, digests: InputDigests) -> str:
    task = plan.phases[phase_index].tasks[task_index]
    inputs = []
    for path in task.inputs:
        resolved = str(storage.resolved(path))
        inputs.append(digests.get(resolved) or file_digest(storage.location(path)))
    return value_digest(
        {
            "stage": plan.params_fingerprint,
            "phase": plan.phases[phase_index].name,
            "key": task.key,
            "args": task.args,
            "inputs": inputs,
        }
    )


def is_task_done(plan: Plan, phase_index: int, task_index: int, fingerprint: str) -> bool:
    record = plan.read_record(phase_index, task_index)
    if record is None or record.fingerprint != fingerprint:
        return False
    return all(
        (plan.output / f.path).is_file() and (plan.output / f.path).stat().st_size == f.size
        for f in record.outputs
    )


# The stage this process last set up, by (output, plan fingerprint): its `setup()` (models) runs once per
# process, in a pool worker, a Slurm array task or the main process alike. One entry, so a chain of
# stages in one process holds one stage's models at a time.
_set_up: tuple[tuple[str, str], Stage[Any]] | None = None
_set_up_lock = threading.Lock()  # tasks of a "threads" stage start side by side


def _stage_for_task(plan: Plan) -> Stage[Any]:
    global _set_up
    cls = get_stage(plan.stage)
    if cls.setup is Stage.setup:
        # Nothing to load: a fresh instance per task, so no state leaks from one task to the next.
        return plan.build_stage()
    key = (str(plan.output), plan.fingerprint)
    with _set_up_lock:
        if _set_up is None or _set_up[0] != key:
            _set_up = None  # let the previous stage's models go before loading these
            stage = plan.build_stage()
            stage.setup()
            _set_up = (key, stage)
        return _set_up[1]


def execute_task(
    output: Path, phase_index: int, task_index: int, progress: Any = None, force: bool = False
) -> TaskRecord:
    """Run one task of a planned stage and write its record; skip it if its record is current."""
    plan = Plan.load(storage.location(output))
    digests = _digest_index(plan, phase_index)
    fingerprint = task_fingerprint(plan, phase_index, task_index, digests)
    if not force and is_task_done(plan, phase_index, task_index, fingerprint):
        record = plan.read_record(phase_index, task_index)
        assert record is not None
        return record
    phase = plan.phases[phase_index]
    task = phase.tasks[task_index]
    failure = plan.failure_path(phase_index, task_index)
    storage.remove(failure)
    plan.forget_index(phase_index)  # its outputs are about to change
    try:
        stage = _stage_for_task(plan)  # a failing setup() fails this task, with its marker
        tc = TaskContext(stage, progress)
        start = time.perf_counter()
        with contextlib.nullcontext() if stage.uses_pandas else pandas_kept_out():
            result = stage.run_task(phase.name, task, tc)
    except Exception as exc:
        # A marker, so `thresher status` can tell a failed task from one that has not run, on any executor.
        # Best effort: on a full disk the marker cannot be written either, and the task's own error is
        # the one to report.
        with contextlib.suppress(OSError):
            atomic.write_json(failure, {"key": task.key, "error": f"{type(exc).__name__}: {exc}"})
        raise
    seconds = time.perf_counter() - start
    inputs = []
    for p in task.inputs:
        where = storage.resolved(p)
        digest = digests.get(str(where)) or file_digest(where)
        inputs.append(FileRecord(path=str(where), size=where.stat().st_size, digest=digest))
    if result.counts is not None and tc.tokens is not None:
        result.counts.tokens = tc.tokens
    if result.counts is not None and not result.counts.balanced:
        raise RuntimeError(f"stage {stage.name} task {task.key}: rows do not add up: {result.counts}")
    record = TaskRecord(
        phase=phase.name,
        index=task_index,
        key=task.key,
        fingerprint=fingerprint,
        inputs=inputs,
        outputs=tc.outputs,
        counts=result.counts,
        seconds=round(seconds, 4),
        extra=tc.record_extra(result.extra),
    )
    atomic.write_json(plan.record_path(phase_index, task_index), record.model_dump(mode="json"))
    # What the task freed goes back to the system now, not when the allocator gets round to it: a
    # process runs task after task, and each would otherwise leave its peak behind.
    pa.default_memory_pool().release_unused()
    return record


def pending_tasks(plan: Plan, phase_index: int, force: bool = False) -> list[int]:
    """The tasks of a phase without a current record: what an executor still has to run."""
    digests = _digest_index(plan, phase_index)
    return [
        i
        for i in range(len(plan.phases[phase_index].tasks))
        if force or not is_task_done(plan, phase_index, i, task_fingerprint(plan, phase_index, i, digests))
    ]


def start_phase(plan: Plan, phase_index: int, reporter: Reporter, force: bool = False) -> list[int]:
    """The phase's pending tasks, announced to the reporter (with the rows they read, when known)."""
    phase = plan.phases[phase_index]
    pending = pending_tasks(plan, phase_index, force)
    done = len(phase.tasks) - len(pending)
    reporter.phase_started(
        plan.stage, phase.name, len(phase.tasks), done, rows_of(plan, phase_index, pending)
    )
    return pending


def phase_records(plan: Plan, phase_index: int) -> list[TaskRecord]:
    """Every task record of a finished phase, in task order."""
    phase = plan.phases[phase_index]
    records = []
    for i in range(len(phase.tasks)):
        record = plan.read_record(phase_index, i)
        if record is None:
            raise ThresherError(f"{plan.output}: {phase.name} task {i} has no record")
        records.append(record)
    return records


def rows_of(plan: Plan, phase_index: int, tasks: list[int]) -> int | None:
    """Rows these tasks read, when the plan knows every one (for progress bars)."""
    rows = [plan.phases[phase_index].tasks[i].rows for i in tasks]
    return sum(r or 0 for r in rows) if rows and all(r is not None for r in rows) else None


# ---------------------------------------------------------------------------------------------------------
# Local executor

_progress_queue: Any = None


def _init_worker(progress_queue: Any, side_by_side: int) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    TASKS_SIDE_BY_SIDE.set(side_by_side)


def _worker(output: str, phase_index: int, task_index: int, force: bool) -> dict[str, Any]:
    def progress(rows: int) -> None:
        _progress_queue.put(rows)

    return execute_task(storage.location(output), phase_index, task_index, progress, force).model_dump(
        mode="json"
    )


class LocalExecutor:
    """Runs the tasks of each phase side by side: in a process pool, started once per stage and reused by
    every phase (starting a Python worker costs about a second), or in threads of this process for a
    stage that declares `parallel = "threads"`. With one worker, or one task, in this process alone."""

    def __init__(
        self, workers: int | None = None, force: bool = False, reporter: Reporter | None = None
    ) -> None:
        self.workers = max(1, workers or default_workers())
        self.force = force
        self.reporter = reporter or SilentReporter()
        self._pool: FutureExecutor | None = None
        self._queue: Any = None

    def run(self, plan: Plan) -> list[TaskRecord]:
        try:
            return self._run_phases(plan)
        finally:
            if self._pool is not None:
                # A failed or interrupted phase waits here for the tasks still running: cut short, they
                # would leave temp files behind, and their threads cannot be stopped anyway.
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def _run_phases(self, plan: Plan) -> list[TaskRecord]:
        records: list[TaskRecord] = []
        for phase_index, phase in enumerate(plan.phases):
            pending = start_phase(plan, phase_index, self.reporter, self.force)
            if self.workers == 1 or len(pending) <= 1:
                for i in pending:
                    self.reporter.task_finished(
                        execute_task(plan.output, phase_index, i, self.reporter.rows, self.force)
                    )
            else:
                self._run_pool(plan, phase_index, pending)
            self.reporter.phase_finished(phase.name)
            records += phase_records(plan, phase_index)
        return records

    def _start_pool(self, plan: Plan) -> FutureExecutor:
        if get_stage(plan.stage).parallel == "threads":
            self._queue = queue.SimpleQueue()
            return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="thresher-task")
        # spawn, not fork: pyarrow and torch keep thread pools that a forked child can deadlock on.
        mp = multiprocessing.get_context("spawn")
        self._queue = mp.Queue()
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp,
            initializer=_init_worker,
            initargs=(self._queue, self.workers),
        )

    def _submit(self, plan: Plan, phase_index: int, task_index: int) -> Future[dict[str, Any]]:
        assert self._pool is not None
        if isinstance(self._pool, ThreadPoolExecutor):
            put = self._queue.put
            side_by_side = self.workers

            def in_thread() -> dict[str, Any]:
                TASKS_SIDE_BY_SIDE.set(side_by_side)  # each pool thread has its own context
                record = execute_task(plan.output, phase_index, task_index, put, self.force)
                return record.model_dump(mode="json")

            return self._pool.submit(in_thread)
        return self._pool.submit(_worker, str(plan.output), phase_index, task_index, self.force)

    def _run_pool(self, plan: Plan, phase_index: int, pending: list[int]) -> None:
        if self._pool is None:
            self._pool = self._start_pool(plan)
        futures: set[Future[dict[str, Any]]] = {self._submit(plan, phase_index, i) for i in pending}
        try:
            while futures:
                done, futures = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                self._drain(self._queue)
                for future in done:
                    self.reporter.task_finished(TaskRecord.model_validate(future.result()))
            self._drain(self._queue)
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def _drain(self, progress_queue: Any) -> None:
        while True:
            try:
                self.reporter.rows(progress_queue.get_nowait())
            except queue.Empty:
                return


# ---------------------------------------------------------------------------------------------------------
# Finishing


def finalize(plan: Plan, records: list[TaskRecord]) -> Manifest:
    stage = plan.build_stage()
    outputs = stage.output_shards(records)
    keep = {f.path for r in records for f in r.outputs}
    # Files of an earlier run with other params or inputs must not pass for part of this shard set.
    # So must temp files of a killed run.
    for folder in (plan.output, plan.output / DROPPED_DIR):
        for stray in [*folder.glob("*.parquet"), *folder.glob(".*.tmp")]:
            if stray.relative_to(plan.output).as_posix() not in keep:
                storage.remove(stray)
    storage.remove_tree(plan.state_dir / "work")
    if storage.is_remote(plan.output):
        shutil.rmtree(storage.scratch_root(plan.state_dir / "work"), ignore_errors=True)
    totals = RowCounts()
    counted = [r for r in records if r.counts is not None]
    if counted:
        last_phase = counted[-1].phase
        for r in counted:
            if r.phase == last_phase:
                totals.add(r.counts)  # type: ignore[arg-type]
        totals.dropped = dict(sorted(totals.dropped.items()))
    stage.counters, stage.totals = sum_counters(records), totals
    summary = stage.summarize(records)
    if stage.counters:
        summary.setdefault(COUNTERS_KEY, stage.counters)
    lineage = InputLineage(
        path=plan.input_path,
        stage=plan.input_stage,
        manifest_digest=plan.input_manifest_digest,
        files=plan.input_files if stage.input_kind == "files" else [],
        limit=plan.limit,
    )
    manifest = Manifest(
        stage=plan.stage,
        stage_version=plan.stage_version,
        params=plan.params,
        seed=plan.seed,
        fingerprint=plan.fingerprint,
        input=lineage,
        tasks=records,
        totals=totals,
        outputs=[f for f in outputs if "/" not in f.path],
        artifacts=[
            f
            for r in records
            for f in r.outputs
            if not f.path.endswith(".parquet") and not f.path.startswith(STATE_DIR)
        ],
        seconds=round(sum(r.seconds for r in records), 4),
        summary=summary,
        versions=library_versions(),
    )
    manifest.write(plan.output)
    return manifest


def _clear_keeping_lock(output: Path) -> None:
    for entry in output.iterdir():
        if entry.name == STATE_DIR:
            for inner in entry.iterdir():
                if inner.name not in LOCK_NAMES:
                    storage.remove_tree(inner) if inner.is_dir() else storage.remove(inner)
        else:
            storage.remove_tree(entry) if entry.is_dir() else storage.remove(entry)


class Executor(Protocol):
    """Runs every phase of a planned stage; returns the records of all its tasks. An executor whose work
    outlives the command (a Slurm chain) may also have `follow(output)`, called before the output is
    locked, to wait for or leave be what an earlier command left running there."""

    def run(self, plan: Plan) -> list[TaskRecord]: ...


# An executor for one recipe step, from the step's `slurm:`/`ray:` overrides ({} for a stage command);
# None is the local executor.
ExecutorFactory = Callable[[dict[str, dict[str, Any]]], "Executor | None"]


def follow(executor: Executor | None, output: Path) -> None:
    hook = getattr(executor, "follow", None)
    if hook is not None:
        hook(output)


def run_stage(
    stage_name: str,
    params: StageParams | dict[str, Any],
    input_path: Path,
    output: Path,
    *,
    seed: int = 0,
    workers: int | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    executor: Executor | None = None,
    limit: int | None = None,
) -> Manifest:
    """Plan, run and finish a stage. A crash or kill leaves finished tasks in place, so running the same
    command again resumes; a bad-input error removes the output folder if this run created it."""
    output = storage.location(output)
    # Checked before taking the lock, so a wrong OUTPUT (the input, a file, someone else's folder) gets
    # no lock file written into it.
    _check_output(output, get_stage(stage_name).name, storage.location(input_path))
    follow(executor, output)
    try:
        with output_lock(output):
            if force:
                _clear_keeping_lock(output)
            fresh = holds_only_lock(output)
            reporter = reporter or SilentReporter()
            try:
                plan, finished = plan_stage(stage_name, params, input_path, output, seed, limit)
                if finished:
                    reporter.message(
                        f"{stage_name}: {output} is up to date (same params and inputs); nothing to do"
                    )
                    # Confirmed against inputs that may be newer (touched, same bytes): make and other
                    # mtime-based tools would otherwise rerun this stage forever.
                    if not storage.is_remote(output):
                        os.utime(output / MANIFEST_NAME)
                    return Manifest.read(output)
                records = (executor or LocalExecutor(workers, False, reporter)).run(plan)
                manifest = finalize(plan, records)
            except IncompleteRun:
                raise
            except (ThresherError, OSError):
                # Bad input, a full or read-only disk, an input deleted mid-run: a folder this run created
                # goes away whole (which also frees the space). A folder of an earlier run stays, but
                # without a manifest, so no later stage mistakes it for a finished shard set.
                if fresh:
                    storage.remove_tree(output)
                raise
            reporter.stage_finished(manifest)
            return manifest
    except OSError as exc:
        # Here from the parent or, pickled, from a pool worker. A pyarrow write error names no file:
        # then the output folder is the place to look (for a full disk, its file system).
        raise filesystem_error(exc, exc.filename or output) from None
