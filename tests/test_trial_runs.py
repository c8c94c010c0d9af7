"""`--limit N` trial runs: the first N rows of each input (each raw file, or the input shard set), into
OUTPUT.limit-N, never mixed with a full run's tasks; the same bytes as a full run on those rows."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Cli, read_manifest, read_rows, write_jsonl
from factories import parquet_bytes, random_corpus, write_shards


def test_ingest_trial_reads_the_first_rows_of_each_file_beside_the_full_output(
    cli: Cli, tmp_path: Path
) -> None:
    for name, start in (("a", 0), ("b", 1000)):
        write_jsonl(
            tmp_path / "raw" / f"{name}.jsonl",
            [{"id": f"d{start + i}", "text": f"t {i}"} for i in range(150)],
        )
    out = tmp_path / "ingested"
    trial = cli("ingest", tmp_path / "raw", out, "--limit", "100", "--workers", "2")
    assert trial.exit_code == 0, trial.output
    assert f"written to {out}.limit-100" in trial.output
    assert not out.exists()
    limited = Path(f"{out}.limit-100")
    ids = [r["id"] for r in read_rows(limited)]
    assert ids == [f"d{i}" for i in range(100)] + [f"d{1000 + i}" for i in range(100)]
    assert read_manifest(limited)["input"]["limit"] == 100

    full = cli("ingest", tmp_path / "raw", out, "--workers", "2")
    assert full.exit_code == 0, full.output
    assert "(0 already done)" in full.output
    assert len(read_rows(out)) == 300 and read_manifest(out)["input"]["limit"] is None
    assert len(read_rows(limited)) == 200  # untouched by the full run


def test_shard_stage_trial_equals_a_full_run_on_the_first_rows(cli: Cli, tmp_path: Path) -> None:
    corpus = random_corpus(300, seed=4, dup_rate=0.3)
    write_shards(corpus, tmp_path / "set", rows_per_shard=100)
    # The first 150 rows as a set of their own, cut where the trial cuts: 100 + 50.
    write_shards(corpus.slice(0, 100), tmp_path / "head", rows_per_shard=100)
    tail = write_shards(corpus.slice(100, 50), tmp_path / "tail", rows_per_shard=100)
    tail[0].rename(tmp_path / "head" / "part-00001.parquet")

    out = tmp_path / "exact"
    trial = cli("dedup", "exact", tmp_path / "set", out, "--limit", "150", "--workers", "2")
    assert trial.exit_code == 0, trial.output
    reference = cli("dedup", "exact", tmp_path / "head", tmp_path / "reference", "--workers", "2")
    assert reference.exit_code == 0, reference.output
    limited = Path(f"{out}.limit-150")
    assert parquet_bytes(limited) == parquet_bytes(tmp_path / "reference")
    totals = read_manifest(limited)["totals"]
    assert totals["rows_in"] == 150 and totals["dropped"]["exact_duplicate"] > 0
    again = cli("dedup", "exact", tmp_path / "set", out, "--limit", "150")
    assert "up to date" in again.output
    other = cli("dedup", "exact", tmp_path / "set", out, "--limit", "50", "--workers", "1")
    assert other.exit_code == 0 and read_manifest(Path(f"{out}.limit-50"))["totals"]["rows_in"] == 50


def test_recipe_trial_limits_the_steps_that_read_the_input(cli: Cli, tmp_path: Path) -> None:
    rows = [{"text": f"document {i % 40} about things"} for i in range(400)]
    write_jsonl(tmp_path / "raw.jsonl", rows)
    recipe = tmp_path / "two.yaml"
    recipe.write_text("name: two\nstages:\n  - stage: ingest\n  - stage: exact-dedup\n", encoding="utf-8")
    out = tmp_path / "run"
    result = cli("run", recipe, "-i", tmp_path / "raw.jsonl", "-o", out, "--limit", "60", "-w", "2")
    assert result.exit_code == 0, result.output
    limited = Path(f"{out}.limit-60")
    assert not out.exists()
    ingest, dedup = read_manifest(limited / "00-ingest"), read_manifest(limited / "01-exact-dedup")
    assert ingest["totals"]["rows_out"] == 60 and ingest["input"]["limit"] == 60
    # The later step reads the trial's own output whole: nothing more to cut.
    assert dedup["input"]["limit"] is None
    assert dedup["totals"] == {
        "rows_in": 60,
        "rows_out": 40,
        "dropped": {"exact_duplicate": 20},
        "tokens": None,
    }
    assert json.loads((limited / "_thresher" / "recipe.json").read_text())["steps"]
