"""Word n-gram hashes of whole Arrow arrays: decontamination's overlap test and DSIR's features.

Text is normalised as lm-evaluation-harness's decontamination "janitor" does it: lowercased, punctuation
and symbols removed, split on whitespace. Each distinct token of a batch is hashed once with xxh3-64 and
n-gram hashes are combined from token hashes with numpy, so no Python call is made per n-gram.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from thresher.pipelines.text.hashing import MIX, U64, splitmix64


def tokens(texts: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Normalised words per text; null and empty texts have none."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = pc.utf8_lower(pc.fill_null(texts, ""))
    # Deleted, not replaced by a space: "don't" and "dont" are the same word, as in the janitor.
    texts = pc.replace_substring_regex(texts, r"[\p{P}\p{S}]+", "")
    return pc.utf8_split_whitespace(pc.utf8_trim_whitespace(texts))


def ngram_hashes(texts: pa.Array | pa.ChunkedArray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash of every word n-gram, index of its text), grouped by text in order. A text of
    fewer than `n` words has no n-gram."""
    words = tokens(texts)
    offsets = words.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    values = words.values.slice(0, int(offsets[-1])) if len(words) else words.values
    count = len(values) - n + 1
    if count <= 0:
        return np.zeros(0, U64), np.zeros(0, np.int64)
    encoded = pc.dictionary_encode(values)
    distinct = pc.cast(encoded.dictionary, pa.binary()).to_pylist()
    unique = np.fromiter((xxhash.xxh3_64_intdigest(w) for w in distinct), U64, len(distinct))
    token = unique[encoded.indices.to_numpy()]
    # The n-gram starting at every token, from shifted slices; windows that cross into the next text are
    # then left out.
    h = np.zeros(count, U64)
    for j in range(n):
        h *= MIX
        h += token[j : j + count]
    lengths = np.diff(offsets)
    doc = np.repeat(np.arange(len(lengths)), lengths)[:count]
    left = np.repeat(offsets[1:], lengths)[:count] - np.arange(count)  # tokens from here to text end
    keep = left >= n
    return splitmix64(h[keep]), doc[keep]
