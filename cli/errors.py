"""Turning user errors into one line on stderr and an exit code, for every command and subcommand."""

from __future__ import annotations

from typing import Any

import click
import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from thresher.pipelines.errors import ThresherError, UsageError
from thresher.pipelines.slurm import DryRun


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = "--" + "-".join(str(x) for x in err["loc"]).replace("_", "-") if err["loc"] else "params"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


# Typer ships its own copy of click; BadParameter's base is that copy's UsageError, which every
# command-line parsing error (bad value, unknown option, missing argument) derives from.
ClickUsageError: type[Exception] = typer.BadParameter.__mro__[1]


class ThresherGroup(TyperGroup):
    """Catches ThresherError anywhere below it: bad input is a one-line message, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ThresherError as exc:
            typer.echo(f"thresher: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except DryRun:
            raise typer.Exit(0) from None
        except ClickUsageError as exc:
            name = exc.ctx.command_path if getattr(exc, "ctx", None) else "thresher"  # type: ignore[attr-defined]
            message = exc.format_message()  # type: ignore[attr-defined]
            typer.echo(f"thresher: error: {message} (see '{name} --help')", err=True)
            raise typer.Exit(UsageError.exit_code) from None
        except ValidationError as exc:
            typer.echo(f"thresher: error: {validation_message(exc)}", err=True)
            raise typer.Exit(UsageError.exit_code) from None
