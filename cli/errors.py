"""Turning user errors into one line on stderr and an exit code, for every command and subcommand."""

from __future__ import annotations

from typing import Any

import click
import typer
from pydantic import ValidationError
from thresher.pipelines.errors import ThresherError, UsageError
from typer.core import TyperGroup


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = "--" + "-".join(str(x) for x in err["loc"]).replace("_", "-") if err["loc"] else "params"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class ThresherGroup(TyperGroup):
    """Catches ThresherError anywhere below it: bad input is a one-line message, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ThresherError as exc:
            typer.echo(f"thresher: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except ValidationError as exc:
            typer.echo(f"thresher: error: {validation_message(exc)}", err=True)
            raise typer.Exit(UsageError.exit_code) from None
