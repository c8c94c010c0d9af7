"""A plan that scales: tasks depend on earlier phases through phase indexes (the plan grows as shards +
buckets, not their product), side inputs and plans are digested and parsed once, and a big shard splits
into row-group tasks without changing a byte of the output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import parquet_bytes, random_corpus, write_shards

from thresher.pipelines.engine import shards as shards_module
from thresher.pipelines.engine.digest import value_digest
from thresher.pipelines.engine.executor import InputDigests, plan_stage, run_stage
from thresher.pipelines.engine.manifest import FileRecord, InputLineage, Manifest, RowCounts
from thresher.pipelines.engine.plan import Plan, build_plan, phase_index_path, run_identity
from thresher.pipelines.engine.registry import get_stage
from thresher.pipelines.engine.shards import Shard, ShardSet, shard_parts
from thresher.pipelines.engine.stage import StageContext


def synthetic_shard_set(root: Path, n: int, rows: int = 100_000) -> ShardSet:
    """n shards of `rows` rows that exist only as footers and a manifest (nothing to read)."""
    groups = (8192,) * (rows // 8192) + (rows % 8192,)
    shards = [Shard(root / f"part-{i:05d}.parquet", rows, 1 << 20, None, groups) for i in range(n)]
    manifest = Manifest(
        stage="ingest",
        stage_version="1",
        params={},
        seed=0,
        fingerprint=value_digest("synthetic"),
        input=InputLineage(path=str(root)),
        tasks=[],
        totals=RowCounts(),
        outputs=[
            FileRecord(path=s.name, size=s.size, digest=value_digest(s.name), rows=rows) for s in shards
        ],
        seconds=0.0,
        versions={},
    )
    root.mkdir(parents=True)
    manifest.write(root)
    return ShardSet(root, shards, manifest)


def plan_size(output: Path) -> int:
    state = output / "_thresher"
    return (state / "plan.json").stat().st_size + sum(p.stat().st_size for p in (state / "plan").iterdir())


@pytest.mark.parametrize("stage_name", ["exact-dedup", "minhash-dedup"])
def test_plan_grows_with_shards_plus_buckets_not_their_product(tmp_path: Path, stage_name: str) -> None:
    sizes = {}
    for n in (200, 400):
        shard_set = synthetic_shard_set(tmp_path / f"in-{n}", n)
        cls = get_stage(stage_name)
        # Buckets grow with rows, as by default: 20 and 40.
        params = cls.Params(buckets=n // 10) if stage_name == "exact-dedup" else cls.Params()
        stage = cls(params, StageContext(shard_set.root, tmp_path / f"out-{n}", 0, shard_set))
        plan = build_plan(stage, run_identity(stage))
        plan.write()
        assert all(len(t.inputs) <= 2 for phase in plan.phases for t in phase.tasks)
        sizes[n] = plan_size(tmp_path / f"out-{n}")
        reread = Plan.read(tmp_path / f"out-{n}")
        assert [len(p.tasks) for p in reread.phases] == [len(p.tasks) for p in plan.phases]
        assert reread.phases[-1].tasks[3] == plan.phases[-1].tasks[3]
    assert sizes[400] < 2.1 * sizes[200]


def test_shard_parts_split_only_shards_bigger_than_a_task() -> None:
    big = Shard(Path("big.parquet"), 100_000, 1, None, (8192,) * 12 + (1696,))
    parts = shard_parts([big])[0]
    assert len(parts) == 7 and sum(p.rows for p in parts) == 100_000
    assert [p.first_row for p in parts] == [i * 16384 for i in range(7)]
    # Many shards keep the cores busy without splitting; one row group cannot be split.
    assert all(len(p) == 1 and p[0].whole for p in shard_parts([big] * 200))
    assert shard_parts([Shard(Path("one.parquet"), 100_000, 1, None, (100_000,))])[0][0].whole


@pytest.mark.parametrize("stage_name", ["minhash-dedup", "exact-dedup"])
def test_big_shard_splits_into_row_group_tasks_with_identical_output(
    tmp_path: Path, stage_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    table = random_corpus(6000, seed=3, dup_rate=0.3)
    pq.write_table(table, corpus / "part-00000.parquet", row_group_size=1000)
    whole = run_stage(stage_name, {}, corpus, tmp_path / "whole", workers=2)
    monkeypatch.setattr(shards_module, "MIN_PART_ROWS", 1000)
    split = run_stage(stage_name, {}, corpus, tmp_path / "split", workers=2)
    first = whole.tasks[0].phase
    assert sum(t.phase == first for t in whole.tasks) == 1
    assert sum(t.phase == first for t in split.tasks) == 6
    assert parquet_bytes(tmp_path / "split") == parquet_bytes(tmp_path / "whole")
    assert whole.totals == split.totals and whole.totals.dropped


def test_tasks_list_phase_indexes_and_a_changed_shard_reruns_what_depends_on_it(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    table = random_corpus(900, seed=4, dup_rate=0.2)
    write_shards(table, corpus, rows_per_shard=300)
    out = tmp_path / "out"
    manifest = run_stage("exact-dedup", {"buckets": 4}, corpus, out, workers=2)
    decide = [t for t in manifest.tasks if t.phase == "decide"]
    assert len(decide) == 4 and all(len(t.inputs) == 1 for t in decide)
    assert decide[0].inputs[0].path == str(phase_index_path(out, "hash"))
    index = json.loads(phase_index_path(out, "hash").read_text())
    assert [o[0] for o in index["outputs"]] == [
        f"_thresher/work/hashes/part-0000{i}.parquet" for i in range(3)
    ]

    # Shard 2 now repeats shard 0's first rows: the rerun must equal a fresh run on the new input.
    changed = pa.concat_tables([table.slice(0, 50), table.slice(650, 250)])
    changed = changed.set_column(0, "id", pa.array([f"new-{i}" for i in range(changed.num_rows)]))
    pq.write_table(changed, corpus / "part-00002.parquet")
    rerun = run_stage("exact-dedup", {"buckets": 4}, corpus, out, workers=2)
    fresh = run_stage("exact-dedup", {"buckets": 4}, corpus, tmp_path / "fresh", workers=2)
    assert parquet_bytes(out) == parquet_bytes(tmp_path / "fresh")
    assert rerun.totals == fresh.totals and rerun.totals.dropped != manifest.totals.dropped


def test_index_lock_of_a_dead_builder_is_taken_over(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(400, seed=6), corpus, rows_per_shard=200)
    out = tmp_path / "out"
    plan, _ = plan_stage("exact-dedup", {}, corpus, out)
    for task in (0, 1):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "thresher.cli",
                "task",
                str(out),
                "--phase",
                "hash",
                "--index",
                str(task),
                "-q",
            ],
            check=True,
        )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = phase_index_path(out, "hash").with_name("hash.json.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f"{socket.gethostname()} {dead.pid}\n")
    assert plan.index_digest(0).startswith("xxh3-128:")
    assert phase_index_path(out, "hash").exists() and not lock.exists()


def test_plan_and_side_inputs_are_read_once_per_process(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(400, seed=7), corpus, rows_per_shard=200)
    blocklist = tmp_path / "words.txt"
    blocklist.write_text("casino\n")
    out = tmp_path / "out"
    plan, _ = plan_stage("heuristics", {"word_blocklist": [str(blocklist)]}, corpus, out)
    assert [f.path for f in plan.side_files] == [str(blocklist.resolve())]
    loaded = Plan.load(out)
    assert Plan.load(out) is loaded
    digest = plan.side_files[0].digest
    blocklist.write_text("poker\n")  # digested at planning: the plan's digest stands until it is replanned
    assert InputDigests(loaded, 0).get(str(blocklist.resolve())) == digest
    os.utime(out / "_thresher" / "plan.json", ns=(1, 1))
    assert Plan.load(out) is not loaded


def test_kill_during_split_signatures_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    table = random_corpus(80_000, seed=9, dup_rate=0.1, words=40)
    for i in range(2):  # two shards of 40k rows in 8192-row groups: three parts each
        part = table.slice(i * 40_000, 40_000)
        pq.write_table(part, corpus / f"part-{i:05d}.parquet", row_group_size=8192)
    clean = tmp_path / "clean"
    run_stage("minhash-dedup", {}, corpus, clean, workers=1)

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "thresher.cli", "dedup", "minhash", str(corpus), str(killed)]
    proc = subprocess.Popen([*command, "--workers", "1", "-q"])
    records = killed / "_thresher" / "tasks" / "00-signatures"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(records.glob("*.json"))) < 2:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
    assert 0 < len(done_before) < 6, "the signatures phase should have been killed midway"

    resumed = run_stage("minhash-dedup", {}, corpus, killed, workers=2)
    assert sum(t.phase == "signatures" for t in resumed.tasks) == 6
    for name, mtime in done_before.items():
        assert (records / name).stat().st_mtime_ns == mtime  # finished parts were not redone
    assert parquet_bytes(killed) == parquet_bytes(clean)
