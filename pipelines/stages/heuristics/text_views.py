"""Views of a batch of documents that the heuristic rules measure: words, lines, paragraphs, n-grams.

Each view is built once per batch, on first use, as flat Arrow/numpy arrays with the index of the document
each piece belongs to, so a rule is a few vectorised operations over the whole batch instead of a Python
loop over documents. Equal pieces (words, lines) are found through Arrow dictionary encoding, which gives
every distinct string in the batch one integer code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Punctuation trimmed from word edges before words are compared (Gopher compares normalised words):
# ASCII, then guillemets, curly quotes, ellipsis, dashes, inverted marks and the middle dot.
WORD_EDGE_PUNCTUATION = (
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    "\u00ab\u00bb\u2018\u2019\u201c\u201d\u201e\u2026\u2013\u2014\u00a1\u00bf\u00b7"
)
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio) for hash mixing


@dataclass
class Pieces:
    """Flat pieces of every document (words, lines, ...) and the document each one belongs to."""

    values: pa.Array
    doc: np.ndarray  # int64, non-decreasing

    @cached_property
    def codes(self) -> np.ndarray:
        """One integer per distinct string in the batch."""
        return pc.dictionary_encode(self.values).indices.to_numpy(zero_copy_only=False).astype(np.int64)

    @cached_property
    def lengths(self) -> np.ndarray:
        return pc.utf8_length(self.values).to_numpy(zero_copy_only=False).astype(np.int64)

    def per_doc(self, weights: np.ndarray | None, n_docs: int) -> np.ndarray:
        """Sum of `weights` (count of pieces, if None) per document."""
        return np.bincount(self.doc, weights=weights, minlength=n_docs)

    def matches(self, pattern: str) -> np.ndarray:
        return pc.match_substring_regex(self.values, pattern).to_numpy(zero_copy_only=False)

    @cached_property
    def repeated(self) -> np.ndarray:
        """True for each piece equal to an earlier piece of the same document."""
        if len(self.doc) == 0:
            return np.zeros(0, dtype=bool)
        key = self.doc * (int(self.codes.max()) + 1) + self.codes
        order = np.argsort(key, kind="stable")  # stable: the first occurrence comes first in its run
        sorted_key = key[order]
        repeat_sorted = np.zeros(len(key), dtype=bool)
        repeat_sorted[1:] = sorted_key[1:] == sorted_key[:-1]
        repeat = np.empty_like(repeat_sorted)
        repeat[order] = repeat_sorted
        return repeat


def _split(lists: pa.Array) -> Pieces:
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    doc = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    return Pieces(pc.list_flatten(lists), doc)


class TextBatch:
    """The documents of one record batch and the views the rules share."""

    def __init__(
        self, texts: pa.Array | pa.ChunkedArray, urls: pa.Array | pa.ChunkedArray | None = None
    ) -> None:
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        self.text = pc.fill_null(texts, "")
        self.n = len(texts)
        self.urls = urls
        self._keys: tuple[int, np.ndarray] | None = None  # the last n-gram keys built, and their n
        # The last n whose n-gram runs were built, and which word positions start an n-gram that occurs
        # at least twice in its document.
        self._repeated_starts: tuple[int, np.ndarray] | None = None

    @cached_property
    def words(self) -> Pieces:
        """Whitespace-separated words, as written."""
        # Splitting keeps an empty piece for leading or trailing whitespace (and for an empty text).
        return _drop_empty(_split(pc.utf8_split_whitespace(self.text)))

    @cached_property
    def n_words(self) -> np.ndarray:
        return self.words.per_doc(None, self.n).astype(np.int64)

    @cached_property
    def normalised_words(self) -> Pieces:
        """Words lowercased with punctuation trimmed from both ends; words that were only punctuation
        are dropped (as in Gopher's normalised word list)."""
        values = pc.utf8_trim(pc.utf8_lower(self.words.values), WORD_EDGE_PUNCTUATION)
        keep = pc.greater(pc.utf8_length(values), 0)
        doc = self.words.doc[keep.to_numpy(zero_copy_only=False)]
        return Pieces(values.filter(keep), doc)

    @cached_property
    def normalised_chars(self) -> np.ndarray:
        """Characters in each document's normalised words: the denominator of the n-gram rules."""
        words = self.normalised_words
        return words.per_doc(words.lengths.astype(np.float64), self.n)

    @cached_property
    def raw_lines(self) -> Pieces:
        """Every line as written, blank ones included (for rewriting a document line by line)."""
        return _split(pc.split_pattern(self.text, "\n"))

    @cached_property
    def lines(self) -> Pieces:
        """Non-empty lines, stripped of surrounding whitespace."""
        return _non_empty(self.raw_lines)

    @cached_property
    def paragraphs(self) -> Pieces:
        """Non-empty paragraphs (separated by blank lines), stripped."""
        return _non_empty(_split(pc.split_pattern_regex(self.text, r"\n[ \t\r\f\v]*\n")))

    @cached_property
    def chars(self) -> np.ndarray:
        return pc.utf8_length(self.text).to_numpy(zero_copy_only=False).astype(np.int64)

    def count(self, substring: str) -> np.ndarray:
        """Non-overlapping occurrences of `substring` in each document."""
        # As an RE2 pattern: RE2 skips to a rare literal with memchr, which made counting '#' or an
        # ellipsis ten times faster than Arrow's plain substring kernel on web text.
        pattern = re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", substring)
        return pc.count_substring_regex(self.text, pattern).to_numpy(zero_copy_only=False).astype(np.int64)

    def _ngram_keys(self, n: int) -> np.ndarray:
        """A 64-bit hash of the n-gram starting at each normalised word (and of its document), for every
        position but the last n-1. Equal n-grams of a document get equal keys; unequal ones collide with
        odds of about 2^-64 per pair. Built from the (n-1)-gram keys, so rising n costs one step each."""
        words = self.normalised_words
        if self._keys is None or self._keys[0] > n:
            self._keys = (0, words.doc.astype(np.uint64) + np.uint64(1))
        have, key = self._keys
        codes = words.codes.astype(np.uint64) + np.uint64(1)
        for j in range(have, n):
            # Slices, not gathers: the word at offset j of the n-gram starting at each position.
            key = key[: len(codes) - j] * _NGRAM_MULTIPLIER + codes[j:]
            key ^= key >> np.uint64(29)
        self._keys = (n, key)
        return key

    def ngram_runs(self, n: int) -> NgramRuns:
        """Word n-grams of the normalised words, grouped into runs of equal n-grams per document.

        Only repeated n-grams are for sure in it: n-grams that occur once may be left out. That is what
        the rules need (top and covered characters count repeats only), and it saves most of the work: an
        n-gram at position i that occurs twice has its (n-1)-grams at i and i+1 occurring twice too, so
        after the (n-1)-gram runs were built, only positions where both did are looked at."""
        words = self.normalised_words
        doc = words.doc
        if len(doc) < n:
            empty = np.zeros(0, dtype=np.int64)
            return NgramRuns(np.zeros(0, dtype=np.uint64), empty, empty, empty, n)
        key = self._ngram_keys(n)
        last = len(doc) - n + 1
        valid = doc[:last] == doc[n - 1 :]
        if self._repeated_starts is not None and self._repeated_starts[0] == n - 1:
            repeated = self._repeated_starts[1]
            valid &= repeated[:last] & repeated[1 : last + 1]
        starts = np.nonzero(valid)[0]
        key = key[starts]
        # Unstable sort: several times faster, and `repeat` finds each run's first occurrence by position.
        order = np.argsort(key, kind="quicksort")
        position = starts[order]
        chars = self._cumulative_chars[position + n] - self._cumulative_chars[position]
        runs = NgramRuns(key[order], doc[position], chars, position, n)
        repeated = np.zeros(len(doc) + 1, dtype=bool)  # one spare slot: `repeated[1 : last + 1]` above
        repeated[runs.position[runs.in_repeated_run]] = True
        self._repeated_starts = (n, repeated)
        return runs

    @cached_property
    def _cumulative_chars(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.normalised_words.lengths)])


