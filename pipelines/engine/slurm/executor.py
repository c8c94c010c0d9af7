"""The Slurm executor: each phase of a stage becomes `sbatch --array` jobs whose elements run
`thresher task`, chained with `--dependency=afterok`.

Attached (the default), the submitting command waits for the chain, reads the task records (not sacct)
and finishes the stage; if a task failed it says which, and the same command again resubmits only
unfinished tasks. Detached (`--detach`), it also submits a last job that runs the same command once more
(finishing the stage and submitting the next step of a recipe) and exits at once: nothing on the login
node has to stay alive. Either way a rerun while the chain is queued adopts it instead of submitting a
second one beside it."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from thresher.pipelines.engine import atomic, storage
from thresher.pipelines.engine.errors import IncompleteRun, ThresherError
from thresher.pipelines.engine.executor import pending_tasks, phase_records
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.plan import Plan
from thresher.pipelines.engine.progress import Reporter, SilentReporter
from thresher.pipelines.engine.shards import STATE_DIR
from thresher.pipelines.engine.slurm.jobs import (
    CONTINUE,
    SubmittedJob,
    array_spec,
    read_jobs,
    recorded_job_ids,
    write_jobs,
)
from thresher.pipelines.engine.slurm.queue import (
    ENDED,
    ArrayTask,
    SlurmUnreachable,
    live,
    max_array_size,
    own_job,
    partition_cpus,
    query_jobs,
    sbatch,
    scancel,
)
from thresher.pipelines.engine.slurm.scripts import (
    SlurmOptions,
    array_script,
    continue_script,
    split_at,
    tasks_per_element,
)


class DryRun(Exception):
    """Raised after the scripts of a dry run are written and shown."""


class Detached(Exception):
    """The chain is in the queue (submitted now, or earlier and still alive) and this command is done."""


def wait_for_chain(
    output: Path, options: SlurmOptions, reporter: Reporter, exclude: str | None = None
) -> None:
    """Poll until no job recorded under `output` (a stage's or every step's of a recipe) can still run.
    Read again each time: the last job of a detached step submits the next step's jobs."""
    announced = False
    while True:
        ids = [j for j in recorded_job_ids(output) if j != exclude]
        running = live(_query(ids, options)) if ids else []
        if not running:
            return
        if not announced:
            reporter.message(f"{output}: waiting for job(s) {', '.join(running)} in the queue")
            announced = True
        time.sleep(options.poll_seconds)


def _query(job_ids: list[str], options: SlurmOptions) -> dict[str, dict[int, ArrayTask]]:
    try:
        return query_jobs(job_ids, options.query_patience, options.query_backoff)
    except SlurmUnreachable as exc:
        raise IncompleteRun(
            f"{exc}; job(s) {', '.join(job_ids)} may still be queued: run the same command again "
            "to wait for them"
        ) from None


