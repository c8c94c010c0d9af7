"""Float scores as unsigned integers that sort like them, and a seeded tie-break by id.

The order key of a score is its IEEE-754 bit pattern with negative values inverted and positive ones given
the sign bit (the usual radix-sort trick), so comparing keys as unsigned integers, or as big-endian bytes,
compares the scores. -0.0 is read as 0.0 first, so the two are one score. Missing scores (null or NaN, the
rule of `thresher.pipelines.stats`) get the largest key, `MISSING`, which no number has: they sort after
every score whichever direction is best.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

MISSING = np.uint64(2**64 - 1)
_SIGN = np.uint64(1 << 63)

Scores = pa.Array | pa.ChunkedArray | np.ndarray


def as_float64(scores: Scores) -> np.ndarray:
    """Scores as a writable float64 array, null read as NaN."""
    if isinstance(scores, pa.Array | pa.ChunkedArray):
        scores = pc.cast(scores, pa.float64()).to_numpy(zero_copy_only=False)
    return np.array(scores, dtype=np.float64, copy=True)


def is_missing(scores: Scores) -> np.ndarray:
    """True where a score is missing: null or NaN."""
    return np.isnan(as_float64(scores))


def score_order(scores: Scores, higher_is_better: bool) -> np.ndarray:
    """Order keys (uint64) that sort like the scores, best first; missing scores get `MISSING`."""
    values = as_float64(scores)
    missing = np.isnan(values)
    values[missing] = 0.0  # a signalling NaN would raise "invalid" below; its key is MISSING anyway
    if higher_is_better:
        values = -values
    values += 0.0  # -0.0 + 0.0 is 0.0: the two zeros get one key
    bits = values.view(np.uint64)
    order = np.where(bits & _SIGN, ~bits, bits | _SIGN)
    order[missing] = MISSING
    return order


def score_from_order(order: int, higher_is_better: bool) -> float | None:
    """The score of an order key (None for `MISSING`)."""
    if order == int(MISSING):
        return None
    bits = np.uint64(order)
    raw = bits & ~_SIGN if bits & _SIGN else ~bits
    value = float(np.array([raw], dtype=np.uint64).view(np.float64)[0])
    return -value if higher_is_better else value


def tie_hashes(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each id (big-endian, as rank keys store it): ties between equal scores are
    broken the same way on every run and for any number of workers."""
    raw = pc.cast(ids, pa.binary()).to_pylist()
    blob = b"".join([xxhash.xxh3_64_digest(v or b"", seed=seed) for v in raw])
    return np.frombuffer(blob, dtype=">u8")
