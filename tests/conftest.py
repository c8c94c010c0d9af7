"""Shared helpers for CLI tests: invoke the app in-process, write JSON lines, read a shard set back."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from thresher.cli.app import app

Cli = Callable[..., Result]


@pytest.fixture
def cli() -> Cli:
    """`cli("ingest", src, out, "--workers", "1")` runs `thresher ...` in-process; paths may be Paths."""
    runner = CliRunner()

    def invoke(*args: str | Path) -> Result:
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_rows(shard_set: Path) -> list[dict[str, Any]]:
    """Every row of a shard set's `part-*.parquet` files, in shard order."""
    return [row for p in sorted(shard_set.glob("part-*.parquet")) for row in pq.read_table(p).to_pylist()]


def read_manifest(shard_set: Path) -> dict[str, Any]:
    return json.loads((shard_set / "_manifest.json").read_text(encoding="utf-8"))


@contextlib.contextmanager
def small_file_system(where: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at `where`: a full or read-only disk without faking any error."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root, so these tests run there)")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real single-node Slurm shared by the executor tests (tests/slurm_cluster.py); its MaxArraySize
    is small, so arrays of more elements are split as on a cluster with the default 1001."""
    from slurm_cluster import slurm_cluster

    with slurm_cluster(tmp_path_factory.mktemp("slurm"), max_array_size=4) as env:
        yield env
