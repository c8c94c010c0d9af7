"""The Slurm executor on a real single-node Slurm: same bytes as the local executor, dry runs, a killed
array task that a rerun completes, a rerun after the submitter hung up that adopts the chain it left
queued, and squeue failures that are retried instead of taken for finished jobs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from factories import parquet_bytes, random_corpus, write_shards
from slurm_cluster import queued_jobs, table_rows, thresher, wait_for_text

REPO = Path(__file__).resolve().parents[1]


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
        "--tasks-per-job",
        "1",
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
            "--tasks-per-job",
            "1",
            "--slurm-arg=--hold",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=slurm,
    )
    jobs = queued_jobs(slurm, 3)
    subprocess.run(["scancel", f"{jobs[0]}_1"], check=True, env=slurm)
    subprocess.run(["scontrol", "release", ",".join(jobs)], check=True, env=slurm)
    _, stderr = run.communicate(timeout=180)
    assert run.returncode == 1
    assert "hash: 1 task(s) did not finish (indices 1)" in stderr and "run the same command again" in stderr

    # The cancelled task counts as failed and names its job; the phases after it wait, as pending.
    status = thresher(slurm, "status", str(out)).stdout
    rows = {cells[1]: cells for cells in table_rows(status)}
    assert rows["hash"][2:6] == ["2", "1", "0", "failed"], status
    assert "task 1: CANCELLED" in rows["hash"][6] and f"job {jobs[0]}_1" in rows["hash"][6]
    assert [rows[p][2:4] for p in ("decide", "filter")] == [["0", "0"], ["0", "0"]]
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
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "not found: --executor slurm needs the Slurm client tools" in missing.stderr
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=slurm).stdout
    assert queue.strip() == ""


def test_rerun_after_the_submitter_hung_up_adopts_its_queued_chain(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(300, seed=6), corpus, rows_per_shard=100)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "thresher.cli", "dedup", "exact", str(corpus), str(out)]
    command += ["--executor", "slurm", "--slurm-arg=--hold"]  # held: nothing runs until released
    jobs: list[str] = []
    try:
        first = subprocess.Popen(command, stderr=subprocess.DEVNULL, env=slurm)
        jobs = queued_jobs(slurm, 3)
        first.send_signal(signal.SIGHUP)  # the ssh session dropped
        assert first.wait(timeout=30) == -signal.SIGHUP

        # With no one waiting for it, the chain still shows as queued, under its job id.
        orphaned = {cells[1]: cells for cells in table_rows(thresher(slurm, "status", str(out)).stdout)}
        assert orphaned["hash"][5] == "queued"
        assert f"job {jobs[0]}: 0 running, 3 queued" in orphaned["hash"][6]

        log = tmp_path / "rerun.log"
        with log.open("w") as stderr:
            rerun = subprocess.Popen(command, stderr=stderr, env=slurm)
        said = wait_for_text(log, ("adopting", "submitted job"))
        assert "adopting" in said and "submitted job" not in said, said
        subprocess.run(["scontrol", "release", ",".join(jobs)], check=True, env=slurm)
        assert rerun.wait(timeout=180) == 0, log.read_text()
    finally:
        # Whatever this test left queued (a second chain, if the rerun submitted one) must not outlive it.
        queue = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True, env=slurm)
        subprocess.run(["scancel", *jobs, *queue.stdout.split()], capture_output=True, env=slurm)
    assert "submitted job" not in log.read_text()
    ran = {p.name.rsplit("-", 1)[1].split("_")[0] for p in (out / "_thresher" / "slurm").glob("*.log")}
    assert ran == set(jobs)  # every task ran under the first chain's jobs, none under a second chain
    assert json.loads((out / "_manifest.json").read_text())["totals"]["rows_in"] == 300


def test_squeue_failures_are_retried_not_taken_for_finished_jobs(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(200, seed=7), corpus, rows_per_shard=100)
    # A controller timing out: the first two squeue calls fail, later ones reach the real squeue.
    bin_dir, calls = tmp_path / "bin", tmp_path / "squeue-calls"
    bin_dir.mkdir()
    fake = bin_dir / "squeue"
    fake.write_text(f"""#!/bin/bash
echo x >> {calls}
if [ "$(wc -l < {calls})" -le 2 ]; then
  echo "squeue: error: Socket timed out on send/recv operation" >&2
  exit 1
fi
exec {shutil.which("squeue", path=slurm["PATH"])} "$@"
""")
    fake.chmod(0o755)
    flaky = {**slurm, "PATH": f"{bin_dir}:{slurm['PATH']}"}
    proc = thresher(flaky, "dedup", "exact", str(corpus), str(tmp_path / "out"), "--executor", "slurm")
    assert len(calls.read_text().split()) > 2 and "Socket timed out" in proc.stderr
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["totals"]["rows_in"] == 200
