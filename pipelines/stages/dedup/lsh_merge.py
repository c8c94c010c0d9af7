"""Candidate pairs from band files: a streaming k-way merge of runs sorted by band key.

Each signature task writes, per band, its documents' (key, doc) rows sorted by key. A bucket task merges
one band's runs from every shard without holding the band in memory: it reads every run in chunks and
repeatedly takes all buffered rows whose key is below the smallest "last buffered key" of the runs still
being read. No run can hold more rows with such a key, so each taken group of equal keys is complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.pipelines.engine import storage

BAND_SCHEMA = pa.schema([("band", pa.int16()), ("key", pa.uint64()), ("doc", pa.int64())])
PAIR_SCHEMA = pa.schema([("doc", pa.int64()), ("other", pa.int64())])
# Rows read from each run at a time: a band merges one run per signatures part, hundreds at a billion rows.
CHUNK_ROWS = 8192


def band_runs(path: Path, band: int, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keys, docs) chunks of one band of one band file, in key order."""
    pf = pq.ParquetFile(storage.readable(path))
    groups = [
        i
        for i in range(pf.metadata.num_row_groups)
        if pf.metadata.row_group(i).column(0).statistics.min == band
    ]
    for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=groups, columns=["key", "doc"]):
        yield batch.column(0).to_numpy(), batch.column(1).to_numpy()


class _Run:
    def __init__(self, chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> None:
        self.chunks = chunks
        self.keys = np.zeros(0, np.uint64)
        self.docs = np.zeros(0, np.int64)
        self.done = False
        self.pull()

    def pull(self) -> None:
        try:
            keys, docs = next(self.chunks)
        except StopIteration:
            self.done = True
            return
        self.keys = np.concatenate([self.keys, keys])
        self.docs = np.concatenate([self.docs, docs])

    def take_below(self, frontier: np.uint64 | None) -> tuple[np.ndarray, np.ndarray]:
        cut = len(self.keys) if frontier is None else int(np.searchsorted(self.keys, frontier, side="left"))
        taken = self.keys[:cut], self.docs[:cut]
        self.keys, self.docs = self.keys[cut:], self.docs[cut:]
        return taken


def merged_groups(
    runs: list[Iterator[tuple[np.ndarray, np.ndarray]]],
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks of (keys, docs) sorted by (key, doc) in which every key's group is complete."""
    live = [_Run(r) for r in runs]
    while True:
        for r in live:
            while not r.done and len(r.keys) == 0:
                r.pull()
        reading = [r for r in live if not r.done]
        frontier = min((r.keys[-1] for r in reading), default=None)
        parts = [r.take_below(frontier) for r in live]
        keys = np.concatenate([p[0] for p in parts])
        docs = np.concatenate([p[1] for p in parts])
        if len(keys):
            order = np.lexsort((docs, keys))
            yield keys[order], docs[order]
        if not reading:
            return
        for r in reading:
            if r.keys[-1] == frontier:
                r.pull()


def star_edges(keys: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by (key, doc): an edge from every group member to the group's first document.
    A star per group is enough for connected components and keeps edges linear in group size."""
    if len(keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.concatenate([[True], keys[1:] != keys[:-1]])
    first = docs[np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))]
    member = ~starts
    return first[member], docs[member]
