"""Options that choose where tasks run (this machine, a Slurm cluster or a Ray cluster), shared by run,
apply and the stage commands. A recipe step may override the resource options with its own `slurm:` or
`ray:` mapping (see pipelines/engine/recipe.py)."""

from __future__ import annotations

import enum
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import typer

from thresher.cli.options import option
from thresher.pipelines.engine.executor import Executor, ExecutorFactory
from thresher.pipelines.engine.progress import Reporter

PANEL = "Executor (where tasks run)"


class ExecutorKind(enum.StrEnum):
    local = "local"
    slurm = "slurm"
    ray = "ray"


def _opt(name: str, kind: Any, default: Any, *decls: str, help: str, **extra: Any) -> inspect.Parameter:
    return option(name, kind, default, *decls, help=help, panel=PANEL, **extra)


def executor_parameters() -> list[inspect.Parameter]:
    return [
        _opt(
            "executor",
            ExecutorKind,
            ExecutorKind.local.value,
            "--executor",
            help="local (process pool), slurm (sbatch --array jobs chained with afterok) or ray (Ray tasks "
            "on a running cluster).",
        ),
        _opt("slurm_partition", str | None, None, "--slurm-partition", help="Slurm partition."),
        _opt("slurm_time", str | None, None, "--slurm-time", help="Time limit per array task, e.g. 2:00:00."),
        _opt("slurm_cpus", int, 1, "--slurm-cpus", help="CPUs per array task.", min=1),
        _opt("slurm_mem", str | None, None, "--slurm-mem", help="Memory per array task, e.g. 8G."),
        _opt("slurm_gres", str | None, None, "--slurm-gres", help="Generic resources per task, e.g. gpu:1."),
        _opt(
            "slurm_max_concurrent",
            int | None,
            None,
            "--slurm-max-concurrent",
            help="At most this many array tasks at once (%N).",
        ),
        _opt(
            "slurm_arg", list[str] | None, None, "--slurm-arg", help="Extra sbatch argument; repeat for more."
        ),
        _opt(
            "tasks_per_job",
            int | None,
            None,
            "--tasks-per-job",
            help="Tasks one array element runs in turn; default: enough for about 100k rows an element "
            "(tasks without row counts: spread over the partition's CPUs).",
            min=1,
        ),
        _opt(
            "detach",
            bool,
            False,
            "--detach",
            help="With slurm: submit the whole chain (every phase, then a job that finishes the stage and "
            "submits the next step) and exit; follow it with `thresher status OUT --wait`.",
        ),
        _opt(
            "dry_run",
            bool,
            False,
            "--dry-run",
            help="With slurm: write and print the sbatch scripts and their dependency flags; submit nothing.",
        ),
        _opt(
            "ray_address",
            str,
            "auto",
            "--ray-address",
            help="With ray: `auto` (RAY_ADDRESS, else the cluster started on this machine) or HOST:PORT.",
        ),
        _opt("ray_cpus", float, 1.0, "--ray-cpus", help="With ray: CPUs each task asks for.", min=0),
        _opt("ray_gpus", float, 0.0, "--ray-gpus", help="With ray: GPUs each task asks for.", min=0),
        _opt(
            "ray_memory",
            str | None,
            None,
            "--ray-memory",
            help="With ray: memory each task asks for, e.g. 4G.",
        ),
    ]


EXECUTOR_KEYS = tuple(p.name for p in executor_parameters())

SLURM_STEP_KEYS = {
    "partition": "slurm_partition",
    "time": "slurm_time",
    "cpus": "slurm_cpus",
    "mem": "slurm_mem",
    "gres": "slurm_gres",
    "max_concurrent": "slurm_max_concurrent",
    "args": "slurm_arg",
    "tasks_per_job": "tasks_per_job",
}
RAY_STEP_KEYS = {"num_cpus": "ray_cpus", "num_gpus": "ray_gpus", "memory": "ray_memory"}


def parse_size(text: str | int | None, what: str) -> int | None:
    """Bytes from 512M, 4G, 1.5T or a plain number of bytes."""
    if text is None or isinstance(text, int):
        return text
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a size like 512M or 4G", param_hint=what) from None


def _resubmit_command() -> tuple[list[str], Path]:
    """The command line this process runs, for the job that carries a detached chain on. Without
    --force: run again by each step's last job, it would discard the steps just finished."""
    args = [a for a in sys.argv[1:] if a != "--force"]
    return [sys.executable, "-m", "thresher.cli", *args], Path(os.getcwd())


def executor_factory(values: dict[str, Any], reporter: Reporter) -> ExecutorFactory:
    """Build executors from the popped option values; None means the default local executor."""
    kind = ExecutorKind(values["executor"]).value
    if kind != "slurm":
        for flag, key in (("--dry-run", "dry_run"), ("--detach", "detach")):
            if values[key]:
                raise typer.BadParameter(f"{flag} needs --executor slurm", param_hint=flag)
    if kind == "local":
        return lambda overrides: None
    if kind == "ray":
        return lambda overrides: _ray_executor(values, overrides.get("ray", {}), reporter)
    return lambda overrides: _slurm_executor(values, overrides.get("slurm", {}), reporter)


def _slurm_executor(values: dict[str, Any], step: dict[str, Any], reporter: Reporter) -> Executor:
    from thresher.pipelines.engine.slurm import SlurmExecutor, SlurmOptions

    merged = {**values, **{SLURM_STEP_KEYS[k]: v for k, v in step.items()}}
    command, cwd = _resubmit_command()
    options = SlurmOptions(
        partition=merged["slurm_partition"],
        time=merged["slurm_time"],
        cpus_per_task=merged["slurm_cpus"],
        mem=merged["slurm_mem"],
        gres=merged["slurm_gres"],
        max_concurrent=merged["slurm_max_concurrent"],
        extra=list(merged["slurm_arg"] or []),
        tasks_per_job=merged["tasks_per_job"],
        dry_run=merged["dry_run"],
        detach=merged["detach"],
        resubmit=command,
        cwd=cwd,
    )
    return SlurmExecutor(options, reporter)


def _ray_executor(values: dict[str, Any], step: dict[str, Any], reporter: Reporter) -> Executor:
    from thresher.pipelines.engine.ray_executor import RayExecutor, RayOptions

    merged = {**values, **{RAY_STEP_KEYS[k]: v for k, v in step.items()}}
    options = RayOptions(
        address=merged["ray_address"],
        num_cpus=float(merged["ray_cpus"]),
        num_gpus=float(merged["ray_gpus"]),
        memory=parse_size(merged["ray_memory"], "--ray-memory"),
    )
    return RayExecutor(options, reporter)
