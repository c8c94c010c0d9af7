"""The `thresher` command: curate LLM training data with small models.

Every stage command has one shape, `thresher <command> INPUT_DIR OUTPUT_DIR [options]`, reads a shard set
and writes one, with `_manifest.json` and `_dropped/` beside the shards.
"""

from __future__ import annotations

import enum
import inspect
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from thresher.cli import ablate_cmd, run_cmd, stage_commands
from thresher.cli.errors import ThresherGroup
from thresher.cli.executor_options import EXECUTOR_KEYS, executor_factory, executor_parameters
from thresher.cli.options import common_parameters, pop_common, say_trial, storage_parameters, trial_output
from thresher.cli.render import console, lineage_table, steps_table
from thresher.pipelines.engine import registry, storage
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.executor import run_stage
from thresher.pipelines.engine.plan import Plan
from thresher.pipelines.engine.progress import configure_logging, make_reporter
from thresher.pipelines.engine.stage import StageParams
from thresher.pipelines.engine.storage import location
from thresher.pipelines.report.inspect import QUANTILES, describe, describe_steps

app = typer.Typer(
    cls=ThresherGroup,
    name="thresher",
    help="Curate LLM training data with small models: streaming stages over Parquet shard sets.\n\n"
    "Start with `thresher sample-data demo/raw`, then `thresher ingest demo/raw/web.jsonl demo/00-ingest`, "
    "`thresher dedup exact demo/00-ingest demo/01-exact` and `thresher inspect demo/01-exact`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib import metadata

        typer.echo(f"thresher {metadata.version('thresher')}")
        raise typer.Exit(0)


def _top_level(**_options: Any) -> None:
    """Curate LLM training data with small models: streaming stages over Parquet shard sets."""


# The storage options here too, before the command name, for the commands that have no others (status,
# report, inspect, export): `thresher --storage-option endpoint_url=... report s3://b/run`.
_top_level.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter(
            "version",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool,
                typer.Option(
                    "--version",
                    "-V",
                    callback=_print_version,
                    is_eager=True,
                    help="Print the version and exit.",
                ),
            ],
        ),
        *storage_parameters(),
    ]
)
app.callback()(_top_level)


INPUT = Annotated[Path, typer.Argument(parser=location, help="Shard set folder.", show_default=False)]


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
    for problem in registry.plugin_problems():
        console.print(f"left out: {problem}", markup=False, highlight=False, soft_wrap=True)


def _param_values(items: list[str], params_model: type[StageParams]) -> dict[str, Any]:
    """KEY=VALUE pairs in the stage commands' syntax: lists comma-separated (`rules=a,b`), or JSON."""
    fields = params_model.model_fields
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"--param {item!r}: expected KEY=VALUE")
        key = key.strip().replace("-", "_")
        if key not in fields:
            known = ", ".join(n.replace("_", "-") for n in fields if n != "inputs")
            raise UsageError(f"--param {key.replace('_', '-')}: not a param of this stage ({known})")
        # Plain text is what the stage's own option would get (pydantic turns "0.8" or "false" into the
        # field's type); a value that looks like JSON is read as JSON.
        if raw.lstrip().startswith(("[", "{", '"')):
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise UsageError(f"--param {key.replace('_', '-')}: not valid JSON ({exc})") from None
        else:
            values[key] = stage_commands.from_cli(fields[key], raw)
    return values


def apply(**kwargs: Any) -> None:
    """Run any installed stage by name, with params given as KEY=VALUE (the same values its own command
    takes: lists comma-separated, or JSON).

    Example:

        thresher apply heuristics data/00-ingest data/01-heuristics -p rules=gopher_quality,c4
    """
    workers, seed, force, quiet, log_file = pop_common(kwargs)
    limit = kwargs.pop("limit")
    output_dir = trial_output(kwargs["output_dir"], limit)
    cls = registry.get_stage(kwargs["stage"])
    configure_logging(quiet, log_file)
    reporter = make_reporter(quiet)
    make_executor = executor_factory({k: kwargs.pop(k) for k in EXECUTOR_KEYS}, reporter)
    with storage.named_errors(kwargs["input_dir"], output_dir):
        run_stage(
            cls.name,
            cls.Params.model_validate(_param_values(kwargs["param"] or [], cls.Params)),
            kwargs["input_dir"],
            output_dir,
            seed=seed or 0,
            workers=workers,
            force=force,
            reporter=reporter,
            executor=make_executor({}),
            limit=limit,
        )
    say_trial(reporter, limit, output_dir)


