"""What is in a shard set, and where it came from: the facts behind `thresher inspect`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasketches import kll_doubles_sketch

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.manifest import MANIFEST_NAME, Manifest, RowCounts
from thresher.pipelines.engine.shards import TOKENS_COLUMN, ShardSet, iter_batches
from thresher.pipelines.engine.status import is_recipe_output, run_status

QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)


@dataclass
class LineageStep:
    path: str
    stage: str
    counts: RowCounts
    raw_files: list[str] = field(default_factory=list)


@dataclass
class ShardSetReport:
    path: Path
    stage: str | None
    shards: int
    rows: int
    bytes: int
    columns: list[tuple[str, str]]
    quantiles: dict[str, list[float]]  # numeric column -> values at QUANTILES
    text_length: list[float]  # characters of `text` at QUANTILES, when there is a text column
    lineage: list[LineageStep]  # this set first, back to ingest
    tokens: int | None = None  # the sum of `n_tokens` (what `thresher tokenize` adds), when there is one


@dataclass
class StepSummary:
    path: Path
    stage: str
    state: str  # as `thresher status` says: finished, failed, running, queued, unfinished, pending
    tasks: tuple[int, int]  # (done, all)
    counts: RowCounts | None  # what a finished step kept and dropped


def describe_steps(root: Path) -> list[StepSummary] | None:
    """One summary per step of a recipe output (the folder holding its NN-<step> folders), those not
    finished or not started too; None when `root` is not a recipe output."""
    if (root / MANIFEST_NAME).exists() or not is_recipe_output(root):
        return None
    return [
        StepSummary(
            step.folder,
            step.stage,
            step.state,
            step.tasks,
            Manifest.read(step.folder).totals if step.state == "finished" else None,
        )
        for step in run_status(root)
    ]


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def lineage(path: Path) -> list[LineageStep]:
    """Follow each manifest's input back until raw data."""
    steps: list[LineageStep] = []
    seen: set[str] = set()
    current: Path | None = path
    while current is not None and (current / MANIFEST_NAME).exists() and str(current.resolve()) not in seen:
        seen.add(str(current.resolve()))
        m = Manifest.read(current)
        steps.append(LineageStep(str(current), m.stage, m.totals, [f.path for f in m.input.files]))
        current = storage.location(m.input.path) if m.input.stage else None
    return steps


def _quantiles(sketch: kll_doubles_sketch) -> list[float]:
    # KLL's interior quantiles are estimates (randomised run to run); its min and max are exact.
    inner = sketch.get_quantiles(list(QUANTILES[1:-1]))
    return [sketch.get_min_value(), *inner, sketch.get_max_value()]


def describe(path: Path) -> ShardSetReport:
    shard_set = ShardSet.open(path, required_columns=())
    schema = shard_set.shards[0].schema
    assert schema is not None
    numeric = [f.name for f in schema if _numeric(f.type) and f.name != "id"]
    has_text = "text" in schema.names
    sketches = {name: kll_doubles_sketch(200) for name in numeric}
    length_sketch = kll_doubles_sketch(200)
    columns = [*numeric, *(["text"] if has_text else [])]
    # Summed exactly, not from the sketch: a later stage that keeps the column keeps a true total.
    tokens = 0 if TOKENS_COLUMN in numeric else None
    if columns:
        for shard in shard_set.shards:
            for batch in iter_batches(shard.path, columns):
                for name in numeric:
                    values = batch.column(name).drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
                    if len(values):
                        sketches[name].update(values)
                if tokens is not None:
                    tokens += int(pc.sum(batch.column(TOKENS_COLUMN)).as_py() or 0)
                if has_text:
                    lengths = pc.utf8_length(batch.column("text")).drop_null().to_numpy(zero_copy_only=False)
                    if len(lengths):
                        length_sketch.update(lengths.astype(np.float64))
    quantiles = {name: _quantiles(s) for name, s in sketches.items() if not s.is_empty()}
    text_length = _quantiles(length_sketch) if not length_sketch.is_empty() else []
    return ShardSetReport(
        path=path,
        stage=shard_set.manifest.stage if shard_set.manifest else None,
        shards=len(shard_set.shards),
        rows=shard_set.num_rows,
        bytes=sum(s.size for s in shard_set.shards),
        columns=[(f.name, str(f.type)) for f in schema],
        quantiles=quantiles,
        text_length=text_length,
        lineage=lineage(path),
        tokens=tokens,
    )
