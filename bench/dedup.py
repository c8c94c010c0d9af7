"""MinHash near-dedup: accuracy, speed and memory of thresher next to datasketch and datatrove, in one run.

    python bench/dedup.py                                # prose, 20k / 100k / 1M documents, both peers
    python bench/dedup.py --docs 20000                   # a quick look
    python bench/dedup.py --corpus random --peers datasketch
    python bench/dedup.py --rows-per-shard 100000        # uneven shards: 100k + the rest

Corpora (both with exact truth):
- prose: documents of about 260 words, each a random run of real English sentences from the reference
  text Python ships (`pydoc_data`); 10% are planted copies of an earlier original with word edits at
  rates that spread their Jaccard on both sides of 0.8 (see `thresher.pipelines.testing.dedup_eval`).
- random: 40 random words from a 20k-word vocabulary, 10% planted copies with word substitutions.

Truth: exact Jaccard of 5-word shingles (lower-cased, whitespace-split) of every planted pair; a pair at or
above 0.8 is a true duplicate. Precision is over the (dropped, kept-as) pairs each tool reports, scored by
the same exact Jaccard; recall is over the true planted pairs, found when both documents end in one
cluster. Every tool runs with its default options, in a child process; docs/s is wall time of that whole
process (start-up included); RSS MiB is the largest sum of RSS over the process and all its children,
sampled every 20 ms (thresher's pool workers, datatrove's task processes), and PSS MiB the same for PSS
(sampled every 200 ms),
which counts a library page shared by three processes a third in each.

Peers: datasketch's in-memory MinHashLSH (greedy: query, insert when nothing matched; 128 permutations),
from thresher's environment; datatrove 0.10.1's four MinHash stages with 2 tasks each, installed by this
script into its own virtualenv (bench/.venvs/datatrove), never a dependency of thresher. Peers run up to
--peer-max-docs documents (default 100k: datatrove at 1M takes hours on 2 cores); above that thresher runs
alone and the table says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.pipelines.testing.dedup_eval import (
    PairScores,
    ProseCorpus,
    clusters_of,
    jaccard_5,
    score_predictions,
)

THRESHOLD, NUM_PERM, NGRAM = 0.8, 128, 5
EDIT_RATES = (0.02, 0.05, 0.1, 0.2, 0.3)
BENCH = Path(__file__).resolve().parent
DATATROVE_VENV = BENCH / ".venvs" / "datatrove"
# datatrove's base install lacks what its MinHash imports: spaCy (its English word tokenizer), regex
# (text normalisation), tokenizers (imported by the dedup package), orjson (JsonlWriter); its extra
# pins xxhash below 4.
DATATROVE = ("datatrove==0.10.1", "spacy", "regex", "xxhash<4", "tokenizers", "orjson", "pyarrow")


# -- corpora -------------------------------------------------------------------------------------------------
class RandomCorpus:
    """40 random words a document; planted copies of earlier documents with substitutions."""

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        vocab = np.array([f"w{i}" for i in range(20_000)])
        words = vocab[rng.integers(0, len(vocab), size=(n, 40))]
        self.source = np.full(n, -1, np.int64)
        for i in np.nonzero(rng.random(n) < 0.1)[0]:
            if i == 0:
                continue
            source = int(rng.integers(0, i))
            rate = EDIT_RATES[int(rng.integers(0, len(EDIT_RATES)))]
            edited = rng.random(40) < rate
            words[i] = np.where(edited, vocab[rng.integers(0, len(vocab), 40)], words[source])
            self.source[i] = source
        self._texts = [" ".join(w) for w in words]

    @property
    def planted(self) -> list[tuple[int, int]]:
        return [(int(i), int(s)) for i, s in enumerate(self.source) if s >= 0]

    def text(self, i: int) -> str:
        return self._texts[i]

    def texts(self, start: int, stop: int) -> list[str]:
        return self._texts[start:stop]


Corpus = ProseCorpus | RandomCorpus


def write_corpus(corpus: Corpus, n: int, folder: Path, rows_per_shard: int) -> None:
    """Shards of `rows_per_shard` rows, each a single row group (as `pq.write_table` writes them)."""
    folder.mkdir(parents=True)
    for k, start in enumerate(range(0, n, rows_per_shard)):
        stop = min(n, start + rows_per_shard)
        table = pa.table({"id": [str(i) for i in range(start, stop)], "text": corpus.texts(start, stop)})
        pq.write_table(table, folder / f"part-{k:05d}.parquet", row_group_size=rows_per_shard)


# -- measuring -----------------------------------------------------------------------------------------------
def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float, float, str]:
    """(wall seconds, peak MiB of RSS summed over the process tree, the same for PSS, stdout) of one
    command. RSS counts shared library pages once per process; PSS splits them among the processes
    sharing them, so its sum is what the tree holds."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = psutil.Popen(list(cmd), stdout=out, stderr=err, env=env)
        peak_rss = peak_pss = 0
        samples = 0
        while proc.poll() is None:
            # RSS from statm every 20 ms; PSS needs all of smaps, a few ms of CPU per process that the
            # measured tool would lose on 2 cores, so it is read every tenth sample only.
            with_pss = samples % 10 == 0
            samples += 1
            rss = pss = 0
            with contextlib.suppress(psutil.Error):
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # ended between listing and reading
                        if with_pss:
                            info = p.memory_full_info()
                            rss, pss = rss + info.rss, pss + info.pss
                        else:
                            rss += p.memory_info().rss
            peak_rss = max(peak_rss, rss)
            if with_pss:
                peak_pss = max(peak_pss, pss)
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{err.read()[-3000:]}")
        return seconds, peak_rss / 2**20, peak_pss / 2**20, out.read()


