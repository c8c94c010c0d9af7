"""What was submitted for a stage, kept in `_thresher/slurm/jobs.json` as each job is submitted: a rerun
after the submitter died adopts the chain still in the queue instead of submitting a second one, and
`thresher status` maps array elements back to tasks after Slurm has forgotten the jobs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from thresher.pipelines.engine import atomic, storage
from thresher.pipelines.engine.plan import Plan
from thresher.pipelines.engine.shards import STATE_DIR

JOBS_FILE = "jobs.json"
# The phase index of the job that finishes a detached stage and submits the next step.
CONTINUE = -1


@dataclass
class SubmittedJob:
    phase_index: int  # CONTINUE for the job that carries a detached chain on
    phase: str
    job: str
    tasks: list[int]  # the task indices it runs, element by element
    per_element: int = 1  # tasks one array element runs in turn

    def element_of(self, task: int) -> int | None:
        """The array index that runs this task, if this job runs it."""
        try:
            return self.tasks.index(task) // self.per_element
        except ValueError:
            return None

    @property
    def elements(self) -> int:
        return -(-len(self.tasks) // self.per_element)


def array_spec(indices: list[int], max_concurrent: int | None = None) -> str:
    """Compact ranges: [0,1,2,5] -> "0-2,5", with an optional %N throttle."""
    ranges, start = [], indices[0]
    for prev, cur in zip(indices, [*indices[1:], None], strict=True):
        if cur != prev + 1:
            ranges.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur  # type: ignore[assignment]
    spec = ",".join(ranges)
    return f"{spec}%{max_concurrent}" if max_concurrent else spec


def parse_array_spec(spec: str) -> list[int]:
    indices: list[int] = []
    for part in spec.split("%")[0].split(","):
        if part:
            first, _, last = part.partition("-")
            indices += range(int(first), int(last or first) + 1)
    return indices


def jobs_path(output: Path) -> Path:
    return storage.location(output) / STATE_DIR / "slurm" / JOBS_FILE


def read_jobs(plan: Plan) -> tuple[str | None, list[SubmittedJob]]:
    """(fingerprint of the plan they ran, jobs) as the last submitter recorded them."""
    fingerprint, entries = _read(jobs_path(plan.output))
    names = [p.name for p in plan.phases]
    jobs = []
    for entry in entries:
        index = entry.get("phase_index", names.index(entry["phase"]) if entry["phase"] in names else -2)
        jobs.append(
            SubmittedJob(
                index,
                entry["phase"],
                str(entry["job"]),
                parse_array_spec(entry.get("tasks", "")),
                int(entry.get("per_element", 1)),
            )
        )
    return fingerprint, jobs


def _read(path: Path) -> tuple[str | None, list[dict]]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None, []
    if isinstance(data, list):  # written before the plan's fingerprint was recorded beside the jobs
        return None, data
    return data.get("fingerprint"), list(data.get("jobs", []))


def write_jobs(plan: Plan, jobs: list[SubmittedJob]) -> None:
    entries = [
        {
            "phase": j.phase,
            "phase_index": j.phase_index,
            "job": j.job,
            "tasks": array_spec(j.tasks) if j.tasks else "",
            "per_element": j.per_element,
        }
        for j in jobs
    ]
    atomic.write_json(jobs_path(plan.output), {"fingerprint": plan.fingerprint, "jobs": entries})


def recorded_job_ids(output: Path) -> list[str]:
    """Every job recorded for a stage output, or for every step of a recipe output."""
    output = storage.location(output)
    files = [jobs_path(output), *sorted(output.glob(f"*/{STATE_DIR}/slurm/{JOBS_FILE}"))]
    return [str(entry["job"]) for f in files for entry in _read(f)[1]]
