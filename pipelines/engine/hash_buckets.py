"""Hash partitioning for global stages: map tasks write (hash, position) rows split into buckets, one
reduce task per bucket sees every row with a given hash. Memory per reduce task is rows/buckets, so the
number of buckets, not the node, sets how far a global decision scales."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.manifest import FileRecord
from thresher.pipelines.engine.shards import ShardWriter

HASH_SCHEMA = pa.schema(
    [
        ("bucket", pa.int32()),
        ("h1", pa.uint64()),
        ("h2", pa.uint64()),
        ("shard", pa.int32()),
        ("row", pa.int64()),
        ("id", pa.string()),
    ]
)
# A reduce task holds one bucket in memory: about 60 bytes a row, so 250k rows stay near 15 MB.
ROWS_PER_BUCKET = 250_000


def buckets_for(rows: int) -> int:
    return max(1, min(4096, math.ceil(rows / ROWS_PER_BUCKET)))


def hash128(values: pa.Array) -> np.ndarray:
    """xxh3-128 of each string, as an (n, 2) uint64 array."""
    raw = pc.cast(values, pa.binary()).to_pylist()
    # One bytes join and one frombuffer is far cheaper than building Python ints per row.
    blob = b"".join([xxhash.xxh3_128_digest(v) for v in raw])
    return np.frombuffer(blob, dtype=">u8").reshape(-1, 2).astype(np.uint64)


class HashBucketWriter:
    """Writes (hash, shard, row, id) rows of one map task to one file, each row group holding a single
    bucket, so a reduce task reads only its own bucket from every file. Rows are flushed every
    `flush_rows`, which bounds memory for inputs of any size."""

    def __init__(self, path: Path, n_buckets: int, flush_rows: int = 1_000_000) -> None:
        self.n_buckets = n_buckets
        self.flush_rows = flush_rows
        self._writer = ShardWriter(path, HASH_SCHEMA)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, hashes: np.ndarray, shard: int, rows: np.ndarray, ids: pa.Array) -> None:
        if len(rows) == 0:
            return
        bucket = (hashes[:, 0] % np.uint64(self.n_buckets)).astype(np.int32)
        columns = {
            "bucket": bucket,
            "h1": hashes[:, 0],
            "h2": hashes[:, 1],
            "shard": np.full(len(rows), shard, np.int32),
            "row": rows.astype(np.int64),
            "id": ids,
        }
        self._pending.append(pa.table(columns, schema=HASH_SCHEMA))
        self._pending_rows += len(rows)
        if self._pending_rows >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending).sort_by([("bucket", "ascending"), ("row", "ascending")])
        self._pending, self._pending_rows = [], 0
        buckets = table["bucket"].to_numpy()
        bounds = np.searchsorted(buckets, np.arange(self.n_buckets + 1), side="left")
        for b in range(self.n_buckets):
            if bounds[b + 1] > bounds[b]:
                self._writer.write(table.slice(bounds[b], bounds[b + 1] - bounds[b]))

    def close(self) -> FileRecord:
        try:
            self._flush()
        except BaseException:
            self._writer.abort()
            raise
        return self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


def read_bucket(paths: list[Path], bucket: int) -> pa.Table:
    """Every hash row of one bucket across map outputs, sorted by (hash, shard, row): equal hashes are
    adjacent and the first of each run is the earliest occurrence."""
    parts = [
        pq.read_table(storage.readable(p), filters=[("bucket", "=", bucket)], schema=HASH_SCHEMA)
        for p in paths
    ]
    table = pa.concat_tables(parts) if parts else HASH_SCHEMA.empty_table()
    return table.sort_by(
        [("h1", "ascending"), ("h2", "ascending"), ("shard", "ascending"), ("row", "ascending")]
    )


def repeat_runs(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """For a table sorted by hash: a mask of rows repeating an earlier row's hash, and for each row the
    index of the first row of its run."""
    n = table.num_rows
    h1, h2 = table["h1"].to_numpy(), table["h2"].to_numpy()
    repeat = np.zeros(n, dtype=bool)
    if n > 1:
        repeat[1:] = (h1[1:] == h1[:-1]) & (h2[1:] == h2[:-1])
    first = np.where(repeat, 0, np.arange(n))
    first = np.maximum.accumulate(first) if n else first
    return repeat, first
