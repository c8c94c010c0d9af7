"""Verification of MinHash candidate clusters: exact Jaccard of shingle sets, or the signature estimate.

LSH and connected components over-merge: a chain of candidates can join documents that are far apart,
and the estimate from 128 permutations lets pairs near 0.75 pass at 0.8. Exact verification recomputes
the shingle sets of the clustered documents only, with the same normalisation and shingle hashes the
signatures were built from, so "exact" means exact over the very sets the MinHash estimates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import pyarrow as pa

from thresher.pipelines.stages.dedup.signatures import Shingling, shingle_hashes, token_hashes

VerifyMode = Literal["exact", "exact-any", "estimate", "none"]


def shingle_sets(texts: pa.Array, shingling: Shingling) -> list[np.ndarray]:
    """Sorted distinct uint32 shingle hashes per document: the sets its MinHash signature summarises."""
    tokens, offsets = token_hashes(texts, shingling)
    hashes, doc = shingle_hashes(tokens, offsets, shingling.ngram)
    bounds = np.searchsorted(doc, np.arange(len(texts) + 1))
    return [np.unique(hashes[bounds[i] : bounds[i + 1]]) for i in range(len(texts))]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted sets of distinct values; two empty sets are not similar."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - common
    return common / union if union else 0.0


def verify_clusters(
    order: np.ndarray,
    labels: np.ndarray,
    similarity: Callable[[int, int], float],
    threshold: float,
    any_member: bool = False,
    split: bool = True,
    max_clusters: int | None = None,
) -> tuple[np.ndarray, int]:
    """(head of every node, comparisons made); a node's head is the keeper it is a duplicate of, or itself.

    `order` lists the nodes by (component, preference, doc), so a component's first node is its keeper.
    Members are taken in that order; each joins the first cluster of its component it reaches `threshold`
    with: against the cluster's keeper, or with `any_member` against any member the cluster holds so
    far (a chain A~B~C joins C through B). A member that joins none is kept; with `split` it starts a new
    cluster that later members may join, so a component split by verification keeps a keeper per part.
    Without `split` only the component's keeper is tried, as the signature estimate always did.

    `max_clusters` bounds how many of its component's clusters a member tries (the first ones, the
    keeper's first). Without it a giant component costs members x clusters comparisons: at a million
    prose documents, candidates chained through shared boilerplate sentences into one component where
    7.4 million comparisons took a minute in one task. A member past the bound that joins none is kept.
    """
    head = np.arange(len(order), dtype=np.int64)
    comparisons = 0
    clusters: list[list[int]] = []
    previous = -1
    for node in order.tolist():
        label = int(labels[node])
        if label != previous:
            previous, clusters = label, [[node]]
            continue
        joined = False
        tried = clusters if split else clusters[:1]
        for members in tried if max_clusters is None else tried[:max_clusters]:
            for candidate in members if any_member else members[:1]:
                comparisons += 1
                if similarity(node, candidate) >= threshold:
                    head[node] = members[0]
                    members.append(node)
                    joined = True
                    break
            if joined:
                break
        if not joined and split:
            clusters.append([node])
    return head, comparisons
