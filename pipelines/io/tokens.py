"""A shard set as a training-ready token file: Megatron's indexed dataset (`MMapIndexedDataset`,
`megatron.core.datasets.indexed_dataset.IndexedDataset`), so Megatron-LM, NeMo and other readers of that
layout open it by its prefix with no conversion.

`PREFIX.bin` holds every document's token ids followed by the end-of-document id, documents one after
another in a seeded shuffled order, little-endian `uint16` when the vocabulary has at most 65,536 ids, else
`int32` (Megatron's choice for large vocabularies: every id below 2**31 has the same bytes as in uint32).

`PREFIX.idx`, all little-endian:

    9 bytes   magic b"MMIDIDX\\x00\\x00"
    uint64    version, 1
    uint8     dtype code of .bin: 8 = uint16, 4 = int32
    uint64    N, the number of sequences (here one per document)
    uint64    N + 1, the length of the document index
    int32[N]  tokens per document, its end-of-document token included
    int64[N]  byte offset of each document in .bin
    int64[N+1] document index: 0, 1, ..., N (a document is one sequence)

The order is `numpy.random.default_rng(seed).permutation(rows)` over the set's rows in shard order, so the
same set and seed give the same bytes. Memory is bounded by the index, not the text: the documents are
first tokenized in shard order, batch by batch, into a temporary token file beside the output; the
shuffled file is then gathered from it (memory-mapped) in chunks of about `CHUNK_TOKENS` tokens.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import tmp_path_for
from thresher.pipelines.engine.shards import ShardSet, iter_batches

if TYPE_CHECKING:
    from thresher.pipelines.stages.tokenize.tokenizer import LocalTokenizer

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}
# Tokens gathered per write of the shuffled file: the gather's int64 index arrays are 32 MiB each at
# this size, so a few hundred MiB at most whatever the set's size.
CHUNK_TOKENS = 1 << 22
BATCH_ROWS = 2048


@dataclass(frozen=True)
class TokenFiles:
    """The two files of a token dataset with prefix `prefix`."""

    prefix: Path

    @classmethod
    def for_output(cls, output: Path) -> TokenFiles:
        """OUTPUT names the .bin file; a name without `.bin` is the prefix."""
        return cls(output.with_name(output.name.removesuffix(".bin")))

    @property
    def bin(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".bin")

    @property
    def idx(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".idx")


@dataclass(frozen=True)
class TokenSummary:
    documents: int
    tokens: int  # end-of-document tokens included
    dtype: str
    eos_id: int


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def document_order(rows: int, seed: int) -> np.ndarray:
    """Position k of the token file holds the set's row `document_order(rows, seed)[k]` (rows counted
    across shards in shard order)."""
    return np.random.default_rng(seed).permutation(rows)


def write_tokens(
    shard_set: ShardSet,
    files: TokenFiles,
    tokenizer: LocalTokenizer,
    *,
    eos_id: int,
    seed: int,
    text_column: str = "text",
    chunk_tokens: int = CHUNK_TOKENS,
) -> TokenSummary:
    """Write `files` (each to a temp name, renamed into place when both are whole); the shuffled file is
    gathered `chunk_tokens` tokens at a time."""
    dtype = token_dtype(tokenizer.vocab_size)
    bin_tmp, idx_tmp = tmp_path_for(files.bin), tmp_path_for(files.idx)
    unshuffled = bin_tmp.with_name(f"{bin_tmp.name}.unshuffled")
    storage.make_dirs(files.bin.parent)
    try:
        sizes = _tokenize_in_shard_order(shard_set, unshuffled, tokenizer, eos_id, dtype, text_column)
        order = document_order(len(sizes), seed)
        _gather(unshuffled, bin_tmp, sizes, order, dtype, chunk_tokens)
        unshuffled.unlink()
        shuffled_sizes = sizes[order]
        _write_index(idx_tmp, shuffled_sizes, dtype)
        storage.commit(bin_tmp, files.bin)
        storage.commit(idx_tmp, files.idx)
    finally:
        for tmp in (unshuffled, bin_tmp, idx_tmp):
            tmp.unlink(missing_ok=True)
    return TokenSummary(len(sizes), int(sizes.sum()), dtype.name, eos_id)


def _tokenize_in_shard_order(
    shard_set: ShardSet, path: Path, tokenizer: LocalTokenizer, eos_id: int, dtype: np.dtype, text_column: str
) -> np.ndarray:
    """Every row's tokens and its EOS, in shard order, into `path`; the tokens per row."""
    sizes = np.zeros(shard_set.num_rows, np.int64)
    row = 0
    with open(path, "wb") as f:
        for shard in shard_set.shards:
            for batch in iter_batches(shard.path, columns=[text_column], batch_rows=BATCH_ROWS):
                ids = tokenizer.encode(batch.column(0).to_pylist())
                lengths = np.fromiter((len(i) + 1 for i in ids), np.int64, count=len(ids))
                flat = np.empty(int(lengths.sum()), dtype)
                ends = np.cumsum(lengths)
                flat[ends - 1] = eos_id
                starts = ends - lengths
                for start, doc in zip(starts.tolist(), ids, strict=True):
                    flat[start : start + len(doc)] = doc
                f.write(flat.tobytes())
                sizes[row : row + len(ids)] = lengths
                row += len(ids)
    if row != len(sizes):
        raise RuntimeError(f"{shard_set.root}: read {row} rows, the shards' footers say {len(sizes)}")
    return sizes


