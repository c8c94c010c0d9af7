"""Slurm chains that need no live submitter, on the real single-node Slurm (tests/slurm_cluster.py):
a detached recipe whose submitter exits at once, a rerun that adopts a queued chain instead of
submitting a second, tasks preempted or told their time is up that run again, arrays split at the
cluster's MaxArraySize with several tasks per element, per-step resources, and dry runs that show
every step's jobs and their dependency flags."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from factories import parquet_bytes, random_corpus, write_shards
from gate_plugin import gate_plugin_dir, with_plugin
from slurm_cluster import table_rows, thresher

REPO = Path(__file__).resolve().parents[1]


def squeue(env: dict[str, str], *args: str) -> list[str]:
    listed = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, env=env)
    return listed.stdout.split()


def jobs_of(step: Path) -> list[dict]:
    return json.loads((step / "_thresher" / "slurm" / "jobs.json").read_text())["jobs"]


@contextmanager
def releasing_held_jobs(env: dict[str, str]) -> Iterator[None]:
    """Release every held job, again and again, while the body runs: the last job of a detached step
    submits the next step with the same options, --hold included."""
    stop = threading.Event()

    def release() -> None:
        while not stop.is_set():
            held = squeue(env, "-t", "PD", "-o", "%i|%r")
            ids = [line.split("|")[0] for line in held if line.endswith(("|JobHeldUser", "|JobHeldAdmin"))]
            if ids:
                subprocess.run(["scontrol", "release", *ids], capture_output=True, env=env)
            stop.wait(0.3)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def two_step_recipe(folder: Path) -> Path:
    recipe = folder / "two-step.yaml"
    recipe.write_text(
        """name: two-step
stages:
  - stage: exact-dedup
  - stage: heuristics
    slurm: {mem: 300M, tasks_per_job: 1}
