"""The executor's promises: resume after a kill, determinism, row accounting, and the manifest schema."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
from factories import parquet_bytes, random_corpus, run_cli, write_shards

from thresher.pipelines.engine.executor import run_stage
from thresher.pipelines.engine.manifest import Manifest, manifest_json_schema

REPO = Path(__file__).resolve().parents[1]


def check_accounting(input_dir: Path, output_dir: Path) -> None:
    """Every shard: rows in == rows kept + rows dropped, file by file."""
    for shard in sorted(input_dir.glob("*.parquet")):
        kept = pq.ParquetFile(output_dir / shard.name).metadata.num_rows
        dropped = pq.ParquetFile(output_dir / "_dropped" / shard.name).metadata.num_rows
        assert pq.ParquetFile(shard).metadata.num_rows == kept + dropped, shard.name
    manifest = Manifest.read(output_dir)
    assert manifest.totals.balanced
    for task in manifest.tasks:
        assert task.counts is None or task.counts.balanced


def test_kill_midway_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(24_000, seed=1, words=60), corpus, rows_per_shard=600)

    clean = tmp_path / "clean"
    run_cli("dedup", "exact", str(corpus), str(clean), "--workers", "1", "-q")

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thresher.cli",
            "dedup",
            "exact",
            str(corpus),
            str(killed),
            "--workers",
            "1",
            "-q",
            "--buckets",
            "4",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    records = killed / "_thresher" / "tasks"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(records.glob("*/*.json"))) < 12:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "_manifest.json").exists(), "the run finished before it could be killed"
    done_before = {p.name: p.stat().st_mtime_ns for p in records.glob("00-hash/*.json")}
    assert 0 < len(done_before) < 40

    run_cli("dedup", "exact", str(corpus), str(killed), "--workers", "2", "-q", "--buckets", "4")
    # Finished tasks were skipped, not redone.
    for name, mtime in done_before.items():
        assert (records / "00-hash" / name).stat().st_mtime_ns == mtime
    assert parquet_bytes(killed) == parquet_bytes(clean)
    assert not list(killed.rglob("*.tmp"))
    check_accounting(corpus, killed)


def test_same_seed_gives_identical_bytes_with_one_or_two_workers(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(3000, seed=2), corpus, rows_per_shard=500)
    outputs = []
    for name, workers in (("a", "1"), ("b", "1"), ("c", "2")):
        out = tmp_path / name
        run_cli("dedup", "exact", str(corpus), str(out), "--workers", workers, "--seed", "7", "-q")
        outputs.append(parquet_bytes(out))
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0]) == 12  # 6 shards + 6 _dropped files


def test_rerun_skips_a_finished_stage_and_new_params_rerun_it(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(1000, seed=3), corpus, rows_per_shard=250)
    out = tmp_path / "out"
    first = run_stage("exact-dedup", {}, corpus, out, workers=1)
    manifest = (out / "_manifest.json").read_bytes()
    shards = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    again = run_stage("exact-dedup", {}, corpus, out, workers=1)
    assert (out / "_manifest.json").read_bytes() == manifest
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == shards
    assert again.fingerprint == first.fingerprint
    changed = run_stage("exact-dedup", {"lowercase": False}, corpus, out, workers=1)
    assert changed.fingerprint != first.fingerprint
    # Case-sensitive comparison finds fewer duplicates among the upper-cased copies.
    assert changed.totals.rows_out > first.totals.rows_out
    assert changed.params["lowercase"] is False


def test_changed_input_file_changes_only_its_shards(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    table = random_corpus(900, seed=4, dup_rate=0.0)
    for i in range(3):
        part = table.slice(300 * i, 300).to_pylist()
        (raw / f"f{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    out = tmp_path / "out"
    run_stage("ingest", {"inputs": [str(raw)]}, raw, out, workers=1)
    shards_before = parquet_bytes(out)
    lines = (raw / "f2.jsonl").read_text().splitlines(keepends=True)
    (raw / "f2.jsonl").write_text("".join(lines[:100]))
    manifest = run_stage("ingest", {"inputs": [str(raw)]}, raw, out, workers=1)
    assert manifest.totals.rows_in == 700
    shards_after = parquet_bytes(out)
    assert shards_after["part-00000-00000.parquet"] == shards_before["part-00000-00000.parquet"]
    assert shards_after["part-00002-00000.parquet"] != shards_before["part-00002-00000.parquet"]
    assert pq.read_table(out / "part-00002-00000.parquet").num_rows == 100


def test_manifest_matches_documented_schema(tmp_path: Path) -> None:
    documented = (REPO / "docs" / "manifest.schema.json").read_text()
    assert documented == manifest_json_schema(), "regenerate docs/manifest.schema.json (make schema)"
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(500, seed=5), corpus, rows_per_shard=200)
    out = tmp_path / "out"
    run_cli("dedup", "exact", str(corpus), str(out), "--workers", "1", "-q")
    data = json.loads((out / "_manifest.json").read_text())
    jsonschema.validate(data, json.loads(documented))
    assert data["stage"] == "exact-dedup" and data["schema_version"] == 1
    assert [o["path"] for o in data["outputs"]] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert {t["phase"] for t in data["tasks"]} == {"hash", "decide", "filter"}
    assert data["input"]["stage"] is None and data["input"]["path"] == str(corpus.resolve())
    assert "pyarrow" in data["versions"] and "thresher" in data["versions"]
    assert all(
        t["inputs"] and all(f["digest"].startswith("xxh3-128:") for f in t["inputs"]) for t in data["tasks"]
    )
    # Work files between phases are gone once the stage has finished.
    assert not (out / "_thresher" / "work").exists()


def test_single_task_entry_point_runs_one_task(tmp_path: Path) -> None:
    from thresher.pipelines.engine.executor import plan_stage
    from thresher.pipelines.engine.plan import Plan

    corpus = tmp_path / "corpus"
    write_shards(random_corpus(400, seed=6), corpus, rows_per_shard=200)
    out = tmp_path / "out"
    _plan, finished = plan_stage("exact-dedup", {}, corpus, out)
    assert not finished
    run_cli("task", str(out), "--phase", "hash", "--index", "1", "-q")
    assert Plan.read(out).read_record(0, 1) is not None and Plan.read(out).read_record(0, 0) is None
    refused = run_cli("task", str(out), "--phase", "decide", "--index", "0", check=False)
    assert refused.returncode == 1 and "has not finished" in refused.stderr
    env_run = subprocess.run(
        [sys.executable, "-m", "thresher.cli", "task", str(out), "--phase", "0", "-q"],
        env={**os.environ, "SLURM_ARRAY_TASK_ID": "0"},
        capture_output=True,
        text=True,
    )
    assert env_run.returncode == 0, env_run.stderr
    assert Plan.read(out).read_record(0, 0) is not None


@pytest.mark.parametrize("workers", ["1", "2"])
def test_exact_dedup_drops_exactly_the_later_repeats_across_shards(tmp_path: Path, workers: str) -> None:
    table = random_corpus(2000, seed=8, dup_rate=0.2)
    texts = [*table["text"].to_pylist(), "", "   "]
    ids = [*table["id"].to_pylist(), "empty-1", "empty-2"]
    import pyarrow as pa

    table = pa.table({"id": ids, "text": texts})
    corpus = tmp_path / "corpus"
    write_shards(table, corpus, rows_per_shard=300)
    out = tmp_path / "out"
    run_cli("dedup", "exact", str(corpus), str(out), "--workers", workers, "-q", "--buckets", "3")

    first_seen: dict[str, str] = {}
    expected: dict[str, str] = {}
    for doc_id, text in zip(ids, texts, strict=True):
        key = " ".join(text.lower().split())
        if not key:
            continue  # empty texts are never duplicates of each other
        if key in first_seen:
            expected[doc_id] = first_seen[key]
        else:
            first_seen[key] = doc_id
    dropped = pq.read_table(out / "_dropped").to_pylist()
    assert {d["id"]: d["detail"] for d in dropped} == expected
    assert {d["reason"] for d in dropped} == {"exact_duplicate"} and {d["stage"] for d in dropped} == {
        "exact-dedup"
    }
    kept = pq.read_table(out, columns=["id"])["id"].to_pylist()
    assert kept == [i for i in ids if i not in expected]  # order preserved
    manifest = Manifest.read(out)
    assert manifest.totals.dropped == {"exact_duplicate": len(expected)}
    assert manifest.summary["duplicate_rows"] == len(expected)
    check_accounting(corpus, out)


def test_exact_dedup_on_several_columns_needs_all_of_them_to_repeat(tmp_path: Path) -> None:
    """Instruction data: the same instruction with another input is not a duplicate; a missing input
    counts as empty; rows with every column empty are never duplicates."""
    import pyarrow as pa

    table = pa.table(
        {
            "id": list("abcdefgh"),
            "instruction": [
                "Sort these.",
                "Sort these.",
                "sort  THESE.",
                "Sort these.",
                "List two.",
                "List two.",
                "",
                "",
            ],
            "input": ["b, a", "c, d", "B, A", None, "", None, None, ""],
        }
    )
    write_shards(table, tmp_path / "in", rows_per_shard=3)
    out = tmp_path / "out"
    run_cli(
        "dedup", "exact", str(tmp_path / "in"), str(out), "--text-column", "instruction",
        "--also-columns", "input", "-q",
    )  # fmt: skip
    dropped = {d["id"]: d["detail"] for d in pq.read_table(out / "_dropped").to_pylist()}
    assert dropped == {"c": "a", "f": "e"}
    # One column alone would have merged every "Sort these." row.
    alone = tmp_path / "alone"
    run_cli("dedup", "exact", str(tmp_path / "in"), str(alone), "--text-column", "instruction", "-q")
    assert {d["id"] for d in pq.read_table(alone / "_dropped").to_pylist()} == {"b", "c", "d", "f"}
    missing = run_cli(
        "dedup", "exact", str(tmp_path / "in"), str(tmp_path / "x"), "--text-column", "instruction",
        "--also-columns", "inputs", "-q", check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "inputs" in missing.stderr and not (tmp_path / "x").exists()


def test_failed_rerun_keeps_the_folder_but_marks_it_unfinished(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text('{"id": "a", "text": "one"}\n')
    bad.write_text('{"id": "b", "text": \n')
    out = tmp_path / "out"
    run_cli("ingest", str(good), str(out), "-q")
    failed = run_cli("ingest", str(bad), str(out), "-q", check=False)
    assert failed.returncode == 1 and "bad.jsonl:1: malformed JSON" in failed.stderr
    assert out.is_dir() and not (out / "_manifest.json").exists()
    refused = run_cli("dedup", "exact", str(out), str(tmp_path / "next"), check=False)
    assert refused.returncode == 1 and "unfinished thresher output" in refused.stderr
    assert not (tmp_path / "next").exists()
    run_cli("ingest", str(good), str(out), "-q")
    assert Manifest.read(out).totals.rows_out == 1
