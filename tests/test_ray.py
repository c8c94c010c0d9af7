"""The Ray executor on a real two-node Ray cluster (tests/ray_cluster.py): the web-pretrain recipe gives the
local executor's bytes even when the worker node is killed mid-run, a task lost with its node is run again
and says so, and a missing cluster is one line of error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import parquet_bytes, random_corpus, write_shards
from gate_plugin import gate_plugin_dir, with_plugin
from ray_cluster import RayCluster, ray_cluster
from s3_server import s3_server

REPO = Path(__file__).resolve().parents[1]
# Ray's C++ core warns on stderr that the test namespace has no route out (it looks for its address that
# way). Only there: on a machine with a network the line does not appear.
NO_ROUTE = re.compile(r"^\[[\d\- :,]+ W \d+ \d+\] network_util\.cc:\d+: Failed to determine local IP")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gate_plugin_dir(tmp_path_factory.mktemp("gate-plugin"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, plugin: Path) -> Iterator[RayCluster]:
    # Nodes get the plugin on PYTHONPATH so their workers find the gate-wait stage.
    with ray_cluster(tmp_path_factory.mktemp("ray"), with_plugin(dict(os.environ), plugin)) as c:
        yield c


@pytest.fixture
def two_nodes(cluster: RayCluster) -> RayCluster:
    """The cluster with a live worker beside the head (an earlier test may have killed it)."""
    if not any(w.poll() is None for w in cluster.workers):
        cluster.add_worker()
    return cluster


def thresher_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "thresher.cli", *args]


def run_local(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run(thresher_args(*args), capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


def ray_flags(cluster: RayCluster) -> list[str]:
    return ["--executor", "ray", "--ray-address", cluster.address]


def wait_for(condition: object, what: str, run: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if run.poll() is not None:
            raise AssertionError(f"the run ended ({run.returncode}) before {what}:\n{run.communicate()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def steps_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))


def test_web_pretrain_recipe_survives_a_killed_worker_node(two_nodes: RayCluster, tmp_path: Path) -> None:
    recipe, data = str(REPO / "recipes" / "web-pretrain.yaml"), str(REPO / "sample_data" / "web.jsonl")
    out, local_out = tmp_path / "ray", tmp_path / "local"
    ray_args = thresher_args("run", recipe, "-i", data, "-o", str(out), "-q", *ray_flags(two_nodes))
    run = subprocess.Popen(two_nodes.command(*ray_args), env=two_nodes.env, stderr=subprocess.PIPE, text=True)
    # The local run goes alongside: both are slow on a small machine, and they share no state.
    local = subprocess.Popen(
        thresher_args("run", recipe, "-i", data, "-o", str(local_out), "-q"),
        env=two_nodes.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Mid-run: the third step has begun, so the first two ran on both nodes and more remains.
        wait_for(lambda: any(out.glob("0[2-9]-*/_thresher/tasks/*/*.json")), "the third step began", run)
        two_nodes.kill_node(next(w for w in two_nodes.workers if w.poll() is None))
        assert run.poll() is None and not (out / steps_in(out)[-1] / "_manifest.json").exists()
        _, stderr = run.communicate(timeout=600)
        _, local_stderr = local.communicate(timeout=600)
    finally:
        for proc in (run, local):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert run.returncode == 0, stderr
    assert local.returncode == 0, local_stderr
    steps = steps_in(local_out)
    assert steps == steps_in(out) and len(steps) >= 3
    for step in steps:
        assert parquet_bytes(out / step) == parquet_bytes(local_out / step), step
        assert (out / step / "_manifest.json").is_file(), step


def test_task_lost_with_its_node_runs_again(two_nodes: RayCluster, plugin: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(200, seed=3), corpus, rows_per_shard=100)
    local_gate, gate = tmp_path / "local-gate", tmp_path / "gate"
    local_gate.mkdir()
    (local_gate / "open").touch()
    gate.mkdir()
    run_local(
        two_nodes.env, "apply", "gate-wait", str(corpus), str(tmp_path / "local"), "-p", f"gate={local_gate}"
    )
    out = tmp_path / "ray"
    args = thresher_args("apply", "gate-wait", str(corpus), str(out), "-p", f"gate={gate}", "-q")
    run = subprocess.Popen(
        two_nodes.command(*args, *ray_flags(two_nodes)), env=two_nodes.env, stderr=subprocess.PIPE, text=True
    )
    started = gate / "started"
    try:
        # One CPU a node and one a task: both tasks run at once only with one on each node.
        wait_for(lambda: started.exists() and len(started.read_text().splitlines()) == 2, "both tasks", run)
        pids = [int(line.split()[0]) for line in started.read_text().splitlines()]
        nodes = [two_nodes.node_of(pid) for pid in pids]
        assert two_nodes.head in nodes, "no task started on the head node"
        worker = next(n for n in nodes if n is not two_nodes.head)
        assert worker in two_nodes.workers, "a task ran outside the cluster's nodes"
        two_nodes.kill_node(worker)
        (gate / "open").touch()
        _, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr
    lost = [line for line in stderr.splitlines() if "lost with its Ray worker or node" in line]
    assert len(lost) == 1 and "running it again (retry 1 of 3)" in lost[0], stderr
    assert re.search(r"gate-wait/\w+: task part-0000[01]\.parquet lost", lost[0]), lost[0]
    # Two first runs and the lost task's second, on the head this time.
    assert len(started.read_text().splitlines()) == 3
    shards = parquet_bytes(out)
    assert shards == parquet_bytes(tmp_path / "local")
    assert sorted(k for k in shards if "/" not in k) == ["part-00000.parquet", "part-00001.parquet"]


def test_no_cluster_is_one_line_and_leaves_no_output(cluster: RayCluster, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(50, seed=4), corpus, rows_per_shard=50)
    out = tmp_path / "out"
    args = thresher_args("dedup", "exact", str(corpus), str(out), "--executor", "ray", "--ray-address")
    # A port in the cluster's namespace that nothing listens on.
    proc = subprocess.run(
        cluster.command(*args, "127.0.0.1:6390"), env=cluster.env, capture_output=True, text=True, timeout=120
    )
    said = [line for line in proc.stderr.splitlines() if line.strip() and not NO_ROUTE.match(line)]
    assert proc.returncode == 1, proc.stderr
    assert len(said) == 1 and "no Ray cluster at 127.0.0.1:6390" in said[0], proc.stderr
    assert "ray start --head" in said[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_failing_task_fails_the_run_with_its_own_error(cluster: RayCluster, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(50, seed=5), corpus, rows_per_shard=50)
    # The gate folder is missing, so the task's first write fails (FileNotFoundError) on the worker.
    args = ("apply", "gate-wait", str(corpus), "-p", f"gate={tmp_path / 'missing'}", "-q")
    local = subprocess.run(
        thresher_args(*args[:3], str(tmp_path / "local"), *args[3:]),
        env=cluster.env,
        capture_output=True,
        text=True,
    )
    ray = subprocess.run(
        cluster.command(*thresher_args(*args[:3], str(tmp_path / "ray"), *args[3:], *ray_flags(cluster))),
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = [line for line in ray.stderr.splitlines() if line.strip() and not NO_ROUTE.match(line)]
    assert local.returncode == ray.returncode == 1, ray.stderr
    assert said == local.stderr.strip().splitlines() and len(said) == 1, ray.stderr
    assert "missing/started" in said[0] and "Traceback" not in ray.stderr
    assert not (tmp_path / "ray").exists()


# Run inside the namespace, where the S3 server listens: copy every object under a prefix to a folder.
_DOWNLOAD = """
import sys, s3fs
fs = s3fs.S3FileSystem()
fs.get(sys.argv[1], sys.argv[2], recursive=True)
"""


def test_a_stage_from_s3_to_s3_on_ray_gives_the_local_bytes(two_nodes: RayCluster, tmp_path: Path) -> None:
    # The store must be reachable from the cluster's namespace, so the server runs in it too.
    prefix = two_nodes.command()
    with s3_server(tmp_path / "moto.log", command_prefix=prefix) as s3:
        env = s3.env(two_nodes.env)
        corpus = tmp_path / "corpus"
        write_shards(random_corpus(400, seed=9), corpus, rows_per_shard=100)
        make_bucket = "import boto3; boto3.client('s3').create_bucket(Bucket='ray-bucket')"
        subprocess.run(two_nodes.command(sys.executable, "-c", make_bucket), env=env, check=True)
        for name, args in (("local", []), ("ray", ray_flags(two_nodes))):
            run = subprocess.run(
                two_nodes.command(
                    *thresher_args("dedup", "exact", str(corpus), f"s3://ray-bucket/{name}", "-q", *args)
                ),
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert run.returncode == 0, run.stderr
            fetch = [sys.executable, "-c", _DOWNLOAD, f"ray-bucket/{name}/", str(tmp_path / name)]
            subprocess.run(two_nodes.command(*fetch), env=env, check=True)
    assert (tmp_path / "ray" / "_manifest.json").is_file()
    assert parquet_bytes(tmp_path / "ray") == parquet_bytes(tmp_path / "local")
    assert len(parquet_bytes(tmp_path / "ray")) >= 4
