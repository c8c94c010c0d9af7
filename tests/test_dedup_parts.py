"""MinHash dedup over shards written as one row group: the signatures and gather phases cut the group into
row slices so every core works, and the output is byte for byte what an unsplit run writes, with one
worker or two."""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import parquet_bytes, random_corpus

from thresher.pipelines.engine import shards as shards_module
from thresher.pipelines.engine.executor import run_stage
from thresher.pipelines.engine.shards import Shard, ShardPart, ShardSet, iter_batches, shard_parts


def test_split_groups_cuts_one_row_group_into_slices_that_cover_it() -> None:
    one = Shard(Path("one.parquet"), 100_000, 1, None, (100_000,))
    assert shard_parts([one])[0][0].whole  # the default leaves a single row group alone
    parts = shard_parts([one], split_groups=True)[0]
    assert len(parts) == 7 and all(p.cut and p.first_group == 0 and p.end_group == 1 for p in parts)
    assert [p.first_row for p in parts] == [p.skip for p in parts]
    assert sum(p.rows for p in parts) == 100_000
    assert all(a.first_row + a.rows == b.first_row for a, b in itertools.pairwise(parts))
    assert len({p.name("one.parquet") for p in parts}) == 7
    assert all(ShardPart.from_args(p.args()) == p for p in parts)
    # Groups smaller than a part are still gathered whole, next to a big group that is cut.
    mixed = Shard(Path("m.parquet"), 60_000, 1, None, (5000, 5000, 50_000))
    cut = shard_parts([mixed], split_groups=True)[0]
    assert (cut[0].first_group, cut[0].end_group, cut[0].cut) == (0, 2, False)
    assert sum(p.rows for p in cut) == 60_000 and all(p.cut for p in cut[1:])


def test_a_cut_part_reads_exactly_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = pa.table({"id": [str(i) for i in range(5000)], "text": [f"t{i}" for i in range(5000)]})
    path = tmp_path / "s" / "part-00000.parquet"
    path.parent.mkdir()
    pq.write_table(table, path)
    monkeypatch.setattr(shards_module, "MIN_PART_ROWS", 700)
    monkeypatch.setattr(shards_module, "TARGET_TASKS", 7)
    shard_set = ShardSet.open(path.parent)
    parts = shard_parts(shard_set.shards, split_groups=True)[0]
    assert len(parts) == 7
    seen: list[str] = []
    for part in parts:
        ids = [
            i for b in iter_batches(path, ["id"], batch_rows=300, part=part) for i in b.column(0).to_pylist()
        ]
        assert ids == [str(i) for i in range(part.first_row, part.first_row + part.rows)]
        seen += ids
    assert seen == table["id"].to_pylist()


@pytest.fixture(scope="module")
def one_group(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = tmp_path_factory.mktemp("one-group")
    table = random_corpus(6000, seed=11, dup_rate=0.3)
    pq.write_table(table.slice(0, 5000), corpus / "part-00000.parquet")  # one row group
    pq.write_table(table.slice(5000), corpus / "part-00001.parquet")
    return corpus


@pytest.mark.parametrize("verify", ["exact", "estimate"])
def test_sliced_run_writes_the_bytes_of_an_unsplit_run(
    one_group: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verify: str
) -> None:
    params = {"verify": verify}
    whole = run_stage("minhash-dedup", params, one_group, tmp_path / "whole", workers=1)
    assert len([t for t in whole.tasks if t.phase == "signatures"]) == 2
    monkeypatch.setattr(shards_module, "MIN_PART_ROWS", 1000)
    run_stage("minhash-dedup", params, one_group, tmp_path / "split-1", workers=1)
    split_two = run_stage("minhash-dedup", params, one_group, tmp_path / "split-2", workers=2)
    signature_tasks = [t for t in split_two.tasks if t.phase == "signatures"]
    assert len(signature_tasks) == 6  # 5000 rows in 5 slices, and the small shard whole
    assert len([t for t in split_two.tasks if t.phase == "verify"]) == 2
    assert whole.totals.dropped["near_duplicate"] > 300
    expected = parquet_bytes(tmp_path / "whole")
    assert parquet_bytes(tmp_path / "split-1") == expected
    assert parquet_bytes(tmp_path / "split-2") == expected
    assert whole.summary["duplicates"] == split_two.summary["duplicates"]
