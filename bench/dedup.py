"""MinHash near-dedup: accuracy, speed and memory, thresher next to datasketch's in-memory MinHashLSH.

    python bench/dedup.py                      # 100k and 1M documents
    python bench/dedup.py --docs 20000         # a quick look
    python bench/dedup.py --verify exact estimate   # exact verification next to the signature estimate

The corpus: documents of 40 random words from a 20k-word vocabulary, 10% of them planted copies of an
earlier document with word edits at known rates, so the true Jaccard of every planted pair is computed
exactly. Both tools score against the same truth at threshold 0.8: precision over the pairs each one
reports (exact Jaccard of 5-word shingles >= 0.8), recall over the planted pairs at or above 0.8.

thresher runs each phase's tasks as separate `thresher task` processes with one worker, so the peak RSS
printed for each phase is one task's. The baseline is the usual in-memory loop: MinHash every document
(datasketch's sha1 hash), query the index, insert it if nothing matched.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

THRESHOLD, NUM_PERM, NGRAM = 0.8, 128, 5
EDIT_RATES = (0.02, 0.05, 0.1, 0.2, 0.3)
ROWS_PER_SHARD = 100_000


def shingles(text: str) -> set[str]:
    words = text.split()
    return {" ".join(words[i : i + NGRAM]) for i in range(max(len(words) - NGRAM + 1, 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def make_corpus(n: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """Texts and the planted (copy, source) pairs."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20_000)])
    words = [list(row) for row in vocab[rng.integers(0, len(vocab), size=(n, 40))]]
    planted = []
    for i in np.nonzero(rng.random(n) < 0.1)[0]:
        if i == 0:
            continue
        source = int(rng.integers(0, i))
        copy = list(words[source])
        rate = EDIT_RATES[int(rng.integers(0, len(EDIT_RATES)))]
        for j in np.nonzero(rng.random(len(copy)) < rate)[0]:
            copy[j] = str(vocab[rng.integers(0, len(vocab))])
        words[i] = copy
        planted.append((int(i), source))
    return [" ".join(w) for w in words], planted


def peak_mb(proc_out: str) -> float:
    return float(proc_out.strip().split()[-1])