Prediction = tuple[list[tuple[str, str]], dict[str, str]]  # (dropped, kept-as) pairs; id -> cluster


def run_thresher(corpus: Path, work: Path) -> tuple[float, float, float, Prediction, str]:
    out = work / "thresher"
    seconds, rss, pss, _ = run_measured(
        [sys.executable, "-m", "thresher.cli", "dedup", "minhash", str(corpus), str(out), "-q"]
    )
    dropped = pq.read_table(out / "_dropped", columns=["id", "detail"])
    predicted = list(zip(dropped["id"].to_pylist(), dropped["detail"].to_pylist(), strict=True))
    summary = json.loads((out / "_manifest.json").read_text())["summary"]
    tasks = len(json.loads((out / "_manifest.json").read_text())["tasks"])
    note = f"bands={summary['bands']} rows={summary['rows']} tasks={tasks}"
    return seconds, rss, pss, (predicted, clusters_of(out)), note


DATASKETCH = f"""
import json, sys, pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH
table = pq.read_table(sys.argv[1])
ids, texts = table["id"].to_pylist(), table["text"].to_pylist()
lsh = MinHashLSH(threshold={THRESHOLD}, num_perm={NUM_PERM})
dup_of = {{}}
for key, text in zip(ids, texts):
    words = text.lower().split()
    m = MinHash(num_perm={NUM_PERM})
    m.update_batch([" ".join(words[j:j + {NGRAM}]).encode() for j in range(max(len(words) - {NGRAM} + 1, 1))])
    found = lsh.query(m)
    if found:
        dup_of[key] = min(found, key=int)
    else:
        lsh.insert(key, m)
print(json.dumps(dup_of))
"""


def run_datasketch(corpus: Path, work: Path) -> tuple[float, float, float, Prediction, str]:
    seconds, rss, pss, stdout = run_measured([sys.executable, "-c", DATASKETCH, str(corpus)])
    dup_of: dict[str, str] = json.loads(stdout.strip().splitlines()[-1])
    # A dropped document names an indexed (kept) one, so its cluster is that keeper.
    cluster = {**{k: k for k in dup_of.values()}, **dup_of}
    return seconds, rss, pss, (list(dup_of.items()), cluster), "in-memory MinHashLSH, 1 process"


DATATROVE_SCRIPT = """
import sys
from pathlib import Path
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
)
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import JsonlWriter

corpus, work, tasks = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
config = MinhashConfig()
folder = {name: str(work / name) for name in ("sigs", "buckets", "remove", "removed", "kept")}


def reader():
    return ParquetReader(corpus, text_key="text", id_key="id", glob_pattern="*.parquet")


def run(pipeline, tasks, name):
    logs = str(work / "logs" / name)
    LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=tasks, logging_dir=logs).run()


run([reader(), MinhashDedupSignature(output_folder=folder["sigs"], config=config)], tasks, "sigs")
buckets = MinhashDedupBuckets(input_folder=folder["sigs"], output_folder=folder["buckets"], config=config)
run([buckets], config.num_buckets, "buckets")
clusters = MinhashDedupCluster(
    input_folder=folder["buckets"], output_folder=folder["remove"], config=config, save_cluster_id=True
)
run([clusters], 1, "clusters")
removed = JsonlWriter(folder["removed"])
dedup = MinhashDedupFilter(input_folder=folder["remove"], load_cluster_ids=True, exclusion_writer=removed)
run([reader(), dedup, JsonlWriter(folder["kept"])], tasks, "filter")
"""


def ensure_datatrove() -> Path:
    """The python of datatrove's own virtualenv, created on first use."""
    python = DATATROVE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DATATROVE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *DATATROVE], check=True)
    return python


