"""The one place a shard is streamed through a per-batch function into kept and dropped shards, and
`MapStage`, the stage an author writes as one `map_batch(batch, offset)`."""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines.engine.shards import (
    DROPPED_SCHEMA,
    ID_COLUMN,
    batch_rows_for,
    dropped_table,
    iter_batches,
    read_schema,
)
from thresher.pipelines.engine.stage import P, PhaseSpec, Stage, TaskContext, TaskResult, TaskSpec


@dataclass(frozen=True)
class Drops:
    """Rows a batch function removed, before the engine fills in the stage's name: their ids, a reason
    (one for all, or one per dropped row) and an optional detail per dropped row."""

    ids: pa.Array | pa.ChunkedArray
    reasons: str | list[str]
    details: list[str | None] | None = None

    def table(self, stage: str) -> pa.Table:
        return dropped_table(self.ids, stage, self.reasons, self.details)


@dataclass
class BatchOutcome:
    """What a batch function returns: the rows to keep (any schema, the same for every batch), the rows
    it removed (a `Drops`, or a ready `_dropped/` table in DROPPED_SCHEMA), and counters to add to the
    task's (`tc.count`)."""

    kept: pa.RecordBatch | pa.Table
    dropped: pa.Table | Drops | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def drop_rows(
        cls,
        batch: pa.RecordBatch | pa.Table,
        where: np.ndarray | pa.Array | pa.ChunkedArray | Sequence[bool],
        reason: str | Sequence[str | None],
        detail: Sequence[str | None] | None = None,
        counts: dict[str, int] | None = None,
    ) -> BatchOutcome:
        """Keep the rows where `where` is false (null counts as false) and drop the others under `reason`;
        a per-row `reason` or `detail` is indexed by the batch's rows (entries of kept rows are ignored)."""
        if isinstance(where, pa.Array | pa.ChunkedArray):
            where = pc.fill_null(where, False).to_numpy(zero_copy_only=False)
        mask = np.asarray(where, dtype=bool)
        if not mask.any():
            return cls(batch, None, dict(counts or {}))
        rows = np.nonzero(mask)[0]
        drops = Drops(
            batch.column(ID_COLUMN).take(pa.array(rows)),
            reason if isinstance(reason, str) else [reason[i] for i in rows],  # type: ignore[misc]
            None if detail is None else [detail[i] for i in rows],
        )
        return cls(batch.filter(pa.array(~mask)), drops, dict(counts or {}))


BatchFn = Callable[[pa.RecordBatch], BatchOutcome]
# A batch and the shard row index of its first row.
OffsetBatchFn = Callable[[pa.RecordBatch, int], BatchOutcome]


def map_shard(
    shard_path: Path, tc: TaskContext, fn: BatchFn, *, writes_dropped: bool, batch_rows: int | None = None
) -> TaskResult:
    """`map_batches` for a function that needs no row offsets."""
    return map_batches(
        shard_path, tc, lambda batch, _offset: fn(batch), writes_dropped=writes_dropped, batch_rows=batch_rows
    )


def map_batches(
    shard_path: Path,
    tc: TaskContext,
    fn: OffsetBatchFn,
    *,
    writes_dropped: bool,
    batch_rows: int | None = None,
) -> TaskResult:
    """Stream one shard through `fn`, writing kept rows to the output shard of the same name and, for a
    filtering stage, dropped rows to `_dropped/<shard>`; add each outcome's counts to the task's counters.
    Memory is bounded by the batch, not the shard: `batch_rows` rows, by default as many as hold about
    4 MiB of the shard's decoded data (`batch_rows_for`), at most 8192."""
    out_path = tc.stage.ctx.output / shard_path.name
    writer = None
    dropped_writer = tc.writer(tc.dropped_path(shard_path.name), DROPPED_SCHEMA) if writes_dropped else None
    rows_in = rows_out = 0
    reasons: Counter[str] = Counter()

    def take(outcome: BatchOutcome) -> None:
        for name, n in outcome.counts.items():
            tc.count(name, n)

    try:
        rows = batch_rows or batch_rows_for(shard_path)
        for batch in iter_batches(shard_path, batch_rows=rows):
            outcome = fn(batch, rows_in)
            take(outcome)
            rows_in += batch.num_rows
            writer = writer or tc.writer(out_path, outcome.kept.schema)
            writer.write(outcome.kept)
            rows_out += outcome.kept.num_rows
            dropped = outcome.dropped
            if isinstance(dropped, Drops):
                dropped = dropped.table(tc.stage.name)
            if dropped is not None and dropped.num_rows:
                if dropped_writer is None:
                    raise RuntimeError(
                        f"stage {tc.stage.name} dropped rows but does not declare writes_dropped"
                    )
                dropped_writer.write(dropped)
                for item in pc.value_counts(dropped["reason"]).to_pylist():
                    reasons[item["values"]] += item["counts"]
            tc.progress(batch.num_rows)
        if writer is None:
            # An empty shard still yields an (empty) output shard with the right schema.
            outcome = fn(pa.RecordBatch.from_pylist([], schema=read_schema(shard_path)), 0)
            take(outcome)
            writer = tc.writer(out_path, outcome.kept.schema)
        writer.close()
        if dropped_writer is not None:
            dropped_writer.close()
    except BaseException:
        for w in (writer, dropped_writer):
            if w is not None:
                w.abort()
        raise
    return TaskResult.from_counter(rows_in, rows_out, reasons)


class MapStage(Stage[P]):
    """A one-phase stage with one task per input shard: the author writes `map_batch`, which sees every
    batch of the shard with the shard row index of its first row, and returns what to keep, what to drop
    and what to count. Override `writes_dropped` for a stage that only annotates, `task_args` for values
    every task needs (absolute paths, say), and `start_task` for per-task state."""

    phase_name: ClassVar[str] = "map"
    batch_rows: ClassVar[int | None] = None  # None: sized by bytes (see map_batches)

    @classmethod
    def declared_phases(cls) -> list[str]:
        return [cls.phase_name]

    @abstractmethod
    def map_batch(self, batch: pa.RecordBatch, offset: int) -> BatchOutcome:
        """One batch of a shard; `offset` is the shard row index of the batch's first row."""

    def writes_dropped(self) -> bool:
        """Whether the stage removes rows (and so writes `_dropped/` shards)."""
        return True

    def task_args(self) -> dict[str, Any]:
        """Args every task gets (in `task.args`); they join each task's fingerprint."""
        return {}

    def start_task(self, task: TaskSpec) -> None:
        """Called before a task's first batch: build per-task state from `task.args` here."""

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        args = self.task_args()
        return [
            PhaseSpec(
                self.phase_name,
                [TaskSpec.named(s.name, {"shard": s.path}, args, s.num_rows) for s in self.ctx.input.shards],
            )
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase != self.phase_name:
            raise RuntimeError(f"stage {self.name} has one phase, '{self.phase_name}', not '{phase}'")
        self.start_task(task)
        return map_batches(
            task.input("shard"),
            tc,
            self.map_batch,
            writes_dropped=self.writes_dropped(),
            batch_rows=self.batch_rows,
        )
