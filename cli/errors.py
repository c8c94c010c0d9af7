"""Turning user errors into one line on stderr and an exit code, for every command and subcommand."""

from __future__ import annotations

from typing import Any

import click
import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from thresher.cli.help_names import name_values
from thresher.pipelines.engine.errors import ThresherError, UsageError
from thresher.pipelines.engine.slurm.executor import Detached, DryRun


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        # loc is the field, then indexes into it: ('kinds', 1) is the second comma-separated value.
        field, *inside = err["loc"] or ("params",)
        where = "--" + str(field).replace("_", "-") if err["loc"] else "params"
        if inside and isinstance(err.get("input"), str | int | float):
            where += f" value {err['input']!r}"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


# Typer ships its own copy of click; BadParameter's base is that copy's UsageError, which every
# command-line parsing error (bad value, unknown option, missing argument) derives from.
ClickUsageError: type[Exception] = typer.BadParameter.__mro__[1]


def _usage_line(exc: Exception) -> str:
    name = exc.ctx.command_path if getattr(exc, "ctx", None) else "thresher"  # type: ignore[attr-defined]
    message = exc.format_message()  # type: ignore[attr-defined]
    return f"thresher: error: {message} (see '{name} --help')"


class ThresherGroup(TyperGroup):
    """Catches ThresherError anywhere below it: bad input is a one-line message, not a traceback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Subcommands are built before their group, so the whole tree exists here.
        name_values(self)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        # Errors in the top-level options (`thresher --bogus`) happen before invoke: the same one line.
        try:
            return super().make_context(*args, **kwargs)
        except ClickUsageError as exc:
            typer.echo(_usage_line(exc), err=True)
            raise typer.Exit(UsageError.exit_code) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ThresherError as exc:
            typer.echo(f"thresher: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except DryRun:
            raise typer.Exit(0) from None
        except Detached as exc:
            typer.echo(f"thresher: {exc}", err=True)
            raise typer.Exit(0) from None
        except ClickUsageError as exc:
            typer.echo(_usage_line(exc), err=True)
            raise typer.Exit(UsageError.exit_code) from None
        except ValidationError as exc:
            typer.echo(f"thresher: error: {validation_message(exc)}", err=True)
            raise typer.Exit(UsageError.exit_code) from None
