"""k-center greedy (farthest-point traversal): pick k points so that every point is close to one of them.

Start from a seeded random point; then, k-1 times, add the point farthest from its nearest chosen centre.
The covering radius (the largest distance from any point to its nearest centre) never grows, and it is at
most twice the best possible radius for k centres (Gonzalez 1985). MoDS uses it to pick a seed set of
instructions that covers the embedding space.

The points come as a list of blocks (one per shard), typically memory-mapped `.npy` files: the only
arrays of the whole set's length held in memory are the nearest-centre distances and the squared norms,
and each round streams the blocks once in chunks. Ties go to the lowest index, so the result depends
only on the points, their order and the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CHUNK_ROWS = 65_536


@dataclass
class KCenterResult:
    centers: np.ndarray  # int64 indices into the concatenated blocks, in the order they were picked
    radii: np.ndarray  # float64: radii[j] = covering radius with the first j+1 centres


def kcenter_greedy(
    blocks: Sequence[np.ndarray],
    k: int,
    *,
    seed: int = 0,
    first: int | None = None,
    chosen: Sequence[int] = (),
) -> KCenterResult:
    """Indices of k centres among the rows of `blocks` (each (n_i, d), same d), by farthest-point
    traversal from `first` (default: a row drawn with `seed`).

    `chosen` rows are centres already: the k new ones are the rows farthest from them (no random first
    centre then). MoDS's second pass uses this to cover what its seed set does not."""
    sizes = np.array([len(b) for b in blocks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    chosen = [int(c) for c in chosen]
    if any(not 0 <= c < n for c in chosen):
        raise ValueError(f"a chosen centre lies outside 0..{n - 1}")
    k = min(k, n - len(set(chosen)))
    if k < 1:
        return KCenterResult(np.zeros(0, np.int64), np.zeros(0, np.float64))
    if first is None and not chosen:
        first = int(np.random.default_rng(seed).integers(n))
    if first is not None and not 0 <= first < n:
        raise ValueError(f"first centre {first} outside 0..{n - 1}")
    sq_norms = np.empty(n, np.float32)
    for b, block in enumerate(blocks):
        for lo in range(0, len(block), CHUNK_ROWS):
            chunk = np.asarray(block[lo : lo + CHUNK_ROWS], dtype=np.float32)
            sq_norms[offsets[b] + lo : offsets[b] + lo + len(chunk)] = np.einsum("ij,ij->i", chunk, chunk)
    # Squared distance to the nearest centre; -1 marks the centres themselves, which np.minimum keeps
    # (so they are never picked again) and which never counts towards the radius.
    nearest = np.full(n, np.inf, dtype=np.float32)

    def add(center: int) -> None:
        nearest[center] = -1.0
        b = int(np.searchsorted(offsets, center, side="right") - 1)
        c = np.asarray(blocks[b][center - offsets[b]], dtype=np.float32)
        c_norm = float(c @ c)
        for b, block in enumerate(blocks):
            for lo in range(0, len(block), CHUNK_ROWS):
                chunk = np.asarray(block[lo : lo + CHUNK_ROWS], dtype=np.float32)
                at = slice(offsets[b] + lo, offsets[b] + lo + len(chunk))
                d2 = np.maximum(sq_norms[at] + c_norm - 2.0 * (chunk @ c), 0.0)
                np.minimum(nearest[at], d2, out=nearest[at])

    for c in chosen:
        add(c)
    centers = np.empty(k, np.int64)
    radii = np.empty(k, np.float64)
    center = int(np.argmax(nearest)) if first is None else first
    for j in range(k):
        centers[j] = center
        add(center)
        farthest = int(np.argmax(nearest))
        radii[j] = float(np.sqrt(max(float(nearest[farthest]), 0.0)))
        center = farthest
    return KCenterResult(centers, radii)


def covering_radius(points: np.ndarray, centers: np.ndarray) -> float:
    """The largest distance from any point to its nearest centre (in memory; for tests and reports)."""
    diff = points[:, None, :] - points[centers][None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).min(axis=1).max())
