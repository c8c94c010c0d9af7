"""Where a run stands, for `thresher status` and for `thresher inspect` on a recipe output: every step in
recipe order (those not started yet too), and per phase how many tasks are done, failed (cancelled,
timed out ... with the Slurm job id) or pending. Read from the task records and failure markers, which
every executor writes, and for a Slurm chain still in the queue from squeue."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher.pipelines.engine import atomic, storage
from thresher.pipelines.engine.lock import lock_path
from thresher.pipelines.engine.manifest import MANIFEST_NAME
from thresher.pipelines.engine.plan import PLAN_NAME, Plan
from thresher.pipelines.engine.shards import STATE_DIR
from thresher.pipelines.engine.slurm.jobs import CONTINUE, SubmittedJob, read_jobs
from thresher.pipelines.engine.slurm.queue import ENDED, ArrayTask, SlurmUnreachable, query_jobs

RECIPE_STEPS = "recipe.json"
# A status should come back in seconds even while the controller is slow; the submitter waits longer.
SQUEUE_PATIENCE = 5.0
NOTES_PER_PHASE = 3


@dataclass
class PhaseStatus:
    name: str
    done: int = 0
    failed: int = 0
    pending: int = 0  # includes tasks queued or running on Slurm
    notes: list[str] = field(default_factory=list)
    running: int = 0
    queued: int = 0


@dataclass
class StepStatus:
    folder: Path
    stage: str
    state: str  # finished, failed, running, queued, unfinished, or pending (not started)
    phases: list[PhaseStatus] = field(default_factory=list)
    note: str = ""

    @property
    def tasks(self) -> tuple[int, int]:
        """(done, all) over every phase."""
        return sum(p.done for p in self.phases), sum(p.done + p.failed + p.pending for p in self.phases)


def record_recipe_steps(output: Path, steps: Sequence[tuple[str, str]]) -> None:
    """Note a recipe's (folder, stage) steps at the start of a run, so the steps not started yet show too."""
    entries = [{"folder": folder, "stage": stage} for folder, stage in steps]
    atomic.write_json(storage.location(output) / STATE_DIR / RECIPE_STEPS, {"steps": entries})


def is_stage_output(path: Path) -> bool:
    return (storage.location(path) / STATE_DIR / PLAN_NAME).is_file()


def run_steps(output: Path) -> list[tuple[Path, str | None]]:
    """(folder, stage if known) of a stage output, or of every step of a recipe output in order: the
    steps the last `thresher run` noted, and any stage folder found beside them."""
    output = storage.location(output)
    if is_stage_output(output):
        return [(output, None)]
    steps: dict[Path, str | None] = {}
    try:
        noted = json.loads((output / STATE_DIR / RECIPE_STEPS).read_text())["steps"]
        steps.update((output / str(s["folder"]), str(s["stage"])) for s in noted)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if output.is_dir():
        for path in output.iterdir():
            if path.is_dir() and is_stage_output(path):
                steps.setdefault(path, None)
    return sorted(steps.items(), key=lambda step: step[0].name)


def is_recipe_output(path: Path) -> bool:
    return storage.location(path).is_dir() and not is_stage_output(path) and bool(run_steps(path))


def run_status(output: Path, live: bool = True) -> list[StepStatus]:
    """Every step's status; `live` asks squeue about the jobs of unfinished Slurm stages."""
    return [step_status(folder, stage, live) for folder, stage in run_steps(output)]


def step_status(folder: Path, stage: str | None = None, live: bool = True) -> StepStatus:
    if not is_stage_output(folder):
        return StepStatus(folder, stage or "?", "pending", note="not started")
    plan = Plan.read(folder)
    finished = (folder / MANIFEST_NAME).exists()
    queue, note, finishing = _slurm_queue(plan) if live and not finished else ({}, "", None)
    phases = []
    for phase_index in range(len(plan.phases)):
        blocked = any(p.failed or p.pending for p in phases)
        phases.append(_phase_status(plan, phase_index, queue.get(phase_index), blocked))
    if finished:
        state = "finished"
    elif any(p.failed for p in phases):
        state = "failed"
    elif any(p.running for p in phases):
        state = "running"
    elif any(p.queued for p in phases):
        state = "queued"
    elif finishing is not None:
        state = "running" if finishing == "RUNNING" else "queued"
    elif _writer_alive(folder):
        state = "running"
    else:
        state = "unfinished"
    return StepStatus(folder, plan.stage, state, phases, note)


