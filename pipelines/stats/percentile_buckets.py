"""Percentile buckets over a whole shard set (cc_net's head/middle/tail), exact and deterministic, for
the whole set or per group (cc_net cuts each language at its own percentiles).

Each score task saves its shard's finite scores sorted within each group (a "run" per group, one float64
per document, the runs one after another in one file, their groups and lengths beside it). The cutoff
task finds exact percentiles over the union of a group's runs without loading them: runs are
memory-mapped and the k-th smallest value is found by binary search over the float64 bit patterns,
counting with `searchsorted` in every run. Memory stays O(shards x groups), the answer is exactly
`numpy.percentile` (linear method) of the group's scores, and it does not depend on task order, unlike a
randomised sketch such as KLL.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from thresher.pipelines.engine.atomic import atomic_open, write_json
from thresher.pipelines.engine.errors import ThresherError

_SIGN = 1 << 63
_MASK = (1 << 64) - 1


class BucketCutoffs(BaseModel):
    """The cutoff file: written by a run that computed the cutoffs, read by `--cutoffs-file` later."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(description="The score column the cutoffs apply to.")
    buckets: list[str] = Field(description="Bucket names, lowest score first.")
    percentiles: list[float] = Field(description="Percentiles the cutoffs were taken at.")
    cutoffs: list[float] = Field(
        [],
        description="Score boundaries over the whole set: bucket i holds cutoffs[i-1] <= score < "
        "cutoffs[i]. Empty when the cutoffs are per group.",
    )
    documents: int = Field(description="Scored documents the cutoffs were computed from.")
    group_column: str | None = Field(
        None, description="The column whose values have cutoffs of their own; null: one set for all."
    )
    groups: dict[str, list[float]] = Field(
        {}, description="Per group value, its score boundaries (as `cutoffs`)."
    )
    group_documents: dict[str, int] = Field({}, description="Per group value, its scored documents.")

    def write(self, path: Path) -> None:
        write_json(path, self.model_dump(mode="json"))

    @classmethod
    def read(
        cls, path: Path, column: str, buckets: Sequence[str], group_column: str | None = None
    ) -> BucketCutoffs:
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
        if cutoffs.group_column != group_column:
            have = f"per {cutoffs.group_column}" if cutoffs.group_column else "for the whole set"
            want = f"--group-column {cutoffs.group_column}" if cutoffs.group_column else "no --group-column"
            raise ThresherError(f"--cutoffs-file {path}: cutoffs {have}; run with {want}")
        return cutoffs


def runs_index(path: Path) -> Path:
    """The file beside a runs file that names each run's group and length."""
    return path.with_suffix(".groups.json")


def save_runs(path: Path, scores: np.ndarray, groups: Sequence[str | None] | None = None) -> None:
    """Save one shard's finite scores for `exact_percentiles`: sorted, or with `groups` (a value per
    score) sorted within each group, the groups in sorted order. A score whose group is None has no
    bucket, so it is left out. Writes `path` (the runs, one after another) and `runs_index(path)`."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    if groups is None:
        values, index = np.sort(scores[finite]), [[None, int(finite.sum())]]
    else:
        labels = np.asarray(groups, dtype=object)
        keep = finite & np.array([g is not None for g in labels], dtype=bool)
        names, codes = np.unique(labels[keep].astype(str), return_inverse=True)
        kept = scores[keep]
        values = kept[np.lexsort((kept, codes))]
        counts = np.bincount(codes, minlength=len(names))
        index = [[str(n), int(c)] for n, c in zip(names, counts, strict=True)]
    with atomic_open(path, "wb") as f:
        np.save(f, values, allow_pickle=False)
    write_json(runs_index(path), index)


def load_runs(path: Path) -> dict[str | None, np.ndarray]:
    """Group -> its sorted run (memory-mapped); the key None holds the one run of an ungrouped shard."""
    values = np.load(path, mmap_mode="r", allow_pickle=False)
    runs: dict[str | None, np.ndarray] = {}
    start = 0
    for name, count in json.loads(runs_index(path).read_text(encoding="utf-8")):
        runs[name] = values[start : start + count]
        start += count
    return runs


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


def assign_group_buckets(
    scores: np.ndarray,
    groups: Sequence[str | None],
    cutoffs: dict[str, list[float]],
    names: Sequence[str],
) -> pa.Array:
    """Bucket name per score, cut at its own group's cutoffs; null where the score is NaN, the group is
    None, or the group has no cutoffs (cc_net's "all" bucket: a language it has no cutoffs for)."""
    labels = np.full(len(scores), None, dtype=object)
    groups = np.asarray(groups, dtype=object)
    present = np.array([g is not None for g in groups], dtype=bool)
    for name in sorted(set(groups[present].tolist())):
        if name not in cutoffs:
            continue
        rows = present & (groups == name)
        chosen = assign_buckets(scores[rows], cutoffs[name], names)
        labels[rows] = np.asarray(chosen.to_pylist(), dtype=object)
    return pa.array(labels.tolist(), pa.string())
