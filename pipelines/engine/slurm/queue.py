"""Talking to Slurm: sbatch, scancel, squeue (retried until it gives a definite answer) and the cluster
facts that shape a submission (MaxArraySize, CPUs of the partition). Only the client tools on PATH; no
sacct, which many clusters lack."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

from thresher.pipelines.engine.errors import ThresherError

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


class SlurmUnreachable(ThresherError):
    """squeue gave no definite answer (controller down or timing out) for longer than we were willing to
    wait. Says nothing about the jobs, which may still be queued."""


@dataclass
class ArrayTask:
    state: str  # squeue's long state name: PENDING, RUNNING, COMPLETED, CANCELLED ...
    reason: str = ""


def own_job() -> str | None:
    """The id of the Slurm job this process runs in (the job that carries a detached chain on)."""
    return os.environ.get("SLURM_JOB_ID")


def client_env() -> dict[str, str]:
    """The environment for sbatch. Inside a job, Slurm sets SLURM_* variables describing that job
    (memory, CPUs, partition); sbatch reads some of them as defaults, so a job submitting the next step
    would hand its own shape on to it. The cluster's configuration path is kept."""
    if own_job() is None:
        return dict(os.environ)
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        raise ThresherError(f"{tool} not found: --executor slurm needs the Slurm client tools on PATH")


def sbatch(args: list[str]) -> str:
    """Submit; the job id."""
    _need("sbatch")
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, env=client_env())
    if proc.returncode != 0:
        said = " ".join((proc.stderr.strip() or proc.stdout.strip()).split())
        raise ThresherError(f"sbatch failed: {said}")
    return proc.stdout.strip().split(";")[0]


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True)


def requeue(job_id: str) -> str | None:
    """Put a running job back in the queue (its tasks run again from their records); scontrol's
    complaint if it refused. Slurm stops the job (this process too) as part of the requeue."""
    proc = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    return " ".join(proc.stderr.split()) or None if proc.returncode > 0 else None


def max_array_size() -> int:
    """Array indices must stay below the cluster's MaxArraySize (1001 by default)."""
    _need("scontrol")
    proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=120)
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    return int(found.group(1)) if found else 1001


def partition_cpus(partition: str | None) -> int:
    """CPUs of the partition (the default one when None), to spread tasks without row counts over."""
    command = ["sinfo", "-h", "-o", "%C", *(["-p", partition] if partition else [])]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return 1
    # allocated/idle/other/total, one line per node state group
    total = 0
    for line in proc.stdout.split():
        parts = line.split("/")
        if len(parts) == 4 and parts[3].isdigit():
            total += int(parts[3])
    return max(1, total)


def query_jobs(job_ids: list[str], patience: float, backoff: float = 1.0) -> dict[str, dict[int, ArrayTask]]:
    """The array tasks Slurm still knows of these jobs, by job id and array index (a plain job shows as
    index 0). A job missing from the answer has left Slurm's memory (ended more than MinJobAge ago). Only
    a definite answer counts: a non-zero exit that is not "invalid job id" (a controller timeout, a
    restart) is retried with growing pauses, and after `patience` seconds without one this raises
    SlurmUnreachable rather than guess that the jobs ended."""
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
        if len(parts) < 3:
            continue
        index = int(parts[1]) if parts[1].isdigit() else 0  # N/A: not an array job
        reason = parts[3] if len(parts) > 3 and parts[3] != "None" else ""
        jobs.setdefault(parts[0], {})[index] = ArrayTask(parts[2], reason)
    return jobs


def live(tasks: dict[str, dict[int, ArrayTask]]) -> list[str]:
    """The jobs with a task that may still run."""
    return [job for job, known in tasks.items() if any(t.state not in ENDED for t in known.values())]
