"""Scoring a near-dedup run against planted truth: which documents ended in the same cluster, and
precision/recall of duplicate pairs against exact Jaccard. Used by the tests and bench/dedup.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq


def clusters_of(output: Path, cluster_column: str = "minhash_cluster") -> dict[str, str]:
    """Document id -> cluster id, for every document a dedup stage put in a cluster (kept or dropped)."""
    kept = pq.read_table(output, columns=["id", cluster_column])
    found = {i: c for i, c in zip(kept["id"].to_pylist(), kept[cluster_column].to_pylist(), strict=True) if c}
    dropped = pq.read_table(output / "_dropped", columns=["id", "detail"])
    found.update(zip(dropped["id"].to_pylist(), dropped["detail"].to_pylist(), strict=True))
    return found


@dataclass(frozen=True)
class PairScores:
    precision: float
    recall: float
    predicted: int
    true: int

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def score_pairs(
    output: Path, truth_pairs: list[tuple[str, str]], jaccard: Callable[[str, str], float], threshold: float
) -> PairScores:
    """Precision: share of (dropped, keeper) pairs whose exact Jaccard is >= threshold. Recall: share of
    true pairs (exact Jaccard >= threshold) whose two documents share a cluster."""
    cluster = clusters_of(output)
    dropped = pq.read_table(output / "_dropped", columns=["id", "detail"]).to_pylist()
    predicted = [(d["id"], d["detail"]) for d in dropped]
    correct = sum(jaccard(a, b) >= threshold for a, b in predicted)
    found = sum(a in cluster and cluster.get(a) == cluster.get(b) for a, b in truth_pairs)
    return PairScores(
        precision=correct / len(predicted) if predicted else 1.0,
        recall=found / len(truth_pairs) if truth_pairs else 1.0,
        predicted=len(predicted),
        true=len(truth_pairs),
    )
