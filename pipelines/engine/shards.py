"""Shard sets: a directory of Parquet shards read in record batches and written atomically."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import tmp_path_for
from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.errors import ThresherError, UsageError
from thresher.pipelines.engine.manifest import MANIFEST_NAME, FileRecord, Manifest

ID_COLUMN = "id"
TEXT_COLUMN = "text"
TOKENS_COLUMN = "n_tokens"  # what the tokenize stage adds
DROPPED_DIR = "_dropped"
STATE_DIR = "_thresher"
DEFAULT_BATCH_ROWS = 8192
DROPPED_SCHEMA = pa.schema(
    [("id", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)


@dataclass(frozen=True)
class Shard:
    path: Path
    num_rows: int
    size: int
    schema: pa.Schema | None = field(default=None, repr=False, compare=False)
    # Rows of each row group, from the footer; empty when not known (a shard rebuilt from a plan).
    row_groups: tuple[int, ...] = field(default=(), repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class ShardPart:
    """Consecutive row groups of one shard, read by one task: row groups [first_group, end_group), whose
    first row is row `first_row` of the shard. A whole shard is one part with end_group None.

    A part may also be a slice of one row group (see `shard_parts(..., split_groups=True)`): then it
    starts `skip` rows into group `first_group` and holds `rows` rows (`cut`)."""

    first_group: int
    end_group: int | None  # None: to the end of the shard
    first_row: int
    rows: int
    skip: int = 0  # rows of the first group before this part's first row
    cut: bool = False  # ends inside its last group: read exactly `rows` rows

    @property
    def whole(self) -> bool:
        return self.first_group == 0 and self.end_group is None

    def name(self, shard_name: str) -> str:
        """The name of this part's work files (and its task key): the shard's own name for a whole shard,
        so an unsplit shard's work files are named as they always were."""
        if self.whole:
            return shard_name
        stem, dot, ext = shard_name.rpartition(".")
        at = f".r{self.first_row:010d}" if self.cut else ""
        return f"{stem or ext}.rg{self.first_group:05d}{at}{dot}{ext if stem else ''}"

    def args(self) -> dict[str, int]:
        """Task args that say which part a task reads; none for a whole shard (so its plan is unchanged)."""
        if self.whole:
            return {}
        args = {
            "first_group": self.first_group,
            "end_group": self.end_group or 0,
            "first_row": self.first_row,
        }
        if self.cut:
            args |= {"skip": self.skip, "part_rows": self.rows}
        return args

    @classmethod
    def from_args(cls, args: dict[str, int], rows: int | None = None) -> ShardPart:
        if "first_group" not in args:
            return cls(0, None, 0, rows or 0)
        if "part_rows" in args:
            return cls(
                args["first_group"],
                args["end_group"],
                args["first_row"],
                args["part_rows"],
                args["skip"],
                True,
            )
        return cls(args["first_group"], args["end_group"], args["first_row"], rows or 0)


# Splitting shards into row-group parts: a shard-wise phase aims for at least this many tasks, so a set
# of a few big shards still keeps every core (or array slot) busy, but a part never holds fewer than
# MIN_PART_ROWS rows, past which per-task overhead and extra work files cost more than they save. Both
# depend on the input alone, never on the worker count, so the plan (and every fingerprint) is the same
# on a laptop and on a cluster.
TARGET_TASKS = 128
MIN_PART_ROWS = 16_384


# Trial runs (`--limit N`) read only the first rows of their input shards: path -> rows to read. Set by
# the planner and, from the plan, in every worker; the readers below stop there.
_row_limits: dict[str, int] = {}


def limit_rows(path: Path, rows: int) -> None:
    _row_limits[str(path)] = rows
    _row_limits[str(storage.resolved(path))] = rows


