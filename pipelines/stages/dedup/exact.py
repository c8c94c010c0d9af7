"""Exact dedup: drop rows whose normalised text repeats an earlier row anywhere in the shard set.

Three phases: `hash` (per shard, or per row-group part of a big shard) writes text hashes split into
buckets; `decide` (per bucket) marks every repeat of an earlier (shard, row); `filter` (per shard) drops
the marked rows, naming the id they repeat. Tasks of `decide` and `filter` list the index of the phase
before them, not its files, so the plan grows with shards + buckets, not shards x buckets.
"Earlier" is shard order by file name, then row order, so the kept row does not depend on scheduling.
Empty texts are never treated as duplicates of each other. `--also-columns` compares several columns as one
key (instruction + input for instruction data): rows repeat only when every column does.

`--mode tag` drops nothing and adds `exact_cluster` (the id of the group's first occurrence, on every row
of a group whose text repeats, the first included; null for a text seen once) and `exact_duplicate`
(true on the rows drop mode would drop), so `thresher filter --where "not exact_duplicate"` keeps what
drop mode keeps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.hash_buckets import (
    HashBucketWriter,
    buckets_for,
    hash128,
    read_bucket,
    repeat_runs,
)
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_batches
from thresher.pipelines.engine.plan import phase_index_path, phase_outputs
from thresher.pipelines.engine.shards import (
    ID_COLUMN,
    ShardPart,
    ShardWriter,
    dropped_table,
    iter_batches,
    shard_parts,
)
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.engine.tagging import WOULD_DROP, FilterMode, mode_field
from thresher.pipelines.text.normalize import normalise, separator

DECISION_SCHEMA = pa.schema([("shard", pa.int32()), ("row", pa.int64()), ("dup_of", pa.string())])
# Tag mode decides for every row of a repeated group, its first occurrence too, and marks the repeats.
TAG_DECISION_SCHEMA = DECISION_SCHEMA.append(pa.field("duplicate", pa.bool_()))
REASON = "exact_duplicate"
CLUSTER_COLUMN = "exact_cluster"
DUPLICATE_COLUMN = "exact_duplicate"


class ExactDedupParams(StageParams):
    text_column: str = Field("text", description="Column holding the text to compare.")
    also_columns: list[str] = Field(
        [],
        description="More text columns compared together with --text-column, e.g. `input` with "
        "--text-column instruction: a row repeats another only when all of them do (a missing value "
        "counts as empty).",
    )
    lowercase: bool = Field(True, description="Compare case-insensitively (whitespace is always collapsed).")
    buckets: int | None = Field(
        None, ge=1, le=65536, description="Hash buckets for the decide phase; default: one per 2M rows."
    )
    mode: FilterMode = mode_field("exact_cluster (the id of the first occurrence) and exact_duplicate")


class ExactDedup(Stage):
    name = "exact-dedup"
    parallel = "threads"  # Arrow and numpy kernels: the GIL is released most of the time
    version = "1"
    Params = ExactDedupParams
    summary = "Drop rows whose normalised text repeats an earlier row (global, across all shards)."
    example = "thresher dedup exact data/00-ingest data/01-exact --workers 8"
    command = ("dedup", "exact")
    params: ExactDedupParams

    def required_columns(self) -> list[str]:
        return [ID_COLUMN, *self._key_columns()]

    def string_columns(self) -> list[str]:
        return self._key_columns()

    def _key_columns(self) -> list[str]:
        return list(dict.fromkeys([self.params.text_column, *self.params.also_columns]))

    def _key(self, batch: pa.RecordBatch) -> pa.Array:
        """The normalised text to compare; several columns are joined with a separator no text holds."""
        columns = [normalise(batch.column(c), self.params.lowercase) for c in self._key_columns()]
        if len(columns) == 1:
            return columns[0]
        # One string type for the join: a shard may mix string and large_string columns.
        wide = any(pa.types.is_large_string(c.type) for c in columns)
        kind = pa.large_string() if wide else pa.string()
        columns = [c.cast(kind) for c in columns]
        # All columns empty is an empty key (never a duplicate), as for a single column.
        lengths = [pc.utf8_length(c) for c in columns]
        empty = pc.equal(pc.max_element_wise(*lengths), 0)
        return pc.if_else(empty, "", pc.binary_join_element_wise(*columns, separator("\x1f", kind)))

    def _n_buckets(self) -> int:
        assert self.ctx.input is not None
        return self.params.buckets or buckets_for(self.ctx.input.num_rows)

    def _hash_file(self, shard_name: str, part: ShardPart) -> Path:
        return self.ctx.work / "hashes" / part.name(shard_name)

    def _decision_file(self, bucket: int) -> Path:
        return self.ctx.work / "decisions" / f"bucket-{bucket:05d}.parquet"

    def _decision_schema(self) -> pa.Schema:
        return TAG_DECISION_SCHEMA if self.params.mode == "tag" else DECISION_SCHEMA

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        shards = self.ctx.input.shards
        if self.params.mode == "tag":
            self.check_new_columns([CLUSTER_COLUMN, DUPLICATE_COLUMN])
        n = self._n_buckets()
        hashes = str(phase_index_path(self.ctx.output, "hash"))
        decisions = str(phase_index_path(self.ctx.output, "decide"))
        return [
            PhaseSpec(
                "hash",
                [
                    TaskSpec(part.name(s.name), (str(s.path),), {"shard": i, **part.args()}, part.rows)
                    for i, (s, parts) in enumerate(zip(shards, shard_parts(shards), strict=True))
                    for part in parts
                ],
            ),
            PhaseSpec("decide", [TaskSpec(f"bucket-{b:05d}", (hashes,), {"bucket": b}) for b in range(n)]),
            PhaseSpec(
                "filter",
                [
                    TaskSpec(s.name, (str(s.path), decisions), {"shard": i}, s.num_rows)
                    for i, s in enumerate(shards)
                ],
            ),
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase == "hash":
            return self._hash(task, tc)
        if phase == "decide":
            return self._decide(task, tc)
        if phase == "filter":
            return self._filter(task, tc)
        raise RuntimeError(f"stage {self.name} has no phase '{phase}'")

    def _hash(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        shard = task.args["shard"]
        part = ShardPart.from_args(task.args, task.rows)
        shard_path = storage.location(task.inputs[0])
        writer = HashBucketWriter(self._hash_file(shard_path.name, part), self._n_buckets())
        offset = part.first_row
        for batch in iter_batches(shard_path, self.required_columns(), part=part):
            text = self._key(batch)
            rows = np.nonzero(pc.greater(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False))[0]
            taken = pa.array(rows, pa.int64())
            writer.add(hash128(text.take(taken)), shard, rows + offset, batch.column(ID_COLUMN).take(taken))
            offset += batch.num_rows
            tc.progress(batch.num_rows)
        tc.record(writer.close())
        return TaskResult()

    def _decide(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        table = read_bucket(phase_outputs(self.ctx.output, "hash"), task.args["bucket"])
        repeat, first = repeat_runs(table)
        marked = np.nonzero(repeat)[0]
        ids = table["id"]
        columns: dict[str, Any] = {}
        if self.params.mode == "tag":
            # A group's first row is the one just before a repeat; sorted by hash, a group is one run.
            opens_group = np.zeros_like(repeat)
            opens_group[:-1] = repeat[1:]
            marked = np.nonzero(repeat | opens_group)[0]
            columns["duplicate"] = repeat[marked]
        decisions = pa.table(
            {
                "shard": table["shard"].take(marked),
                "row": table["row"].take(marked),
                "dup_of": ids.take(pa.array(first[marked])),
                **columns,
            },
            schema=self._decision_schema(),
        )
        decisions = decisions.sort_by([("shard", "ascending"), ("row", "ascending")])
        writer = ShardWriter(self._decision_file(task.args["bucket"]), self._decision_schema())
        with writer:
            writer.write(decisions)
        tc.record(writer.close())
        groups = int(np.count_nonzero(repeat[1:] & ~repeat[:-1])) if len(repeat) > 1 else 0
        duplicates = int(np.count_nonzero(repeat))
        return TaskResult(extra={"hashed_rows": table.num_rows, "duplicates": duplicates, "groups": groups})

    def _filter(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        shard = task.args["shard"]
        files = [self._decision_file(b) for b in range(self._n_buckets())]
        parts = [pq.read_table(storage.readable(p), filters=[("shard", "=", shard)]) for p in files]
        decided = pa.concat_tables(parts).sort_by("row") if parts else self._decision_schema().empty_table()
        if self.params.mode == "tag":
            return map_batches(storage.location(task.inputs[0]), tc, _tagger(decided), writes_dropped=False)
        dup_rows = decided["row"].to_numpy()
        dup_of = decided["dup_of"]

        def drop_repeats(batch: pa.RecordBatch, offset: int) -> BatchOutcome:
            rows = np.arange(offset, offset + batch.num_rows)
            is_dup = np.isin(rows, dup_rows, assume_unique=True)
            if not is_dup.any():
                return BatchOutcome(batch)
            details = dup_of.take(pa.array(np.searchsorted(dup_rows, rows[is_dup])))
            dropped = dropped_table(
                batch.column(ID_COLUMN).filter(pa.array(is_dup)), self.name, REASON, details
            )
            return BatchOutcome(batch.filter(pa.array(~is_dup)), dropped)

        return map_batches(storage.location(task.inputs[0]), tc, drop_repeats, writes_dropped=True)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        decide = [r for r in records if r.phase == "decide"]
        counts: Counter[str] = Counter()
        for r in decide:
            counts.update({k: v for k, v in r.extra.items() if isinstance(v, int)})
        summary: dict[str, Any] = {
            "buckets": len(decide),
            "duplicate_rows": counts["duplicates"],
            "duplicate_groups": counts["groups"],
            "hashed_rows": counts["hashed_rows"],
        }
        if self.params.mode == "tag":
            summary["mode"] = "tag"
            summary["would_drop"] = {REASON: self.counted(WOULD_DROP).get(REASON, 0)}
        return summary


def _tagger(decided: pa.Table) -> Callable[[pa.RecordBatch, int], BatchOutcome]:
    """Tag mode's batch function over one shard's decisions (sorted by row): the two columns."""
    rows_decided = decided["row"].to_numpy()
    clusters = decided["dup_of"].combine_chunks()
    duplicate = decided["duplicate"].to_numpy(zero_copy_only=False)

    def tag(batch: pa.RecordBatch, offset: int) -> BatchOutcome:
        rows = np.arange(offset, offset + batch.num_rows)
        at = np.minimum(np.searchsorted(rows_decided, rows), max(len(rows_decided) - 1, 0))
        hit = np.isin(rows, rows_decided, assume_unique=True)
        if len(rows_decided):
            cluster = clusters.take(pa.array(at, pa.int64(), mask=~hit))
            is_dup = hit & duplicate[at]
        else:
            cluster, is_dup = pa.nulls(batch.num_rows, pa.string()), np.zeros(batch.num_rows, bool)
        table = pa.Table.from_batches([batch]).append_column(CLUSTER_COLUMN, cluster)
        table = table.append_column(DUPLICATE_COLUMN, pa.array(is_dup, pa.bool_()))
        return BatchOutcome(table, None, {f"{WOULD_DROP}.{REASON}": int(is_dup.sum())})

    return tag