def _apply_signature() -> inspect.Signature:
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    own = [
        inspect.Parameter(
            "stage",
            positional,
            annotation=Annotated[
                str, typer.Argument(help="Stage name, as `thresher stages` lists it.", show_default=False)
            ],
        ),
        inspect.Parameter("input_dir", positional, annotation=INPUT),
        inspect.Parameter(
            "output_dir",
            positional,
            annotation=Annotated[
                Path, typer.Argument(parser=location, help="Output folder.", show_default=False)
            ],
        ),
        inspect.Parameter(
            "param",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                list[str] | None,
                typer.Option(
                    "--param",
                    "-p",
                    metavar="KEY=VALUE",
                    help="A stage param, e.g. rules=gopher_quality,c4 or threshold=0.8; repeat for several.",
                ),
            ],
        ),
    ]
    return inspect.Signature([*own, *common_parameters(), *executor_parameters()])


apply.__signature__ = _apply_signature()  # type: ignore[attr-defined]
app.command("apply")(apply)


@app.command("task")
def task(
    output_dir: Annotated[
        Path, typer.Argument(parser=location, help="Output folder of a planned stage.", show_default=False)
    ],
    phase: Annotated[str, typer.Option(help="Phase name or number.")],
    index: Annotated[int | None, typer.Option(help="One task index; default: the element's tasks.")] = None,
    tasks: Annotated[
        str | None, typer.Option(help="The tasks of an array job, e.g. 0-99,105 (with --per-element).")
    ] = None,
    per_element: Annotated[int, typer.Option(min=1, help="Tasks each array element runs in turn.")] = 1,
    element: Annotated[
        int | None, typer.Option(help="Which element of --tasks; default: $SLURM_ARRAY_TASK_ID.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run tasks of a planned stage (what each Slurm array element calls). Finished tasks are skipped;
    on SIGTERM (preemption) the task stops leaving nothing partial, on SIGUSR1 (time limit near) it also
    requeues its Slurm job.

    Example:

        thresher task data/01-exact --phase hash --index 3
    """
    from thresher.pipelines.engine.slurm.element import element_tasks, run_element
    from thresher.pipelines.engine.slurm.jobs import parse_array_spec

    configure_logging(quiet)
    plan = Plan.read(output_dir)
    names = [p.name for p in plan.phases]
    phase_index = int(phase) if phase.isdigit() else (names.index(phase) if phase in names else -1)
    if not 0 <= phase_index < len(names):
        raise UsageError(f"--phase {phase}: the stage's phases are {', '.join(names)}")
    count = len(plan.phases[phase_index].tasks)
    if element is None and "SLURM_ARRAY_TASK_ID" in os.environ:
        element = int(os.environ["SLURM_ARRAY_TASK_ID"])
    if index is not None:
        chosen = [index]
    elif tasks is not None:
        if element is None:
            raise UsageError("--tasks needs --element outside a Slurm array job")
        try:
            chosen = element_tasks(parse_array_spec(tasks), per_element, element)
        except ValueError:
            raise UsageError(f"--tasks {tasks}: not a list of indices like 0-99,105") from None
    elif element is not None:
        chosen = [element]  # an array of one task per element, indexed by task
    else:
        raise UsageError("--index or --tasks is required outside a Slurm array job")
    outside = [i for i in chosen if not 0 <= i < count]
    if outside:
        raise UsageError(f"--index {outside[0]}: phase {names[phase_index]} has {count} tasks")
    reporter = make_reporter(quiet)
    for record in run_element(plan.output, phase_index, chosen):
        reporter.message(f"{plan.stage}/{record.phase}: task {record.key} done in {record.seconds:.2f}s")


@app.command("inspect")
def inspect_cmd(path: INPUT) -> None:
    """Show a shard set: rows, columns, score quantiles, and what every stage back to the raw input kept
    and dropped.

    Example:

        thresher inspect data/01-exact
    """
    steps = describe_steps(path)
    if steps is not None:
        console.print(steps_table(str(path), steps))
        return
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
    if report.tokens is not None:
        console.print(f"tokens (sum of n_tokens): {report.tokens:,}")
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


class ExportFormat(enum.StrEnum):
    jsonl = "jsonl"
    jsonl_gz = "jsonl.gz"
    jsonl_zst = "jsonl.zst"
    parquet = "parquet"
    hf = "hf"
    tokens = "tokens"


@app.command("export")
def export_cmd(
    input_dir: INPUT,
    output: Annotated[
        Path,
        typer.Argument(
            parser=location,
            help="Output file (.jsonl, .jsonl.gz, .jsonl.zst, .parquet), folder (--format hf) or, for "
            "--format tokens, the .bin file (PREFIX.bin; the index is PREFIX.idx).",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            help="hf is a `datasets` save_to_disk folder; tokens is a Megatron indexed dataset (PREFIX.bin: "
            "token ids, uint16 for vocabularies up to 65,536 ids, else int32, each document followed by "
            "the end-of-document id, in a seeded shuffled order; PREFIX.idx: tokens and byte offset per "
            "document). Default: from the output's name.",
            show_default=False,
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            "--columns",
            metavar="A,B,...",
            help="Export only these columns, in this order.",
            show_default=False,
        ),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            parser=location,
            help="--format tokens: a tokenizers JSON file or a transformers tokenizer folder (offline).",
            show_default=False,
        ),
    ] = None,
    eos_id: Annotated[
        int | None,
        typer.Option(
            "--eos-id",
            help="--format tokens: the id put after every document; default: the tokenizer's EOS.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="--format tokens: seed of the document order (default 0).", show_default=False
        ),
    ] = None,
    text_column: Annotated[
        str | None,
        typer.Option(
            "--text-column",
            help="--format tokens: the column to tokenize (default text).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")] = False,
) -> None:
    """Write a shard set out as JSON lines, one Parquet file or a `datasets` folder, rows in shard order,
    or as training-ready tokens (--format tokens). Beside it, OUTPUT.lineage.json records the source set,
    its manifest digest, every stage back to the raw input with what each kept and dropped, and the
    exported file's digest (for tokens also the index's, the tokenizer's, the EOS id and the seed).

    Examples:

        thresher export data/05-quality train.jsonl.zst --columns id,text

        thresher export data/05-quality train.bin --format tokens --tokenizer models/tokenizer.json
    """
    from thresher.pipelines.io.export import TokenOptions, export

    wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    tokens = None
    if tokenizer is not None:
        tokens = TokenOptions(tokenizer, eos_id, seed or 0, text_column or "text")
    elif eos_id is not None or seed is not None or text_column is not None:
        raise UsageError("--eos-id, --seed and --text-column go with --format tokens --tokenizer DIR")
    done = export(input_dir, output, fmt.value if fmt else None, columns=wanted, force=force, tokens=tokens)
    if not quiet:
        if done.tokens is not None:
            console.print(
                f"exported {done.rows:,} documents, {done.tokens.tokens:,} tokens ({done.tokens.dtype}) to "
                f"{done.output} (lineage: {done.sidecar.name})"
            )
        else:
            console.print(f"exported {done.rows:,} rows to {output} (lineage: {done.sidecar.name})")


@app.command("sample-data")
def sample_data(
    output_dir: Annotated[
        Path,
        typer.Argument(parser=location, help="Folder to write the sample sets into.", show_default=False),
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
    from thresher.pipelines.testing.sample_data import write_sample_data

    paths = write_sample_data(output_dir, seed=seed, web_docs=web_docs, instruction_rows=instruction_rows)
    console.print(f"wrote {len(paths)} files under {output_dir}")


stage_commands.register(app, registry.stages())
run_cmd.register(app)
ablate_cmd.register(app)


def main() -> None:
    app()
