"""Tables shared by commands that report on shard sets."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.table import Table

from thresher.pipelines.report.inspect import LineageStep, StepSummary

# Logs and cron mail are read in wide windows: do not squeeze tables to 80 columns there.
console = Console() if sys.stdout.isatty() else Console(width=140)


def short_path(path: str) -> str:
    """Relative to the working folder when under it: tables stay narrow."""
    if "://" in path:
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def lineage_table(steps: list[LineageStep]) -> Table:
    """What each stage kept and dropped, newest first, back to the raw files."""
    table = Table(title="lineage: what each stage kept and dropped (newest first)")
    for column in ("stage", "rows in", "kept", "dropped", "path"):
        table.add_column(
            column, justify="right" if column in ("rows in", "kept") else "left", overflow="fold"
        )
    for step in steps:
        dropped = ", ".join(f"{k}: {v:,}" for k, v in step.counts.dropped.items()) or "-"
        where = short_path(step.path)
        if step.raw_files:
            where += "\n  from " + ", ".join(short_path(f) for f in step.raw_files)
        table.add_row(step.stage, f"{step.counts.rows_in:,}", f"{step.counts.rows_out:,}", dropped, where)
    return table


def steps_table(root: str, steps: list[StepSummary]) -> Table:
    """A recipe output: what each finished step kept and dropped, and how far the others got."""
    table = Table(title=f"{short_path(root)}: recipe steps")
    for column in ("step", "stage", "state", "rows in", "kept", "dropped"):
        table.add_column(
            column, justify="right" if column in ("rows in", "kept") else "left", overflow="fold"
        )
    for step in steps:
        name = step.path.name
        if step.counts is None:
            done, total = step.tasks
            state = f"{step.state} ({done}/{total} tasks)" if total else step.state
            table.add_row(name, step.stage, state, "-", "-", "-")
            continue
        dropped = ", ".join(f"{k}: {v:,}" for k, v in step.counts.dropped.items()) or "-"
        rows = (f"{step.counts.rows_in:,}", f"{step.counts.rows_out:,}", dropped)
        table.add_row(name, step.stage, step.state, *rows)
    return table
