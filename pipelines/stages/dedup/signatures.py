"""MinHash signatures for whole record batches, with datasketch's permutation semantics.

Shingles are hashed without a Python call per shingle: each distinct token of a batch is hashed once
(xxh3-64 of its UTF-8, or a mix of the code point for character shingles), and n-gram hashes are
combined from token hashes with numpy. The 32-bit shingle hashes then go through exactly what
datasketch's `MinHash` (scheme "affine32") does to a hashed value: the MurmurHash3 finalizer, then
`a * h + b` mod 2^32 with datasketch's own seeded permutations, minimum per permutation. A test checks
our signatures against `datasketch.MinHash` fed with the same shingle hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from thresher.pipelines.text.hashing import MIX, splitmix64
from thresher.pipelines.text.normalize import normalise

U32 = np.uint32
U64 = np.uint64
MAX_HASH = np.iinfo(np.uint32).max
# Shingles permuted per numpy step: the (permutations x shingles) block stays 4 MB at 128 permutations
# (the fastest size measured), and a 10 MB document costs time, not memory.
CHUNK_SHINGLES = 8192


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix datasketch applies before its permutations."""
    h = h ^ (h >> U32(16))
    h = h * U32(0x85EBCA6B)
    h = h ^ (h >> U32(13))
    h = h * U32(0xC2B2AE35)
    return h ^ (h >> U32(16))


@cache
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a, b) for this seed: odd `a`, any `b`, drawn as its
    `MinHash._init_permutations` draws them. Drawn here rather than by building a `datasketch.MinHash`,
    whose import pulls in scipy: 35 MB and half a second in every worker process. A test checks the
    signatures against datasketch's."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=U32) * U32(2) + U32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=U32)
    return a, b


@dataclass(frozen=True)
class Shingling:
    ngram: int = 5
    unit: str = "word"  # "word" or "char"
    lowercase: bool = True
    strip_punctuation: bool = False


def _normalised(texts: pa.Array, shingling: Shingling) -> pa.Array:
    texts = normalise(texts, shingling.lowercase)
    if shingling.strip_punctuation:
        texts = pc.utf8_trim_whitespace(pc.replace_substring_regex(texts, r"[\p{P}\p{S}]+", " "))
        texts = normalise(texts, lowercase=False)
    return texts


def token_hashes(texts: pa.Array, shingling: Shingling) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash per token, offsets): tokens of document i are hashes[offsets[i]:offsets[i+1]]."""
    if shingling.unit == "word" and not shingling.strip_punctuation:
        # Splitting on whitespace runs gives the tokens `normalise` would leave, without its join and a
        # second split (half the time of a batch); trimming first leaves no empty edge token.
        norm = pc.utf8_trim_whitespace(pc.utf8_lower(texts) if shingling.lowercase else texts)
        norm = pc.fill_null(norm, "")
    else:
        norm = _normalised(texts, shingling)
    # Empty text has no tokens (splitting "" would give one empty token): make it null first.
    norm = pc.if_else(pc.equal(norm, ""), pa.scalar(None, norm.type), norm)
    if shingling.unit == "word":
        tokens = pc.utf8_split_whitespace(norm)
        offsets = tokens.offsets.to_numpy().astype(np.int64)
        values = tokens.values
        if len(values) == 0:
            return np.zeros(0, U64), offsets - offsets[0]
        encoded = pc.dictionary_encode(values)
        # One hash per distinct token of the batch: word frequencies are Zipfian, so far fewer calls than
        # tokens.
        words = pc.cast(encoded.dictionary, pa.binary()).to_pylist()
        unique = np.fromiter((xxhash.xxh3_64_intdigest(w) for w in words), U64, len(words))
        return unique[encoded.indices.to_numpy()], offsets - offsets[0]
    # Character shingles (CJK and other scripts without spaces): one token per code point.
    codes = [np.frombuffer((t or "").encode("utf-32-le"), dtype=U32) for t in norm.to_pylist()]
    lengths = np.array([len(c) for c in codes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.concatenate(codes) if codes else np.zeros(0, U32)
    return splitmix64(flat.astype(U64) + MIX), offsets


def _combine(tokens: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    h = np.zeros(len(starts), U64)
    for j in range(width):
        h = h * MIX + tokens[starts + j]
    return (splitmix64(h) >> U64(32)).astype(U32)


def shingle_hashes(tokens: np.ndarray, offsets: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint32 hash per shingle, index of its document), grouped by document in order.

    A document shorter than one n-gram gives a single shingle of all its tokens; an empty one gives none.
    """
    lengths = np.diff(offsets)
    windows = np.where(lengths >= ngram, lengths - ngram + 1, (lengths > 0).astype(np.int64))
    doc = np.repeat(np.arange(len(lengths)), windows)
    hashes = np.empty(len(doc), U32)
    full = np.repeat(lengths >= ngram, windows)
    count = len(tokens) - ngram + 1
    if count > 0:
        # The n-gram starting at every token, from shifted slices of the token array (no gathers); the
        # windows that run past their document's end are then left out.
        h = np.zeros(count, U64)
        for j in range(ngram):
            h *= MIX
            h += tokens[j : j + count]
        left = np.repeat(offsets[1:], lengths)[:count] - np.arange(count)  # tokens from here to doc end
        hashes[full] = (splitmix64(h[left >= ngram]) >> U64(32)).astype(U32)
    if not full.all():
        starts = np.repeat(offsets[:-1], windows)
        for i in np.nonzero(~full)[0]:  # short documents: rare, so a loop is fine
            length = int(lengths[doc[i]])
            hashes[i] = _combine(tokens, starts[i : i + 1], length)[0]
    return hashes, doc


