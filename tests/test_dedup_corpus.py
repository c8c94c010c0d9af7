"""The benchmark's prose corpus: real sentences, reproducible texts, and planted pairs whose exact Jaccard
falls on both sides of the 0.8 threshold."""

from __future__ import annotations

from thresher.pipelines.testing.dedup_eval import ProseCorpus, jaccard_5, prose_sentences


def test_prose_corpus_is_reproducible_and_spreads_truth_around_the_threshold() -> None:
    assert len(prose_sentences()) > 1000
    corpus = ProseCorpus(3000, seed=1)
    again = ProseCorpus(3000, seed=1)
    assert corpus.texts(0, 50) == again.texts(0, 50)
    assert corpus.text(2999) == again.text(2999)
    lengths = [len(corpus.text(i).split()) for i in range(200)]
    assert 240 <= sum(lengths) / len(lengths) <= 320
    planted = corpus.planted
    assert 200 < len(planted) < 400 and all(source < copy for copy, source in planted)
    assert all(corpus.source[source] < 0 for _, source in planted)  # copies of originals only
    scores = [jaccard_5(corpus.text(a), corpus.text(b)) for a, b in planted]
    above = sum(s >= 0.8 for s in scores)
    assert 0.3 * len(scores) < above < 0.9 * len(scores)
    # Unrelated originals share next to nothing.
    assert (
        max(
            jaccard_5(corpus.text(i), corpus.text(i + 1))
            for i in range(0, 40, 2)
            if corpus.source[i] < 0 and corpus.source[i + 1] < 0
        )
        < 0.2
    )
