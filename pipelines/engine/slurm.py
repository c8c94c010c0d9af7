"""The Slurm executor: each phase of a stage becomes one `sbatch --array` job whose tasks run
`thresher task`, chained with `--dependency=afterok`. The submitting command waits for the chain, reads
the task records (not sacct, which many clusters lack) and finishes the stage; if a task failed it says
which, and running the same command again resubmits only unfinished tasks.

The ids of the submitted jobs are recorded in `_thresher/slurm/jobs.json` as they are submitted, so a
rerun after the submitter died (an ssh drop) waits for the chain still in the queue instead of submitting
a second one beside it."""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from thresher.pipelines.engine import atomic
from thresher.pipelines.engine.errors import IncompleteRun, ThresherError
from thresher.pipelines.engine.executor import _digest_index, is_task_done, task_fingerprint
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.plan import Plan
from thresher.pipelines.engine.progress import Reporter, SilentReporter

log = logging.getLogger("thresher")

# States after which an array task never runs again (squeue's long names).
ENDED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)
JOBS_FILE = "jobs.json"


class DryRun(Exception):
    """Raised after the scripts of a dry run are written and shown."""


class SlurmUnreachable(ThresherError):
    """squeue gave no definite answer (controller down or timing out) for longer than we were willing to
    wait. Says nothing about the jobs, which may still be queued."""


@dataclass
class SlurmOptions:
    partition: str | None = None
    time: str | None = None
    cpus_per_task: int = 1
    mem: str | None = None
    max_concurrent: int | None = None
    extra: list[str] = field(default_factory=list)
    dry_run: bool = False
    poll_seconds: float = 2.0
    # How long squeue may keep failing before the submitter gives up waiting (the jobs stay queued and
    # a rerun adopts them), and the first pause between tries, doubled each time up to a minute.
    query_patience: float = 1800.0
    query_backoff: float = 1.0


@dataclass
class ArrayTask:
    state: str  # squeue's long state name: PENDING, RUNNING, COMPLETED, CANCELLED ...
    reason: str = ""


@dataclass
class SubmittedJob:
    phase_index: int
    phase: str
    job: str
    tasks: list[int]  # the array indices it was submitted with


def _array_spec(indices: list[int], max_concurrent: int | None) -> str:
    """Compact ranges: [0,1,2,5] -> "0-2,5", with an optional %N throttle."""
    ranges, start = [], indices[0]
    for prev, cur in zip(indices, [*indices[1:], None], strict=True):
        if cur != prev + 1:
            ranges.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur  # type: ignore[assignment]
    spec = ",".join(ranges)
    return f"{spec}%{max_concurrent}" if max_concurrent else spec


def _parse_array_spec(spec: str) -> list[int]:
    indices: list[int] = []
    for part in spec.split("%")[0].split(","):
        if part:
            first, _, last = part.partition("-")
            indices += range(int(first), int(last or first) + 1)
    return indices


def _sbatch(args: list[str]) -> str:
    if shutil.which("sbatch") is None:
        raise ThresherError("sbatch not found: --executor slurm needs the Slurm client tools on PATH")
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        said = " ".join((proc.stderr.strip() or proc.stdout.strip()).split())
        raise ThresherError(f"sbatch failed: {said}")
    return proc.stdout.strip().split(";")[0]


def query_jobs(job_ids: list[str], patience: float, backoff: float = 1.0) -> dict[str, dict[int, ArrayTask]]:
    """The array tasks Slurm still knows of these jobs, by job id and index. A job missing from the answer
    has left Slurm's memory (ended more than MinJobAge ago). Only a definite answer counts: a non-zero exit
    that is not "invalid job id" (a controller timeout, a restart) is retried with growing pauses, and after
    `patience` seconds without one this raises SlurmUnreachable rather than guess that the jobs ended."""
    if not job_ids:
        return {}
    # -t all keeps ended tasks in the answer (for MinJobAge), so a cancelled or failed one shows as such;
    # -r lists each pending array index on its own line instead of as one "[0-9]" range.
    command = ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%F|%K|%T|%r"]
    deadline = time.monotonic() + patience
    delay = backoff
    while True:
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
            code, said = proc.returncode, " ".join((proc.stderr.strip() or proc.stdout.strip()).split())
        except FileNotFoundError:
            raise ThresherError(
                "squeue not found: --executor slurm needs the Slurm client tools on PATH"
            ) from None
        except subprocess.TimeoutExpired:
            code, said = -1, "squeue did not answer within 120 s"
        if code == 0:
            return _parse_queue(proc.stdout)
        # squeue says this only when it reached the controller and none of the ids is known to it.
        if "invalid job id" in said.lower():
            return {}
        if time.monotonic() + delay > deadline:
            raise SlurmUnreachable(f"squeue gave no answer for {patience:.0f} s (last: {said or code})")
        log.warning("squeue failed (%s); asking again in %.0f s", said or f"exit {code}", delay)
        time.sleep(delay)
        delay = min(delay * 2, 60.0)


