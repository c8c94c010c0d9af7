"""Engine throughput and memory: ingest + exact dedup against a plain pyarrow read+write of the same data.

    python bench/engine.py                 # 100k and 1M rows
    python bench/engine.py --rows 200000   # one size

Prints, for each size: rows/s of thresher (ingest, exact dedup, both) next to the floor (pyarrow reading
and rewriting the same Parquet files, nothing else), the ratio, and the peak RSS of each thresher run
(one worker, so the figure is one process's). Memory should stay flat as rows grow, because every task
streams record batches and holds at most one shard or one hash bucket.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_FILE = 100_000
VOCAB = np.array([f"w{i}" for i in range(5000)])


def make_raw(directory: Path, rows: int, seed: int = 0) -> None:
    """Raw Parquet input in files of 100k rows, 60 words a document, about 5% exact repeats."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for i, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        words = VOCAB[rng.integers(0, len(VOCAB), size=(n, 60))]
        texts = [" ".join(w) for w in words]
        for j in np.nonzero(rng.random(n) < 0.05)[0]:
            texts[j] = texts[int(rng.integers(0, n))]
        ids = [f"doc-{start + k:09d}" for k in range(n)]
        pq.write_table(pa.table({"id": ids, "text": texts}), directory / f"raw-{i:04d}.parquet")


def floor(raw: Path, out: Path) -> float:
    """The least any engine must do: read every batch and write it back out."""
    out.mkdir()
    start = time.perf_counter()
    for path in sorted(raw.glob("*.parquet")):
        pf = pq.ParquetFile(path)
        with pq.ParquetWriter(out / path.name, pf.schema_arrow, compression="zstd") as writer:
            for batch in pf.iter_batches(batch_size=8192):
                writer.write_batch(batch)
    return time.perf_counter() - start


def thresher(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one thresher command run in a child process."""
    # VmHWM, not getrusage: Linux carries ru_maxrss over from the parent across fork+exec, and this
    # parent held the generated data.
    code = (
        "import re, sys, time; from thresher.cli.app import app; t = time.perf_counter()\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print(time.perf_counter() - t, int(hwm) / 1024)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    seconds, rss = proc.stdout.split()[-2:]
    return float(seconds), float(rss)


def run(rows: int, workers: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="thresher-bench-"))
    try:
        raw = tmp / "raw"
        make_raw(raw, rows)
        base = floor(raw, tmp / "floor")
        ingest_s, ingest_rss = thresher("ingest", str(raw), str(tmp / "ingest"), "-q", "-w", str(workers))
        dedup_s, dedup_rss = thresher(
            "dedup", "exact", str(tmp / "ingest"), str(tmp / "dedup"), "-q", "-w", str(workers)
        )
        kept = json.loads((tmp / "dedup" / "_manifest.json").read_text())["totals"]["rows_out"]
        return {
            "rows": rows,
            "floor_rows_s": rows / base,
            "ingest_rows_s": rows / ingest_s,
            "dedup_rows_s": rows / dedup_s,
            "pipeline_rows_s": rows / (ingest_s + dedup_s),
            "ratio": base / (ingest_s + dedup_s),
            "ingest_rss_mb": ingest_rss,
            "dedup_rss_mb": dedup_rss,
            "kept": kept,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=1, help="1 makes peak RSS one process's figure")
    args = parser.parse_args()
    print(
        f"{'rows':>10} {'floor r/s':>11} {'ingest r/s':>11} {'dedup r/s':>11} {'both r/s':>10} "
        f"{'both/floor':>10} {'ingest MB':>10} {'dedup MB':>9} {'kept':>9}"
    )
    for rows in args.rows:
        r = run(rows, args.workers)
        print(
            f"{r['rows']:>10,} {r['floor_rows_s']:>11,.0f} {r['ingest_rows_s']:>11,.0f} "
            f"{r['dedup_rows_s']:>11,.0f} "
            f"{r['pipeline_rows_s']:>10,.0f} {r['ratio']:>10.2f} {r['ingest_rss_mb']:>10.0f} "
            f"{r['dedup_rss_mb']:>9.0f} {r['kept']:>9,}",
            flush=True,
        )


if __name__ == "__main__":
    main()
