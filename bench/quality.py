"""Quality stages: `thresher quality score` next to a raw fastText predict loop, and the heuristic and PII
filters, in docs/s.

    python bench/quality.py                  # 200k documents
    python bench/quality.py --docs 50000     # a quick look

The corpus is the sample-data generator's web documents (clean prose, boilerplate, spam, short junk, PII,
long documents), repeated with fresh ids up to --docs. A quality model is trained on it with the stage's
default settings. The raw loop is what a user would write around fastText directly: load the model, then
`model.predict(batch, k=-1)` over the same texts (already in memory, newlines replaced) in batches of
8192. thresher reads the Parquet shards, predicts, and writes the scored shards; the ratio
thresher/raw (time) is the price of the engine, with the target at most 1.25. thresher runs with one
worker so both sides use one core; its time is measured inside the child process, after imports, the way
bench/engine.py does it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.pipelines.testing.sample_data import generate_web

ROWS_PER_SHARD = 20_000
DISTINCT_DOCS = 20_000


def make_corpus(directory: Path, docs: int) -> tuple[pa.Table, list[str]]:
    """Shards of `docs` web documents; also returns the generator's kinds for training labels."""
    sample = generate_web(min(docs, DISTINCT_DOCS), seed=0)
    table, kinds = sample.table, sample.truth["kind"].to_pylist()
    parts, n = [], 0
    while n < docs:
        part = table.slice(0, docs - n)
        ids = pa.array([f"bench-{n + i:09d}" for i in range(part.num_rows)])
        parts.append(part.set_column(0, "id", ids))
        n += part.num_rows
    corpus = pa.concat_tables(parts).combine_chunks()
    directory.mkdir(parents=True)
    for i, start in enumerate(range(0, docs, ROWS_PER_SHARD)):
        pq.write_table(corpus.slice(start, ROWS_PER_SHARD), directory / f"part-{i:05d}.parquet")
    return table, kinds


def thresher(*args: str) -> float:
    """Seconds one thresher command takes, measured in its own process after imports."""
    code = (
        "import sys, time; from thresher.cli.app import app; t = time.perf_counter()\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(time.perf_counter() - t)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"thresher {' '.join(args)} failed:\n{proc.stderr}")
    return float(proc.stdout.split()[-1])


def train_model(tmp: Path, sample: pa.Table, kinds: list[str]) -> Path:
    train_set = tmp / "train-set"
    train_set.mkdir()
    pq.write_table(sample, train_set / "part-00000.parquet")
    pq.write_table(pa.table({"id": sample["id"], "kind": kinds}), tmp / "labels.parquet")
    thresher(
        "quality", "train", str(train_set), str(tmp / "model"), "--labels", str(tmp / "labels.parquet"),
        "--label-column", "kind", "--positive-values", "clean", "--negative-values", "boilerplate,spam",
        "-w", "1", "-q",
    )  # fmt: skip
    return tmp / "model" / "model.bin"


def raw_predict(model_path: Path, corpus: Path) -> float:
    """The baseline: fastText's own predict over the same texts, batched, with no I/O in the timing."""
    import fasttext.FastText

    texts = []
    for path in sorted(corpus.glob("*.parquet")):
        texts += pc.replace_substring(pq.read_table(path, columns=["text"])["text"], "\n", " ").to_pylist()
    start = time.perf_counter()
    model = fasttext.FastText._FastText(model_path=str(model_path))
    for i in range(0, len(texts), 8192):
        model.predict(texts[i : i + 8192], k=-1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=200_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="thresher-bench-quality-"))
    try:
        corpus = tmp / "corpus"
        sample, kinds = make_corpus(corpus, args.docs)
        model = train_model(tmp, sample, kinds)
        raw_s = raw_predict(model, corpus)
        score_s = thresher(
            "quality", "score", str(corpus), str(tmp / "scored"), "--model", str(model), "-w", "1", "-q"
        )
        heuristics_s = thresher("heuristics", str(corpus), str(tmp / "heuristics"), "-w", "1", "-q")
        c4_lines_s = thresher("heuristics", str(corpus), str(tmp / "c4-lines"), "-w", "1", "-q", "--c4-lines")
        pii_s = thresher("pii", str(corpus), str(tmp / "pii"), "-w", "1", "-q")
        docs = args.docs
        print(f"{docs:,} documents, {model.stat().st_size / 1e6:.1f} MB model, one worker")
        print(f"{'':28} {'docs/s':>10} {'seconds':>8}")
        print(f"{'raw fastText predict':28} {docs / raw_s:>10,.0f} {raw_s:>8.2f}")
        print(f"{'thresher quality score':28} {docs / score_s:>10,.0f} {score_s:>8.2f}")
        print(f"{'  thresher / raw (time)':28} {score_s / raw_s:>10.2f}   target <= 1.25")
        print(f"{'thresher heuristics':28} {docs / heuristics_s:>10,.0f} {heuristics_s:>8.2f}")
        print(f"{'thresher heuristics --c4-lines':28} {docs / c4_lines_s:>10,.0f} {c4_lines_s:>8.2f}")
        print(f"{'thresher pii (redact)':28} {docs / pii_s:>10,.0f} {pii_s:>8.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
