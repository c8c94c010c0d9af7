"""The Slurm executor: each phase of a stage becomes one `sbatch --array` job whose tasks run
`thresher task`, chained with `--dependency=afterok`. The submitting command waits for the chain, reads
the task records (not sacct, which many clusters lack) and finishes the stage; if a task failed it says
which, and running the same command again resubmits only unfinished tasks."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from thresher.pipelines.errors import IncompleteRun, ThresherError
from thresher.pipelines.executor import _digest_index, is_task_done, task_fingerprint
from thresher.pipelines.manifest import TaskRecord
from thresher.pipelines.plan import Plan
from thresher.pipelines.progress import Reporter, SilentReporter


class DryRun(Exception):
    """Raised after the scripts of a dry run are written and shown."""


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


def _array_spec(indices: list[int], max_concurrent: int | None) -> str:
    """Compact ranges: [0,1,2,5] -> "0-2,5", with an optional %N throttle."""
    ranges, start = [], indices[0]
    for prev, cur in zip(indices, [*indices[1:], None], strict=True):
        if cur != prev + 1:
            ranges.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur  # type: ignore[assignment]
    spec = ",".join(ranges)
    return f"{spec}%{max_concurrent}" if max_concurrent else spec


def _sbatch(args: list[str]) -> str:
    if shutil.which("sbatch") is None:
        raise ThresherError("sbatch not found: --executor slurm needs the Slurm client tools on PATH")
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        said = " ".join((proc.stderr.strip() or proc.stdout.strip()).split())
        raise ThresherError(f"sbatch failed: {said}")
    return proc.stdout.strip().split(";")[0]


def _in_queue(job_ids: list[str]) -> bool:
    proc = subprocess.run(
        ["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True
    )
    # squeue exits non-zero for job ids it no longer knows: they have left the queue.
    return proc.returncode == 0 and bool(proc.stdout.strip())


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
        jobs: list[tuple[int, str]] = []
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
                args.append(f"--dependency=afterok:{jobs[-1][1]}")
            try:
                job = _sbatch([*args, str(path)])
            except ThresherError:
                # Leave nothing half-submitted: earlier phases' jobs would run with no one waiting for them.
                if jobs:
                    subprocess.run(["scancel", *(j for _, j in jobs)], capture_output=True)
                raise
            jobs.append((phase_index, job))
            (logs / "jobs.json").write_text(
                json.dumps([{"phase": plan.phases[i].name, "job": j} for i, j in jobs], indent=2) + "\n"
            )
            self.reporter.message(f"{plan.stage}/{phase.name}: submitted job {job} ({len(pending)} tasks)")
        if self.options.dry_run:
            raise DryRun
        self._wait(plan, jobs)
        return self._records(plan)

    def _wait(self, plan: Plan, jobs: list[tuple[int, str]]) -> None:
        for position, (phase_index, job) in enumerate(jobs):
            while _in_queue([job]):
                time.sleep(self.options.poll_seconds)
            missing = [
                i
                for i in range(len(plan.phases[phase_index].tasks))
                if plan.read_record(phase_index, i) is None
            ]
            if missing:
                later = [j for _, j in jobs[position + 1 :]]
                if later:
                    subprocess.run(["scancel", *later], capture_output=True)
                phase = plan.phases[phase_index]
                errors = [
                    json.loads(plan.failure_path(phase_index, i).read_text())["error"]
                    for i in missing
                    if plan.failure_path(phase_index, i).exists()
                ]
                first_error = f"; first error: {errors[0]}" if errors else ""
                raise IncompleteRun(
                    f"{plan.stage}/{phase.name}: {len(missing)} task(s) did not finish (indices "
                    f"{_array_spec(missing, None)}){first_error}; logs in {plan.state_dir / 'slurm'}; "
                    "run the same command again to resubmit them"
                )
            self.reporter.message(f"{plan.stage}/{plan.phases[phase_index].name}: job {job} done")

    def _records(self, plan: Plan) -> list[TaskRecord]:
        records = []
        for phase_index, phase in enumerate(plan.phases):
            for i in range(len(phase.tasks)):
                record = plan.read_record(phase_index, i)
                if record is None:
                    raise ThresherError(f"{plan.output}: {phase.name} task {i} has no record")
                records.append(record)
        return records


def task_states(plan: Plan) -> list[tuple[str, int, int, int]]:
    """(phase, done, failed, pending) per phase, from the task records and failure markers."""
    states = []
    for phase_index, phase in enumerate(plan.phases):
        done = failed = 0
        for i in range(len(phase.tasks)):
            if plan.record_path(phase_index, i).exists():
                done += 1
            elif plan.failure_path(phase_index, i).exists():
                failed += 1
        states.append((phase.name, done, failed, len(phase.tasks) - done - failed))
    return states


def stage_folders(output: Path) -> list[Path]:
    """The stage outputs under a recipe output (OUTPUT/NN-*/), or OUTPUT itself for one stage."""
    if (output / "_thresher" / "plan.json").exists():
        return [output]
    return sorted(p for p in output.iterdir() if p.is_dir() and (p / "_thresher" / "plan.json").exists())