def run_task(output: Path, phase: str, index: int) -> float:
    """Run one task in a fresh process; return its peak RSS in MB (VmHWM: this process only)."""
    code = (
        "import re, sys; from thresher.cli.app import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "task", str(output), "--phase", phase, "--index", str(index), "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    return peak_mb(proc.stdout)


def run_thresher(corpus: Path, output: Path, verify: str) -> tuple[float, dict[str, float], dict[str, int]]:
    from thresher.pipelines.engine.executor import plan_stage, run_stage

    start = time.perf_counter()
    params = {"verify": verify}
    plan, _ = plan_stage("minhash-dedup", params, corpus, output)
    peaks: dict[str, float] = {}
    for phase in plan.phases:
        peaks[phase.name] = max(run_task(output, phase.name, i) for i in range(len(phase.tasks)))
    manifest = run_stage(
        "minhash-dedup", params, corpus, output, workers=1
    )  # all tasks done: writes the manifest
    seconds = time.perf_counter() - start
    cluster = dict(
        zip(*(pq.read_table(output, columns=["id", "minhash_cluster"]).to_pydict().values()), strict=True)
    )
    dropped = pq.read_table(output / "_dropped", columns=["id", "detail"]).to_pylist()
    cluster.update({d["id"]: d["detail"] for d in dropped})
    summary = {"bands": manifest.summary["bands"], "rows": manifest.summary["rows"]}
    pairs = {int(d["id"]): int(d["detail"]) for d in dropped}
    return seconds, peaks, {"pairs": pairs, "cluster": cluster, **summary}  # type: ignore[dict-item]


def run_datasketch(texts: list[str]) -> tuple[float, float, dict[int, int]]:
    code = f"""
import json, re, sys, time, pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH
texts = pq.read_table(sys.argv[1])["text"].to_pylist()
start = time.perf_counter()
lsh = MinHashLSH(threshold={THRESHOLD}, num_perm={NUM_PERM})
dup_of = {{}}
for i, text in enumerate(texts):
    words = text.split()
    m = MinHash(num_perm={NUM_PERM})
    m.update_batch([" ".join(words[j:j + {NGRAM}]).encode() for j in range(max(len(words) - {NGRAM} + 1, 1))])
    found = lsh.query(m)
    if found:
        dup_of[i] = min(found)
    else:
        lsh.insert(i, m)
seconds = time.perf_counter() - start
hwm = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps(dup_of)); print(seconds, hwm)
"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "texts.parquet"
        pq.write_table(pa.table({"text": texts}), path)
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
        )
    lines = proc.stdout.strip().splitlines()
    seconds, hwm = map(float, lines[-1].split())
    return seconds, hwm, {int(k): v for k, v in json.loads(lines[-2]).items()}


def scores(
    predicted: dict[int, int],
    same_cluster: Callable[[int, int], bool],
    texts: list[str],
    truth: list[tuple[int, int]],
) -> tuple[float, float, float]:
    correct = sum(jaccard(texts[a], texts[b]) >= THRESHOLD for a, b in predicted.items())
    precision = correct / len(predicted) if predicted else 1.0
    recall = sum(same_cluster(a, b) for a, b in truth) / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument(
        "--verify",
        nargs="+",
        default=["exact"],
        choices=["exact", "exact-any", "estimate", "none"],
        help="thresher's --verify modes to run, one row each",
    )
    args = parser.parse_args()
    header = (
        f"{'docs':>10} {'tool':<20} {'precision':>9} {'recall':>7} {'F1':>6} {'docs/s':>9} {'peak MB':>8}"
    )
    print(header + "  phases")
    for n in args.docs:
        texts, planted = make_corpus(n)
        truth = [(a, b) for a, b in planted if jaccard(texts[a], texts[b]) >= THRESHOLD]
        tmp = Path(tempfile.mkdtemp(prefix="thresher-dedup-"))
        try:
            corpus = tmp / "corpus"
            corpus.mkdir()
            ids = [str(i) for i in range(n)]
            for k, start in enumerate(range(0, n, ROWS_PER_SHARD)):
                pq.write_table(
                    pa.table(
                        {
                            "id": ids[start : start + ROWS_PER_SHARD],
                            "text": texts[start : start + ROWS_PER_SHARD],
                        }
                    ),
                    corpus / f"part-{k:05d}.parquet",
                )
            for verify in args.verify:
                seconds, peaks, result = run_thresher(corpus, tmp / f"out-{verify}", verify)
                cluster = result["cluster"]
                p, r, f = scores(
                    result["pairs"],
                    lambda a, b, cluster=cluster: (
                        str(a) in cluster and cluster.get(str(a)) == cluster.get(str(b))
                    ),
                    texts,
                    truth,
                )
                phases = " ".join(f"{k}={v:.0f}MB" for k, v in peaks.items())
                tool = f"thresher/{verify}"
                print(
                    f"{n:>10,} {tool:<20} {p:>9.3f} {r:>7.3f} {f:>6.3f} {n / seconds:>9,.0f} "
                    f"{max(peaks.values()):>8.0f}  {phases} (bands={result['bands']} rows={result['rows']})",
                    flush=True,
                )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        seconds, hwm, dup_of = run_datasketch(texts)

        def root(i: int, dup_of: dict[int, int] = dup_of) -> int:
            while i in dup_of:
                i = dup_of[i]
            return i

        p, r, f = scores(dup_of, lambda a, b: root(a) == root(b), texts, truth)
        print(
            f"{n:>10,} {'datasketch':<20} {p:>9.3f} {r:>7.3f} {f:>6.3f} {n / seconds:>9,.0f} {hwm:>8.0f}  "
            "in-memory MinHashLSH",
            flush=True,
        )


if __name__ == "__main__":
    main()
