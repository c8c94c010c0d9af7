"""`thresher run`: a recipe (a YAML chain of stages) from start to finish, resuming what is done."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from thresher.cli.executor_options import EXECUTOR_KEYS, executor_factory, executor_parameters
from thresher.cli.options import apply_storage, limit_parameter, say_trial, storage_parameters, trial_output
from thresher.cli.render import console, lineage_table
from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.executor import default_workers
from thresher.pipelines.engine.progress import configure_logging, make_reporter
from thresher.pipelines.engine.storage import location
from thresher.pipelines.report.inspect import lineage


def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).", show_default=False)],
    input_path: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            parser=location,
            help="Input of the first step: raw files for ingest, or a shard set.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            parser=location,
            help="Folder for the steps' outputs (OUTPUT/NN-<step>/).",
            show_default=False,
        ),
    ],
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, help="Parallel tasks (processes), at least 1.")
    ] = default_workers(),
    seed: Annotated[int | None, typer.Option(help="Seed; default: the recipe's `seed:`, else 0.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun every step from scratch.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")] = False,
    log_file: Annotated[Path | None, typer.Option(help="Also append plain log records to this file.")] = None,
    limit: int | None = None,
    **executor_options: Any,
) -> None:
    """Run a recipe: every step in order, each in OUTPUT/NN-<step>/. Finished steps are skipped and
    interrupted ones resume, so the same command is safe to rerun (from cron, after a crash).

    Example:

        thresher run recipes/web-pretrain.yaml --input dump/ --output data/web
    """
    from thresher.pipelines.engine.chain import run_recipe
    from thresher.pipelines.engine.recipe import load_recipe

    configure_logging(quiet, log_file)
    output = trial_output(output, limit)
    loaded = load_recipe(recipe)
    run_seed = seed if seed is not None else (loaded.seed or 0)
    reporter = make_reporter(quiet)
    manifests = run_recipe(
        loaded,
        input_path,
        output,
        seed=run_seed,
        workers=workers,
        force=force,
        reporter=reporter,
        executor=executor_factory(executor_options, reporter),
        limit=limit,
    )
    say_trial(reporter, limit, output)
    if not quiet and manifests:
        if manifests[-1].stage == "ablate":
            from thresher.cli.ablate_cmd import results_table

            # The recipe ends in its own ablation: the answer to "did it help" is the last thing shown.
            curated = sorted(p for p in output.iterdir() if p.is_dir() and (p / "_manifest.json").exists())[
                -2
            ]
            console.print(lineage_table(lineage(curated)))
            console.print(results_table(manifests[-1].summary))
            return
        last = sorted(p for p in output.iterdir() if p.is_dir() and (p / "_manifest.json").exists())[-1]
        console.print(lineage_table(lineage(last)))


def status(
    output: Annotated[
        Path,
        typer.Argument(parser=location, help="A stage's or a recipe's output folder.", show_default=False),
    ],
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="First wait until no Slurm job of the run is queued or running (a detached chain); then "
            "exit 0 if every step finished, 1 if not.",
        ),
    ] = False,
) -> None:
    """Show every step of a run in order (not started ones as pending) and which tasks of each phase are
    done, failed or pending, from the task records (works for local and Slurm runs alike, with or without
    sacct); for Slurm, tasks cancelled, failed or timed out name their job, and queued ones say so.

    Example:

        thresher status data/web --wait
    """
    from rich.table import Table

    from thresher.pipelines.engine.status import run_status

    steps = run_status(output, live=not wait) if output.is_dir() else []
    if not steps:
        raise UsageError(f"{output}: no thresher stage output here")
    if wait:
        from thresher.pipelines.engine.slurm import SlurmOptions, wait_for_chain

        wait_for_chain(output, SlurmOptions(poll_seconds=5.0), make_reporter(False))
        steps = run_status(output)
    table = Table(title=f"status of {output}")
    for column in ("step", "phase", "done", "failed", "pending", "state", "notes"):
        numeric = column in ("done", "failed", "pending")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for step in steps:
        if not step.phases:
            table.add_row(step.folder.name, "-", "-", "-", "-", step.state, f"{step.stage}: {step.note}")
        for n, phase in enumerate(step.phases):
            notes = "; ".join([*([step.note] if step.note and n == 0 else []), *phase.notes])
            counts = (str(phase.done), str(phase.failed), str(phase.pending))
            table.add_row(step.folder.name, phase.name, *counts, step.state, notes)
    console.print(table)
    if wait and any(step.state != "finished" for step in steps):
        raise typer.Exit(1)


def report(
    output: Annotated[
        Path,
        typer.Argument(parser=location, help="A recipe's or a stage's output folder.", show_default=False),
    ],
    to: Annotated[
        Path | None, typer.Option("--to", parser=location, help="Where to write; default OUTPUT/report.html.")
    ] = None,
) -> None:
    """Write one self-contained HTML report (opens offline): rows kept and dropped per stage and reason
    (one fixed colour per reason), the lineage table with tokens, each filter's score before and after with
    its cutoff, the quality classifier's held-out metrics and reliability plot, example documents per drop
    reason, dedup cluster sizes, and an ablation's table and learning curves.

    Example:

        thresher report data/web
    """
    from thresher.pipelines.report.html import write_report

    console.print(f"report: {write_report(output, to)}")


def register(app: typer.Typer) -> None:
    def command(**kwargs: Any) -> None:
        apply_storage(kwargs)
        executor_options = {k: kwargs.pop(k) for k in EXECUTOR_KEYS}
        with storage.named_errors(kwargs["input_path"], kwargs["output"]):
            run(**kwargs, **executor_options)

    own = [
        p
        for p in inspect.signature(run, eval_str=True).parameters.values()
        if p.kind != inspect.Parameter.VAR_KEYWORD and p.name != "limit"
    ]
    params = [*own, limit_parameter(), *storage_parameters(), *executor_parameters()]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = run.__doc__
    app.command("run", help=run.__doc__)(command)
    app.command("status")(status)
    app.command("report")(report)
