"""Percentile buckets over a whole shard set (cc_net's head/middle/tail), exact and deterministic.

Each score task saves its shard's finite scores sorted (a "run", one float64 per document). The cutoff
task finds exact percentiles over the union of the runs without loading them: runs are memory-mapped and
the k-th smallest value is found by binary search over the float64 bit patterns, counting with
`searchsorted` in every run. Memory stays O(shards), the answer is exactly `numpy.percentile` (linear
method) of all scores, and it does not depend on task order, unlike a randomised sketch such as KLL.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from thresher.pipelines.atomic import atomic_open, write_json
from thresher.pipelines.errors import ThresherError

_SIGN = 1 << 63
_MASK = (1 << 64) - 1


class BucketCutoffs(BaseModel):
    """The cutoff file: written by a run that computed the cutoffs, read by `--cutoffs-file` later."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(description="The score column the cutoffs apply to.")
    buckets: list[str] = Field(description="Bucket names, lowest score first.")
    percentiles: list[float] = Field(description="Percentiles the cutoffs were taken at.")
    cutoffs: list[float] = Field(
        description="Score boundaries: bucket i holds cutoffs[i-1] <= score < cutoffs[i]."
    )
    documents: int = Field(description="Scored documents the cutoffs were computed from.")

    def write(self, path: Path) -> None:
        write_json(path, self.model_dump(mode="json"))

    @classmethod
    def read(cls, path: Path, column: str, buckets: Sequence[str]) -> BucketCutoffs:
        try:
            cutoffs = cls.model_validate_json(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise ThresherError(f"--cutoffs-file {path}: not a thresher cutoff file ({first})") from None
        if cutoffs.column != column or list(cutoffs.buckets) != list(buckets):
            raise ThresherError(
                f"--cutoffs-file {path}: cutoffs for {cutoffs.column} buckets {','.join(cutoffs.buckets)}, "
                f"not {column} buckets {','.join(buckets)}"
            )
        return cutoffs


def save_run(path: Path, scores: np.ndarray) -> None:
    """Save the finite scores of one shard, sorted, for `exact_percentiles`."""
    run = np.sort(scores[np.isfinite(scores)].astype(np.float64))
    with atomic_open(path, "wb") as f:
        np.save(f, run, allow_pickle=False)


def load_run(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _key(value: float) -> int:
    """Map a float64 to an unsigned integer with the same order (negative floats reversed below 0)."""
    bits = struct.unpack("<Q", struct.pack("<d", value))[0]
    return (~bits & _MASK) if bits & _SIGN else bits | _SIGN


def _value(key: int) -> float:
    bits = key & ~_SIGN if key & _SIGN else ~key & _MASK
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def kth_smallest(runs: Sequence[np.ndarray], k: int) -> float:
    """The k-th smallest (0-based) value of the union of sorted runs."""
    present = [r for r in runs if len(r)]
    lo = min(_key(float(r[0])) for r in present)
    hi = max(_key(float(r[-1])) for r in present)
    # Smallest key whose value has more than k scores at or below it: that value is the k-th score.
    while lo < hi:
        mid = (lo + hi) // 2
        value = _value(mid)
        if sum(int(np.searchsorted(r, value, side="right")) for r in present) > k:
            hi = mid
        else:
            lo = mid + 1
    return _value(lo)


def exact_percentiles(runs: Sequence[np.ndarray], percentiles: Sequence[float]) -> list[float]:
    """`numpy.percentile(all_scores, percentiles)` (linear interpolation) over the union of the runs."""
    n = sum(len(r) for r in runs)
    if n == 0:
        raise ThresherError("no document has a score, so there are no percentiles to cut at")
    out = []
    for p in percentiles:
        h = (n - 1) * (p / 100.0)
        below = int(np.floor(h))
        t = h - below
        a = kth_smallest(runs, below)
        if t == 0:
            out.append(a)
            continue
        b = kth_smallest(runs, below + 1)
        # numpy's lerp, including its switch at t >= 0.5, so the result matches it to the last bit.
        out.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)
    return out


def assign_buckets(scores: np.ndarray, cutoffs: Sequence[float], names: Sequence[str]) -> pa.Array:
    """Bucket name per score (`score < cutoffs[0]` is the first bucket); null where the score is NaN."""
    index = np.searchsorted(np.asarray(cutoffs, np.float64), scores, side="right")
    missing = np.isnan(scores)
    labels = np.asarray(names, dtype=object)[np.minimum(index, len(names) - 1)]
    return pa.array(labels, pa.string(), mask=missing)
