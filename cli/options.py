"""Building command options from data, for commands whose signature is assembled at import time, and the
options every running command shares (stage commands, `apply`, `run`): one spelling, one meaning."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.executor import default_workers
from thresher.pipelines.engine.progress import Reporter

COMMON_PANEL = "Common options"
STORAGE_PANEL = "Object storage"
COMMON_KEYS = ("workers", "seed", "force", "quiet", "log_file")
STORAGE_KEYS = ("storage_option", "tmp_dir")


def option(
    name: str, kind: Any, default: Any, *decls: str, help: str, panel: str, **extra: Any
) -> inspect.Parameter:
    """A keyword parameter carrying its typer.Option, shown under `panel` in --help."""
    annotation = Annotated[kind, typer.Option(*decls, help=help, rich_help_panel=panel, **extra)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def common_parameters(
    seed_default: int | None = 0,
    seed_help: str = "Seed for every random choice; same seed, same output bytes.",
    trial: bool = True,
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
            help="Tasks run side by side, at least 1 (worker processes, or threads for ingest, exact and "
            "MinHash dedup); default: the CPUs this process may use.",
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
        *([limit_parameter()] if trial else []),
        *storage_parameters(),
    ]


def limit_parameter() -> inspect.Parameter:
    return option(
        "limit",
        int | None,
        None,
        "--limit",
        metavar="N",
        min=1,
        help="A trial run: only the first N rows of each input (each raw file, or the input shard set), "
        "written to OUTPUT.limit-N beside OUTPUT, so it never mixes with a full run's tasks.",
        panel=COMMON_PANEL,
    )


def say_trial(reporter: Reporter, limit: int | None, output: Path) -> None:
    if limit is not None:
        reporter.message(f"trial run (first {limit:,} rows of each input) written to {output}")


def trial_output(output: Path, limit: int | None) -> Path:
    """Where a run writes: OUTPUT itself, or OUTPUT.limit-N for a trial run of N rows."""
    if limit is None:
        return output
    return storage.location(f"{str(output).rstrip('/')}.limit-{limit}")


def storage_parameters() -> list[inspect.Parameter]:
    """Options for inputs and outputs on object stores (s3://, gs://, ...): given once, they reach every
    worker process, Slurm job and Ray task of the run through the environment."""
    return [
        option(
            "storage_option",
            list[str] | None,
            None,
            "--storage-option",
            metavar="KEY=VALUE",
            help="An fsspec option for URLs, e.g. endpoint_url=http://127.0.0.1:9000 or anon=true; "
            "s3.KEY=VALUE for one protocol only; repeat for several. Credentials also come from the "
            "environment and ~/.aws as usual. Never printed.",
            panel=STORAGE_PANEL,
            is_eager=True,
            callback=_set_options,
        ),
        option(
            "tmp_dir",
            Path | None,
            None,
            "--tmp-dir",
            help="Local folder for temporary files of remote outputs (each written here, then uploaded "
            "whole) and for cached copies of remote models; default: $TMPDIR.",
            panel=STORAGE_PANEL,
            is_eager=True,
            callback=_set_tmp_dir,
        ),
    ]


# Eager, so they take effect before the command's INPUT and OUTPUT are parsed into locations that carry
# them.
def _set_options(pairs: list[str] | None) -> list[str] | None:
    storage.configure(storage.parse_options(pairs or []))
    return pairs


def _set_tmp_dir(folder: Path | None) -> Path | None:
    storage.configure(tmp_dir=folder)
    return folder


def apply_storage(kwargs: dict[str, Any]) -> None:
    """Take the storage options (already in effect) out of a command's keyword arguments."""
    for key in STORAGE_KEYS:
        kwargs.pop(key, None)


def pop_common(kwargs: dict[str, Any]) -> tuple[int, int | None, bool, bool, Path | None]:
    """workers, seed, force, quiet, log_file, taken out of a command's keyword arguments."""
    apply_storage(kwargs)
    workers, seed, force, quiet, log_file = (kwargs.pop(k) for k in COMMON_KEYS)
    return workers, seed, force, quiet, log_file
