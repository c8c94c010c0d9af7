"""64-bit mixing for hashes combined with numpy (word n-grams, MinHash shingles and bands)."""

from __future__ import annotations

import numpy as np

U64 = np.uint64
MIX = U64(0x9E3779B97F4A7C15)  # odd: multiplying by it is a bijection mod 2^64


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Stafford's mix13 finalizer: an avalanching bijection on uint64."""
    x = x ^ (x >> U64(30))
    x = x * U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> U64(27))
    x = x * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))
