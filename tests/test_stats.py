"""pipelines/stats: order keys on hard floats, exact selection over runs, and one rule for missing scores
shared by the top fraction and the percentile buckets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_rows
from factories import write_shards

from thresher.pipelines.stats.order import MISSING, is_missing, score_from_order, score_order
from thresher.pipelines.stats.percentile_buckets import assign_buckets, exact_percentiles, save_runs
from thresher.pipelines.stats.runs import kth_smallest, load_group_runs, open_run, save_run
from thresher.pipelines.stats.top_fraction import (
    keep_count,
    key_at_rank,
    rank_keys,
    score_quantiles,
    top_cutoff,
)

TINY = float(np.finfo(np.float64).tiny)  # the smallest normal number
SUB = 5e-324  # the smallest subnormal
HUGE = float(np.finfo(np.float64).max)
# Every number here is distinct except the two zeros; listed lowest first.
NUMBERS = [
    -math.inf,
    -HUGE,
    -1.0,
    -TINY,
    -TINY / 2,
    -SUB,
    -0.0,
    0.0,
    SUB,
    TINY / 2,
    TINY,
    1.0,
    HUGE,
    math.inf,
]
SIGNALLING_NAN = float(np.array([0x7FF0_0000_0000_0001], np.uint64).view(np.float64)[0])
NANS = [math.nan, -math.nan, SIGNALLING_NAN]


def test_order_keys_sort_hard_floats_like_the_floats_with_missing_last() -> None:
    rng = np.random.default_rng(0)
    values = [*NUMBERS, *NANS]
    shuffled = rng.permutation(len(values) + 1)  # the last index stands for a null
    scores = pa.array([None if i == len(values) else values[i] for i in shuffled], pa.float64())
    for higher in (False, True):
        keys = score_order(scores, higher_is_better=higher)
        assert keys.dtype == np.uint64
        decoded = [score_from_order(int(k), higher) for k in np.sort(keys)]
        ranked = decoded[: len(NUMBERS)]
        expected = NUMBERS[::-1] if higher else NUMBERS
        assert ranked == expected  # -0.0 == 0.0, so the zeros compare equal whichever comes first
        assert decoded[len(NUMBERS) :] == [None] * (len(NANS) + 1)
        assert np.count_nonzero(keys == MISSING) == len(NANS) + 1
        # The two zeros are one score; nothing else shares a key.
        assert len(set(keys[keys != MISSING].tolist())) == len(NUMBERS) - 1
        # Stored big-endian, keys sort the same as bytes as they do as integers.
        as_bytes = keys.astype(">u8").view("S8")
        assert np.argsort(as_bytes, kind="stable").tolist() == np.argsort(keys, kind="stable").tolist()
    for x in NUMBERS:
        back = score_from_order(int(score_order(np.array([x]), False)[0]), False)
        assert back == x and (x != 0 or math.copysign(1, back) == 1)  # -0.0 comes back as 0.0


def test_score_order_sorts_like_the_scores_with_missing_last() -> None:
    scores = pa.array([1.0, -1.0, 0.0, -0.0, None, float("nan"), 2.5, float("inf"), -float("inf")])
    best_first = np.argsort(score_order(scores, higher_is_better=True), kind="stable").tolist()
    assert best_first == [7, 6, 0, 2, 3, 1, 8, 4, 5]
    lowest_first = np.argsort(score_order(scores, higher_is_better=False), kind="stable").tolist()
    assert lowest_first == [8, 1, 2, 3, 0, 6, 7, 4, 5]
    for higher in (True, False):
        decoded = [
            score_from_order(int(x), higher) for x in score_order(pa.array([0.25, -3.0, None]), higher)
        ]
        assert decoded == [0.25, -3.0, None]


def test_missing_is_null_or_nan_and_nothing_else() -> None:
    scores = pa.array([None, math.nan, math.inf, -math.inf, -0.0, SUB], pa.float64())
    assert is_missing(scores).tolist() == [True, True, False, False, False, False]
    assert is_missing(pa.array([1, None, 3], pa.int64())).tolist() == [False, True, False]


@pytest.mark.parametrize("dtype", ["float", "key"])
def test_kth_smallest_is_exact_against_a_full_sort(dtype: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    for trial in range(15):
        runs, every = [], []
        for s in range(int(rng.integers(1, 5))):
            n = int(rng.integers(0, 200))
            values = rng.choice(np.array([-math.inf, -1.0, 0.0, SUB, 2.0, math.inf]), n)
            if dtype == "key":
                values = rank_keys(
                    values,
                    pa.array([f"{s}-{i}" for i in range(n)]),
                    s,
                    np.arange(n),
                    higher_is_better=True,
                    seed=3,
                )
            path = tmp_path / f"{trial}-{s}.npy"
            save_run(path, values)
            runs.append(open_run(path))
            every.append(values)
        merged = np.sort(np.concatenate(every))
        m = int(rng.integers(1, 30))
        for k in range(0, len(merged), 5):
            assert kth_smallest(runs, k, sample_every=m) == merged[k]
            if dtype == "key":  # numpy strips trailing NULs from an S scalar; a key is 28 bytes
                assert key_at_rank(runs, k, sample_every=m) == bytes(merged[k]).ljust(28, b"\0")


def test_keep_count_rounds_half_up() -> None:
    assert [keep_count(0.5, n) for n in (0, 1, 2, 3)] == [0, 1, 1, 2]
    assert keep_count(1.0, 7) == 7
    assert keep_count(0.001, 100) == 0


def test_percentiles_with_infinities_take_the_infinite_end() -> None:
    assert exact_percentiles([np.array([1.0, math.inf])], [50]) == [math.inf]
    assert exact_percentiles([np.array([-math.inf, 1.0])], [50]) == [-math.inf]
    assert exact_percentiles([np.array([-math.inf, math.inf])], [30, 70]) == [-math.inf, math.inf]
    assert exact_percentiles([np.array([math.inf, math.inf])], [50]) == [math.inf]
    finite = np.array([1.0, 2.0, 4.0, 8.0])
    assert exact_percentiles([finite], [10, 55]) == np.percentile(finite, [10, 55]).tolist()


def test_saved_runs_leave_out_missing_scores_and_read_negative_zero_as_zero(tmp_path: Path) -> None:
    save_runs(tmp_path / "r.npy", np.array([3.0, math.nan, -0.0, math.inf, 1.0]))
    run = load_group_runs(tmp_path / "r.npy")[None]
    assert run.tolist() == [0.0, 1.0, 3.0, math.inf] and math.copysign(1, run[0]) == 1


# ---------------------------------------------------------------------------------------------------------
# One rule for missing scores, in both users


def scores_with_gaps() -> tuple[list[str], pa.Array]:
    """101 distinct scores (so the 30th percentile falls on a rank) among nulls and NaNs, and the
    infinities counting as scores."""
    rng = np.random.default_rng(4)
    values: list[float | None] = [*rng.permutation(99).astype(float) / 7, -math.inf, math.inf]
    values += [None] * 9 + [math.nan] * 6
    order = rng.permutation(len(values))
    return [f"doc-{i:04d}" for i in range(len(values))], pa.array([values[i] for i in order], pa.float64())


def test_nulls_are_left_out_alike_by_the_top_fraction_and_the_buckets(tmp_path: Path) -> None:
    ids, scores = scores_with_gaps()
    missing = is_missing(scores)
    keys = rank_keys(scores, pa.array(ids), 0, np.arange(len(ids)), higher_is_better=False, seed=0)
    save_run(tmp_path / "keys.npy", keys)
    cut = top_cutoff([open_run(tmp_path / "keys.npy")], 0.3, higher_is_better=False)

    values = scores.to_numpy(zero_copy_only=False)
    save_runs(tmp_path / "runs.npy", values)
    run = load_group_runs(tmp_path / "runs.npy")[None]
    cutoffs = exact_percentiles([run], [30.0, 60.0])
    buckets = assign_buckets(values, cutoffs, ["head", "middle", "tail"]).to_pylist()

    # The same population: the 101 scored rows, infinities included, nulls and NaNs in neither.
    assert cut.rows == len(ids) and cut.scored == len(run) == 101 == int((~missing).sum())
    # The lowest 30% by rank are the head bucket, row for row; a missing score is in neither.
    kept = cut.keeps(keys)
    assert kept.sum() == cut.keep == 30
    assert [b == "head" for b in buckets] == kept.tolist()
    assert all(b is None for b, m in zip(buckets, missing, strict=True) if m)
    assert not kept[missing].any()
    assert buckets[values.tolist().index(-math.inf)] == "head"
    assert buckets[values.tolist().index(math.inf)] == "tail"
    # Summary quantiles come from the scored rows too: the median is the 51st smallest score.
    median = score_quantiles([open_run(tmp_path / "keys.npy")], [0.5], higher_is_better=False)["0.5"]
    assert median == float(np.sort(run)[50]) == exact_percentiles([run], [50.0])[0]


def test_filter_top_fraction_keeps_the_head_bucket_and_drops_missing_scores(cli: Cli, tmp_path: Path) -> None:
    ids, scores = scores_with_gaps()
    write_shards(pa.table({"id": ids, "text": ids, "ppl": scores}), tmp_path / "in", rows_per_shard=40)
    out = tmp_path / "out"
    args = ("--top-fraction", "0.3", "--by", "ppl", "--ascending", "-w", "2", "-q")
    assert cli("filter", tmp_path / "in", out, *args).exit_code == 0

    values = scores.to_numpy(zero_copy_only=False)
    save_runs(tmp_path / "runs.npy", values)
    cutoffs = exact_percentiles([load_group_runs(tmp_path / "runs.npy")[None]], [30.0, 60.0])
    buckets = assign_buckets(values, cutoffs, ["head", "middle", "tail"]).to_pylist()
    assert {r["id"] for r in read_rows(out)} == {i for i, b in zip(ids, buckets, strict=True) if b == "head"}
    dropped = pq.read_table(out / "_dropped").to_pylist()
    no_score = {d["id"] for d in dropped if d["reason"] == "no_score"}
    assert no_score == {i for i, b in zip(ids, buckets, strict=True) if b is None}
    assert len(no_score) == 15