# Per phase: the jobs submitted for it, each with the array elements Slurm still knows (None when Slurm
# has forgotten the job).
SlurmPhase = list[tuple[SubmittedJob, dict[int, ArrayTask] | None]]


def _slurm_queue(plan: Plan) -> tuple[dict[int, SlurmPhase], str, str | None]:
    """Per phase its jobs; a note; the state of the job that finishes a detached step, while it lives."""
    fingerprint, jobs = read_jobs(plan)
    if not jobs or fingerprint not in (None, plan.fingerprint) or shutil.which("squeue") is None:
        return {}, "", None
    try:
        known = query_jobs([j.job for j in jobs], SQUEUE_PATIENCE)
    except SlurmUnreachable as exc:
        known, note = {}, f"queue unknown: {exc}"
    else:
        note = ""
    phases: dict[int, SlurmPhase] = {}
    finishing = None
    for job in jobs:
        if job.phase_index == CONTINUE:
            state = next(iter(known.get(job.job, {}).values()), None)
            if state is not None and state.state not in ENDED:
                finishing = state.state
                note = f"detached: job {job.job} finishes this step ({state.state.lower()})"
            continue
        phases.setdefault(job.phase_index, []).append((job, known.get(job.job)))
    return phases, note, finishing


def _element(slurm: SlurmPhase, index: int) -> tuple[str, int, dict[int, ArrayTask] | None, bool]:
    """(job, array element, what Slurm knows of the job, whether it was submitted) for one task."""
    for job, known in slurm:
        element = job.element_of(index)
        if element is not None:
            return job.job, element, known, True
    return "", 0, None, False


def _phase_status(plan: Plan, phase_index: int, slurm: SlurmPhase | None, blocked: bool) -> PhaseStatus:
    status = PhaseStatus(plan.phases[phase_index].name)
    failures = []
    live_jobs: set[str] = set()
    for i in range(len(plan.phases[phase_index].tasks)):
        if plan.record_path(phase_index, i).exists():
            status.done += 1
            continue
        job, element, known, submitted = _element(slurm or [], i)
        task = known.get(element) if known else None
        if task is not None and task.state not in ENDED:
            status.pending += 1
            status.running += task.state == "RUNNING"
            status.queued += task.state != "RUNNING"
            live_jobs.add(job)
            continue
        marker = _read_json(plan.failure_path(phase_index, i))
        if task is not None and task.state != "COMPLETED" and blocked and marker is None:
            # Cancelled because an earlier phase did not finish: it never started, and a rerun submits it.
            status.pending += 1
        elif task is not None and task.state != "COMPLETED":
            failures.append(f"task {i}: {task.state}, job {job}_{element}" + _error_text(marker))
        elif marker is not None:
            where = f", job {marker['slurm_job']}" if "slurm_job" in marker else ""
            failures.append(f"task {i}: {marker.get('slurm_state', 'failed')}{where}" + _error_text(marker))
        elif known and submitted and not blocked:
            # Slurm drops a pending array index that is cancelled without a trace: the job is still known,
            # this index is not, and it left no record.
            failures.append(f"task {i}: CANCELLED, job {job}_{element}")
        else:
            status.pending += 1
    status.failed = len(failures)
    status.notes = failures[:NOTES_PER_PHASE]
    if len(failures) > NOTES_PER_PHASE:
        status.notes.append(f"+{len(failures) - NOTES_PER_PHASE} more")
    if status.running or status.queued:
        jobs = ", ".join(sorted(live_jobs, key=int))
        status.notes.insert(0, f"job {jobs}: {status.running} running, {status.queued} queued")
    return status


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _error_text(marker: dict[str, Any] | None) -> str:
    """The task's own error, when it raised one (not the note the submitter wrote for a killed task)."""
    error = str(marker.get("error", "")) if marker else ""
    if not error or error.startswith("Slurm job "):
        return ""
    return ": " + (error if len(error) <= 100 else error[:97] + "...")


def _writer_alive(folder: Path) -> bool:
    """A process on this machine holds the folder's lock (a local run): the lock file names its pid while
    it is held. A run killed with SIGKILL leaves its pid there, so the pid must also still exist."""
    try:
        found = re.search(r"pid (\d+)", lock_path(folder).read_text())
    except OSError:
        return False
    if found is None:
        return False
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
