"""Scoring a near-dedup run against planted truth: which documents ended in the same cluster, and
precision/recall of duplicate pairs against exact Jaccard. Used by the tests and bench/dedup.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
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
    dropped = pq.read_table(output / "_dropped", columns=["id", "detail"])
    predicted = list(zip(dropped["id"].to_pylist(), dropped["detail"].to_pylist(), strict=True))
    return score_predictions(predicted, clusters_of(output), truth_pairs, jaccard, threshold)


def score_predictions(
    predicted: list[tuple[str, str]],
    cluster: dict[str, str],
    truth_pairs: list[tuple[str, str]],
    jaccard: Callable[[str, str], float],
    threshold: float,
) -> PairScores:
    """The scores of any tool's output: `predicted` (dropped, the document it duplicates) pairs and
    `cluster` (document -> cluster) for every clustered document."""
    correct = sum(jaccard(a, b) >= threshold for a, b in predicted)
    found = sum(a in cluster and cluster.get(a) == cluster.get(b) for a, b in truth_pairs)
    return PairScores(
        precision=correct / len(predicted) if predicted else 1.0,
        recall=found / len(truth_pairs) if truth_pairs else 1.0,
        predicted=len(predicted),
        true=len(truth_pairs),
    )


# -- a corpus of real prose with planted near duplicates -------------------------------------------------
# Word-edit rates of planted copies: at 5-word shingles a substitution rate r gives a Jaccard near
# (1 - r)^5 / (2 - (1 - r)^5), so these rates spread the truth on both sides of 0.8, where mistakes happen.
PROSE_EDIT_RATES = (0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.06)


def shingles_5(text: str) -> set[str]:
    """The 5-word shingles the truth is defined over: lower-cased, whitespace-split."""
    words = text.lower().split()
    return {" ".join(words[i : i + 5]) for i in range(max(len(words) - 4, 1))}


def jaccard_5(a: str, b: str) -> float:
    sa, sb = shingles_5(a), shingles_5(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


@cache
def prose_sentences() -> tuple[str, ...]:
    """English sentences from the reference text Python ships (`pydoc_data`): real prose, offline.
    Paragraphs that are mostly not letters (code, grammar rules, tables) are left out."""
    import pydoc_data.topics

    sentences: list[str] = []
    for topic in pydoc_data.topics.topics.values():
        for paragraph in re.split(r"\n\s*\n", topic):
            flat = " ".join(paragraph.split())
            if not flat.endswith((".", ":")) or ">>>" in flat or flat.startswith(("*", "=", "-")):
                continue
            if sum(c.isalpha() or c == " " for c in flat) < 0.85 * len(flat):
                continue
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z\"(])", flat):
                if len(sentence.split()) >= 6:
                    sentences.append(sentence)
    return tuple(dict.fromkeys(sentences))


class ProseCorpus:
    """Documents of about `words` words, each a random run of real sentences; `dup_rate` of them are
    planted copies of an earlier original with word substitutions, deletions and insertions at one of
    PROSE_EDIT_RATES, sometimes with a sentence dropped or appended. Every text is a pure function of
    (seed, index), so a million documents are produced shard by shard and any one is rebuilt for scoring
    without keeping the corpus in memory."""

    def __init__(self, n: int, seed: int = 0, words: int = 260, dup_rate: float = 0.1) -> None:
        self.n, self.seed, self.words = n, seed, words
        self.sentences = prose_sentences()
        self._lengths = np.array([len(s.split()) for s in self.sentences])
        self.vocabulary = sorted({w for s in self.sentences for w in s.split()})
        rng = np.random.default_rng(seed)
        copy = rng.random(n) < dup_rate
        copy[0] = False
        self.source = np.full(n, -1, np.int64)
        originals = np.nonzero(~copy)[0]
        for i in np.nonzero(copy)[0]:
            # An earlier original: truth pairs are then (copy, original), never a copy of a copy.
            self.source[i] = originals[int(rng.integers(0, np.searchsorted(originals, i)))]

    @property
    def planted(self) -> list[tuple[int, int]]:
        """(copy, source) of every planted pair."""
        return [(int(i), int(s)) for i, s in enumerate(self.source) if s >= 0]

    def _original(self, i: int) -> list[str]:
        rng = np.random.default_rng([self.seed, i])
        picked = rng.integers(0, len(self.sentences), size=4 * self.words // 10)
        cut = int(np.searchsorted(np.cumsum(self._lengths[picked]), self.words)) + 1
        return " ".join(self.sentences[k] for k in picked[:cut]).split()

    def text(self, i: int) -> str:
        source = int(self.source[i])
        if source < 0:
            return " ".join(self._original(i))
        rng = np.random.default_rng([self.seed, i, 1])
        words = self._original(source)
        rate = PROSE_EDIT_RATES[int(rng.integers(0, len(PROSE_EDIT_RATES)))]
        out: list[str] = []
        for word, roll in zip(words, rng.random(len(words)), strict=True):
            if roll < rate / 2:  # substitution
                out.append(self.vocabulary[int(rng.integers(0, len(self.vocabulary)))])
            elif roll < 3 * rate / 4:  # deletion
                continue
            elif roll < rate:  # insertion
                out.extend((word, self.vocabulary[int(rng.integers(0, len(self.vocabulary)))]))
            else:
                out.append(word)
        shape = rng.random()
        if shape < 0.15:  # a boilerplate sentence appended
            out.extend(self.sentences[int(rng.integers(0, len(self.sentences)))].split())
        elif shape < 0.25:  # the last sentence cut
            out = out[: max(5, len(out) - int(rng.integers(5, 20)))]
        return " ".join(out)

    def texts(self, start: int, stop: int) -> list[str]:
        return [self.text(i) for i in range(start, stop)]
