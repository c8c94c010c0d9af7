"""Percentile buckets over a whole shard set (cc_net's head/middle/tail), exact and deterministic, for
the whole set or per group (cc_net cuts each language at its own percentiles).

Each score task saves its shard's scores sorted within each group (`save_runs`: a run per group, one
float64 per document, in one file with its index beside it). The cutoff task finds exact percentiles over
the union of a group's runs without loading them (`runs.kth_smallest` over memory-mapped runs). Memory
stays O(shards x groups), the answer is `numpy.percentile` (linear method) of the group's scores, and it
does not depend on task order, unlike a randomised sketch such as KLL. Missing scores follow the rule of
`thresher.pipelines.stats`: they are left out of the percentiles and get a null bucket; +-inf are scores
like any other (the first or last bucket).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import write_json
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.stats.order import is_missing
from thresher.pipelines.stats.runs import kth_smallest, save_group_runs


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
            cutoffs = cls.model_validate_json(storage.location(path).read_bytes())
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


def save_runs(path: Path, scores: np.ndarray, groups: Sequence[str | None] | None = None) -> None:
    """Save one shard's scores for `exact_percentiles`: sorted, or with `groups` (a value per score)
    sorted within each group. Missing scores are left out (they have no percentile), as is a score whose
    group is None (it has no bucket). Writes `path` and `runs.runs_index(path)`."""
    values = np.asarray(scores, dtype=np.float64)
    scored = ~is_missing(values)
    kept = None if groups is None else [g for g, s in zip(groups, scored, strict=True) if s]
    # + 0.0: -0.0 and 0.0 are one score, as in rank keys.
    save_group_runs(path, values[scored] + 0.0, kept)


def exact_percentiles(runs: Sequence[np.ndarray], percentiles: Sequence[float]) -> list[float]:
    """`numpy.percentile(all_scores, percentiles)` (linear interpolation) over the union of sorted runs
    of scores (as `save_runs` writes them)."""
    n = sum(len(r) for r in runs)
    if n == 0:
        raise ThresherError("no document has a score, so there are no percentiles to cut at")
    out = []
    for p in percentiles:
        h = (n - 1) * (p / 100.0)
        below = int(np.floor(h))
        t = h - below
        a = float(kth_smallest(runs, below))
        if t == 0:
            out.append(a)
            continue
        out.append(_lerp(a, float(kth_smallest(runs, below + 1)), t))
    return out


def _lerp(a: float, b: float, t: float) -> float:
    if a == b:
        return a
    if math.isinf(a) or math.isinf(b):
        # numpy gives NaN here (inf - inf); the limit is the infinite end, and between -inf and +inf
        # the nearer one.
        if math.isinf(a) and math.isinf(b):
            return b if t >= 0.5 else a
        return a if math.isinf(a) else b
    # numpy's lerp, including its switch at t >= 0.5, so the result matches it to the last bit.
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def assign_buckets(scores: np.ndarray, cutoffs: Sequence[float], names: Sequence[str]) -> pa.Array:
    """Bucket name per score (`score < cutoffs[0]` is the first bucket); null where the score is missing."""
    index = np.searchsorted(np.asarray(cutoffs, np.float64), scores, side="right")
    missing = is_missing(scores)
    labels = np.asarray(names, dtype=object)[np.minimum(index, len(names) - 1)]
    return pa.array(labels, pa.string(), mask=missing)


def assign_group_buckets(
    scores: np.ndarray,
    groups: Sequence[str | None],
    cutoffs: dict[str, list[float]],
    names: Sequence[str],
) -> pa.Array:
    """Bucket name per score, cut at its own group's cutoffs; null where the score is missing, the group is
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
