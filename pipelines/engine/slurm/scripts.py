"""The sbatch scripts: one array job per phase (split at MaxArraySize, several tasks per element), and
for a detached chain the job that finishes the stage and submits the next step."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.shards import STATE_DIR
from thresher.pipelines.engine.slurm.jobs import array_spec

# An array element should run for seconds, not milliseconds: scheduling one costs about a second.
ROWS_PER_ELEMENT = 100_000


@dataclass
class SlurmOptions:
    partition: str | None = None
    time: str | None = None
    cpus_per_task: int = 1
    mem: str | None = None
    gres: str | None = None
    max_concurrent: int | None = None
    extra: list[str] = field(default_factory=list)
    tasks_per_job: int | None = None  # None: chosen from the tasks' row counts
    dry_run: bool = False
    # Submit the whole chain and return; `resubmit` (run in `cwd`) is the command the last job runs to
    # finish the stage and go on with the next step: the user's own command line.
    detach: bool = False
    resubmit: list[str] = field(default_factory=list)
    cwd: Path | None = None
    # Seconds before the time limit at which a task is told (SIGUSR1) to requeue itself.
    warn_seconds: int = 120
    poll_seconds: float = 2.0
    # How long squeue may keep failing before the submitter gives up waiting (the jobs stay queued and
    # a rerun adopts them), and the first pause between tries, doubled each time up to a minute.
    query_patience: float = 1800.0
    query_backoff: float = 1.0


def tasks_per_element(options: SlurmOptions, rows: list[int | None], cpus: Callable[[], int]) -> int:
    """How many tasks one array element runs. From the tasks' row counts when the plan has them, so an
    element reads about ROWS_PER_ELEMENT rows; otherwise (hash buckets, a training task) the tasks are
    spread over the partition's CPUs."""
    if options.tasks_per_job:
        return options.tasks_per_job
    if rows and all(r is not None for r in rows):
        mean = sum(r or 0 for r in rows) / len(rows)
        return max(1, int(ROWS_PER_ELEMENT // max(mean, 1.0)))
    slots = max(1, cpus() // options.cpus_per_task)
    return max(1, -(-len(rows) // slots))


def split_at(tasks: list[int], per_element: int, max_elements: int) -> list[list[int]]:
    """The tasks of each array job: at most `max_elements` elements (indices 0..max_elements-1) each."""
    chunk = per_element * max(1, max_elements)
    return [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]


def _header(options: SlurmOptions, *, resources: bool = True) -> list[str]:
    o = options
    lines = [f"#SBATCH --partition={o.partition}"] if o.partition else []
    lines += [f"#SBATCH --time={o.time}"] if o.time else []
    if resources:
        lines += [f"#SBATCH --cpus-per-task={o.cpus_per_task}"]
        lines += [f"#SBATCH --mem={o.mem}"] if o.mem else []
        lines += [f"#SBATCH --gres={o.gres}"] if o.gres else []
    # Requeueable, with logs appended, so a preempted or requeued task runs again into the same log.
    lines += ["#SBATCH --requeue", "#SBATCH --open-mode=append"]
    lines += [f"#SBATCH {arg}" for arg in o.extra]
    return lines


def array_script(
    stage: str,
    output: Path,
    phase: tuple[int, str],
    tasks: list[int] | None,
    per_element: int,
    options: SlurmOptions,
) -> str:
    """The job of one phase (or of the part of it that fits one array). `tasks` None: not known until
    the step before has run (a later step of a dry run)."""
    phase_index, name = phase
    logs = storage.local_mirror(output / STATE_DIR / "slurm")
    if tasks:
        array = array_spec(list(range(-(-len(tasks) // per_element))), options.max_concurrent)
    else:
        array = "<known once the step before has run>"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=thresher-{stage}-{name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --output={logs}/{phase_index:02d}-{name}-%A_%a.log",
        *_header(options),
    ]
    if options.time:
        # Told before the limit, a task stops between batches and puts itself back in the queue.
        lines.append(f"#SBATCH --signal=B:USR1@{options.warn_seconds}")
    command = [sys.executable, "-m", "thresher.cli", "task", str(output), "--phase", name]
    if tasks:
        command += ["--tasks", array_spec(tasks), "--per-element", str(per_element)]
    lines += ["set -euo pipefail", "exec " + shlex.join(command)]
    return "\n".join(lines) + "\n"


def continue_script(stage: str, output: Path, options: SlurmOptions) -> str:
    """The last job of a detached stage: the user's command once more, which finds every task done,
    writes the manifest, and submits the next step of a recipe (or nothing, at the end)."""
    logs = storage.local_mirror(output / STATE_DIR / "slurm")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=thresher-{stage}-finish",
        f"#SBATCH --output={logs}/finish-%j.log",
        f"#SBATCH --chdir={options.cwd or Path.cwd()}",
        "#SBATCH --cpus-per-task=1",
        *_header(options, resources=False),
        "set -euo pipefail",
        "exec " + shlex.join(options.resubmit),
    ]
    return "\n".join(lines) + "\n"
