"""MinHash near-dedup: datasketch semantics, LSH math, the streaming band merge, accuracy on planted
near duplicates, determinism, and awkward input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash, MinHashLSH
from factories import parquet_bytes, run_cli, write_shards

from thresher.pipelines.engine.manifest import Manifest
from thresher.pipelines.stages.dedup import signatures as minhash
from thresher.pipelines.stages.dedup.lsh_merge import merged_groups, star_edges
from thresher.pipelines.stages.dedup.verify import jaccard, shingle_sets, verify_clusters
from thresher.pipelines.testing.dedup_eval import clusters_of, score_pairs
from thresher.pipelines.testing.sample_data import generate_web, jaccard_5gram

TEXTS = [
    "The thresher separates grain from chaff on the barn floor every autumn morning",
    "The thresher separates grain from chaff on the barn floor every autumn evening",
    "two words",
    "",
    "   ",
    None,
    "脱穀機は秋の朝に納屋の床で穀物と籾殻を分ける",
]


@pytest.mark.parametrize("unit,ngram", [("word", 5), ("word", 1), ("char", 3)])
def test_signatures_equal_datasketch_minhash_on_the_same_shingles(unit: str, ngram: int) -> None:
    shingling = minhash.Shingling(ngram=ngram, unit=unit)
    sig = minhash.signatures(pa.array(TEXTS, pa.string()), shingling, num_perm=64, seed=7)
    tokens, offsets = minhash.token_hashes(pa.array(TEXTS, pa.string()), shingling)
    hashes, doc = minhash.shingle_hashes(tokens, offsets, ngram)
    for i in range(len(TEXTS)):
        reference = MinHash(num_perm=64, seed=7, hashfunc=lambda h: h, scheme="affine32")
        shingles = [int(h) for h in hashes[doc == i]]
        reference.update_batch(shingles)
        assert np.array_equal(reference.hashvalues, sig[i]), i
    assert (sig[3] == minhash.MAX_HASH).all() and (sig[5] == minhash.MAX_HASH).all()


def test_shingle_hashes_match_a_scalar_reference() -> None:
    import xxhash

    mask = (1 << 64) - 1

    def mix(x: int) -> int:
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & mask
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    def reference(text: str, n: int) -> list[int]:
        words = [xxhash.xxh3_64_intdigest(w.encode()) for w in text.lower().split()]
        out = []
        for start in range(max(len(words) - n + 1, 1 if words else 0)):
            h = 0
            for w in words[start : start + n]:
                h = (h * 0x9E3779B97F4A7C15 + w) & mask
            out.append(mix(h) >> 32)
        return out

    texts = pa.array(TEXTS[:3])
    tokens, offsets = minhash.token_hashes(texts, minhash.Shingling(ngram=5))
    hashes, doc = minhash.shingle_hashes(tokens, offsets, 5)
    for i, text in enumerate(TEXTS[:3]):
        assert hashes[doc == i].tolist() == reference(text, 5)


def test_band_choice_and_s_curve_follow_datasketch_and_simulation() -> None:
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    assert minhash.choose_bands(0.8, 128, 0.5) == (lsh.b, lsh.r)
    bands, rows = 8, 6
    rng = np.random.default_rng(0)
    for s in (0.5, 0.7, 0.9):
        a = rng.integers(0, 2**32, size=(20_000, bands * rows), dtype=np.uint32)
        b = np.where(rng.random(a.shape) < s, a, rng.integers(0, 2**32, size=a.shape, dtype=np.uint32))
        share = (minhash.band_keys(a, bands, rows) == minhash.band_keys(b, bands, rows)).any(axis=1).mean()
        assert abs(share - minhash.candidate_probability(s, bands, rows)) < 0.015


@pytest.mark.parametrize("num_perm", [16, 128, 256])
def test_band_choice_matches_datasketch_over_thresholds_and_weights(num_perm: int) -> None:
    from datasketch.lsh import _optimal_param

    for threshold in (0.5, 0.7, 0.8, 0.9, 0.95):
        for weight in (0.1, 0.5, 0.9):
            expected = _optimal_param(threshold, num_perm, 1 - weight, weight)
            assert minhash.choose_bands(threshold, num_perm, weight) == tuple(expected)


def test_permutations_are_datasketchs() -> None:
    for num_perm, seed in ((64, 7), (128, 0), (256, 12345)):
        a, b = minhash.permutations(num_perm, seed)
        reference = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        assert np.array_equal(a, reference[0]) and np.array_equal(b, reference[1])
        assert (a % 2 == 1).all()


def test_signatures_of_batches_of_any_size_agree() -> None:
    texts = pa.array([" ".join(WORDS[i : i + 40 + i % 7]) for i in range(200)] + ["", None, "a b"])
    whole = minhash.signatures(texts, minhash.Shingling(), 128, 3)
    pieces = [minhash.signatures(texts.slice(i, 17), minhash.Shingling(), 128, 3) for i in range(0, 203, 17)]
    assert np.array_equal(whole, np.concatenate(pieces))


def test_streaming_merge_equals_sorting_everything() -> None:
    rng = np.random.default_rng(1)
    runs, keys, docs = [], [], []
    for shard in range(6):
        n = int(rng.integers(0, 200))
        k = np.sort(rng.integers(0, 60, n).astype(np.uint64))
        d = (shard << 40) + np.arange(n, dtype=np.int64)
        keys.append(k)
        docs.append(d)
        runs.append(iter([(k[i : i + 17], d[i : i + 17]) for i in range(0, n, 17)]))
    chunks = list(merged_groups(runs))
    all_keys, all_docs = np.concatenate(keys), np.concatenate(docs)
    order = np.lexsort((all_docs, all_keys))
    assert np.array_equal(np.concatenate([c[0] for c in chunks]), all_keys[order])
    seen: set[int] = set()
    for k, _ in chunks:  # a key's group never straddles two chunks
        assert not seen & set(k.tolist())
        seen |= set(k.tolist())
    first, member = star_edges(np.array([3, 3, 3, 5], np.uint64), np.array([10, 11, 12, 13]))
    assert first.tolist() == [10, 10] and member.tolist() == [11, 12]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table, pa.Table]:
    sample = generate_web(3000, seed=5)
    corpus = tmp_path_factory.mktemp("web")
    write_shards(sample.table, corpus, rows_per_shard=700)
    return corpus, sample.table, sample.truth


def test_precision_and_recall_on_planted_near_duplicates(
    web: tuple[Path, pa.Table, pa.Table], tmp_path: Path
) -> None:
    corpus, table, truth = web
    out = tmp_path / "out"
    run_cli("dedup", "minhash", str(corpus), str(out), "-w", "2", "-q")
    text = dict(zip(table["id"].to_pylist(), table["text"].to_pylist(), strict=True))
    pairs = [
        (t["id"], t["source_id"])
        for t in truth.to_pylist()
        if t["kind"] in ("near_dup", "exact_dup")
        and jaccard_5gram(text[t["id"]], text[t["source_id"]]) >= 0.8
    ]
    scores = score_pairs(out, pairs, lambda a, b: jaccard_5gram(text[a], text[b]), 0.8)
    print(
        f"precision={scores.precision:.3f} recall={scores.recall:.3f} predicted={scores.predicted} "
        f"true={scores.true}"
    )
    assert scores.true > 150
    # --verify estimate scored 1.000 / 0.965 here; exact verification must not lose precision.
    assert scores.precision == 1.0 and scores.recall >= 0.98
    manifest = Manifest.read(out)
    assert manifest.summary["bands"] * manifest.summary["rows"] <= 128
    assert manifest.summary["s_curve"]["1.00"] == 1.0
    assert manifest.totals.balanced and manifest.totals.dropped == {"near_duplicate": scores.predicted}


def test_same_output_bytes_for_same_seed_and_any_worker_count(
    web: tuple[Path, pa.Table, pa.Table], tmp_path: Path
) -> None:
    corpus = web[0]
    outputs = []
    for name, workers, seed in (("a", "1", "3"), ("b", "2", "3"), ("c", "1", "4")):
        run_cli("dedup", "minhash", str(corpus), str(tmp_path / name), "-w", workers, "--seed", seed, "-q")
        outputs.append(parquet_bytes(tmp_path / name))
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]  # another seed, other permutations


def _run(tmp_path: Path, texts: list[str | None], *args: str) -> tuple[pa.Table, pa.Table]:
    corpus = tmp_path / "corpus"
    table = pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    write_shards(table, corpus, rows_per_shard=max(1, len(texts) // 2))
    out = tmp_path / "out"
    run_cli("dedup", "minhash", str(corpus), str(out), "-w", "1", "-q", *args)
    return pq.read_table(out), pq.read_table(out / "_dropped")


def test_empty_texts_are_kept_and_never_clustered(tmp_path: Path) -> None:
    kept, dropped = _run(tmp_path, ["", "  ", "\n\t", None, "", "a real document with enough words in it"])
    assert kept.num_rows == 6 and dropped.num_rows == 0
    assert kept["minhash_cluster"].null_count == 6


def test_documents_shorter_than_one_ngram_still_dedup(tmp_path: Path) -> None:
    kept, dropped = _run(tmp_path, ["click here", "Click  HERE", "read more", "click here now"])
    assert dropped.to_pylist() == [
        {"id": "d1", "stage": "minhash-dedup", "reason": "near_duplicate", "detail": "d0"}
    ]
    assert kept["minhash_cluster"].to_pylist() == ["d0", None, None]


def test_all_identical_corpus_keeps_one(tmp_path: Path) -> None:
    kept, dropped = _run(tmp_path, ["the same words over and over again here"] * 40)
    assert kept["id"].to_pylist() == ["d0"] and dropped.num_rows == 39
    assert set(dropped["detail"].to_pylist()) == {"d0"}


def test_keep_longest(tmp_path: Path) -> None:
    base = " ".join(f"w{i}" for i in range(60))
    kept, dropped = _run(
        tmp_path, [base, base + " extra", "unrelated text of its own with many words"], "--keep", "longest"
    )
    assert sorted(kept["id"].to_pylist()) == ["d1", "d2"] and dropped["detail"].to_pylist() == ["d1"]


def test_one_huge_document(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    huge = " ".join(rng.choice([f"tok{i}" for i in range(5000)], size=1_700_000))  # about 10 MB
    assert len(huge) > 10_000_000
    _kept, dropped = _run(tmp_path, [huge, "small one", huge[: len(huge) // 2], "small one"])
    assert dropped["id"].to_pylist() == ["d3"]  # half of a document is not a near duplicate of it


def test_cjk_needs_character_shingles(tmp_path: Path) -> None:
    a = "今日は晴れていて公園で子供たちが楽しそうに遊んでいますとても良い天気です"
    b = a.replace("とても", "本当に")
    _, dropped = _run(tmp_path, [a, b, "全く関係のない別の文章がここにあります"], "--shingle", "word")
    assert dropped.num_rows == 0  # without spaces each text is one "word": no overlap is seen
    _kept, dropped = _run(
        tmp_path / "char",
        [a, b, "全く関係のない別の文章がここにあります"],
        "--shingle",
        "char",
        "--ngram",
        "3",
        "--threshold",
        "0.7",
    )
    assert dropped["id"].to_pylist() == ["d1"]
    assert clusters_of(tmp_path / "char" / "out") == {"d0": "d0", "d1": "d0"}


WORDS = [f"w{i}" for i in range(300)]


def _tail_edited(kept: int, edited: int) -> tuple[str, str]:
    """Two texts sharing their first `kept` words, the second with `edited` new words after them: with
    M = kept + edited - 4 five-word shingles each, exact Jaccard (M - edited) / (M + edited)."""
    base = WORDS[: kept + edited]
    return " ".join(base), " ".join(WORDS[:kept] + [f"new{i}" for i in range(edited)])


# Exact Jaccard 120 / 160 = 0.75; with seed 11 the 128 permutations estimate it at 0.87.
AT_075 = _tail_edited(124, 20)
SEED_075 = "11"


def test_exact_verification_rejects_a_pair_the_estimate_lets_through() -> None:
    texts = pa.array(AT_075)
    shingling = minhash.Shingling()
    sets = shingle_sets(texts, shingling)
    assert jaccard(*sets) == 0.75
    sig = minhash.signatures(texts, shingling, 128, int(SEED_075))
    estimate = float((sig[0] == sig[1]).mean())
    assert estimate >= 0.8
    order, labels = np.array([0, 1]), np.array([0, 0])
    head, comparisons = verify_clusters(order, labels, lambda i, j: jaccard(sets[i], sets[j]), 0.8)
    assert head.tolist() == [0, 1] and comparisons == 1  # kept apart
    head, _ = verify_clusters(order, labels, lambda i, j: float((sig[i] == sig[j]).mean()), 0.8, split=False)
    assert head.tolist() == [0, 0]  # merged
    # The sets are the signatures': the same shingle hashes, deduplicated.
    tokens, offsets = minhash.token_hashes(texts, shingling)
    hashes, doc = minhash.shingle_hashes(tokens, offsets, shingling.ngram)
    assert np.array_equal(sets[0], np.unique(hashes[doc == 0]))


def test_verify_modes_end_to_end_at_075_and_085(tmp_path: Path) -> None:
    a, b = AT_075
    close_a, close_b = _tail_edited(34, 3)  # exact Jaccard 34 / 40 = 0.85
    texts = [a, b, close_a, close_b]
    kept, dropped = _run(tmp_path / "exact", texts, "--seed", SEED_075)
    assert dropped.to_pylist() == [
        {"id": "d3", "stage": "minhash-dedup", "reason": "near_duplicate", "detail": "d2"}
    ]
    assert kept["minhash_cluster"].to_pylist() == [None, None, "d2"]
    _, dropped = _run(tmp_path / "estimate", texts, "--seed", SEED_075, "--verify", "estimate")
    assert dropped["id"].to_pylist() == ["d1", "d3"]
    summary = Manifest.read(tmp_path / "exact" / "out").summary
    assert summary["verified_pairs"] == 2 and summary["verify_rejected"] == 1
    assert summary["duplicates"] == 1 and summary["clusters"] == 1


def test_exact_any_joins_a_chain_through_its_middle(tmp_path: Path) -> None:
    # Windows of one word list shifted by 8 words: A~B and B~C at 92 / 108 = 0.85, A~C at 84 / 116 = 0.72.
    a, b, c = (" ".join(WORDS[s : s + 104]) for s in (0, 8, 16))
    sets = shingle_sets(pa.array([a, b, c]), minhash.Shingling())
    assert round(jaccard(sets[0], sets[1]), 3) == round(jaccard(sets[1], sets[2]), 3) == 0.852
    assert jaccard(sets[0], sets[2]) < 0.8
    shape = ("--bands", "32", "--rows", "4")  # every pair above 0.7 becomes a candidate
    kept, dropped = _run(tmp_path / "exact", [a, b, c], *shape)
    assert dropped["id"].to_pylist() == ["d1"] and kept["id"].to_pylist() == ["d0", "d2"]
    assert kept["minhash_cluster"].to_pylist() == ["d0", None]
    kept, dropped = _run(tmp_path / "any", [a, b, c], *shape, "--verify", "exact-any")
    assert dropped["id"].to_pylist() == ["d1", "d2"] and set(dropped["detail"].to_pylist()) == {"d0"}
    assert kept["id"].to_pylist() == ["d0"]


def test_a_member_rejected_by_verification_keeps_a_cluster_of_its_own() -> None:
    # One component 0-1-2-3 whose keeper 0 is near 1 only, while 2 and 3 are near each other.
    near = {frozenset((0, 1)), frozenset((2, 3))}
    order, labels = np.arange(4), np.zeros(4, np.int64)
    head, _ = verify_clusters(order, labels, lambda i, j: 0.9 if frozenset((i, j)) in near else 0.5, 0.8)
    assert head.tolist() == [0, 0, 2, 2]
    head, _ = verify_clusters(
        order, labels, lambda i, j: 0.9 if frozenset((i, j)) in near else 0.5, 0.8, split=False
    )
    assert head.tolist() == [0, 0, 2, 3]


def test_bands_and_rows_must_come_together(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    write_shards(pa.table({"id": ["a"], "text": ["x"]}), corpus, 1)
    proc = run_cli("dedup", "minhash", str(corpus), str(tmp_path / "o"), "--bands", "4", check=False)
    assert proc.returncode == 2 and "--bands and --rows together" in proc.stderr
    proc = run_cli(
        "dedup", "minhash", str(corpus), str(tmp_path / "o"), "--bands", "20", "--rows", "10", check=False
    )
    assert proc.returncode == 2 and "exceeds --num-perm" in proc.stderr


def test_a_member_tries_at_most_max_clusters_of_its_component() -> None:
    # Ten nodes, all far apart except 9, near only to 5: unbounded, 9 tries every cluster before it and
    # joins 5's; with at most 3 clusters tried it stops early and stays on its own.
    def similarity(i: int, j: int) -> float:
        return 0.9 if {i, j} == {5, 9} else 0.1

    order, labels = np.arange(10), np.zeros(10, np.int64)
    head, comparisons = verify_clusters(order, labels, similarity, 0.8)
    assert head[9] == 5 and comparisons == sum(range(10)) - 3
    head, comparisons = verify_clusters(order, labels, similarity, 0.8, max_clusters=3)
    assert head[9] == 9 and comparisons == 0 + 1 + 2 + 3 * 7


def test_minhash_keeps_pandas_out_of_the_process_and_lets_it_back_in_after(tmp_path: Path) -> None:
    """pyarrow would import pandas (54 MB) on its first Python conversion; MinHash never needs it, so its
    tasks run with pandas kept out, in threads of this one process, and pandas works again afterwards."""
    corpus = tmp_path / "corpus"
    texts = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(30)) + f" {i % 300}" for i in range(400)]
    write_shards(pa.table({"id": [str(i) for i in range(400)], "text": texts}), corpus, 200)
    script = f"""
import sys, threading
from thresher.pipelines.engine.executor import run_stage
names = set()
original = threading.Thread.start
def start(self):
    names.add(self.name)
    original(self)
threading.Thread.start = start
manifest = run_stage("minhash-dedup", {{}}, {str(corpus)!r}, {str(tmp_path / "out")!r}, workers=2)
assert manifest.totals.rows_in == 400, manifest.totals
assert "pandas" not in sys.modules, "pandas was imported during the run"
assert any(n.startswith("thresher-task") for n in names), names
import multiprocessing
assert not multiprocessing.active_children()
import pyarrow as pa
assert pa.table({{"a": [1, 2]}}).to_pandas().shape == (2, 1)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