@dataclass
class NgramRuns:
    """N-gram occurrences sorted by key, so equal n-grams of a document are adjacent (a run)."""

    key: np.ndarray
    doc: np.ndarray
    chars: np.ndarray  # characters in the n-gram's words
    position: np.ndarray  # flat index of the n-gram's first word in the normalised words
    n: int

    @cached_property
    def run_starts(self) -> np.ndarray:
        new_run = np.ones(len(self.key), dtype=bool)
        new_run[1:] = self.key[1:] != self.key[:-1]
        return np.nonzero(new_run)[0]

    @cached_property
    def in_repeated_run(self) -> np.ndarray:
        """True for every occurrence of an n-gram that occurs at least twice in its document."""
        lengths = np.diff(np.append(self.run_starts, len(self.key)))
        return np.repeat(lengths > 1, lengths)

    @cached_property
    def repeat(self) -> np.ndarray:
        """True for every occurrence after the first (by position) of its n-gram in its document."""
        if len(self.key) == 0:
            return np.zeros(0, dtype=bool)
        first = np.minimum.reduceat(self.position, self.run_starts)
        run_of = np.repeat(
            np.arange(len(self.run_starts)), np.diff(np.append(self.run_starts, len(self.key)))
        )
        return self.position != first[run_of]

    def top_chars(self, n_docs: int) -> np.ndarray:
        """Per document: characters covered by its most repeated n-gram (count * n-gram characters),
        0 when no n-gram occurs twice."""
        out = np.zeros(n_docs, dtype=np.float64)
        if len(self.key) == 0:
            return out
        run_start = self.run_starts
        counts = np.diff(np.append(run_start, len(self.key)))
        multi = counts > 1
        run_start, counts = run_start[multi], counts[multi]
        np.maximum.at(out, self.doc[run_start], counts * self.chars[run_start])
        return out

    def covered_chars(self, word_lengths: np.ndarray, n_docs: int, word_doc: np.ndarray) -> np.ndarray:
        """Per document: characters of the words covered by a repeated occurrence of some n-gram."""
        starts = self.position[self.repeat]
        if len(starts) == 0:
            return np.zeros(n_docs, dtype=np.float64)
        edge = np.zeros(len(word_lengths) + 1, dtype=np.int64)
        np.add.at(edge, starts, 1)
        np.add.at(edge, starts + self.n, -1)
        covered = np.cumsum(edge[:-1]) > 0
        return np.bincount(word_doc[covered], weights=word_lengths[covered], minlength=n_docs)


def _non_empty(pieces: Pieces) -> Pieces:
    """Pieces stripped of surrounding whitespace, without the ones left empty."""
    return _drop_empty(Pieces(pc.utf8_trim_whitespace(pieces.values), pieces.doc))


def _drop_empty(pieces: Pieces) -> Pieces:
    keep = pc.greater(pc.utf8_length(pieces.values), 0)
    return Pieces(pieces.values.filter(keep), pieces.doc[keep.to_numpy(zero_copy_only=False)])
