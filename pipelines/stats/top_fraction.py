"""One exact cutoff for "keep the best fraction of a whole shard set", without holding the set in memory.

Every row gets a 28-byte rank key that sorts best-first as plain bytes: the score (mapped to an unsigned
integer that orders like the float, negated when higher is better; null and NaN last), then a seeded hash
of the row's id (so ties are broken the same way on every run, by any number of workers), then shard and
row number (so even equal ids have one order). A map phase writes each shard's keys sorted; one reduce
task finds the key of rank k exactly; the filtering map keeps rows whose key is <= that key. Exactly k
rows are kept, k = round(fraction * rows).

Why not a KLL sketch (datasketches): its merge is randomised and its error bound only probabilistic, so
a cutoff taken from it would change from run to run. Every m-th key of each sorted shard is a
deterministic summary whose rank error is known exactly (under m rows per shard), which lets the reduce
task read only the keys between two bounds around rank k from each (memory-mapped) shard file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from thresher.pipelines.engine.atomic import atomic_path

KEY_FIELDS = np.dtype([("score", ">u8"), ("tie", ">u8"), ("shard", ">u4"), ("row", ">u8")])
KEY_DTYPE = np.dtype(f"S{KEY_FIELDS.itemsize}")
SAMPLE_EVERY = 1024
_SIGN = np.uint64(1 << 63)
_WORST = np.uint64(2**64 - 1)


def keep_count(fraction: float, rows: int) -> int:
    """Rows to keep: fraction * rows rounded half up (so 0.5 of 3 rows keeps 2)."""
    return min(rows, int(fraction * rows + 0.5))


def score_order(scores: pa.Array | pa.ChunkedArray, higher_is_better: bool) -> np.ndarray:
    """Unsigned integers that sort like the scores, best first; null and NaN sort after everything."""
    values = pc.cast(scores, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    missing = np.isnan(values)
    if higher_is_better:
        values = -values
    values += 0.0  # -0.0 and 0.0 must be one score
    bits = values.view(np.uint64)
    # IEEE-754 bits order like the floats once negative values are inverted and positive ones get the
    # sign bit set: the usual radix-sort trick.
    order = np.where(bits & _SIGN, ~bits, bits | _SIGN)
    order[missing] = _WORST
    return order


def score_from_order(order: int, higher_is_better: bool) -> float | None:
    if order == int(_WORST):
        return None
    bits = np.uint64(order)
    raw = bits & ~_SIGN if bits & _SIGN else ~bits
    value = float(np.array([raw], dtype=np.uint64).view(np.float64)[0])
    return -value if higher_is_better else value


def tie_hashes(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each id (big-endian, as the key stores it)."""
    raw = pc.cast(ids, pa.binary()).to_pylist()
    blob = b"".join([xxhash.xxh3_64_digest(v or b"", seed=seed) for v in raw])
    return np.frombuffer(blob, dtype=">u8")


def rank_keys(
    scores: pa.Array | pa.ChunkedArray,
    ids: pa.Array | pa.ChunkedArray,
    shard: int,
    rows: np.ndarray,
    *,
    higher_is_better: bool,
    seed: int,
) -> np.ndarray:
    """The rank key of each row; `rows` are the rows' positions in their shard."""
    fields = np.empty(len(rows), dtype=KEY_FIELDS)
    fields["score"] = score_order(scores, higher_is_better)
    fields["tie"] = tie_hashes(ids, seed)
    fields["shard"] = shard
    fields["row"] = rows
    return fields.view(KEY_DTYPE)


def decode_key(key: bytes) -> dict[str, int]:
    fields = np.frombuffer(key.ljust(KEY_DTYPE.itemsize, b"\0"), dtype=KEY_FIELDS)[0]
    return {name: int(fields[name]) for name in KEY_FIELDS.names or ()}


def write_sorted_keys(path: Path, keys: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.sort(keys), allow_pickle=False)


def open_sorted_keys(path: Path) -> np.ndarray:
    # Memory-mapped: the reduce task touches only the pages its binary searches and slices need.
    return np.load(path, mmap_mode="r", allow_pickle=False)


def key_at_rank(shards: Sequence[np.ndarray], rank: int, sample_every: int = SAMPLE_EVERY) -> bytes:
    """The key at 0-based `rank` in the merged order of sorted key arrays, exactly.

    Every `sample_every`-th key of a shard bounds how many of its keys lie below any value: with j
    samples <= x, between j*m and (j+1)*m - 1 keys are <= x. Summed over shards, that brackets rank
    `rank` between two sample keys; only the keys between them are read and sorted.
    """
    total = sum(len(s) for s in shards)
    if not 0 <= rank < total:
        raise ValueError(f"rank {rank} outside 0..{total - 1}")
    m = sample_every
    samples = [np.array(s[m - 1 :: m]) for s in shards]
    merged = np.sort(np.concatenate(samples)) if samples else np.empty(0, KEY_DTYPE)

    def bounds(x: np.bytes_) -> tuple[int, int]:
        low = high = 0
        for s, sample in zip(shards, samples, strict=True):
            j = int(np.searchsorted(sample, x, side="right"))
            low += j * m
            high += min(len(s), (j + 1) * m - 1)
        return low, high

    # lo: the largest sample key with surely at most `rank` keys <= it, so the answer lies above it.
    # hi: the smallest sample key with surely more than `rank` keys <= it, so the answer is <= it.
    lo = _last_true(merged, lambda x: bounds(x)[1] <= rank)
    hi = _first_true(merged, lambda x: bounds(x)[0] > rank)
    below = 0
    parts = []
    for s in shards:
        start = int(np.searchsorted(s, merged[lo], side="right")) if lo is not None else 0
        stop = int(np.searchsorted(s, merged[hi], side="right")) if hi is not None else len(s)
        below += start
        parts.append(np.array(s[start:stop]))
    candidates = np.sort(np.concatenate(parts))
    return bytes(candidates[rank - below]).ljust(KEY_DTYPE.itemsize, b"\0")


def _last_true(values: np.ndarray, test: Callable[[np.bytes_], bool]) -> int | None:
    """Index of the last value for which a monotone (true...true false...false) test holds."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if test(values[mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo > 0 else None


def _first_true(values: np.ndarray, test: Callable[[np.bytes_], bool]) -> int | None:
    """Index of the first value for which a monotone (false...false true...true) test holds."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if test(values[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo if lo < len(values) else None