def shard_parts(shards: Sequence[Shard], split_groups: bool = False) -> list[list[ShardPart]]:
    """For each shard, the parts a shard-wise phase splits it into: one whole part unless the shard
    holds more row groups than one task should read.

    With `split_groups`, a row group bigger than a part is cut into slices too (a shard written as one
    row group, as `pyarrow.parquet.write_table` writes up to a million rows). Each slice's task decodes
    the group from its start up to the slice's end, so this suits phases whose work per row dwarfs
    decoding (MinHash signatures), not ones that do little more than read (hashing for exact dedup)."""
    total = sum(s.num_rows for s in shards)
    part_rows = max(MIN_PART_ROWS, -(-total // TARGET_TASKS))
    parts: list[list[ShardPart]] = []
    for shard in shards:
        groups = shard.row_groups
        if shard.num_rows <= part_rows or (len(groups) < 2 and not (split_groups and groups)):
            parts.append([ShardPart(0, None, 0, shard.num_rows)])
            continue
        mine: list[ShardPart] = []
        start = row = rows = 0
        for g, n in enumerate(groups):
            if split_groups and n > part_rows:
                if rows:
                    mine.append(ShardPart(start, g, row, rows))
                    row, rows = row + rows, 0
                pieces = -(-n // part_rows)
                bounds = [n * k // pieces for k in range(pieces + 1)]
                for lo, hi in itertools.pairwise(bounds):
                    mine.append(ShardPart(g, g + 1, row + lo, hi - lo, lo, True))
                start, row = g + 1, row + n
                continue
            if rows and rows + n > part_rows:
                mine.append(ShardPart(start, g, row, rows))
                start, row, rows = g, row + rows, 0
            rows += n
        if rows:
            mine.append(ShardPart(start, len(groups), row, rows))
        parts.append(mine if len(mine) > 1 else [ShardPart(0, None, 0, shard.num_rows)])
    return parts


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        # Buffered reads of a column chunk instead of pre-buffering whole row groups: a shard written as
        # one big row group would otherwise be held in memory whole by every task that reads it.
        return pq.ParquetFile(storage.readable(path), buffer_size=1 << 20, pre_buffer=False)
    except FileNotFoundError:
        raise ThresherError(f"{path}: missing (deleted while the run read it?)") from None
    except (pa.ArrowException, OSError) as exc:
        raise ThresherError(f"{path}: not a readable Parquet file (truncated or corrupt?): {exc}") from None


def _changed(manifest: Manifest) -> str:
    return f"the shard set was changed after stage '{manifest.stage}' wrote it; rerun that stage"


def _check_listed(root: Path, manifest: Manifest, path: Path, rows: int) -> None:
    """A shard must be what the manifest says the stage wrote: a deleted, added or rewritten shard would
    otherwise pass for the stage's output. Footer row counts and sizes are cheap; comparing digests would
    mean reading every byte of the input each time it is opened."""
    listed = manifest.output(path.name)
    where = root / MANIFEST_NAME
    if listed is None:
        raise ThresherError(f"{path}: not listed in {where}; {_changed(manifest)} (or remove the file)")
    if listed.rows is not None and listed.rows != rows:
        raise ThresherError(
            f"{path}: holds {rows} rows where {where} lists {listed.rows}; {_changed(manifest)}"
        )
    size = path.stat().st_size
    if listed.size != size:
        raise ThresherError(
            f"{path}: is {size} bytes where {where} lists {listed.size}; {_changed(manifest)}"
        )


@dataclass
class ShardSet:
    """A directory of `*.parquet` shards (sorted by name) and, when thresher wrote it, its manifest."""

    root: Path
    shards: list[Shard]
    manifest: Manifest | None

    @classmethod
    def open(
        cls,
        root: Path,
        required_columns: Sequence[str] = (ID_COLUMN,),
        string_columns: Sequence[str] = (),
        column_flags: Mapping[str, str] | None = None,
    ) -> ShardSet:
        """Open and check every shard's footer and schema up front, so bad input fails before any work."""
        root = storage.location(root)
        if not root.exists():
            raise UsageError(f"{root}: input directory does not exist")
        if not root.is_dir():
            raise UsageError(f"{root}: input is not a directory of Parquet shards")
        manifest = Manifest.read(root) if (root / MANIFEST_NAME).exists() else None
        if manifest is None and (root / STATE_DIR).exists():
            raise ThresherError(
                f"{root}: unfinished thresher output (no {MANIFEST_NAME}); rerun the stage that "
                "writes it, which resumes where it stopped"
            )
        paths = sorted(root.glob("*.parquet"))
        if manifest is not None:
            present = {p.name for p in paths}
            for listed in manifest.outputs:
                if listed.path not in present:
                    raise ThresherError(
                        f"{root / listed.path}: missing, though {root / MANIFEST_NAME} lists it; "
                        f"{_changed(manifest)}"
                    )
        if not paths:
            raise ThresherError(f"{root}: no Parquet shards (*.parquet) in this directory")
        shards = []
        for path in paths:
            pf = _open_parquet(path)
            if manifest is not None:
                _check_listed(root, manifest, path, pf.metadata.num_rows)
            schema = pf.schema_arrow
            for column in required_columns:
                if column not in schema.names:
                    flag = (column_flags or {}).get(column)
                    hint = f" (pass {flag})" if flag else ""
                    raise ThresherError(
                        f"{path}: no column '{column}'{hint}; columns are: {', '.join(schema.names)}"
                    )
            for column in string_columns:
                kind = schema.field(column).type
                if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                    raise ThresherError(
                        f"{path}: column '{column}' has type {kind}, expected a string column"
                    )
            groups = tuple(pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups))
            shards.append(Shard(path, pf.metadata.num_rows, path.stat().st_size, schema, groups))
        return cls(root, shards, manifest)

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)

    def limited(self, rows: int) -> ShardSet:
        """The first `rows` rows of the set, in shard order (a trial run): the shards they lie in, the
        last one cut short, which the readers then stop reading at."""
        kept: list[Shard] = []
        left = rows
        for shard in self.shards:
            if left <= 0:
                break
            take = min(shard.num_rows, left)
            groups: list[int] = []
            for n in shard.row_groups:
                if sum(groups) >= take:
                    break
                groups.append(min(n, take - sum(groups)))
            kept.append(Shard(shard.path, take, shard.size, shard.schema, tuple(groups)))
            limit_rows(shard.path, take)
            left -= take
        return ShardSet(self.root, kept or self.shards[:1], self.manifest)

    def digest(self, shard: Shard) -> str:
        # A manifest written by the stage that produced the shard already knows the digest; trust it while
        # the size still matches instead of re-reading the file.
        listed = self.manifest.output(shard.name) if self.manifest is not None else None
        if listed is not None and listed.size == shard.size:
            return listed.digest
        return file_digest(shard.path)


def batch_rows_for(path: Path, target_bytes: int = 4 << 20, most: int = DEFAULT_BATCH_ROWS) -> int:
    """Rows per batch that hold about `target_bytes` of decoded data, from the shard's footer (so the
    same shard always gives the same batches): 8192 rows of 2 KB web pages already decode to 16 MB, and
    a batch of books to gigabytes."""
    meta = _open_parquet(path).metadata
    decoded = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    if meta.num_rows == 0 or decoded == 0:
        return most
    return max(64, min(most, int(target_bytes * meta.num_rows / decoded)))


def read_schema(path: Path) -> pa.Schema:
    return _open_parquet(path).schema_arrow


def iter_batches(
    path: Path,
    columns: Sequence[str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    part: ShardPart | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream a shard (or one part of it) in record batches; a corrupt page surfaces as a one-line error
    naming the file."""
    cut = part is not None and part.cut
    if cut:
        # A slice of a row group is read through a 1 MB buffer: by default a task would hold the whole
        # compressed column chunk (40 MB of text for 100k documents) to decode a few thousand rows of it.
        try:
            pf = pq.ParquetFile(storage.readable(path), buffer_size=1 << 20, pre_buffer=False)
        except (pa.ArrowException, OSError):
            pf = _open_parquet(path)  # for its one-line error
    else:
        pf = _open_parquet(path)
    groups = None
    if part is not None and not part.whole:
        groups = list(range(part.first_group, part.end_group or pf.metadata.num_row_groups))
    skip, limit = (part.skip, part.rows) if part is not None and cut else (0, None)
    cap = _row_limits.get(str(path))
    if cap is not None:
        allowed = max(0, cap - (part.first_row if part is not None else 0))
        limit = allowed if limit is None else min(limit, allowed)
        if limit == 0:
            return
    rows_read = 0
    try:
        batches = pf.iter_batches(
            batch_size=batch_rows, row_groups=groups, columns=list(columns) if columns else None
        )
        for batch in batches:
            rows_read += batch.num_rows
            if skip:
                dropped = min(skip, batch.num_rows)
                batch, skip = batch.slice(dropped), skip - dropped
                if batch.num_rows == 0:
                    continue
            if limit is not None:
                batch = batch.slice(0, limit)
                limit -= batch.num_rows
            yield batch
            if limit == 0:
                return
    except (pa.ArrowException, OSError) as exc:
        raise ThresherError(f"{path}: unreadable after row {rows_read}: {exc}") from None


class ShardWriter:
    """Write one Parquet file through a temp file renamed into place on `close`.

    Written with fixed options and no pandas metadata, so the same rows give the same bytes.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        # Tokens written, for shard sets that carry the tokenize stage's counts: every later stage's
        # manifest then says how many tokens it kept without reading its shards again.
        self.tokens: int | None = 0 if TOKENS_COLUMN in schema.names else None
        self._closed = False
        storage.make_dirs(path.parent)
        self._tmp = tmp_path_for(path)
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd", write_statistics=True)

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        if data.num_rows:
            if data.schema != self.schema:
                data = (
                    data.cast(self.schema)
                    if isinstance(data, pa.Table)
                    else pa.Table.from_batches([data]).cast(self.schema)
                )
            self._writer.write(data)
            self.rows += data.num_rows
            if self.tokens is not None:
                self.tokens += int(pc.sum(data.column(TOKENS_COLUMN)).as_py() or 0)

    def close(self) -> FileRecord:
        self._closed = True
        self._writer.close()
        # Size and digest from the local file, before it goes: re-reading an uploaded object costs a GET.
        size, digest = self._tmp.stat().st_size, file_digest(self._tmp)
        storage.commit(self._tmp, self.path)
        return FileRecord(path=str(self.path), size=size, digest=digest, rows=self.rows)

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()


def dropped_table(
    ids: pa.Array | list[str],
    stage: str,
    reasons: pa.Array | list[str] | str,
    details: pa.Array | list[str | None] | None = None,
) -> pa.Table:
    """The `_dropped/` rows for one batch: which ids a stage removed and why."""
    n = len(ids)
    if isinstance(reasons, str):
        reasons = pa.array([reasons] * n, pa.string())
    return pa.table(
        {
            "id": _strings(ids),
            "stage": pa.array([stage] * n, pa.string()),
            "reason": _strings(reasons),
            "detail": _strings(details if details is not None else [None] * n),
        },
        schema=DROPPED_SCHEMA,
    )


def _strings(values: pa.Array | pa.ChunkedArray | list[str | None]) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.cast(pa.string())
    return pa.array(values, pa.string())