"""
    )
    return recipe


def test_detached_web_pretrain_recipe_completes_after_its_submitter_exits(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    recipe, data = str(REPO / "recipes" / "web-pretrain.yaml"), str(REPO / "sample_data" / "web.jsonl")
    local, detached = tmp_path / "local", tmp_path / "slurm"
    thresher(slurm, "run", recipe, "-i", data, "-o", str(local), "-q")
    started = time.monotonic()
    submit = thresher(
        slurm, "run", recipe, "-i", data, "-o", str(detached), "-q", "--executor", "slurm", "--detach"
    )
    submit_seconds = time.monotonic() - started
    assert "finishes the stage and submits the next step" in submit.stderr, submit.stderr
    # The submitter is gone; the chain is all in the queue: ingest's array job and the job that finishes
    # it and submits the next step.
    assert squeue(slurm, "-o", "%F") and not (detached / "00-ingest" / "_manifest.json").exists()
    assert submit_seconds < 60

    follow = thresher(slurm, "status", str(detached), "--wait", check=False)
    assert follow.returncode == 0, follow.stdout + follow.stderr

    def steps_in(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))

    steps = steps_in(local)
    assert steps == steps_in(detached) and len(steps) >= 3
    for step in steps:
        assert parquet_bytes(detached / step) == parquet_bytes(local / step), step
        assert (detached / step / "_manifest.json").exists()
        # Every step after the first was submitted by the finishing job of the step before it.
        finish = [j for j in jobs_of(detached / step) if j["phase"] == "finish"]
        assert len(finish) == 1 or step == steps[-1], step
    last_logs = list((detached / steps[-1] / "_thresher" / "slurm").glob("*.log"))
    assert last_logs, "array tasks wrote no Slurm logs: did they run under Slurm?"
    assert squeue(slurm, "-o", "%F") == []


def test_rerun_of_a_detached_chain_adopts_it_and_per_step_resources_apply(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(400, seed=21), corpus, rows_per_shard=100)
    recipe = two_step_recipe(tmp_path)
    out = tmp_path / "out"
    command = ["run", str(recipe), "-i", str(corpus), "-o", str(out), "--executor", "slurm"]
    thresher(slurm, "run", str(recipe), "-i", str(corpus), "-o", str(tmp_path / "local"), "-q")
    try:
        first = thresher(slurm, *command, "--detach", "--slurm-arg=--hold")
        queued = sorted(squeue(slurm, "-o", "%F"), key=int)
        assert len(queued) == 4, first.stderr  # hash, decide, filter, and the job that finishes the step

        # The submitter died long ago; running it again submits nothing beside the queued chain.
        again = thresher(slurm, *command, "--detach", "--slurm-arg=--hold")
        assert "still in the queue" in again.stderr and "nothing submitted" in again.stderr
        assert sorted(squeue(slurm, "-o", "%F"), key=int) == queued

        rows = {cells[1]: cells for cells in table_rows(thresher(slurm, "status", str(out)).stdout)}
        assert rows["hash"][5] == "queued" and "detached: job" in rows["hash"][6], rows
        assert rows["-"][5] == "pending"  # the heuristics step, not planned yet

        # An attached rerun follows the chain to its end instead of submitting its own.
        with releasing_held_jobs(slurm):
            follow = thresher(slurm, *command)
        assert "adopting job(s)" in follow.stderr and "submitted job" not in follow.stderr
    finally:
        subprocess.run(["scancel", *squeue(slurm, "-o", "%F")], capture_output=True, env=slurm)
    for step in ("00-exact-dedup", "01-heuristics"):
        assert parquet_bytes(out / step) == parquet_bytes(tmp_path / "local" / step), step
    # The step's own `slurm:` options shaped its jobs; the step before ran with the command line's.
    heuristics = (out / "01-heuristics" / "_thresher" / "slurm" / "00-filter.sbatch").read_text()
    dedup = (out / "00-exact-dedup" / "_thresher" / "slurm" / "00-hash.sbatch").read_text()
    assert "#SBATCH --mem=300M" in heuristics and "--mem" not in dedup
    assert [j["per_element"] for j in jobs_of(out / "01-heuristics") if j["phase"] == "filter"] == [1]


def test_preempted_and_timed_out_tasks_run_again_with_nothing_partial_left(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    plugin = gate_plugin_dir(tmp_path / "plugin")
    env = with_plugin(slurm, plugin)
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(200, seed=22), corpus, rows_per_shard=100)
    open_gate = tmp_path / "open-gate"
    open_gate.mkdir()
    (open_gate / "open").touch()
    thresher(env, "apply", "gate-wait", str(corpus), str(tmp_path / "local"), "-p", f"gate={open_gate}", "-q")

    gate = tmp_path / "gate"
    gate.mkdir()
    out = tmp_path / "out"
    args = ["apply", "gate-wait", str(corpus), str(out), "-p", f"gate={gate}", "-q", "--executor", "slurm"]
    args += ["--tasks-per-job", "1", "--slurm-time", "10:00"]
    run = subprocess.Popen(
        [sys.executable, "-m", "thresher.cli", *args], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        starts = wait_for_lines(gate / "started", 2)
        job = jobs_of(out)[0]["job"]
        # Element 0 is preempted (Slurm stops it with SIGTERM and queues it again); element 1 is told
        # that its time limit is near (SIGUSR1 to the batch step) and puts itself back in the queue.
        subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True, env=slurm)
        subprocess.run(["scancel", "--batch", "--signal=USR1", f"{job}_1"], check=True, env=slurm)
        starts = wait_for_lines(
            gate / "started", 4, nudge=start_requeued_now(slurm, [f"{job}_0", f"{job}_1"])
        )
        # Both stopped tasks left no shard, no temp file and no record behind them.
        assert not list(out.glob("part-*")) and not list(out.glob(".*.tmp"))
        assert not list((out / "_thresher").rglob("records/*"))
        (gate / "open").touch()
        _, stderr = run.communicate(timeout=240)
    finally:
        (gate / "open").touch()
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    pids = [line.split()[0] for line in starts]
    assert len(set(pids)) == 4  # each element ran twice, in a new process each time
    assert parquet_bytes(out) == parquet_bytes(tmp_path / "local")
    logs = "".join(p.read_text() for p in (out / "_thresher" / "slurm").glob("*.log"))
    assert "time limit near: task stopped; requeueing job" in logs and "stopped by SIGTERM" in logs
    assert "could not requeue" not in logs


def start_requeued_now(env: dict[str, str], elements: list[str]) -> Callable[[], None]:
    """Slurm holds a requeued job back for two minutes (BeginTime); an admin may let it start sooner,
    which keeps the test short without changing what runs. Only once the job has waited a few seconds:
    started while its last run is still being cleaned up, Slurm may mark the new run FAILED."""
    pending_since: dict[str, float] = {}

    def nudge() -> None:
        for element in elements:
            if squeue(env, "-j", element, "-o", "%T|%r") != ["PENDING|BeginTime"]:
                pending_since.pop(element, None)
                continue
            since = pending_since.setdefault(element, time.monotonic())
            if time.monotonic() - since > 3:
                now = ["scontrol", "update", f"JobId={element}", "StartTime=now"]
                subprocess.run(now, env=env, capture_output=True)

    return nudge


def wait_for_lines(
    path: Path, count: int, timeout: float = 120, nudge: Callable[[], None] = lambda: None
) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        nudge()
        time.sleep(0.2)
    raise AssertionError(f"{path}: {len(lines)} of {count} lines after {timeout} s")


def test_arrays_split_at_max_array_size_and_group_small_tasks(slurm: dict[str, str], tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(1000, seed=23), corpus, rows_per_shard=100)  # 10 shards
    thresher(slurm, "dedup", "exact", str(corpus), str(tmp_path / "local"), "-q")
    split = tmp_path / "split"
    thresher(
        slurm, "dedup", "exact", str(corpus), str(split), "-q", "--executor", "slurm", "--tasks-per-job", "1"
    )
    hash_jobs = [j for j in jobs_of(split) if j["phase"] == "hash"]
    # The test cluster's MaxArraySize is 4: ten one-task elements take three array jobs (4 + 4 + 2).
    assert [j["tasks"] for j in hash_jobs] == ["0-3", "4-7", "8-9"]
    scripts = sorted(p.name for p in (split / "_thresher" / "slurm").glob("00-hash*.sbatch"))
    assert scripts == ["00-hash-part0.sbatch", "00-hash-part1.sbatch", "00-hash-part2.sbatch"]
    assert parquet_bytes(split) == parquet_bytes(tmp_path / "local")

    grouped = tmp_path / "grouped"
    thresher(
        slurm, "dedup", "exact", str(corpus), str(grouped), "-q", "--executor", "slurm", "--buckets", "6"
    )
    # By default an element gets about 100k rows: all ten 100-row shards are one element of one job.
    jobs = jobs_of(grouped)
    assert [(j["tasks"], j["per_element"]) for j in jobs if j["phase"] == "hash"] == [("0-9", 1000)]
    # Hash buckets have no row counts: spread over the partition's CPUs, several buckets an element.
    decide = [j for j in jobs if j["phase"] == "decide"]
    cpus = int(
        subprocess.run(["sinfo", "-h", "-o", "%C"], capture_output=True, text=True, env=slurm).stdout.split(
            "/"
        )[3]
    )
    assert [(j["tasks"], j["per_element"]) for j in decide] == [("0-5", -(-6 // cpus))]
    assert parquet_bytes(grouped) == parquet_bytes(tmp_path / "local")


def test_recipe_dry_run_shows_every_step_with_dependencies_and_its_own_resources(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(300, seed=24), corpus, rows_per_shard=100)
    recipe = tmp_path / "gpu.yaml"
    recipe.write_text(
        """name: gpu-step
