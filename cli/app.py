"""The `thresher` command: curate LLM training data with small models.

Every stage command has one shape, `thresher <command> INPUT_DIR OUTPUT_DIR [options]`, reads a shard set
and writes one, with `_manifest.json` and `_dropped/` beside the shards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thresher.cli import run_cmd, stage_commands
from thresher.cli.errors import ThresherGroup
from thresher.cli.render import console, lineage_table
from thresher.pipelines import registry
from thresher.pipelines.errors import UsageError
from thresher.pipelines.executor import execute_task, run_stage
from thresher.pipelines.inspect import QUANTILES, describe
from thresher.pipelines.plan import Plan
from thresher.pipelines.progress import configure_logging, make_reporter

app = typer.Typer(
    cls=ThresherGroup,
    name="thresher",
    help="Curate LLM training data with small models: streaming stages over Parquet shard sets.\n\n"
    "Start with `thresher sample-data demo/raw`, then `thresher ingest demo/raw/web.jsonl demo/00-ingest`, "
    "`thresher dedup exact demo/00-ingest demo/01-exact` and `thresher inspect demo/01-exact`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

INPUT = Annotated[Path, typer.Argument(help="Shard set folder.", show_default=False)]


@app.command("stages")
def list_stages() -> None:
    """List installed stages (built-in and from plugins) with their params.

    Example:

        thresher stages
    """
    table = Table(title="thresher stages", show_lines=True)
    for column in ("stage", "command", "what it does", "params (default)"):
        table.add_column(column)
    for name, cls in registry.stages().items():
        params = "\n".join(
            f"{field}="
            + ("(required)" if f.is_required() else repr(f.get_default(call_default_factory=True)))
            for field, f in cls.Params.model_fields.items()
        )
        command = "thresher " + " ".join(cls.command) if cls.command else f"thresher apply {name}"
        table.add_row(name, command, cls.summary, params)
    console.print(table)


@app.command("apply")
def apply(
    stage: Annotated[
        str, typer.Argument(help="Stage name, as `thresher stages` lists it.", show_default=False)
    ],
    input_dir: INPUT,
    output_dir: Annotated[Path, typer.Argument(help="Output folder.", show_default=False)],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="KEY=VALUE (JSON values allowed); repeat for several."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", "-w")] = stage_commands.default_workers(),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    force: Annotated[bool, typer.Option("--force")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run any installed stage by name, with params given as KEY=VALUE.

    Example:

        thresher apply exact-dedup data/00-ingest data/01-exact -p lowercase=false
    """
    import json

    values = {}
    for item in param or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"--param {item!r}: expected KEY=VALUE")
        try:
            values[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.replace("-", "_")] = raw
    cls = registry.get_stage(stage)
    configure_logging(quiet)
    run_stage(
        cls.name,
        cls.Params.model_validate(values),
        input_dir,
        output_dir,
        seed=seed,
        workers=workers,
        force=force,
        reporter=make_reporter(quiet),
    )


@app.command("task")
def task(
    output_dir: Annotated[Path, typer.Argument(help="Output folder of a planned stage.", show_default=False)],
    phase: Annotated[str, typer.Option(help="Phase name or number.")],
    index: Annotated[int | None, typer.Option(help="Task index; default: $SLURM_ARRAY_TASK_ID.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run one task of a planned stage (what each Slurm array task calls). Finished tasks are skipped.

    Example:

        thresher task data/01-exact --phase hash --index 3
    """
    configure_logging(quiet)
    plan = Plan.read(output_dir)
    names = [p.name for p in plan.phases]
    phase_index = int(phase) if phase.isdigit() else (names.index(phase) if phase in names else -1)
    if not 0 <= phase_index < len(names):
        raise UsageError(f"--phase {phase}: the stage's phases are {', '.join(names)}")
    if index is None:
        if "SLURM_ARRAY_TASK_ID" not in os.environ:
            raise UsageError("--index is required outside a Slurm array job")
        index = int(os.environ["SLURM_ARRAY_TASK_ID"])
    if not 0 <= index < len(plan.phases[phase_index].tasks):
        raise UsageError(
            f"--index {index}: phase {names[phase_index]} has {len(plan.phases[phase_index].tasks)} tasks"
        )
    record = execute_task(plan.output, phase_index, index)
    make_reporter(quiet).message(
        f"{plan.stage}/{record.phase}: task {record.key} done in {record.seconds:.2f}s"
    )


@app.command("inspect")
def inspect_cmd(path: INPUT) -> None:
    """Show a shard set: rows, columns, score quantiles, and what every stage back to the raw input kept
    and dropped.

    Example:

        thresher inspect data/01-exact
    """
    report = describe(path)
    overview = Table(title=f"{report.path}  ({report.stage or 'raw Parquet'})")
    overview.add_column("shards", justify="right")
    overview.add_column("rows", justify="right")
    overview.add_column("bytes", justify="right")
    overview.add_column("columns")
    overview.add_row(
        str(report.shards),
        f"{report.rows:,}",
        f"{report.bytes:,}",
        ", ".join(f"{n}: {t}" for n, t in report.columns),
    )
    console.print(overview)
    if report.quantiles or report.text_length:
        q = Table(title="quantiles")
        q.add_column("column")
        for x in QUANTILES:
            q.add_column({0.0: "min", 1.0: "max"}.get(x, f"p{int(x * 100)}"), justify="right")
        if report.text_length:
            q.add_row("text length (chars)", *(f"{v:,.0f}" for v in report.text_length))
        for name, values in report.quantiles.items():
            q.add_row(name, *(f"{v:.4g}" for v in values))
        console.print(q)
    if report.lineage:
        console.print(lineage_table(report.lineage))


@app.command("export")
def export_cmd(
    input_dir: INPUT,
    output: Annotated[
        Path,
        typer.Argument(
            help="Output file (.jsonl, .jsonl.gz, .jsonl.zst) or folder (--format hf).", show_default=False
        ),
    ],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="jsonl, jsonl.gz, jsonl.zst or hf (a `datasets` "
            "save_to_disk folder); default: from the name.",
        ),
    ] = None,
) -> None:
    """Write a shard set out as JSON lines or a `datasets` folder, rows in shard order.

    Example:

        thresher export data/01-exact train.jsonl.zst
    """
    from thresher.pipelines.export import export

    rows = export(input_dir, output, fmt)
    console.print(f"exported {rows:,} rows to {output}")


@app.command("sample-data")
def sample_data(
    output_dir: Annotated[
        Path, typer.Argument(help="Folder to write the sample sets into.", show_default=False)
    ],
    seed: Annotated[int, typer.Option(help="Generator seed; the bundled sample_data/ uses 0.")] = 0,
    web_docs: Annotated[int, typer.Option(help="Documents in the web-like set.")] = 3000,
    instruction_rows: Annotated[int, typer.Option(help="Rows in the instruction set.")] = 1000,
) -> None:
    """Generate the deterministic sample data (what `sample_data/` holds): a multi-domain web-like set with
    planted duplicates, near duplicates, boilerplate, spam, junk and PII, its planted-truth table, and an
    instruction set with checkably wrong answers.

    Example:

        thresher sample-data /tmp/sample --seed 0
    """
    from thresher.pipelines.sample_data import write_sample_data

    paths = write_sample_data(output_dir, seed=seed, web_docs=web_docs, instruction_rows=instruction_rows)
    console.print(f"wrote {len(paths)} files under {output_dir}")


stage_commands.register(app, registry.stages())
run_cmd.register(app)


def main() -> None:
    app()
