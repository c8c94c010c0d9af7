"""Per-task sorted runs on disk, and the exact k-th element of their union without loading them.

A task sorts what it saw and saves it as a run: one `.npy` array, or several runs (one per group) one
after another in one file with `runs_index(path)` naming each run's group and length. A later task opens
the runs memory-mapped and asks for the element of rank k in their merged order; `kth_smallest` answers
exactly and reads only a few pages of each run, so memory stays O(runs), whatever the rows.

Why not a KLL sketch (datasketches): its merge is randomised and its error bound only probabilistic, so a
cutoff taken from it would change from run to run. Every m-th element of each sorted run is a
deterministic summary whose rank error is known exactly (under m per run), which brackets rank k between
two sample values; only the elements between them are read and sorted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import atomic_open, write_json

SAMPLE_EVERY = 1024


def save_run(path: Path, values: np.ndarray) -> None:
    """Save `values` sorted, as one run."""
    with atomic_open(path, "wb") as f:
        np.save(f, np.sort(values), allow_pickle=False)


def open_run(path: Path) -> np.ndarray:
    # Memory-mapped: a reader touches only the pages its binary searches and slices need.
    return np.load(storage.local_file(path), mmap_mode="r", allow_pickle=False)


def runs_index(path: Path) -> Path:
    """The file beside a grouped runs file that names each run's group and length."""
    return path.with_suffix(".groups.json")


def save_group_runs(path: Path, values: np.ndarray, groups: Sequence[str | None] | None) -> None:
    """Save `values` as one sorted run per group (groups in sorted order), or one run when `groups` is
    None. A value whose group is None belongs to no run. Writes `path` and `runs_index(path)`."""
    if groups is None:
        ordered, index = np.sort(values), [[None, len(values)]]
    else:
        labels = np.asarray(groups, dtype=object)
        present = np.array([g is not None for g in labels], dtype=bool)
        names, codes = np.unique(labels[present].astype(str), return_inverse=True)
        kept = values[present]
        ordered = kept[np.lexsort((kept, codes))]
        counts = np.bincount(codes, minlength=len(names))
        index = [[str(n), int(c)] for n, c in zip(names, counts, strict=True)]
    with atomic_open(path, "wb") as f:
        np.save(f, ordered, allow_pickle=False)
    write_json(runs_index(path), index)


def load_group_runs(path: Path) -> dict[str | None, np.ndarray]:
    """Group -> its sorted run (memory-mapped); the key None holds the one run of an ungrouped file."""
    values = open_run(path)
    runs: dict[str | None, np.ndarray] = {}
    start = 0
    for name, count in json.loads(runs_index(path).read_text(encoding="utf-8")):
        runs[name] = values[start : start + count]
        start += count
    return runs


def kth_smallest(runs: Sequence[np.ndarray], k: int, sample_every: int = SAMPLE_EVERY) -> np.generic:
    """The element at 0-based rank `k` in the merged order of sorted runs, exactly.

    With j samples (every m-th element) of a run <= x, between j*m and (j+1)*m - 1 of its elements are
    <= x. Summed over runs, that brackets rank k between two sample values; only the elements between
    them are read and sorted.
    """
    total = sum(len(r) for r in runs)
    if not 0 <= k < total:
        raise ValueError(f"rank {k} outside 0..{total - 1}")
    m = sample_every
    samples = [np.array(r[m - 1 :: m]) for r in runs]
    merged = np.sort(np.concatenate(samples))

    def bounds(x: np.generic) -> tuple[int, int]:
        low = high = 0
        for r, sample in zip(runs, samples, strict=True):
            j = int(np.searchsorted(sample, x, side="right"))
            low += j * m
            high += min(len(r), (j + 1) * m - 1)
        return low, high

    # lo: the largest sample with surely at most k elements <= it, so the answer lies above it.
    # hi: the smallest sample with surely more than k elements <= it, so the answer is <= it.
    lo = _last_true(merged, lambda x: bounds(x)[1] <= k)
    hi = _first_true(merged, lambda x: bounds(x)[0] > k)
    below = 0
    parts = []
    for r in runs:
        start = int(np.searchsorted(r, merged[lo], side="right")) if lo is not None else 0
        stop = int(np.searchsorted(r, merged[hi], side="right")) if hi is not None else len(r)
        below += start
        parts.append(np.array(r[start:stop]))
    candidates = np.sort(np.concatenate(parts))
    return candidates[k - below]


def _last_true(values: np.ndarray, test: Callable[[np.generic], bool]) -> int | None:
    """Index of the last value for which a monotone (true...true false...false) test holds."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if test(values[mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo > 0 else None


def _first_true(values: np.ndarray, test: Callable[[np.generic], bool]) -> int | None:
    """Index of the first value for which a monotone (false...false true...true) test holds."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if test(values[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo if lo < len(values) else None
