"""Ingest: raw files or a saved `datasets` folder into a shard set with a unique string `id` and `text`.

Phase `read` (one task per source) converts and validates; phase `check-ids` (one task per hash bucket)
proves ids are unique across all sources, so every later stage can name rows by id.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.engine.hash_buckets import (
    HashBucketWriter,
    buckets_for,
    hash128,
    read_bucket,
    repeat_runs,
)
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.shards import (
    DROPPED_SCHEMA,
    ID_COLUMN,
    TEXT_COLUMN,
    ShardWriter,
    dropped_table,
)
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.io.readers import expand_inputs, parquet_rows, read_source

REASON_EMPTY = "empty_text"


class IngestParams(StageParams):
    inputs: list[str] = Field(description="Input files or folders (absolute paths; the CLI resolves them).")
    text_column: str = Field("text", description="Input column with the document text; stored as `text`.")
    id_column: str | None = Field(
        None,
        description="Input column with unique ids; stored as `id`. Default: `id` if present, else "
        "'<file>:<row>'.",
    )
    columns: list[str] | None = Field(None, description="Other input columns to keep (default: all).")
    rows_per_shard: int = Field(100_000, ge=1, description="Target rows per output shard.")
    empty: Literal["error", "drop", "keep"] = Field(
        "error",
        description="Null or whitespace-only text: stop with an error, drop the row (recorded in "
        "_dropped/), or keep it.",
    )
    allow_empty: bool = Field(
        False,
        description="Accept an input with no rows (a zero-byte file, a header-only CSV, a 0-row Parquet "
        "file); without it, each such input is an error naming the file.",
    )
    split: str | None = Field(None, description="Split to read from a saved DatasetDict (default: train).")
    batch_rows: int = Field(10_000, ge=1, description="Rows per record batch while reading.")


class Ingest(Stage):
    name = "ingest"
    parallel = "threads"  # Arrow and numpy kernels: the GIL is released most of the time
    uses_pandas = False  # but the `datasets` reader lets it in (readers._hf_local)
    version = "1"
    Params = IngestParams
    summary = "Read JSONL(.gz/.zst), Parquet, CSV or a saved `datasets` folder into a shard set."
    example = "thresher ingest dump/*.jsonl.zst data/00-ingest --text-column content --rows-per-shard 200000"
    input_kind = "files"
    command = ("ingest",)
    params: IngestParams

    def raw_inputs(self) -> list[Path]:
        return expand_inputs(self.params.inputs, self.ctx.output)

    def phases(self) -> list[PhaseSpec]:
        sources = self.raw_inputs()
        # Derived ids and messages name a source by its path relative to the inputs' common folder.
        root = storage.common_folder(sources)
        rows = [parquet_rows(s) for s in sources]
        total = sum(r or self.params.rows_per_shard for r in rows)
        n = buckets_for(total)
        id_files = tuple(str(self.ctx.work / "ids" / f"source-{i:05d}.parquet") for i in range(len(sources)))
        return [
            PhaseSpec(
                "read",
                [
                    TaskSpec(
                        f"source-{i:05d}",
                        (str(s),),
                        {"source": i, "buckets": n, "label": s.relative_to(root).as_posix()},
                        r,
                    )
                    for i, (s, r) in enumerate(zip(sources, rows, strict=True))
                ],
            ),
            PhaseSpec("check-ids", [TaskSpec(f"bucket-{b:05d}", id_files, {"bucket": b}) for b in range(n)]),
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase == "read":
            return self._read(task, tc)
        return self._check_ids(task)

    def _read(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        source = storage.location(task.inputs[0])
        index = task.args["source"]
        label = task.args["label"]
        ids_writer = HashBucketWriter(
            self.ctx.work / "ids" / f"source-{index:05d}.parquet", task.args["buckets"]
        )
        dropped = tc.writer(tc.dropped_path(f"source-{index:05d}.parquet"), DROPPED_SCHEMA)
        shard: ShardWriter | None = None
        schema: pa.Schema | None = None
        chunk = rows_in = rows_out = 0
        reasons: Counter[str] = Counter()
        writers: list[ShardWriter] = [dropped]
        try:
            for table in read_source(
                source,
                p.batch_rows,
                split=p.split,
                # The default `id` too: a CSV id like "007" read as a number would come out as "7".
                string_columns=[p.text_column, p.id_column or ID_COLUMN],
            ):
                if self.ctx.limit is not None:  # a trial run: the first rows of each file
                    table = table.slice(0, self.ctx.limit - rows_in)
                    if not table.num_rows:
                        break
                start = rows_in
                table, empty = self._to_output(table, source, label, start)
                ids = table[ID_COLUMN].combine_chunks()
                ids_writer.add(hash128(ids), index, np.arange(rows_in, rows_in + table.num_rows), ids)
                rows_in += table.num_rows
                tc.progress(table.num_rows)
                if empty is not None:
                    drops = dropped_table(ids.filter(empty), self.name, REASON_EMPTY)
                    reasons[REASON_EMPTY] += drops.num_rows
                    dropped.write(drops)
                    table = table.filter(pc.invert(empty))
                if table.num_rows:
                    table, schema = _same_schema(table, schema, source, start)
                while table.num_rows:
                    if shard is None:
                        path = self.ctx.output / f"part-{index:05d}-{chunk:05d}.parquet"
                        shard = tc.writer(path, table.schema)
                        writers.append(shard)
                    room = p.rows_per_shard - shard.rows
                    shard.write(table.slice(0, room))
                    rows_out += min(room, table.num_rows)
                    table = table.slice(room)
                    if shard.rows >= p.rows_per_shard:
                        tc.record(shard.close())
                        writers.remove(shard)
                        shard, chunk = None, chunk + 1
            if rows_in == 0 and not p.allow_empty:
                # An empty input is more often a failed download or export than data: say so, whatever
                # the format, rather than write a shard set that looks fine and holds nothing.
                raise ThresherError(
                    f"{source}: no rows (empty input); pass --allow-empty if empty inputs are expected"
                )
            if shard is None and chunk == 0:
                # No rows left (an empty file, or all dropped): an empty shard, as map_shard writes, so the
                # output is never a shard set without shards, which later stages refuse.
                empty_schema = pa.schema([(ID_COLUMN, pa.string()), (TEXT_COLUMN, pa.string())])
                shard = tc.writer(self.ctx.output / f"part-{index:05d}-00000.parquet", empty_schema)
                writers.append(shard)
            if shard is not None:
                tc.record(shard.close())
                writers.remove(shard)
            tc.record(dropped.close())
            writers.remove(dropped)
            tc.record(ids_writer.close())
        except BaseException:
            for w in writers:
                w.abort()
            ids_writer.abort()
            raise
        return TaskResult.from_counter(rows_in, rows_out, reasons, source=label)

    def _to_output(
        self, table: pa.Table, source: Path, label: str, offset: int
    ) -> tuple[pa.Table, pa.Array | None]:
        """Rename the text/id columns, derive ids and screen empty text: (rows, mask of rows to drop)."""
        p = self.params
        names = table.schema.names
        if p.text_column not in names:
            raise ThresherError(
                f"{source}: no column '{p.text_column}' (columns: {', '.join(names)}); pass --text-column"
            )
        _unique_column(source, names, p.text_column, "")
        text = table[p.text_column]
        # Null type: a JSON lines batch whose texts are all null; such rows are screened as empty below.
        if not (
            pa.types.is_string(text.type)
            or pa.types.is_large_string(text.type)
            or pa.types.is_null(text.type)
        ):
            raise ThresherError(f"{source}: column '{p.text_column}' holds {text.type}, not text")
        text = text.cast(pa.string())
        try:
            text.validate(full=True)
        except pa.ArrowInvalid:
            raise ThresherError(f"{source}: column '{p.text_column}' holds invalid UTF-8") from None
        id_column = p.id_column or (ID_COLUMN if ID_COLUMN in names else None)
        if p.id_column and p.id_column not in names:
            raise ThresherError(f"{source}: no id column '{p.id_column}' (columns: {', '.join(names)})")
        if id_column:
            _unique_column(source, names, id_column, "; pass --id-column with another column")
            ids = pc.cast(table[id_column], pa.string())
            if ids.null_count:
                row = offset + pc.index(pc.is_null(ids), True).as_py()
                raise ThresherError(f"{source} row {row}: null id in column '{id_column}'")
            blank = pc.equal(ids, "")
            if pc.any(blank).as_py():
                row = offset + pc.index(blank, True).as_py()
                raise ThresherError(
                    f"{source} row {row}: empty id in column '{id_column}'; every row needs an id"
                )
        else:
            ids = pa.chunked_array([pa.array([f"{label}:{offset + i}" for i in range(table.num_rows)])])
        keep = [
            c
            for c in dict.fromkeys(p.columns if p.columns is not None else names)
            if c not in (p.text_column, id_column)
        ]
        for c in keep:
            _unique_column(source, names, c, "; leave it out with --columns")
            if c not in names:
                raise ThresherError(
                    f"{source}: no column '{c}' named in --columns (columns: {', '.join(names)})"
                )
            if c in (ID_COLUMN, TEXT_COLUMN):
                raise ThresherError(
                    f"{source}: column '{c}' would collide with the output's `{c}` column; "
                    f"pass --{c}-column {c} or leave it out of --columns"
                )
        out = pa.table({ID_COLUMN: ids, TEXT_COLUMN: text, **{c: table[c] for c in keep}})
        # Whitespace-only (or empty) text, tested in place: trimming first copied every text, and took
        # most of a batch's time.
        blank = pc.or_kleene(pc.utf8_is_space(text), pc.equal(pc.binary_length(text), 0))
        empty = pc.fill_null(blank, True).combine_chunks()
        n_empty = pc.sum(empty).as_py() or 0
        if n_empty and p.empty == "error":
            row = offset + pc.index(empty, True).as_py()
            raise ThresherError(
                f"{source} row {row}: empty or null text in column '{p.text_column}'; pass "
                "--empty drop to drop such rows (recorded in _dropped/) or --empty keep"
            )
        if n_empty and p.empty == "drop":
            return out, empty
        if n_empty:
            out = out.set_column(1, TEXT_COLUMN, pc.fill_null(text, ""))
        return out, None

    def _check_ids(self, task: TaskSpec) -> TaskResult:
        table = read_bucket([storage.location(p) for p in task.inputs], task.args["bucket"])
        repeat, first = repeat_runs(table)
        if repeat.any():
            i = int(np.nonzero(repeat)[0][0])
            j = int(first[i])
            sources = self.raw_inputs()
            a, b = (table.slice(k, 1).to_pylist()[0] for k in (j, i))
            first_at = f"{sources[a['shard']]} row {a['row']}"
            raise ThresherError(
                f"duplicate id {a['id']!r}: {first_at} and {sources[b['shard']]} row {b['row']}; "
                "ids must be unique: pick another --id-column or drop duplicates first"
            )
        return TaskResult(extra={"ids_checked": table.num_rows})

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        return {"sources": [r.extra.get("source") for r in records if r.phase == "read"]}


def _unique_column(source: Path, names: list[str], column: str, hint: str) -> None:
    # Parquet and CSV allow two columns of one name; which of them is meant cannot be guessed.
    if names.count(column) > 1:
        raise ThresherError(
            f"{source}: {names.count(column)} columns are named '{column}'; column names must be unique{hint}"
        )


def _same_schema(
    table: pa.Table, schema: pa.Schema | None, source: Path, start: int
) -> tuple[pa.Table, pa.Schema]:
    """Rows from `start` on in the columns and types of the source's first rows, so that all of its shards
    read as one table (JSON lines types come from the values each batch happens to hold)."""
    if schema is None or table.schema == schema:
        return table, table.schema
    try:
        return table.cast(schema), schema
    except (pa.ArrowException, ValueError):
        changed = next(
            (f for f in table.schema if f.name not in schema.names or schema.field(f.name).type != f.type),
            table.schema.field(0),
        )
        was = schema.field(changed.name).type if changed.name in schema.names else "absent"
        raise ThresherError(
            f"{source}: column '{changed.name}' is {was} in the rows before row {start} and "
            f"{changed.type} from there on; pass --columns to leave it out"
        ) from None
