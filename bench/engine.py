"""Engine throughput and memory: ingest + exact dedup against a plain pyarrow read+write of the same data.

    python bench/engine.py                          # JSON lines, 100k and 1M rows, every core
    python bench/engine.py --rows 200000 --format parquet --repeat 5

Prints, for each size: rows/s of thresher (ingest, exact dedup, both) next to the floor (pyarrow reading
the same raw files, `pyarrow.json` for JSON lines, and writing them to Parquet, nothing else; timed in this
process, and again as a fresh `python` process, which pays the interpreter's and pyarrow's start-up as every
thresher command does), the ratios ingest/floor, ingest/script and both/floor, and the peak RSS of each
thresher run summed over its process tree (the parent and any pool workers, sampled every 20 ms). Memory
should stay flat as rows grow, because every task streams record batches and holds at most one shard or
one hash bucket.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
from dedup import run_measured  # bench/dedup.py, beside this script: one way to measure a process tree

BENCH = Path(__file__).resolve().parent
ROWS_PER_FILE = 100_000
VOCAB = np.array([f"w{i}" for i in range(5000)])


def make_raw(directory: Path, rows: int, fmt: str, seed: int = 0) -> None:
    """Raw input in files of 100k rows, 60 words a document, about 5% exact repeats."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for i, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        words = VOCAB[rng.integers(0, len(VOCAB), size=(n, 60))]
        texts = [" ".join(w) for w in words]
        for j in np.nonzero(rng.random(n) < 0.05)[0]:
            texts[j] = texts[int(rng.integers(0, n))]
        ids = [f"doc-{start + k:09d}" for k in range(n)]
        table = pa.table({"id": ids, "text": texts})
        if fmt == "parquet":
            pq.write_table(table, directory / f"raw-{i:04d}.parquet")
        else:
            with open(directory / f"raw-{i:04d}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row) + "\n" for row in table.to_pylist())


def floor(raw: Path, out: Path) -> float:
    """The least any engine must do: read every raw file with pyarrow and write it back out as Parquet."""
    out.mkdir()
    start = time.perf_counter()
    for path in sorted(raw.iterdir()):
        target = out / (path.stem + ".parquet")
        if path.suffix == ".jsonl":
            table = pajson.read_json(path)
            pq.write_table(table, target, compression="zstd")
            continue
        pf = pq.ParquetFile(path)
        with pq.ParquetWriter(target, pf.schema_arrow, compression="zstd") as writer:
            for batch in pf.iter_batches(batch_size=8192):
                writer.write_batch(batch)
    return time.perf_counter() - start


def floor_process(raw: Path, out: Path) -> float:
    """The same floor as a fresh `python` process, start-up and imports included, as thresher is timed."""
    script = (
        "import sys, pathlib; sys.path.insert(0, sys.argv[3]); import engine; "
        "engine.floor(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))"
    )
    seconds, _rss, _pss, _ = run_measured([sys.executable, "-c", script, str(raw), str(out), str(BENCH)])
    return seconds


def thresher(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB of the whole process tree) of one thresher command in a child process."""
    seconds, rss, _pss, _ = run_measured([sys.executable, "-m", "thresher.cli", *args])
    return seconds, rss


def run(rows: int, workers: int | None, fmt: str, repeat: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="thresher-bench-"))
    try:
        raw = tmp / "raw"
        make_raw(raw, rows, fmt)
        jobs = ["-w", str(workers)] if workers else []
        runs: list[tuple[float, float, float, float, float, float]] = []
        # Each measurement `repeat` times, interleaved, and the median taken: on a shared 2-core machine
        # one run of the same command varies by a quarter.
        for _ in range(repeat):
            for folder in ("floor", "floor-process", "ingest", "dedup"):
                shutil.rmtree(tmp / folder, ignore_errors=True)
            base = floor(raw, tmp / "floor")
            base_process = floor_process(raw, tmp / "floor-process")
            ingest_s, ingest_rss = thresher("ingest", str(raw), str(tmp / "ingest"), "-q", *jobs)
            dedup_s, dedup_rss = thresher(
                "dedup", "exact", str(tmp / "ingest"), str(tmp / "dedup"), "-q", *jobs
            )
            runs.append((base, ingest_s, dedup_s, ingest_rss, dedup_rss, base_process))
        base, ingest_s, dedup_s = (statistics.median(r[k] for r in runs) for k in range(3))
        ingest_rss, dedup_rss = (max(r[k] for r in runs) for k in (3, 4))
        base_process = statistics.median(r[5] for r in runs)
        kept = json.loads((tmp / "dedup" / "_manifest.json").read_text())["totals"]["rows_out"]
        return {
            "rows": rows,
            "floor_rows_s": rows / base,
            "ingest_rows_s": rows / ingest_s,
            "dedup_rows_s": rows / dedup_s,
            "pipeline_rows_s": rows / (ingest_s + dedup_s),
            "ingest_ratio": base / ingest_s,
            "process_rows_s": rows / base_process,
            "ingest_process_ratio": base_process / ingest_s,
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
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "parquet"], help="raw input files")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; medians are printed")
    args = parser.parse_args()
    print(
        f"{'format':<7} {'rows':>10} {'floor r/s':>10} {'script r/s':>10} {'ingest r/s':>10} "
        f"{'dedup r/s':>10} {'both r/s':>9} {'ingest/floor':>12} {'ingest/script':>13} {'both/floor':>10} "
        f"{'ingest MiB':>10} {'dedup MiB':>9} {'kept':>9}"
    )
    for rows in args.rows:
        r = run(rows, args.workers, args.format, args.repeat)
        print(
            f"{args.format:<7} {r['rows']:>10,} {r['floor_rows_s']:>10,.0f} {r['process_rows_s']:>10,.0f} "
            f"{r['ingest_rows_s']:>10,.0f} {r['dedup_rows_s']:>10,.0f} {r['pipeline_rows_s']:>9,.0f} "
            f"{r['ingest_ratio']:>12.2f} {r['ingest_process_ratio']:>13.2f} {r['ratio']:>10.2f} "
            f"{r['ingest_rss_mb']:>10.0f} {r['dedup_rss_mb']:>9.0f} {r['kept']:>9,}",
            flush=True,
        )
    print(
        "floor: pyarrow reads the raw files and writes Parquet, in this process; script: the same as a fresh "
        "python process (start-up and imports timed, as thresher's are); r/s: medians of --repeat runs; "
        "MiB: the largest RSS over the process tree"
    )


if __name__ == "__main__":
    main()