def signatures(texts: pa.Array, shingling: Shingling, num_perm: int, seed: int) -> np.ndarray:
    """(documents x num_perm) uint32 MinHash signatures; rows of documents without shingles stay at the
    maximum value, which the LSH phase leaves out."""
    a, b = permutations(num_perm, seed)
    tokens, offsets = token_hashes(texts, shingling)
    hashes, doc = shingle_hashes(tokens, offsets, shingling.ngram)
    # Permutation-major: each permutation's row of a block is one contiguous run that `reduceat` sweeps,
    # 4x faster than shingle-major rows of `num_perm` values.
    sig = np.full((num_perm, len(texts)), MAX_HASH, dtype=U32)
    block = np.empty((num_perm, CHUNK_SHINGLES), U32)
    for start in range(0, len(hashes), CHUNK_SHINGLES):
        h = fmix32(hashes[start : start + CHUNK_SHINGLES])
        d = doc[start : start + CHUNK_SHINGLES]
        permuted = block[:, : len(h)]
        np.multiply(a[:, None], h[None, :], out=permuted)
        permuted += b[:, None]
        seg = np.concatenate([[0], np.nonzero(np.diff(d))[0] + 1])
        docs = d[seg]
        sig[:, docs] = np.minimum(sig[:, docs], np.minimum.reduceat(permuted, seg, axis=1))
    return np.ascontiguousarray(sig.T)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents x bands) uint64 keys: documents share a key in a band iff they agree on its rows
    (up to a 2^-64 collision)."""
    keys = np.empty((sig.shape[0], bands), U64)
    for band in range(bands):
        h = np.full(sig.shape[0], U64(band + 1))
        for j in range(band * rows, (band + 1) * rows):
            h = h * MIX + sig[:, j].astype(U64)
        keys[:, band] = splitmix64(h)
    return keys


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Chance that two documents of this Jaccard similarity share at least one band (the S-curve)."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def choose_bands(threshold: float, num_perm: int, false_negative_weight: float = 0.5) -> tuple[int, int]:
    """datasketch's choice of (bands, rows): least weighted false-positive + false-negative mass, the
    areas under and over the S-curve on either side of the threshold, searched over the same grid in the
    same order (`MinHashLSH`'s `_optimal_param`). Integrated here with Gauss-Legendre nodes, exact for
    the S-curve (a polynomial of degree bands x rows <= num_perm), instead of importing datasketch's LSH,
    which pulls in scipy for `quad`; a test checks the choices agree."""
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    below = threshold * (nodes + 1) / 2  # nodes mapped onto [0, threshold] and [threshold, 1]
    above = threshold + (1 - threshold) * (nodes + 1) / 2
    shapes = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    b = np.array([s[0] for s in shapes], float)[:, None]
    r = np.array([s[1] for s in shapes], float)[:, None]
    false_positive = (1 - (1 - below**r) ** b) @ weights * threshold / 2
    false_negative = (1 - (1 - above**r) ** b) @ weights
    false_negative = (1 - threshold) / 2 * (weights.sum() - false_negative)
    error = false_positive * (1 - false_negative_weight) + false_negative * false_negative_weight
    return shapes[int(np.argmin(error))]
