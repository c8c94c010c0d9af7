"""Builders for test inputs: shard sets written the way a user's raw Parquet would be."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = (
    "grain chaff thresh field harvest wheat barley flail sheaf straw mill stone river bread oven farmer "
    "morning autumn rain wind cart horse barn seed soil plough furrow"
).split()


def write_shards(table: pa.Table, directory: Path, rows_per_shard: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_shard)):
        path = directory / f"part-{i:05d}.parquet"
        pq.write_table(table.slice(start, rows_per_shard), path)
        paths.append(path)
    return paths


def random_corpus(rows: int, seed: int = 0, dup_rate: float = 0.1, words: int = 30) -> pa.Table:
    """Random word documents; about `dup_rate` of them repeat an earlier one, some with other case/spacing."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for i in range(rows):
        if i > 0 and rng.random() < dup_rate:
            source = texts[int(rng.integers(0, i))]
            texts.append(source.upper() if rng.random() < 0.3 else source.replace(" ", "  ", 1))
        else:
            texts.append(" ".join(rng.choice(WORDS, size=words)))
    return pa.table(
        {
            "id": [f"doc-{i:07d}" for i in range(rows)],
            "text": texts,
            "domain": [WORDS[i % 5] for i in range(rows)],
        }
    )


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a child process (what cron or Slurm would do)."""
    proc = subprocess.run([sys.executable, "-m", "thresher.cli", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"thresher {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def parquet_bytes(directory: Path) -> dict[str, bytes]:
    """Every Parquet file under a folder (shards and _dropped), by relative path."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*.parquet"))
        if "_thresher" not in p.parts
    }