def _parse_queue(text: str) -> dict[str, dict[int, ArrayTask]]:
    jobs: dict[str, dict[int, ArrayTask]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        reason = parts[3] if len(parts) > 3 and parts[3] != "None" else ""
        jobs.setdefault(parts[0], {})[int(parts[1])] = ArrayTask(parts[2], reason)
    return jobs


def jobs_path(plan: Plan) -> Path:
    return plan.state_dir / "slurm" / JOBS_FILE


def read_jobs(plan: Plan) -> tuple[str | None, list[SubmittedJob]]:
    """(fingerprint of the plan they ran, jobs) as the last submitter recorded them."""
    try:
        data = json.loads(jobs_path(plan).read_text())
    except (FileNotFoundError, ValueError):
        return None, []
    if isinstance(data, list):  # written before the plan's fingerprint was recorded beside the jobs
        data = {"fingerprint": None, "jobs": data}
    names = [p.name for p in plan.phases]
    jobs = []
    for entry in data.get("jobs", []):
        index = entry.get("phase_index", names.index(entry["phase"]) if entry["phase"] in names else -1)
        jobs.append(
            SubmittedJob(index, entry["phase"], str(entry["job"]), _parse_array_spec(entry.get("tasks", "")))
        )
    return data.get("fingerprint"), jobs


def _write_jobs(plan: Plan, jobs: list[SubmittedJob]) -> None:
    entries = [
        {"phase": j.phase, "phase_index": j.phase_index, "job": j.job, "tasks": _array_spec(j.tasks, None)}
        for j in jobs
    ]
    atomic.write_json(jobs_path(plan), {"fingerprint": plan.fingerprint, "jobs": entries})


def _live(tasks: dict[str, dict[int, ArrayTask]]) -> list[str]:
    return [job for job, known in tasks.items() if any(t.state not in ENDED for t in known.values())]


class SlurmExecutor:
    def __init__(self, options: SlurmOptions, reporter: Reporter | None = None) -> None:
        self.options = options
        self.reporter = reporter or SilentReporter()

    def script(self, plan: Plan, phase_index: int, indices: list[int]) -> str:
        o = self.options
        phase = plan.phases[phase_index]
        logs = plan.state_dir / "slurm"
        lines = [
            "#!/bin/bash",
            f"#SBATCH --job-name=thresher-{plan.stage}-{phase.name}",
            f"#SBATCH --array={_array_spec(indices, o.max_concurrent)}",
            f"#SBATCH --cpus-per-task={o.cpus_per_task}",
            f"#SBATCH --output={logs}/{phase_index:02d}-{phase.name}-%A_%a.log",
        ]
        lines += [f"#SBATCH --partition={o.partition}"] if o.partition else []
        lines += [f"#SBATCH --time={o.time}"] if o.time else []
        lines += [f"#SBATCH --mem={o.mem}"] if o.mem else []
        lines += [f"#SBATCH {arg}" for arg in o.extra]
        command = [sys.executable, "-m", "thresher.cli", "task", str(plan.output), "--phase", phase.name]
        lines += ["set -euo pipefail", "exec " + shlex.join(command) + ' --index "$SLURM_ARRAY_TASK_ID"']
        return "\n".join(lines) + "\n"

    def _pending(self, plan: Plan, phase_index: int, earlier_complete: bool) -> list[int]:
        tasks = range(len(plan.phases[phase_index].tasks))
        if not earlier_complete:
            return list(tasks)  # unknown until earlier phases run; finished tasks skip themselves
        digests = _digest_index(plan, phase_index)
        return [
            i
            for i in tasks
            if not is_task_done(plan, phase_index, i, task_fingerprint(plan, phase_index, i, digests))
        ]

    def run(self, plan: Plan) -> list[TaskRecord]:
        logs = plan.state_dir / "slurm"
        logs.mkdir(parents=True, exist_ok=True)
        if not self.options.dry_run:
            self._adopt(plan)
        jobs: list[SubmittedJob] = []
        earlier_complete = True
        for phase_index, phase in enumerate(plan.phases):
            pending = self._pending(plan, phase_index, earlier_complete)
            if not pending:
                continue
            earlier_complete = False
            path = logs / f"{phase_index:02d}-{phase.name}.sbatch"
            path.write_text(self.script(plan, phase_index, pending))
            if self.options.dry_run:
                self.reporter.message(f"# {path}\n{path.read_text()}")
                continue
            args = ["--kill-on-invalid-dep=yes"]
            if jobs:
                args.append(f"--dependency=afterok:{jobs[-1].job}")
            self._submit(plan, phase_index, pending, [*args, str(path)], jobs)
            self.reporter.message(
                f"{plan.stage}/{phase.name}: submitted job {jobs[-1].job} ({len(pending)} tasks)"
            )
        if self.options.dry_run:
            raise DryRun
        self._wait(plan, jobs)
        return self._records(plan)

    def _submit(
        self, plan: Plan, phase_index: int, pending: list[int], args: list[str], jobs: list[SubmittedJob]
    ) -> None:
        # A hang-up between sbatch returning and the id reaching jobs.json would leave a job that no rerun
        # knows of, so SIGHUP and SIGTERM wait until the id is on disk (sbatch inherits the mask and so
        # finishes too). Not SIGINT: Ctrl-C must still stop an sbatch hanging on a slow controller.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM})
        try:
            try:
                job = _sbatch(args)
            except ThresherError:
                # Leave nothing half-submitted: earlier phases' jobs would run with no one waiting for them.
                if jobs:
                    subprocess.run(["scancel", *(j.job for j in jobs)], capture_output=True)
                raise
            jobs.append(SubmittedJob(phase_index, plan.phases[phase_index].name, job, pending))
            _write_jobs(plan, jobs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _query(self, job_ids: list[str]) -> dict[str, dict[int, ArrayTask]]:
        try:
            return query_jobs(job_ids, self.options.query_patience, self.options.query_backoff)
        except SlurmUnreachable as exc:
            raise IncompleteRun(
                f"{exc}; job(s) {', '.join(job_ids)} may still be queued: run the same command again "
                "to wait for them"
            ) from None

    def _adopt(self, plan: Plan) -> None:
        """Wait for jobs an earlier submitter of this output left in the queue, so their tasks do not run a
        second time beside a new chain; cancel them first if they ran another plan (params changed)."""
        fingerprint, earlier = read_jobs(plan)
        if not earlier:
            return
        live = _live(self._query([j.job for j in earlier]))
        if not live:
            return
        if fingerprint not in (None, plan.fingerprint):
            # Their tasks would read the new plan from disk and run its tasks under the old indices.
            subprocess.run(["scancel", *live], capture_output=True)
            self.reporter.message(
                f"{plan.stage}: cancelled job(s) {', '.join(live)} of an earlier run with other params "
                "or inputs"
            )
        else:
            self.reporter.message(
                f"{plan.stage}: adopting job(s) {', '.join(live)} submitted by an earlier run of this "
                "command; waiting for them instead of submitting again"
            )
        self._wait_ended(live)

    def _wait_ended(self, job_ids: list[str]) -> dict[str, dict[int, ArrayTask]]:
        """Poll until no task of these jobs can run any more; return each task's last state seen."""
        seen: dict[str, dict[int, ArrayTask]] = {job: {} for job in job_ids}
        while True:
            now = self._query(job_ids)
            for job in job_ids:
                known = now.get(job, {})
                # An index that disappears before it ended was cancelled while pending (see _wait).
                seen[job] = {i: t for i, t in seen[job].items() if i in known or t.state in ENDED}
                seen[job].update(known)
            if not _live(now):
                return seen
            time.sleep(self.options.poll_seconds)

    def _wait(self, plan: Plan, jobs: list[SubmittedJob]) -> None:
        for position, job in enumerate(jobs):
            seen = self._wait_ended([job.job])[job.job]
            phase = plan.phases[job.phase_index]
            missing = [i for i in range(len(phase.tasks)) if plan.read_record(job.phase_index, i) is None]
            if missing:
                later = [j.job for j in jobs[position + 1 :]]
                if later:
                    subprocess.run(["scancel", *later], capture_output=True)
                errors = [self._mark_failed(plan, job, i, self._last_state(job, seen, i)) for i in missing]
                first_error = next((f"; first error: {e}" for e in errors if e), "")
                raise IncompleteRun(
                    f"{plan.stage}/{phase.name}: {len(missing)} task(s) did not finish (indices "
                    f"{_array_spec(missing, None)}){first_error}; logs in {plan.state_dir / 'slurm'}; "
                    "run the same command again to resubmit them"
                )
            self.reporter.message(f"{plan.stage}/{phase.name}: job {job.job} done")

    @staticmethod
    def _last_state(job: SubmittedJob, seen: dict[int, ArrayTask], index: int) -> ArrayTask | None:
        if index in seen:
            return seen[index]
        if seen and index in job.tasks:
            # Slurm keeps a started array task that is cancelled (as CANCELLED) but drops a pending one
            # without a trace: the job was known, this index was not, so it was cancelled before it ran.
            return ArrayTask("CANCELLED", "removed from the queue before it ran")
        return None

    def _mark_failed(self, plan: Plan, job: SubmittedJob, index: int, task: ArrayTask | None) -> str | None:
        """Add the Slurm job and state to the task's failure marker (writing one for a task killed before
        it could, e.g. cancelled), so `thresher status` shows it after Slurm has forgotten the job."""
        path = plan.failure_path(job.phase_index, index)
        try:
            marker = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            marker = None
        if task is None:
            return marker["error"] if marker else None
        where = f"Slurm job {job.job}_{index} {task.state}" + (f" ({task.reason})" if task.reason else "")
        if marker is None:
            marker = {"key": plan.phases[job.phase_index].tasks[index].key, "error": where}
        marker.update(slurm_job=f"{job.job}_{index}", slurm_state=task.state)
        atomic.write_json(path, marker)
        return str(marker["error"])

    def _records(self, plan: Plan) -> list[TaskRecord]:
        records = []
        for phase_index, phase in enumerate(plan.phases):
            for i in range(len(phase.tasks)):
                record = plan.read_record(phase_index, i)
                if record is None:
                    raise ThresherError(f"{plan.output}: {phase.name} task {i} has no record")
                records.append(record)
        return records
