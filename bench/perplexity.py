"""Perplexity scoring speed and signal: `perplexity kenlm` next to a raw kenlm + sentencepiece loop, and
length-sorted vs naive batching for `perplexity lm`.

    python bench/perplexity.py              # 3000 generated web docs, scored --repeat 2 times over
    python bench/perplexity.py --docs 6000

KenLM: trains a model with the real lmplz on the generator's clean prose (another seed), then times the
stage (one worker, scores only, Parquet in and out) against the loop cc_net runs per document (normalise
each line, sentencepiece, `model.score`) on the same texts; target: the stage within 1.25x of the loop.
Also times buckets cut per group (`--group-column domain`, five domains: cc_net cuts per language the same
way) and prints the bucket signal on the sample data: the share of clean vs spam/boilerplate docs in
`head`.

Causal LM: a randomly initialised GPT-2 (speed does not depend on the weights) at two context lengths,
scored by the stage with windows sorted by length vs in document order, same batch size, one thread;
target: sorted >= 2x faster. The gain is the padding naive batches carry, so it grows with the context:
at 128 tokens nearly every window is full anyway. Runs on CPU unless a GPU is visible.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.pipelines.engine.executor import run_stage
from thresher.pipelines.testing.sample_data import generate_web


def write_set(table: pa.Table, folder: Path, rows_per_shard: int = 1000) -> Path:
    folder.mkdir(parents=True)
    for i, start in enumerate(range(0, table.num_rows, rows_per_shard)):
        pq.write_table(table.slice(start, rows_per_shard), folder / f"part-{i:05d}.parquet")
    return folder


def timed(fn: object, *args: object, **kwargs: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - start, result


def bench_kenlm(work: Path, web: pa.Table, kinds: list[str], repeat: int) -> None:
    import kenlm

    from thresher.scorers.kenlm_model import load_sentencepiece
    from thresher.scorers.kenlm_text import document_lines

    reference = generate_web(3000, seed=1)
    clean = reference.table.filter(pc.equal(reference.truth["kind"], "clean"))
    ref_dir = write_set(clean, work / "ref")
    seconds, _ = timed(run_stage, "kenlm-train", {"order": 5}, ref_dir, work / "kenlm", workers=1)
    print(
        f"kenlm-train on {clean.num_rows} clean docs: {seconds:.1f}s (sentencepiece + lmplz + build_binary)"
    )

    big = pa.concat_tables([web] * repeat)
    big = big.set_column(0, "id", pa.array([f"d{i:08d}" for i in range(big.num_rows)]))
    in_dir = write_set(big, work / "web")
    texts = big["text"].to_pylist()
    docs = len(texts)

    def raw_loop() -> list[float]:
        sp = load_sentencepiece(work / "kenlm" / "tokenizer.model")
        model = kenlm.Model(str(work / "kenlm" / "model.binary"))
        out = []
        for text in texts:
            log10, tokens = 0.0, 0
            for line in document_lines(text):
                pieces = " ".join(sp.encode(line, out_type=str))
                log10 += model.score(pieces)
                tokens += len(pieces.split()) + 1
            out.append(10 ** (-log10 / tokens) if tokens else float("nan"))
        return out

    loop_s, loop_ppl = timed(raw_loop)
    params = {"model": str(work / "kenlm"), "buckets": []}
    stage_s, _ = timed(run_stage, "perplexity-kenlm", params, in_dir, work / "scored", workers=1)
    bucket_s, _ = timed(
        run_stage, "perplexity-kenlm", {"model": str(work / "kenlm")}, in_dir, work / "bucketed", workers=1
    )
    grouped = {"model": str(work / "kenlm"), "group_column": "domain"}
    group_s, _ = timed(run_stage, "perplexity-kenlm", grouped, in_dir, work / "grouped", workers=1)
    ours = pq.read_table(work / "scored")["kenlm_ppl"].to_numpy()
    assert np.allclose(ours, np.asarray(loop_ppl), rtol=1e-9), "stage and loop disagree"
    print(f"\nperplexity kenlm, {docs} docs, one worker (model and tokenizer load included in both):")
    print(f"  raw kenlm + sentencepiece loop   {docs / loop_s:9,.0f} docs/s")
    runs = (
        ("scores only", stage_s),
        ("scores + global buckets", bucket_s),
        ("scores + domain buckets", group_s),
    )
    for label, seconds in runs:
        print(
            f"  thresher, {label:23s}{docs / seconds:9,.0f} docs/s   {seconds / loop_s:.2f}x the loop's time"
        )

    rows = pq.read_table(work / "bucketed", columns=["kenlm_bucket"])["kenlm_bucket"].to_pylist()[
        : web.num_rows
    ]
    for name, wanted in (("clean", {"clean"}), ("spam+boilerplate", {"spam", "boilerplate"})):
        picked = [b for b, k in zip(rows, kinds, strict=True) if k in wanted]
        print(
            f"  share of {name:17s} docs in head: {picked.count('head') / len(picked):.0%} (n={len(picked)})"
        )


def bench_lm(work: Path, web: pa.Table) -> None:
    import torch

    from thresher.scorers.proxy_lm import PRESETS, build_model, save_pretrained, train_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = web["text"].to_pylist()
    tokenizer = train_tokenizer(iter(texts[:1000]), 4096)
    in_dir = write_set(web.slice(0, 600), work / "lm-in", rows_per_shard=600)
    print(f"\nperplexity lm, 600 docs, random GPT-2 (tiny preset width), one worker, one thread, {device}:")
    # 128 is the tiny proxy's context; 1024 is GPT-2's, where whole documents fit in one window.
    for context in (128, 1024):
        config = dataclasses.replace(PRESETS["tiny"], context_length=context)
        model = build_model(
            config, tokenizer.get_vocab_size(), tokenizer.token_to_id("<|endoftext|>"), seed=0
        )
        folder = work / f"gpt2-{context}"
        save_pretrained(model, tokenizer, folder)
        times = {}
        for sort in (True, False):
            params = {
                "model": str(folder),
                "sort_by_length": sort,
                "batch_size": 16,
                "threads": 1,
                "device": device,
            }
            out = work / f"lm-{context}-{sort}"
            times[sort], _ = timed(run_stage, "perplexity-lm", params, in_dir, out, workers=1)
        scored = pq.read_table(work / f"lm-{context}-True")["lm_ppl"].drop_null().length()
        naive, ours = 600 / times[False], 600 / times[True]
        print(
            f"  context {context:4d}: naive {naive:6.1f} docs/s   length-sorted {ours:6.1f} docs/s   "
            f"speedup {ours / naive:.2f}x  ({scored} docs scored)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000, help="Generated web docs.")
    parser.add_argument("--repeat", type=int, default=2, help="KenLM: score the set this many times over.")
    args = parser.parse_args()
    sample = generate_web(args.docs, seed=0)
    with tempfile.TemporaryDirectory(prefix="thresher-bench-ppl-") as tmp:
        bench_kenlm(Path(tmp), sample.table, sample.truth["kind"].to_pylist(), args.repeat)
        bench_lm(Path(tmp), sample.table)


if __name__ == "__main__":
    main()
