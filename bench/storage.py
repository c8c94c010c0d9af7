"""Object storage next to local disk: ingest + exact dedup + export through a local S3 server (moto's
server mode on a loopback port, as the tests use) against the same commands on local disk, in one run.

    python bench/storage.py                     # 200k rows in 4 JSON-lines files, every core
    python bench/storage.py --rows 1000000 --big-shard-rows 1000000

Prints, for each step, seconds on disk and on S3 and their ratio (S3 / disk), and the peak RSS of each
run's process tree. Then the memory of reading one shard bigger than a task may hold: a single Parquet
shard (one row group, as `pyarrow.parquet.write_table` writes up to a million rows) on S3, deduplicated;
its peak RSS next to the shard's size on the store, its uncompressed text, and the same shard on disk.
Reads of an object go through ranged GETs of a buffered file object, so reading from S3 should cost no
more memory than reading from disk.

moto keeps objects in its own process's memory and answers over HTTP on the same 2 cores, so the S3
figures include the server's work: a real store costs network latency instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dedup import run_measured  # bench/dedup.py: peak RSS of a process tree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from s3_server import s3_server  # noqa: E402 - tests/ is put on the path just above

VOCAB = np.array([f"w{i}" for i in range(5000)])


def texts(rows: int, seed: int) -> list[str]:
    """Documents of 60 random words; about 5% repeat an earlier one exactly."""
    rng = np.random.default_rng(seed)
    out = [" ".join(w) for w in VOCAB[rng.integers(0, len(VOCAB), size=(rows, 60))]]
    for j in np.nonzero(rng.random(rows) < 0.05)[0]:
        out[j] = out[int(rng.integers(0, rows))]
    return out


def make_raw(directory: Path, rows: int, files: int) -> None:
    directory.mkdir(parents=True)
    per = -(-rows // files)
    for i in range(files):
        chunk = texts(min(per, rows - i * per), seed=i)
        with open(directory / f"raw-{i:03d}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": f"doc-{i}-{k}", "text": t}) + "\n" for k, t in enumerate(chunk))


def thresher(env: dict[str, str], *args: str) -> tuple[float, float]:
    seconds, rss, _pss, _ = run_measured([sys.executable, "-m", "thresher.cli", *args, "-q"], env=env)
    return seconds, rss


def pipeline(env: dict[str, str], raw: str, root: str) -> list[tuple[str, float, float]]:
    """(step, seconds, peak RSS MiB) of ingest, exact dedup and export under `root`."""
    steps = [
        ("ingest", ["ingest", raw, f"{root}/00-ingest"]),
        ("exact dedup", ["dedup", "exact", f"{root}/00-ingest", f"{root}/01-exact"]),
    ]
    measured = [(name, *thresher(env, *args)) for name, args in steps]
    export = [sys.executable, "-m", "thresher.cli", "export", f"{root}/01-exact", f"{root}/export.jsonl.zst"]
    seconds, rss, _pss, _ = run_measured(export, env=env)
    return [*measured, ("export jsonl.zst", seconds, rss)]


def big_shard(env: dict[str, str], client: object, rows: int, work: Path) -> dict[str, float]:
    table = pa.table({"id": [f"d{i}" for i in range(rows)], "text": texts(rows, seed=99)})
    local = work / "big.parquet"
    pq.write_table(table, local, compression="zstd", row_group_size=rows)
    text_mib = sum(len(t) for t in table["text"].to_pylist()) / 2**20
    client.upload_file(str(local), "bench", "big/part-00000.parquet")  # type: ignore[attr-defined]
    seconds, rss = thresher(env, "dedup", "exact", "s3://bench/big", "s3://bench/big-dedup")
    (work / "big").mkdir()
    local.rename(work / "big" / local.name)
    disk_seconds, disk_rss = thresher(env, "dedup", "exact", str(work / "big"), str(work / "big-dedup"))
    return {
        "rows": rows,
        "shard_mib": (work / "big" / local.name).stat().st_size / 2**20,
        "text_mib": text_mib,
        "seconds": seconds,
        "peak_rss_mib": rss,
        "disk_seconds": disk_seconds,
        "disk_rss_mib": disk_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--big-shard-rows", type=int, default=500_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="thresher-bench-storage-"))
    try:
        raw = work / "raw"
        make_raw(raw, args.rows, args.files)
        with s3_server(work / "moto.log") as s3:
            env = s3.env()
            client = s3.client()
            client.create_bucket(Bucket="bench")
            for path in sorted(raw.iterdir()):
                client.upload_file(str(path), "bench", f"raw/{path.name}")
            on_disk = pipeline(env, str(raw), str(work / "local"))
            on_s3 = pipeline(env, "s3://bench/raw/", "s3://bench/run")
            big = big_shard(env, client, args.big_shard_rows, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.rows:,} rows in {args.files} JSON-lines files, 60 words a document")
    print(f"{'step':<18}{'disk s':>9}{'S3 s':>9}{'S3/disk':>9}{'disk RSS MiB':>14}{'S3 RSS MiB':>12}")
    for (name, d_s, d_rss), (_, s_s, s_rss) in zip(on_disk, on_s3, strict=True):
        print(f"{name:<18}{d_s:>9.2f}{s_s:>9.2f}{s_s / d_s:>9.2f}{d_rss:>14.0f}{s_rss:>12.0f}")
    total_d, total_s = sum(s for _, s, _ in on_disk), sum(s for _, s, _ in on_s3)
    print(f"{'all three':<18}{total_d:>9.2f}{total_s:>9.2f}{total_s / total_d:>9.2f}")
    print(
        f"\none shard on S3, {big['rows']:,} rows in one row group: {big['shard_mib']:.0f} MiB stored, "
        f"{big['text_mib']:.0f} MiB of text; exact dedup peak RSS {big['peak_rss_mib']:.0f} MiB "
        f"(process tree) in {big['seconds']:.1f} s; the same shard on disk: {big['disk_rss_mib']:.0f} MiB "
        f"in {big['disk_seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
