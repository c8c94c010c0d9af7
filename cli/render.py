"""Tables shared by commands that report on shard sets."""

from __future__ import annotations

import os

from rich.table import Table

from thresher.pipelines.inspect import LineageStep


def short_path(path: str) -> str:
    """Relative to the working folder when under it: tables stay narrow."""
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
