"""The Slurm executor on a real single-node Slurm: same bytes as the local executor, dry runs, and a
killed array task that a rerun completes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import parquet_bytes, random_corpus, write_shards
from slurm_cluster import slurm_cluster

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def thresher(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "thresher.cli", *args], capture_output=True, text=True, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"thresher {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def test_web_pretrain_recipe_on_slurm_equals_local(slurm: dict[str, str], tmp_path: Path) -> None:
    recipe, data = str(REPO / "recipes" / "web-pretrain.yaml"), str(REPO / "sample_data" / "web.jsonl")
    thresher(slurm, "run", recipe, "-i", data, "-o", str(tmp_path / "local"), "-q")
    thresher(slurm, "run", recipe, "-i", data, "-o", str(tmp_path / "slurm"), "-q", "--executor", "slurm")

    def steps_in(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))

    steps = steps_in(tmp_path / "local")
    assert steps == steps_in(tmp_path / "slurm") and len(steps) >= 3
    for step in steps:
        assert parquet_bytes(tmp_path / "slurm" / step) == parquet_bytes(tmp_path / "local" / step), step
    logs = list((tmp_path / "slurm" / steps[-1] / "_thresher" / "slurm").glob("*.log"))
    assert logs, "array tasks wrote no Slurm logs: did they run under Slurm?"


def test_dry_run_writes_and_prints_scripts_without_submitting(slurm: dict[str, str], tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(300, seed=1), corpus, rows_per_shard=100)
    out = tmp_path / "out"
    proc = thresher(
        slurm,
        "dedup",
        "exact",
        str(corpus),
        str(out),
        "--executor",
        "slurm",
        "--dry-run",
        "--slurm-partition",
        "debug",
        "--slurm-max-concurrent",
        "2",
        "--slurm-time",
        "0:10:00",
    )
    scripts = sorted((out / "_thresher" / "slurm").glob("*.sbatch"))
    assert [s.name for s in scripts] == ["00-hash.sbatch", "01-decide.sbatch", "02-filter.sbatch"]
    text = scripts[0].read_text()
    assert (
        "#SBATCH --array=0-2%2" in text and "#SBATCH --partition=debug" in text and "--time=0:10:00" in text
    )
    assert "task" in text and "--phase hash" in text and str(scripts[0]) in proc.stderr
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=slurm).stdout
    assert queue.strip() == "" and not (out / "_manifest.json").exists()


def test_killed_array_task_is_reported_and_a_rerun_completes(slurm: dict[str, str], tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(600, seed=2), corpus, rows_per_shard=200)
    thresher(slurm, "dedup", "exact", str(corpus), str(tmp_path / "local"), "-q", "-w", "1")
    out = tmp_path / "out"
    # Held jobs wait until this test has cancelled one array task, so the kill cannot come too late.
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thresher.cli",
            "dedup",
            "exact",
            str(corpus),
            str(out),
            "-q",
            "--executor",
            "slurm",
            "--slurm-arg=--hold",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=slurm,
    )
    jobs: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(jobs) < 3:
        listed = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True, env=slurm)
        jobs = sorted(set(listed.stdout.split()), key=int)
        time.sleep(0.2)
    assert len(jobs) == 3, jobs
    subprocess.run(["scancel", f"{jobs[0]}_1"], check=True, env=slurm)
    subprocess.run(["scontrol", "release", ",".join(jobs)], check=True, env=slurm)
    _, stderr = run.communicate(timeout=180)
    assert run.returncode == 1
    assert "hash: 1 task(s) did not finish (indices 1)" in stderr and "run the same command again" in stderr

    status = thresher(slurm, "status", str(out)).stdout
    hash_row = next(line for line in status.splitlines() if " hash " in line)
    assert [cell.strip() for cell in hash_row.split("│")[3:7]] == ["2", "0", "1", "no"]
    assert not (out / "_manifest.json").exists()

    thresher(slurm, "dedup", "exact", str(corpus), str(out), "-q", "--executor", "slurm")
    assert parquet_bytes(out) == parquet_bytes(tmp_path / "local")
    assert (out / "_manifest.json").exists()


def test_sbatch_missing_or_failing_is_one_clear_line(slurm: dict[str, str], tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(100, seed=3), corpus, rows_per_shard=50)
    refused = thresher(
        slurm,
        "dedup",
        "exact",
        str(corpus),
        str(tmp_path / "a"),
        "--executor",
        "slurm",
        "--slurm-partition",
        "no-such-partition",
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("thresher: error: sbatch failed:")
    assert "partition" in refused.stderr.lower()
    no_slurm = {**slurm, "PATH": str(Path(sys.executable).parent)}  # python, but no Slurm tools
    missing = thresher(
        no_slurm, "dedup", "exact", str(corpus), str(tmp_path / "b"), "--executor", "slurm", check=False
    )
    assert missing.returncode == 1 and "sbatch not found" in missing.stderr
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=slurm).stdout
    assert queue.strip() == ""