class SlurmExecutor:
    def __init__(self, options: SlurmOptions, reporter: Reporter | None = None) -> None:
        self.options = options
        self.reporter = reporter or SilentReporter()
        self._own = own_job()
        self._max_elements: int | None = None
        self._cpus: int | None = None

    # --- before the output is locked ---------------------------------------------------------------

    def follow(self, output: Path) -> None:
        """A chain already in the queue for this output: detached, leave it be; attached, wait for it to
        end first (holding no lock, which its last job needs), then carry on from what it finished."""
        if self.options.dry_run:
            return
        ids = [j for j in recorded_job_ids(output) if j != self._own]
        running = live(_query(ids, self.options)) if ids else []
        if not running:
            return
        if self.options.detach:
            raise Detached(
                f"{output}: the chain submitted earlier is still in the queue (job(s) {', '.join(running)});"
                f" nothing submitted. Follow it with: thresher status {output} --wait"
            )
        self.reporter.message(
            f"{output}: adopting job(s) {', '.join(running)} submitted by an earlier run; waiting for them "
            "instead of submitting again"
        )
        wait_for_chain(output, self.options, self.reporter, exclude=self._own)

    # --- one stage ----------------------------------------------------------------------------------

    def run(self, plan: Plan) -> list[TaskRecord]:
        o = self.options
        logs = storage.local_mirror(plan.state_dir / "slurm")
        logs.mkdir(parents=True, exist_ok=True)
        if not o.dry_run:
            self._adopt(plan)
        jobs: list[SubmittedJob] = []
        previous: list[str] = []  # the jobs of the last phase submitted: the next one waits for them
        earlier_complete = True
        for phase_index, phase in enumerate(plan.phases):
            pending = self._pending(plan, phase_index, earlier_complete)
            if not pending:
                continue
            earlier_complete = False
            per = tasks_per_element(o, [phase.tasks[i].rows for i in pending], self._partition_cpus)
            parts = split_at(pending, per, self._array_limit())
            submitted = []
            for part_no, part in enumerate(parts):
                suffix = f"-part{part_no}" if len(parts) > 1 else ""
                path = logs / f"{phase_index:02d}-{phase.name}{suffix}.sbatch"
                path.write_text(
                    array_script(plan.stage, plan.output, (phase_index, phase.name), part, per, o)
                )
                args = ["--kill-on-invalid-dep=yes", *_after(previous)]
                if o.dry_run:
                    self._show(path, args)
                    submitted.append(f"<{path.stem}>")
                    continue
                job = self._submit(
                    plan, SubmittedJob(phase_index, phase.name, "", part, per), args, path, jobs
                )
                submitted.append(job)
            elements = sum(-(-len(p) // per) for p in parts)
            if not o.dry_run:
                self.reporter.message(
                    f"{plan.stage}/{phase.name}: submitted job {', '.join(submitted)} ({len(pending)} tasks "
                    f"in {elements} array element(s))"
                )
            previous = submitted
        if o.detach and previous:
            path = logs / "finish.sbatch"
            path.write_text(continue_script(plan.stage, plan.output, o))
            if o.dry_run:
                self._show(path, ["--kill-on-invalid-dep=yes", *_after(previous)])
            else:
                # Killed with the chain when a task fails: pending forever, it would keep followers waiting.
                args = ["--kill-on-invalid-dep=yes", *_after(previous)]
                job = self._submit(plan, SubmittedJob(CONTINUE, "finish", "", []), args, path, jobs)
                raise Detached(
                    f"{plan.stage}: submitted; job {job} finishes the stage"
                    f"{' and submits the next step' if self.options.resubmit else ''}. Follow it with: "
                    f"thresher status {plan.output.parent if _in_recipe(plan) else plan.output} --wait"
                )
        if o.dry_run:
            raise DryRun
        self._wait(plan, jobs)
        return self._records(plan)

    def show_later_step(self, stage: str, output: Path, phases: list[str]) -> None:
        """A dry run's view of a step that cannot be planned yet (its input is made by an earlier step):
        the jobs it will get, with the options this step runs with."""
        state = storage.local_mirror(output / STATE_DIR / "slurm")
        for phase_index, name in enumerate(phases):
            text = array_script(stage, output, (phase_index, name), None, 1, self.options)
            self.reporter.message(
                f"# {state / f'{phase_index:02d}-{name}.sbatch'} (written when submitted)\n{text}"
            )

    def _show(self, path: Path, args: list[str]) -> None:
        self.reporter.message(f"# sbatch --parsable {' '.join(args)} {path}\n{path.read_text()}")

    def _array_limit(self) -> int:
        if self._max_elements is None:
            self._max_elements = max_array_size() if not self.options.dry_run else 1001
        return self._max_elements

    def _partition_cpus(self) -> int:
        if self._cpus is None:
            self._cpus = partition_cpus(self.options.partition)
        return self._cpus

    def _pending(self, plan: Plan, phase_index: int, earlier_complete: bool) -> list[int]:
        if not earlier_complete:
            # Unknown until earlier phases run; finished tasks skip themselves.
            return list(range(len(plan.phases[phase_index].tasks)))
        return pending_tasks(plan, phase_index)

    def _submit(
        self, plan: Plan, job: SubmittedJob, args: list[str], script: Path, jobs: list[SubmittedJob]
    ) -> str:
        # A hang-up between sbatch returning and the id reaching jobs.json would leave a job that no rerun
        # knows of, so SIGHUP and SIGTERM wait until the id is on disk (sbatch inherits the mask and so
        # finishes too). Not SIGINT: Ctrl-C must still stop an sbatch hanging on a slow controller.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM})
        try:
            try:
                job.job = sbatch([*args, str(script)])
            except ThresherError:
                # Leave nothing half-submitted: earlier phases' jobs would run with no one waiting for them.
                scancel([j.job for j in jobs])
                raise
            jobs.append(job)
            write_jobs(plan, jobs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return job.job

    def _adopt(self, plan: Plan) -> None:
        """Wait for jobs an earlier submitter of this stage left in the queue, so their tasks do not run a
        second time beside a new chain; cancel them first if they ran another plan (params changed)."""
        fingerprint, earlier = read_jobs(plan)
        ids = [j.job for j in earlier if j.job != self._own]
        running = live(_query(ids, self.options)) if ids else []
        if not running:
            return
        if fingerprint not in (None, plan.fingerprint):
            # Their tasks would read the new plan from disk and run its tasks under the old indices.
            scancel(running)
            self.reporter.message(
                f"{plan.stage}: cancelled job(s) {', '.join(running)} of an earlier run with other params "
                "or inputs"
            )
        elif self.options.detach:
            raise Detached(f"{plan.stage}: job(s) {', '.join(running)} of an earlier run are still queued")
        else:
            self.reporter.message(
                f"{plan.stage}: adopting job(s) {', '.join(running)} submitted by an earlier run of this "
                "command; waiting for them instead of submitting again"
            )
        self._wait_ended(running)

    def _wait_ended(self, job_ids: list[str]) -> dict[str, dict[int, ArrayTask]]:
        """Poll until no element of these jobs can run any more; return each element's last state seen."""
        seen: dict[str, dict[int, ArrayTask]] = {job: {} for job in job_ids}
        while True:
            now = _query(job_ids, self.options)
            for job in job_ids:
                known = now.get(job, {})
                # An index that disappears before it ended was cancelled while pending (see _last_state).
                seen[job] = {i: t for i, t in seen[job].items() if i in known or t.state in ENDED}
                seen[job].update(known)
            if not live(now):
                return seen
            time.sleep(self.options.poll_seconds)

    def _wait(self, plan: Plan, jobs: list[SubmittedJob]) -> None:
        by_phase: dict[int, list[SubmittedJob]] = {}
        for job in jobs:
            by_phase.setdefault(job.phase_index, []).append(job)
        for phase_index, phase_jobs in by_phase.items():
            seen = self._wait_ended([j.job for j in phase_jobs])
            phase = plan.phases[phase_index]
            missing = [i for i in range(len(phase.tasks)) if plan.read_record(phase_index, i) is None]
            if missing:
                scancel([j.job for j in jobs if j.phase_index > phase_index])
                errors = [self._mark_failed(plan, phase_jobs, seen, phase_index, i) for i in missing]
                first_error = next((f"; first error: {e}" for e in errors if e), "")
                raise IncompleteRun(
                    f"{plan.stage}/{phase.name}: {len(missing)} task(s) did not finish (indices "
                    f"{array_spec(missing)}){first_error}; logs in {plan.state_dir / 'slurm'}; "
                    "run the same command again to resubmit them"
                )
            self.reporter.message(
                f"{plan.stage}/{phase.name}: job {', '.join(j.job for j in phase_jobs)} done"
            )

    @staticmethod
    def _last_state(
        phase_jobs: list[SubmittedJob], seen: dict[str, dict[int, ArrayTask]], index: int
    ) -> tuple[str, int, ArrayTask | None]:
        """(job, array element, its last state) of the element that was to run this task."""
        for job in phase_jobs:
            element = job.element_of(index)
            if element is None:
                continue
            known = seen.get(job.job, {})
            if element in known:
                return job.job, element, known[element]
            if known:
                # Slurm keeps a started array element that is cancelled (as CANCELLED) but drops a pending
                # one without a trace: the job was known, this index was not, so it never ran.
                return job.job, element, ArrayTask("CANCELLED", "removed from the queue before it ran")
            return job.job, element, None
        return "", 0, None

    def _mark_failed(
        self,
        plan: Plan,
        phase_jobs: list[SubmittedJob],
        seen: dict[str, dict[int, ArrayTask]],
        phase_index: int,
        index: int,
    ) -> str | None:
        """Add the Slurm job and state to the task's failure marker (writing one for a task killed before
        it could, e.g. cancelled), so `thresher status` shows it after Slurm has forgotten the job."""
        job, element, task = self._last_state(phase_jobs, seen, index)
        path = plan.failure_path(phase_index, index)
        try:
            marker = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            marker = None
        if task is None:
            return marker["error"] if marker else None
        where = f"Slurm job {job}_{element} {task.state}" + (f" ({task.reason})" if task.reason else "")
        if marker is None:
            marker = {"key": plan.phases[phase_index].tasks[index].key, "error": where}
        marker.update(slurm_job=f"{job}_{element}", slurm_state=task.state)
        atomic.write_json(path, marker)
        return str(marker["error"])

    def _records(self, plan: Plan) -> list[TaskRecord]:
        return [r for i in range(len(plan.phases)) for r in phase_records(plan, i)]


def _after(job_ids: list[str]) -> list[str]:
    return [f"--dependency=afterok:{':'.join(job_ids)}"] if job_ids else []


def _in_recipe(plan: Plan) -> bool:
    from thresher.pipelines.engine.status import RECIPE_STEPS

    return (plan.output.parent / STATE_DIR / RECIPE_STEPS).is_file()
