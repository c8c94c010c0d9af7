"""`thresher ablate`: named train and eval sets (NAME=DIR, repeatable), then the proxy-LM options."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from thresher.cli.executor_options import EXECUTOR_KEYS, executor_factory, executor_parameters
from thresher.cli.options import common_parameters, pop_common
from thresher.cli.render import console
from thresher.cli.stage_commands import _field_option, from_cli
from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.executor import run_stage
from thresher.pipelines.engine.progress import configure_logging, make_reporter
from thresher.pipelines.engine.storage import location
from thresher.pipelines.stages.ablate.stage import Ablate

NAMED = ("train", "eval")
# Set by the token budget, or not used by an ablation: left off the command line.
DERIVED = ("max_steps", "eval_every", "checkpoint_every", "val_fraction")


def _named_sets(values: list[str] | None, flag: str) -> dict[str, str]:
    sets: dict[str, str] = {}
    for value in values or []:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise UsageError(f"{flag} {value}: expected NAME=DIR, e.g. {flag} curated=data/09-top-quality")
        if name in sets:
            raise UsageError(f"{flag} {name}: named twice")
        sets[name] = str(storage.resolved(folder))
    if not sets:
        raise UsageError(f"{flag} NAME=DIR is required (repeat it for several sets)")
    return sets


def ablate(**kwargs: Any) -> None:
    workers, seed, force, quiet, log_file = pop_common(kwargs)
    configure_logging(quiet, log_file)
    output = kwargs.pop("output_dir")
    train, evals = _named_sets(kwargs.pop("train"), "--train"), _named_sets(kwargs.pop("eval"), "--eval")
    fields = Ablate.Params.model_fields
    values = {k: from_cli(fields[k], v) for k, v in kwargs.items() if k in fields}
    params = Ablate.Params.model_validate({**values, "train": train, "eval": evals})
    reporter = make_reporter(quiet)
    make_executor = executor_factory({k: kwargs.pop(k) for k in EXECUTOR_KEYS}, reporter)
    manifest = run_stage(
        Ablate.name,
        params,
        storage.location(next(iter(train.values()))),
        output,
        seed=seed or 0,
        workers=workers,
        force=force,
        reporter=reporter,
        executor=make_executor({}),
    )
    if not quiet:
        console.print(results_table(manifest.summary))


def results_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"eval loss (nats/token) after {summary['tokens_per_model']:,} training tokens")
    for column in ("train", "eval", "loss", "± std", "ppl", f"vs {summary['baseline']}", "95% interval"):
        table.add_column(column, justify="left" if column in ("train", "eval") else "right")
    for cell in summary["results"]:
        diff = "" if cell["diff"] is None else f"{cell['diff']:+.4f}"
        interval = "" if cell["diff"] is None else f"[{cell['diff_low']:+.4f}, {cell['diff_high']:+.4f}]"
        table.add_row(
            cell["train"],
            cell["eval"],
            f"{cell['loss_mean']:.4f}",
            f"{cell['loss_std']:.4f}",
            f"{cell['perplexity']:.2f}",
            diff,
            interval,
        )
    return table


def _signature() -> inspect.Signature:
    def named(flag: str, help: str) -> inspect.Parameter:
        annotation = Annotated[list[str] | None, typer.Option(flag, metavar="NAME=DIR", help=help)]
        return inspect.Parameter(
            flag.strip("-"), inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
        )

    output = inspect.Parameter(
        "output_dir",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[
            Path, typer.Argument(parser=location, help="Output folder; rerun to resume.", show_default=False)
        ],
    )
    own = [
        named("--train", "A train set; repeat. The first is the baseline the others are compared to."),
        named("--eval", "A held-out eval set every model is scored on; repeat."),
    ]
    fields = [
        _field_option(n, f) for n, f in Ablate.Params.model_fields.items() if n not in (*NAMED, *DERIVED)
    ]
    return inspect.Signature([output, *own, *fields, *common_parameters(trial=False), *executor_parameters()])


ablate.__signature__ = _signature()  # type: ignore[attr-defined]
ablate.__doc__ = """Did the curation help? Train identical small proxy LMs (one shared tokenizer, the same
--tokens budget, --seeds seeds each) on every train set and compare their loss on every eval set: mean ±
std over seeds, and the difference to the first train set with a paired bootstrap interval over eval
documents. Writes OUTPUT/ablation.json; phases are independent tasks (local workers, Slurm, Ray).

Example:

    thresher ablate out/abl --train raw=data/00-ingest --train curated=data/09-top --eval clean=held/
"""


def register(app: typer.Typer) -> None:
    app.command("ablate", help=ablate.__doc__)(ablate)
