"""Building command options from data, for commands whose signature is assembled at import time, and the
options every running command shares (stage commands, `apply`, `run`): one spelling, one meaning."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from thresher.pipelines.engine.executor import default_workers

COMMON_PANEL = "Common options"
COMMON_KEYS = ("workers", "seed", "force", "quiet", "log_file")


def option(
    name: str, kind: Any, default: Any, *decls: str, help: str, panel: str, **extra: Any
) -> inspect.Parameter:
    """A keyword parameter carrying its typer.Option, shown under `panel` in --help."""
    annotation = Annotated[kind, typer.Option(*decls, help=help, rich_help_panel=panel, **extra)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def common_parameters(
    seed_default: int | None = 0,
    seed_help: str = "Seed for every random choice; same seed, same output bytes.",
) -> list[inspect.Parameter]:
    def opt(name: str, kind: Any, default: Any, *decls: str, help: str, **extra: Any) -> inspect.Parameter:
        return option(name, kind, default, *decls, help=help, panel=COMMON_PANEL, **extra)

    return [
        opt(
            "workers",
            int,
            default_workers(),
            "--workers",
            "-w",
            help="Parallel tasks (processes), at least 1; default: the CPUs this process may use.",
            min=1,
        ),
        opt("seed", int | None, seed_default, "--seed", help=seed_help),
        opt(
            "force",
            bool,
            False,
            "--force",
            help="Discard finished tasks in OUTPUT and run everything again.",
        ),
        opt("quiet", bool, False, "--quiet", "-q", help="Print errors only."),
        opt("log_file", Path | None, None, "--log-file", help="Also append plain log records to this file."),
    ]


def pop_common(kwargs: dict[str, Any]) -> tuple[int, int | None, bool, bool, Path | None]:
    """workers, seed, force, quiet, log_file, taken out of a command's keyword arguments."""
    workers, seed, force, quiet, log_file = (kwargs.pop(k) for k in COMMON_KEYS)
    return workers, seed, force, quiet, log_file