stages:
  - stage: exact-dedup
  - stage: heuristics
    slurm: {gres: "gpu:1", partition: gpu}
"""
    )
    out = tmp_path / "out"
    shown = thresher(
        slurm,
        "run",
        str(recipe),
        "-i",
        str(corpus),
        "-o",
        str(out),
        "--executor",
        "slurm",
        "--dry-run",
        "--detach",
    ).stderr
    assert squeue(slurm, "-o", "%F") == []
    first, _, later = shown.partition("01-heuristics")
    # The first step's jobs, each with the flag that chains it to the one before.
    assert "sbatch --parsable --kill-on-invalid-dep=yes " in first
    assert "--dependency=afterok:<00-hash>" in first and "--dependency=afterok:<01-decide>" in first
    assert "--dependency=afterok:<02-filter>" in first and "finish.sbatch" in first
    assert "--gres" not in first
    # The step after it cannot be planned yet, but its jobs show with its own resources.
    assert "#SBATCH --gres=gpu:1" in later and "#SBATCH --partition=gpu" in later
    assert "--array=<known once the step before has run>" in later


def test_detached_chain_that_failed_resubmits_only_unfinished_tasks(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(300, seed=25), corpus, rows_per_shard=100)
    thresher(slurm, "dedup", "exact", str(corpus), str(tmp_path / "local"), "-q")
    out = tmp_path / "out"
    command = [
        "dedup",
        "exact",
        str(corpus),
        str(out),
        "--executor",
        "slurm",
        "--detach",
        "--tasks-per-job",
        "1",
    ]
    thresher(slurm, *command, "--slurm-arg=--hold")
    hash_job = jobs_of(out)[0]["job"]
    subprocess.run(["scancel", f"{hash_job}_1"], check=True, env=slurm)
    with releasing_held_jobs(slurm):
        failed = thresher(slurm, "status", str(out), "--wait", check=False)
    # The chain behind the cancelled task was cancelled with it: nothing is left waiting forever.
    assert failed.returncode == 1 and squeue(slurm, "-o", "%F") == []
    rows = {cells[1]: cells for cells in table_rows(failed.stdout)}
    assert rows["hash"][2:6] == ["2", "1", "0", "failed"], failed.stdout

    again = thresher(slurm, *command)
    assert "hash: submitted job" in again.stderr and "(1 tasks in 1 array element(s))" in again.stderr
    assert thresher(slurm, "status", str(out), "--wait", check=False).returncode == 0
    assert parquet_bytes(out) == parquet_bytes(tmp_path / "local")
