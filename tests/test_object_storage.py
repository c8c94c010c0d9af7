"""Inputs and outputs on an object store, against a real S3 API (moto's server mode on a loopback port,
tests/s3_server.py): ingest from s3:// globs and prefixes, the web-pretrain recipe from s3:// to s3://
with the local run's bytes, kill -9 in the middle of a stage and resume, the lease that keeps a second
run out (exit 75), and one-line failures that commit nothing: a missing bucket, refused credentials, an
input object deleted mid-run. Every thresher here is a real process, as a user runs it."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from gate_plugin import gate_plugin_dir, with_plugin
from s3_server import CREDENTIALS, S3Server, s3_server

REPO = Path(__file__).resolve().parents[1]
_names = itertools.count()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server) -> str:
    """A new empty bucket for one test."""
    name = f"test-{next(_names)}-{os.getpid()}"
    s3.client().create_bucket(Bucket=name)
    return name


def thresher(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thresher.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def objects(s3: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = s3.client()
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    return {k[len(prefix) :]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def parquet_objects(s3: S3Server, bucket: str, prefix: str) -> dict[str, str]:
    return {
        k: hashlib.sha256(v).hexdigest()
        for k, v in objects(s3, bucket, prefix).items()
        if k.endswith(".parquet") and "_thresher/" not in k
    }


def parquet_files(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*.parquet")
        if "_thresher" not in p.parts
    }


def jsonl(rows: range) -> bytes:
    return "".join(
        json.dumps({"text": f"document number {i} about topic {i % 7}"}) + "\n" for i in rows
    ).encode()


def test_ingest_reads_globs_and_prefixes_on_s3_like_local_files(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    files = {
        "dump/a.jsonl": jsonl(range(0, 10)),
        "dump/b.jsonl.gz": gzip.compress(jsonl(range(10, 20)), mtime=0),
        "dump/sub/c.jsonl.zst": zstandard.compress(jsonl(range(20, 30))),
        "dump/notes.txt": b"not data\n",
    }
    client = s3.client()
    local = tmp_path / "local"
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(data)
    env = s3.env()

    glob = thresher(env, "ingest", f"s3://{bucket}/dump/*.jsonl*", f"s3://{bucket}/out/glob", "-q")
    assert glob.returncode == 0, glob.stderr
    manifest = json.loads(objects(s3, bucket, "out/glob/")["_manifest.json"])
    assert [f["path"] for f in manifest["input"]["files"]] == [
        f"s3://{bucket}/dump/a.jsonl",
        f"s3://{bucket}/dump/b.jsonl.gz",
    ]
    assert manifest["totals"]["rows_out"] == 20

    prefix = thresher(env, "ingest", f"s3://{bucket}/dump/", f"s3://{bucket}/out/prefix", "-q")
    assert prefix.returncode == 0, prefix.stderr
    # The same files from local disk, one named by a quoted glob: the same shards, byte for byte (ids
    # derived from each file's path below the inputs' common folder come out the same).
    on_disk = thresher(env, "ingest", str(local / "dump"), str(tmp_path / "prefix"), "-q")
    assert on_disk.returncode == 0, on_disk.stderr
    assert parquet_objects(s3, bucket, "out/prefix/") == parquet_files(tmp_path / "prefix")
    assert json.loads(objects(s3, bucket, "out/prefix/")["_manifest.json"])["totals"]["rows_out"] == 30
    quoted = thresher(env, "ingest", str(local / "dump" / "*.jsonl*"), str(tmp_path / "glob"), "-q")
    assert quoted.returncode == 0, quoted.stderr
    assert parquet_objects(s3, bucket, "out/glob/") == parquet_files(tmp_path / "glob")

    nothing = thresher(env, "ingest", f"s3://{bucket}/dump/*.csv", f"s3://{bucket}/out/none", "-q")
    assert nothing.returncode == 2
    assert nothing.stderr.strip().splitlines() == [
        f"thresher: error: s3://{bucket}/dump/*.csv: no input matches this pattern"
    ]
    assert objects(s3, bucket, "out/none/") == {}


def test_web_pretrain_recipe_from_s3_to_s3_gives_the_local_bytes(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    s3.client().put_object(
        Bucket=bucket, Key="raw/web.jsonl", Body=(REPO / "sample_data" / "web.jsonl").read_bytes()
    )
    recipe = str(REPO / "recipes" / "web-pretrain.yaml")
    # The endpoint as an option, not from the environment: the way a user points at a non-AWS store.
    env = s3.env()
    env.pop("AWS_ENDPOINT_URL")
    options = ["--storage-option", f"endpoint_url={s3.endpoint}", "--tmp-dir", str(tmp_path / "tmp")]
    remote = thresher(
        env, "run", recipe, "-i", f"s3://{bucket}/raw/web.jsonl", "-o", f"s3://{bucket}/web", *options
    )
    assert remote.returncode == 0, remote.stderr
    local = thresher(
        env, "run", recipe, "-i", str(REPO / "sample_data" / "web.jsonl"), "-o", str(tmp_path / "web"), "-q"
    )
    assert local.returncode == 0, local.stderr

    stored = objects(s3, bucket, "web/")
    steps = sorted({k.split("/")[0] for k in stored} - {"_thresher"})
    assert steps == sorted(p.name for p in (tmp_path / "web").iterdir() if p.is_dir() and p.name[0] != "_")
    assert all(f"{step}/_manifest.json" in stored for step in steps)
    assert parquet_objects(s3, bucket, "web/") == parquet_files(tmp_path / "web")
    assert len(parquet_files(tmp_path / "web")) > 20
    # Models were uploaded whole and are the bytes the local run trained.
    for artifact in ("05-quality-train/model.bin", "08-kenlm/model.binary"):
        assert stored[artifact] == (tmp_path / "web" / artifact).read_bytes()
    # Nothing of the run's own scratch is left: no work files, no temp objects, no lease.
    assert not [k for k in stored if "/_thresher/work/" in k or k.endswith(".tmp") or "lease" in k]
    assert not list((tmp_path / "tmp").glob("thresher-scratch-*"))
    # Credentials reach no output, log line or object.
    secret = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    assert secret not in remote.stdout + remote.stderr
    assert not [k for k, v in stored.items() if secret.encode() in v]

    again = thresher(
        env, "run", recipe, "-i", f"s3://{bucket}/raw/web.jsonl", "-o", f"s3://{bucket}/web", *options
    )
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("is up to date") == len(steps)


def test_killed_mid_stage_on_s3_resumes_from_its_finished_tasks(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    client = s3.client()
    local = tmp_path / "raw"
    local.mkdir()
    for i in range(24):  # one read task per file
        data = jsonl(range(i * 50, i * 50 + 50))
        client.put_object(Bucket=bucket, Key=f"raw/part-{i:02d}.jsonl", Body=data)
        (local / f"part-{i:02d}.jsonl").write_bytes(data)
    env = s3.env()
    out = f"s3://{bucket}/ingested"
    args = [sys.executable, "-m", "thresher.cli", "ingest", f"s3://{bucket}/raw/", out, "--workers", "1"]
    run = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = "ingested/_thresher/tasks/00-read/"
    deadline = time.monotonic() + 120
    while len(objects(s3, bucket, records)) < 4:
        assert run.poll() is None, run.communicate()[1]
        assert time.monotonic() < deadline, "no task finished in time"
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    killed = objects(s3, bucket, "ingested/")
    done = len([k for k in killed if k.startswith("_thresher/tasks/00-read/")])
    assert 4 <= done < 24
    assert "_manifest.json" not in killed
    # Every part present is whole (uploaded in one piece once finished), never a partial object.
    import pyarrow as pa
    import pyarrow.parquet as pq

    for key, data in killed.items():
        if key.endswith(".parquet"):
            pq.read_table(pa.BufferReader(data))

    resumed = thresher(env, "ingest", f"s3://{bucket}/raw/", out, "--workers", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert f"({done} already done)" in resumed.stderr or f"({done + 1} already done)" in resumed.stderr
    on_disk = thresher(env, "ingest", str(local), str(tmp_path / "ingested"), "-q")
    assert on_disk.returncode == 0, on_disk.stderr
    assert parquet_objects(s3, bucket, "ingested/") == parquet_files(tmp_path / "ingested")
    assert not [k for k in objects(s3, bucket, "ingested/") if "lease" in k]
    forced = thresher(env, "ingest", f"s3://{bucket}/raw/", out, "--workers", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "(0 already done)" in forced.stderr
    assert parquet_objects(s3, bucket, "ingested/") == parquet_files(tmp_path / "ingested")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gate_plugin_dir(tmp_path_factory.mktemp("gate-plugin"))


def ingest_corpus(s3: S3Server, bucket: str, rows: int = 60, rows_per_shard: int = 20) -> str:
    s3.client().put_object(Bucket=bucket, Key="raw/docs.jsonl", Body=jsonl(range(rows)))
    out = f"s3://{bucket}/corpus"
    done = thresher(
        s3.env(),
        "ingest",
        f"s3://{bucket}/raw/docs.jsonl",
        out,
        "--rows-per-shard",
        str(rows_per_shard),
        "-q",
    )
    assert done.returncode == 0, done.stderr
    return out


def wait_for_file(path: Path, run: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def start_gated(
    s3: S3Server, bucket: str, plugin: Path, tmp_path: Path
) -> tuple[dict[str, str], list[str], subprocess.Popen[str], Path]:
    """A gate-wait run from a new corpus to s3://BUCKET/gated, held at its first batch until the test
    creates GATE/open: (its environment, its arguments, the process, the gate folder)."""
    corpus = ingest_corpus(s3, bucket)
    gate = tmp_path / "gate"
    gate.mkdir()
    env = with_plugin(s3.env(), plugin)
    args = ["apply", "gate-wait", corpus, f"s3://{bucket}/gated", "-p", f"gate={gate}", "-q", "-w", "1"]
    run = subprocess.Popen(
        [sys.executable, "-m", "thresher.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return env, args, run, gate


def test_a_second_run_on_a_leased_s3_output_exits_75(
    s3: S3Server, bucket: str, plugin: Path, tmp_path: Path
) -> None:
    env, args, first, gate = start_gated(s3, bucket, plugin, tmp_path)
    try:
        wait_for_file(gate / "started", first)
        lease = json.loads(objects(s3, bucket, "gated/_thresher/")["lease.json"])
        assert lease["pid"] == first.pid
        second = thresher(env, *args)
        assert second.returncode == 75
        said = second.stderr.strip().splitlines()
        assert len(said) == 1 and "another thresher run is writing here" in said[0], second.stderr
        assert f"pid {first.pid} on " in said[0]
    finally:
        (gate / "open").touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    stored = objects(s3, bucket, "gated/")
    assert "_manifest.json" in stored and "_thresher/lease.json" not in stored


def test_missing_bucket_and_refused_credentials_fail_in_one_line_committing_nothing(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    corpus = ingest_corpus(s3, bucket)
    env = s3.env()
    no_input = thresher(env, "dedup", "exact", "s3://no-such-bucket-here/corpus", f"s3://{bucket}/out1")
    assert no_input.returncode == 2, no_input.stderr
    assert no_input.stderr.strip().splitlines() == [
        "thresher: error: s3://no-such-bucket-here/corpus: input directory does not exist"
    ]
    no_output = thresher(env, "dedup", "exact", corpus, "s3://no-such-bucket-here/out")
    said = no_output.stderr.strip().splitlines()
    assert no_output.returncode == 1 and len(said) == 1, no_output.stderr
    assert "s3://no-such-bucket-here/out" in said[0] and "bucket does not exist" in said[0].lower()
    assert "Traceback" not in no_output.stderr
    assert sorted({k.split("/")[0] for k in objects(s3, bucket)}) == ["corpus", "raw"]

    # A store that checks signatures refuses keys it never issued, as S3 does.
    with s3_server(tmp_path / "auth.log", auth=True) as strict:
        refused = thresher(strict.env(), "ingest", "s3://any-bucket/docs.jsonl", "s3://any-bucket/out")
    said = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(said) == 1, refused.stderr
    assert said[0].startswith("thresher: error: s3://any-bucket/docs.jsonl: access denied")
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in refused.stderr


def test_an_input_object_deleted_mid_run_fails_in_one_line_without_a_manifest(
    s3: S3Server, bucket: str, plugin: Path, tmp_path: Path
) -> None:
    _env, _args, run, gate = start_gated(s3, bucket, plugin, tmp_path)
    wait_for_file(gate / "started", run)
    last = sorted(k for k in objects(s3, bucket, "corpus/") if k.startswith("part-"))[-1]
    s3.client().delete_object(Bucket=bucket, Key=f"corpus/{last}")
    (gate / "open").touch()
    _, err = run.communicate(timeout=300)
    said = [line for line in err.strip().splitlines() if line.startswith("thresher: error")]
    assert run.returncode == 1 and len(said) == 1, err
    assert f"s3://{bucket}/corpus/{last}" in said[0] and "Traceback" not in err
    stored = objects(s3, bucket, "gated/")
    assert "_manifest.json" not in stored and "_thresher/lease.json" not in stored


def test_slurm_runs_a_stage_from_s3_to_s3_like_the_local_executor(
    s3: S3Server, bucket: str, slurm: dict[str, str]
) -> None:
    corpus = ingest_corpus(s3, bucket, rows=300, rows_per_shard=100)
    # The array tasks get the store's endpoint and credentials from the submitter's environment.
    env = s3.env(slurm)
    local = thresher(env, "dedup", "exact", corpus, f"s3://{bucket}/local", "-q")
    assert local.returncode == 0, local.stderr
    on_slurm = thresher(env, "dedup", "exact", corpus, f"s3://{bucket}/slurm", "-q", "--executor", "slurm")
    assert on_slurm.returncode == 0, on_slurm.stderr
    stored = objects(s3, bucket, "slurm/")
    assert "_manifest.json" in stored and "_thresher/slurm/jobs.json" in stored
    assert parquet_objects(s3, bucket, "slurm/") == parquet_objects(s3, bucket, "local/")