def run_datatrove(corpus: Path, work: Path) -> tuple[float, float, float, Prediction, str]:
    import gzip

    python = ensure_datatrove()
    folder = work / "datatrove"
    tasks = len(list(corpus.glob("*.parquet")))
    env = {**os.environ, "DATATROVE_COLORIZE_LOGS": "0", "DATATROVE_COLORIZE_LOG_FILES": "0"}
    seconds, rss, pss, _ = run_measured(
        [str(python), "-c", DATATROVE_SCRIPT, str(corpus), str(folder), str(min(tasks, 2))], env
    )
    # Datatrove numbers clusters; the kept document of a cluster is the one it did not remove.
    cluster: dict[str, str] = {}
    kept_of: dict[str, str] = {}
    removed: list[tuple[str, str]] = []
    for kind in ("kept", "removed"):
        for path in sorted((folder / kind).glob("*.jsonl.gz")):
            with gzip.open(path, "rt") as f:
                for line in f:
                    doc = json.loads(line)
                    label = doc["metadata"].get("minhash_cluster_id", -1)
                    if label == -1:
                        continue
                    cluster[doc["id"]] = str(label)
                    if kind == "kept":
                        kept_of[str(label)] = doc["id"]
                    else:
                        removed.append((doc["id"], str(label)))
    predicted = [(doc, kept_of.get(label, doc)) for doc, label in removed]
    return seconds, rss, pss, (predicted, cluster), f"4 stages, {min(tasks, 2)} tasks"


PEERS: dict[str, Callable[[Path, Path], tuple[float, float, float, Prediction, str]]] = {
    "datasketch": run_datasketch,
    "datatrove": run_datatrove,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    parser.add_argument("--corpus", nargs="+", default=["prose"], choices=["prose", "random"])
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--peer-max-docs", type=int, default=100_000, help="peers skip larger corpora")
    parser.add_argument(
        "--rows-per-shard",
        type=int,
        default=None,
        help="default: half the corpus up to 100k, so the peers' two tasks both have a file to read",
    )
    args = parser.parse_args()
    print(
        f"{'corpus':<7} {'docs':>9} {'tool':<11} {'P':>6} {'R':>6} {'F1':>6} {'docs/s':>8} "
        f"{'RSS MiB':>8} {'PSS MiB':>8} {'x docs/s':>8}  notes",
        flush=True,
    )
    for kind in args.corpus:
        for n in args.docs:
            corpus: Corpus = ProseCorpus(n) if kind == "prose" else RandomCorpus(n)
            cache: dict[tuple[int, int], float] = {}

            def jaccard(a: str, b: str, corpus: Corpus = corpus, cache: dict = cache) -> float:
                key = (int(a), int(b))
                if key not in cache:
                    cache[key] = jaccard_5(corpus.text(key[0]), corpus.text(key[1]))
                return cache[key]

            truth = [(str(a), str(b)) for a, b in corpus.planted if jaccard(str(a), str(b)) >= THRESHOLD]
            rows_per_shard = args.rows_per_shard or min(100_000, math.ceil(n / 2))
            tmp = Path(tempfile.mkdtemp(prefix="thresher-dedup-"))
            try:
                write_corpus(corpus, n, tmp / "corpus", rows_per_shard)
                results: list[tuple[str, float, float, float, PairScores, str]] = []
                tools = [("thresher", run_thresher)]
                if n <= args.peer_max_docs:
                    tools += [(name, PEERS[name]) for name in args.peers]
                for name, fn in tools:
                    seconds, rss, pss, (predicted, cluster), note = fn(tmp / "corpus", tmp)
                    scores = score_predictions(predicted, cluster, truth, jaccard, THRESHOLD)
                    results.append((name, seconds, rss, pss, scores, note))
                ours = n / results[0][1]
                for name, seconds, rss, pss, s, note in results:
                    ratio = f"{ours / (n / seconds):>7.1f}x" if name != "thresher" else f"{'':>8}"
                    print(
                        f"{kind:<7} {n:>9,} {name:<11} {s.precision:>6.3f} {s.recall:>6.3f} {s.f1:>6.3f} "
                        f"{n / seconds:>8,.0f} {rss:>8.0f} {pss:>8.0f} {ratio}  {note}",
                        flush=True,
                    )
                if n > args.peer_max_docs and args.peers:
                    print(f"{kind:<7} {n:>9,} peers skipped above --peer-max-docs {args.peer_max_docs:,}")
                print(
                    f"{kind:<7} {n:>9,} truth: {len(truth):,} planted pairs at J >= {THRESHOLD}", flush=True
                )
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    print("x docs/s: thresher's docs/s over the peer's, in this run")


if __name__ == "__main__":
    main()
