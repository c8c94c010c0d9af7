"""The evaluation n-gram index: every n-gram hash of the evaluation texts with the file it came from.

Built once per run (one task) from the evaluation files, streamed in batches, and kept as two arrays,
sorted hashes and their file numbers: 10 bytes per distinct (n-gram, file), however long the texts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import atomic_path
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.io.readers import read_source
from thresher.pipelines.text.ngrams import ngram_hashes

BATCH_ROWS = 4096


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_text_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text(t.value_type)


def text_fields(schema: pa.Schema, wanted: list[str]) -> list[str]:
    """The fields of an evaluation file whose text is checked: those in `wanted` (all string and
    list-of-string fields when it is empty)."""
    usable = [f.name for f in schema if _is_text(f.type) or _is_text_list(f.type)]
    return [f for f in usable if f in wanted] if wanted else usable


def _texts(table: pa.Table, field: str) -> pa.Array:
    column = table.column(field).combine_chunks()
    if _is_text_list(column.type):
        return pc.list_flatten(column)  # every choice of a multiple-choice item is its own text
    return column


@dataclass
class FileTally:
    texts: int = 0
    short_texts: int = 0  # fewer words than one n-gram: nothing to match
    ngrams: int = 0


def checked_fields(path: Path, schema: pa.Schema, fields: list[str]) -> list[str]:
    """`text_fields`, or a one-line error naming the file when it has none of them."""
    chosen = text_fields(schema, fields)
    if not chosen:
        names = ", ".join(schema.names)
        want = f"none of --fields {','.join(fields)}" if fields else "no string field"
        raise UsageError(f"{path}: {want} (its fields: {names}); pass --fields")
    return chosen


def check_eval_file(path: Path, fields: list[str]) -> None:
    """Fail before any task runs on an evaluation file that cannot be read or has no field to check."""
    for table in read_source(path, 64):
        checked_fields(path, table.schema, fields)
        return
    raise UsageError(f"--against {path}: the file holds no rows")


def _file_hashes(path: Path, fields: list[str], n: int, tally: FileTally) -> Iterator[np.ndarray]:
    chosen: list[str] | None = None
    for table in read_source(path, BATCH_ROWS):
        chosen = chosen or checked_fields(path, table.schema, fields)
        for field in chosen:
            texts = _texts(table, field)
            hashes, doc = ngram_hashes(texts, n)
            tally.texts += len(texts) - texts.null_count
            tally.short_texts += len(texts) - texts.null_count - len(np.unique(doc))
            tally.ngrams += len(hashes)
            yield np.unique(hashes)


@dataclass(frozen=True)
class EvalIndex:
    hashes: np.ndarray  # sorted uint64; a hash found in several files appears once per file
    files: np.ndarray  # uint16 file number of each hash
    n_files: int  # files indexed, those that gave no n-gram included

    @classmethod
    def build(cls, paths: list[Path], fields: list[str], n: int) -> tuple[EvalIndex, list[FileTally]]:
        hashes, files, tallies = [], [], []
        for number, path in enumerate(paths):
            tally = FileTally()
            parts = list(_file_hashes(path, fields, n, tally))
            unique = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
            hashes.append(unique)
            files.append(np.full(len(unique), number, np.uint16))
            tallies.append(tally)
        all_hashes = np.concatenate(hashes)
        all_files = np.concatenate(files)
        order = np.lexsort((all_files, all_hashes))
        return cls(all_hashes[order], all_files[order], len(paths)), tallies

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, hashes=self.hashes, files=self.files, n_files=np.int64(self.n_files))

    @classmethod
    def load(cls, path: Path) -> EvalIndex:
        with np.load(storage.readable(path)) as data:
            return cls(data["hashes"], data["files"], int(data["n_files"]))

    def matches(self, hashes: np.ndarray, doc: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
        """For texts whose n-grams are (`hashes`, `doc`): how many of each text's n-grams an evaluation
        file holds, and a (texts x files) table of which files they are in."""
        lo = np.searchsorted(self.hashes, hashes, "left")
        hi = np.searchsorted(self.hashes, hashes, "right")
        width = hi - lo
        hit = width > 0
        per_doc = np.bincount(doc[hit], minlength=n_docs)
        table = np.zeros((n_docs, self.n_files), dtype=bool)
        if hit.any():
            width, lo, owner = width[hit], lo[hit], doc[hit]
            # Each matched hash's run of entries (one per file holding it), flattened.
            starts = np.repeat(lo - np.cumsum(width) + width, width) + np.arange(int(width.sum()))
            table[np.repeat(owner, width), self.files[starts]] = True
        return per_doc, table
