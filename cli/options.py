"""Building command options from data, for commands whose signature is assembled at import time."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer


def option(name: str, kind: Any, default: Any, *decls: str, help: str, panel: str) -> inspect.Parameter:
    """A keyword parameter carrying its typer.Option, shown under `panel` in --help."""
    annotation = Annotated[kind, typer.Option(*decls, help=help, rich_help_panel=panel)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
