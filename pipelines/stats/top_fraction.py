"""One exact cutoff for "keep the best fraction of a whole shard set", without holding the set in memory.

Every row gets a 28-byte rank key that sorts best-first as plain bytes: the score's order key
(`order.score_order`, negated when higher is better; missing scores last), then a seeded hash of the
row's id (so ties are broken the same way on every run, by any number of workers), then shard and row
number (so even equal ids have one order). A map phase saves each shard's keys as a sorted run; one reduce
task finds the key of rank k exactly (`runs.kth_smallest`); the filtering map keeps rows whose key is <=
that key. Missing scores follow the rule of `thresher.pipelines.stats`: k = round(fraction * rows with a
score), and a row with a missing score is never kept (its key sorts after every cutoff).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from thresher.pipelines.stats.order import MISSING, Scores, score_from_order, score_order, tie_hashes
from thresher.pipelines.stats.runs import SAMPLE_EVERY, kth_smallest

KEY_FIELDS = np.dtype([("score", ">u8"), ("tie", ">u8"), ("shard", ">u4"), ("row", ">u8")])
KEY_DTYPE = np.dtype(f"S{KEY_FIELDS.itemsize}")
# The smallest key a row with a missing score can have: everything from it on is unranked.
_FIRST_MISSING = np.array(int(MISSING).to_bytes(8, "big"), KEY_DTYPE)


def keep_count(fraction: float, rows: int) -> int:
    """Rows to keep: fraction * rows rounded half up (so 0.5 of 3 rows keeps 2)."""
    return min(rows, int(fraction * rows + 0.5))


def rank_keys(
    scores: Scores,
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


def key_score(key: bytes, higher_is_better: bool) -> float | None:
    """The score a rank key was made from (None when it was missing)."""
    return score_from_order(decode_key(key)["score"], higher_is_better)


def ranked(run: np.ndarray) -> np.ndarray:
    """The keys of a sorted run that have a score (missing ones sort last, so a prefix)."""
    return run[: int(np.searchsorted(run, _FIRST_MISSING, side="left"))]


def key_at_rank(runs: Sequence[np.ndarray], rank: int, sample_every: int = SAMPLE_EVERY) -> bytes:
    """The key at 0-based `rank` in the merged order of sorted key runs, exactly."""
    # numpy drops trailing NUL bytes of an S scalar; the key is fixed-width.
    return bytes(kth_smallest(runs, rank, sample_every)).ljust(KEY_DTYPE.itemsize, b"\0")


@dataclass(frozen=True)
class TopCutoff:
    """The cutoff over sorted key runs: `keep` rows of the `scored` ones, at or before `key`."""

    rows: int  # keys in the runs, missing scores included
    scored: int  # keys with a score: the population the fraction is of
    keep: int
    key: bytes | None  # None: keep nothing
    score: float | None

    def keeps(self, keys: np.ndarray) -> np.ndarray:
        """Which of these rank keys are in the top fraction."""
        if self.key is None:
            return np.zeros(len(keys), dtype=bool)
        return keys <= np.array(self.key, KEY_DTYPE)


def top_cutoff(runs: Sequence[np.ndarray], fraction: float, higher_is_better: bool) -> TopCutoff:
    """The exact cutoff that keeps round(fraction * scored rows) of the rows in `runs`."""
    scored_runs = [ranked(r) for r in runs]
    scored = sum(len(r) for r in scored_runs)
    keep = keep_count(fraction, scored)
    key = key_at_rank(scored_runs, keep - 1) if keep else None
    score = key_score(key, higher_is_better) if key else None
    return TopCutoff(sum(len(r) for r in runs), scored, keep, key, score)


def score_quantiles(
    runs: Sequence[np.ndarray], quantiles: Sequence[float], higher_is_better: bool
) -> dict[str, float | None]:
    """Per quantile q, the score below which a share q of the scored rows lies (nearest rank)."""
    scored_runs = [ranked(r) for r in runs]
    n = sum(len(r) for r in scored_runs)
    out: dict[str, float | None] = {}
    for q in quantiles if n else ():
        rank = round((1 - q) * (n - 1)) if higher_is_better else round(q * (n - 1))
        out[str(q)] = key_score(key_at_rank(scored_runs, rank), higher_is_better)
    return out
