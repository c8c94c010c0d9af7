"""One CLI command per stage, generated from the stage's params model so options, defaults and help text
live in one place (the model) and third-party stages get a command for free."""

from __future__ import annotations

import enum
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic.fields import FieldInfo

from thresher.cli.executor_options import EXECUTOR_KEYS, executor_factory, executor_parameters
from thresher.cli.options import common_parameters, pop_common, say_trial, trial_output
from thresher.pipelines.engine import storage
from thresher.pipelines.engine.executor import run_stage
from thresher.pipelines.engine.progress import configure_logging, make_reporter
from thresher.pipelines.engine.stage import Stage
from thresher.pipelines.engine.storage import location

GROUP_HELP = {
    "dedup": "Remove duplicate documents across a whole shard set: exact (hash) or near (MinHash LSH).",
    "quality": "Train and apply a fastText quality classifier.",
    "lm": "Train small language models from shard sets (KenLM n-gram, tiny GPT-2 proxy).",
    "perplexity": "Score documents by perplexity under a small LM (KenLM or a causal LM).",
    "select": "Select instruction data with small models: MoDS (reward, coverage, necessity) and LESS.",
    "reweight": "Find domain weights with small proxy models (DoReMi).",
}


def _option_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """The Python type Typer should parse, plus extra typer.Option arguments."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _option_type(args[0])
    if origin is Literal:
        values = [str(v) for v in typing.get_args(annotation)]
        return enum.Enum("Choice", {v: v for v in values}, type=str), {}
    if origin is list:
        # Lists are given comma-separated: `--columns url,domain`.
        return str, {"metavar": "A,B,..."}
    return annotation, {}


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        return any(typing.get_origin(a) is list for a in typing.get_args(annotation))
    return origin is list


def _field_option(name: str, field: FieldInfo) -> inspect.Parameter:
    kind, extra = _option_type(field.annotation)
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{name.replace('_', '-')}"] if kind is bool else [flag]
    # A required field (no default) is a required option: Typer's marker for that is `...`.
    default = ... if field.is_required() else field.get_default(call_default_factory=True)
    if _is_list(field.annotation) and default not in (None, ...):
        default = ",".join(str(v) for v in default)
    show_default = default not in (None, ...)
    option = typer.Option(*decls, help=field.description or "", show_default=show_default, **extra)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]
    )


def make_command(cls: type[Stage]) -> typer.models.CommandFunctionType:
    fields = dict(cls.Params.model_fields)
    files_input = cls.input_kind == "files"
    fields.pop("inputs", None)
    if files_input:
        inputs = inspect.Parameter(
            "inputs",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[
                list[Path],
                typer.Argument(
                    parser=location,
                    help="Input files or folders (JSONL, .jsonl.gz, .jsonl.zst, Parquet, CSV, "
                    "or a `datasets` save_to_disk folder).",
                    show_default=False,
                ),
            ],
        )
    else:
        inputs = inspect.Parameter(
            "input_dir",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[
                Path,
                typer.Argument(
                    parser=location, help="Input shard set (a folder of Parquet shards).", show_default=False
                ),
            ],
        )
    output = inspect.Parameter(
        "output_dir",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[
            Path,
            typer.Argument(
                parser=location, help="Output folder; rerunning the same command resumes.", show_default=False
            ),
        ],
    )
    parameters = [
        inputs,
        output,
        *(_field_option(n, f) for n, f in fields.items()),
        *common_parameters(),
        *executor_parameters(),
    ]

    def command(**kwargs: Any) -> None:
        given = [*kwargs.get("inputs", [kwargs.get("input_dir")]), kwargs["output_dir"]]
        with storage.named_errors(*given):
            run_command(**kwargs)

    def run_command(**kwargs: Any) -> None:
        workers, seed, force, quiet, log_file = pop_common(kwargs)
        limit = kwargs.pop("limit")
        output_dir = trial_output(kwargs.pop("output_dir"), limit)
        values = {k: from_cli(fields[k], v) for k, v in kwargs.items() if k in fields}
        if files_input:
            sources = [_source(p) for p in kwargs["inputs"]]
            values["inputs"] = [str(p) for p in sources]
            input_path = storage.input_root(sources)
        else:
            input_path = kwargs["input_dir"]
        configure_logging(quiet, log_file)
        params = cls.Params.model_validate(values)
        reporter = make_reporter(quiet)
        make_executor = executor_factory({k: kwargs.pop(k) for k in EXECUTOR_KEYS}, reporter)
        run_stage(
            cls.name,
            params,
            input_path,
            output_dir,
            seed=seed,
            workers=workers,
            force=force,
            reporter=reporter,
            executor=make_executor({}),
            limit=limit,
        )
        say_trial(reporter, limit, output_dir)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__name__ = cls.name.replace("-", "_")
    command.__doc__ = f"{cls.summary}\n\nExample:\n\n    {cls.example}" if cls.example else cls.summary
    return command


def _source(given: Path) -> Path:
    # realpath, not resolve: it leaves a link loop for ingest to name instead of raising. A glob pattern
    # stays as written for ingest to expand (the shell passes it on when quoted or matching nothing).
    if storage.is_remote(given) or (storage.has_magic(str(given)) and not given.exists()):
        return given
    return Path(os.path.realpath(given))


def from_cli(field: FieldInfo, value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if _is_list(field.annotation) and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def register(app: typer.Typer, stages: dict[str, type[Stage]]) -> None:
    groups: dict[str, typer.Typer] = {}
    for cls in stages.values():
        if not cls.command:
            continue
        *group_path, leaf = cls.command
        target = app
        for part in group_path:
            if part not in groups:
                groups[part] = typer.Typer(help=GROUP_HELP.get(part, f"{part} stages."), no_args_is_help=True)
                app.add_typer(groups[part], name=part)
            target = groups[part]
        command = make_command(cls)
        target.command(name=leaf, help=command.__doc__)(command)
