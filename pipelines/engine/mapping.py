"""The one place a shard is streamed through a per-batch function into kept and dropped shards."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines.engine.shards import DROPPED_SCHEMA, iter_batches, read_schema
from thresher.pipelines.engine.stage import TaskContext, TaskResult


@dataclass
class BatchOutcome:
    """What a batch function returns: the rows to keep (any schema, the same for every batch) and the
    `_dropped/` rows (DROPPED_SCHEMA) for the rows it removed."""

    kept: pa.RecordBatch | pa.Table
    dropped: pa.Table | None = None


BatchFn = Callable[[pa.RecordBatch], BatchOutcome]


def map_shard(
    shard_path: Path, tc: TaskContext, fn: BatchFn, *, writes_dropped: bool, batch_rows: int = 8192
) -> TaskResult:
    """Stream one shard through `fn`, writing kept rows to the output shard of the same name and, for a
    filtering stage, dropped rows to `_dropped/<shard>`. Memory is bounded by the batch, not the shard."""
    out_path = tc.stage.ctx.output / shard_path.name
    writer = None
    dropped_writer = tc.writer(tc.dropped_path(shard_path.name), DROPPED_SCHEMA) if writes_dropped else None
    rows_in = rows_out = 0
    reasons: Counter[str] = Counter()
    try:
        batches = iter_batches(shard_path, batch_rows=batch_rows)
        first = True
        for batch in batches:
            first = False
            outcome = fn(batch)
            rows_in += batch.num_rows
            writer = writer or tc.writer(out_path, outcome.kept.schema)
            writer.write(outcome.kept)
            rows_out += outcome.kept.num_rows
            if outcome.dropped is not None and outcome.dropped.num_rows:
                if dropped_writer is None:
                    raise RuntimeError(
                        f"stage {tc.stage.name} dropped rows but does not declare writes_dropped"
                    )
                dropped_writer.write(outcome.dropped)
                for item in pc.value_counts(outcome.dropped["reason"]).to_pylist():
                    reasons[item["values"]] += item["counts"]
            tc.progress(batch.num_rows)
        if first:
            # An empty shard still yields an (empty) output shard with the right schema.
            outcome = fn(pa.RecordBatch.from_pylist([], schema=read_schema(shard_path)))
            writer = tc.writer(out_path, outcome.kept.schema)
        tc.record(writer.close())
        if dropped_writer is not None:
            tc.record(dropped_writer.close())
    except BaseException:
        for w in (writer, dropped_writer):
            if w is not None:
                w.abort()
        raise
    return TaskResult.from_counter(rows_in, rows_out, reasons)
