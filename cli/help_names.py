"""What `--help` calls each value: INPUT_DIR, N, PATH, a|b|c, never a Python type like `<list[str]>`.

Typer shows the annotation of each parameter (`<bool>`, `<list[str]>`, `{input_dir}`), which means
nothing to a shell user. Walking the finished command tree once sets man-page names everywhere,
including the commands generated from stage params and those of plugin stages.
"""

from __future__ import annotations

import enum
import typing
from pathlib import Path
from typing import Any

# Typer builds its commands on its own copy of click; the tree walked here is made of that copy's types.
from typer._click import core as click

_BY_TYPE: dict[Any, str] = {int: "N", float: "X", Path: "PATH", str: "TEXT"}


def _choice(value: Any) -> str:
    return str(value.value if isinstance(value, enum.Enum) else value)


def _name_for(param: click.Parameter) -> str | None:
    if param.param_type_name == "argument":
        name = (param.name or "value").upper()
        return f"{name}..." if param.nargs != 1 else name
    if getattr(param, "is_flag", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return None
    if desc.is_choice:
        return "|".join(_choice(c) for c in desc.choices)
    annotation = desc.annotation
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    return _BY_TYPE.get(annotation, getattr(annotation, "__name__", "VALUE").upper())


def _plain_usage(param: click.Parameter) -> None:
    """Usage lines read `thresher pii [OPTIONS] INPUT_DIR OUTPUT_DIR`, as man pages write them."""
    name = param.metavar or ""
    piece = name if param.required else f"[{name}]"
    param.get_usage_pieces = lambda ctx: [piece]  # type: ignore[method-assign]
    # The name column already says what the argument is; a second `<path>` column repeats it.
    param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]


def _quiet_help_flag(command: click.Command) -> None:
    """--help is built on demand, outside `params`: name it like the other flags (no value)."""
    make = command.get_help_option

    def get_help_option(ctx: click.Context) -> click.Parameter | None:
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option  # type: ignore[method-assign]


def name_values(command: click.Command) -> None:
    """Give every parameter of `command` and its subcommands a metavar, unless it already has one."""
    _quiet_help_flag(command)
    for param in command.params:
        if param.metavar is None:
            param.metavar = _name_for(param)
        if param.param_type_name == "argument":
            _plain_usage(param)
    # Groups (the top level, `dedup`, `quality` ...) hold their subcommands in `commands`.
    for sub in getattr(command, "commands", {}).values():
        name_values(sub)
