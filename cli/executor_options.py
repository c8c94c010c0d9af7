"""Options that choose where tasks run (this machine or a Slurm cluster), shared by run and stage commands."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from typing import Any

import typer

from thresher.cli.options import option
from thresher.pipelines.engine.executor import Executor
from thresher.pipelines.engine.progress import Reporter

PANEL = "Executor (where tasks run)"


class ExecutorKind(enum.StrEnum):
    local = "local"
    slurm = "slurm"


def _opt(name: str, kind: Any, default: Any, *decls: str, help: str) -> inspect.Parameter:
    return option(name, kind, default, *decls, help=help, panel=PANEL)


def executor_parameters() -> list[inspect.Parameter]:
    return [
        _opt(
            "executor",
            ExecutorKind,
            ExecutorKind.local.value,
            "--executor",
            help="local (process pool) or slurm (one sbatch --array job per phase, chained with afterok).",
        ),
        _opt("slurm_partition", str | None, None, "--slurm-partition", help="Slurm partition."),
        _opt("slurm_time", str | None, None, "--slurm-time", help="Time limit per array task, e.g. 2:00:00."),
        _opt("slurm_cpus", int, 1, "--slurm-cpus", help="CPUs per array task."),
        _opt("slurm_mem", str | None, None, "--slurm-mem", help="Memory per array task, e.g. 8G."),
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
            "dry_run",
            bool,
            False,
            "--dry-run",
            help="With slurm: write and print the sbatch scripts of the first pending stage, submit nothing.",
        ),
    ]


EXECUTOR_KEYS = (
    "executor",
    "slurm_partition",
    "slurm_time",
    "slurm_cpus",
    "slurm_mem",
    "slurm_max_concurrent",
    "slurm_arg",
    "dry_run",
)


def executor_factory(values: dict[str, Any], reporter: Reporter) -> Callable[[], Executor | None]:
    """Build executors from the popped option values; None means the default local executor."""
    kind = ExecutorKind(values["executor"]).value
    if kind == "local":
        if values["dry_run"]:
            raise typer.BadParameter("--dry-run needs --executor slurm", param_hint="--dry-run")
        return lambda: None
    if kind != "slurm":
        raise typer.BadParameter(f"'{kind}' is not one of local, slurm", param_hint="--executor")
    from thresher.pipelines.engine.slurm import SlurmExecutor, SlurmOptions

    options = SlurmOptions(
        partition=values["slurm_partition"],
        time=values["slurm_time"],
        cpus_per_task=values["slurm_cpus"],
        mem=values["slurm_mem"],
        max_concurrent=values["slurm_max_concurrent"],
        extra=values["slurm_arg"] or [],
        dry_run=values["dry_run"],
    )
    return lambda: SlurmExecutor(options, reporter)