def _chunks(sizes: np.ndarray, limit: int) -> Iterator[slice]:
    """Consecutive position ranges of about `limit` tokens each (at least one document)."""
    ends = np.cumsum(sizes)
    start = 0
    while start < len(sizes):
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + limit, side="right"))
        stop = max(stop, start + 1)
        yield slice(start, stop)
        start = stop


def _gather(
    source: Path, target: Path, sizes: np.ndarray, order: np.ndarray, dtype: np.dtype, chunk_tokens: int
) -> None:
    """Copy the documents of `source` (in row order) into `target` in `order`, chunk by chunk."""
    starts = np.cumsum(sizes) - sizes
    with open(target, "wb") as f:
        if not sizes.sum():
            return
        tokens = np.memmap(storage.local_file(source), dtype=dtype, mode="r")
        for part in _chunks(sizes[order], chunk_tokens):
            picked = order[part]
            lengths = sizes[picked]
            # One index array for the whole chunk: each document's range, laid end to end.
            local = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            f.write(tokens[np.repeat(starts[picked], lengths) + local].tobytes())
        del tokens


def _write_index(path: Path, sizes: np.ndarray, dtype: np.dtype) -> None:
    count = len(sizes)
    pointers = (np.cumsum(sizes) - sizes) * dtype.itemsize
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", count))
        f.write(struct.pack("<Q", count + 1))
        f.write(sizes.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.arange(count + 1, dtype="<i8").tobytes())


class TokenDataset:
    """Reads a token file back: `len(ds)` documents, `ds.document(k)` the tokens of document k as
    stored (its end-of-document token last)."""

    def __init__(self, prefix: Path) -> None:
        files = TokenFiles(storage.location(prefix))
        data = files.idx.read_bytes()
        if data[: len(MAGIC)] != MAGIC:
            raise ValueError(f"{files.idx}: not a Megatron indexed dataset index (bad magic)")
        at = len(MAGIC)
        version, code, count, doc_count = struct.unpack_from("<QBQQ", data, at)
        if version != VERSION:
            raise ValueError(f"{files.idx}: index version {version}, not {VERSION}")
        at += struct.calcsize("<QBQQ")
        codes = {c: d for d, c in DTYPE_CODES.items()}
        self.dtype = codes[code]
        self.sizes = np.frombuffer(data, "<i4", count, at)
        self.pointers = np.frombuffer(data, "<i8", count, at + 4 * count)
        self.document_index = np.frombuffer(data, "<i8", doc_count, at + 12 * count)
        self._tokens = (
            np.memmap(storage.local_file(files.bin), dtype=self.dtype, mode="r")
            if count
            else np.zeros(0, self.dtype)
        )

    def __len__(self) -> int:
        return len(self.sizes)

    def document(self, k: int) -> np.ndarray:
        start = int(self.pointers[k]) // self.dtype.itemsize
        return np.asarray(self._tokens[start : start + int(self.sizes[k])])


def read_document(prefix: Path, k: int) -> np.ndarray:
    """Document k of the token file with this prefix, as stored (tokens, then the end-of-document id)."""
    return TokenDataset(prefix).document(k)
