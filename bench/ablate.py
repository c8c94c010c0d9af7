"""Did the curation help? `thresher ablate` on the sample data, for curation, selection and mixing.

    python -P bench/ablate.py                          # the defaults: about 10 minutes on 2 CPU cores
    python -P bench/ablate.py --seeds 3 --web-tokens 1000000 --instruct-tokens 100000
    python -P bench/ablate.py --only selection --work out/ablate-bench   # one group; keep the outputs

Each ablation is one `thresher ablate` run: a shared BPE tokenizer, then identical tiny proxy LMs (the
`tiny` preset) trained on the same number of tokens of every train set, per seed, and scored on held-out
text. A row is a train set next to the run's baseline (its first set): the difference in eval loss (nats per
token, negative: better than the baseline) with its 95% paired bootstrap interval over eval documents, both
read from the run's ablation.json, then the loss itself (mean +- std over seeds), the training seconds and
tokens/s of its models (mean over seeds, from the run's manifest) and the seconds it took to make the set
(the recipe, the selection or the DoReMi and mix stages; empty for the input itself).

- curation: raw (sample_data/web.jsonl as ingested) against the output of recipes/web-pretrain.yaml and
  against a seeded random subset of raw with as many words as the curated set.
- selection: MoDS, and LESS and DSIR with a target set of one task type (as bench/selection.py runs them,
  with the same tiny models), each against a seeded random draw of as many rows from the instruction pool.
  Rows are trained on as the selection models see them (prompt, then answer).
- mixture: DoReMi's domain weights (`thresher reweight doremi`, then `thresher mix`) against a uniform
  mixture mixed the same way, from sample_data/web.

Held-out text is generated with other seeds than the sample data, and any text also in a train source is
left out: clean documents (the generator's `kind`) of web seed 1, in the generator's domain shares for
curation and equally many of every domain for the mixture; for selection, correct rows of instruction seed
10, of the target task and of every task. Each model scores the first --eval-docs of each eval set.

When a train set holds fewer tokens than the budget, `thresher ablate` repeats it, so every model sees the
same number of tokens. At the default web budget every web set is larger than it, so raw, curated and the
random subset each give that many distinct tokens; the random subset (as large as the curated set) tells
set size apart from content once the budget reaches the curated set's size (--web-tokens 500000).

The figures are deterministic for a fixed --seed apart from the timings; the models are tiny, so they show
the machinery and the direction of an effect on the sample's made-up text, not what a real run would gain.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
# Selection runs exactly as bench/selection.py does it: the same tiny models and stage params.
sys.path.insert(0, str(ROOT / "bench"))

from selection import (  # noqa: E402
    POOL,
    build_models,
    dsir_params,
    less_params,
    mods_params,
    read,
    write_target,
)

from thresher.pipelines.engine.executor import run_stage  # noqa: E402
from thresher.pipelines.testing.sample_data import generate_instructions, generate_web  # noqa: E402
from thresher.scorers.instruct_lm import prompt_text  # noqa: E402

WEB_JSONL = ROOT / "sample_data" / "web.jsonl"
WEB = ROOT / "sample_data" / "web"
RECIPE = ROOT / "recipes" / "web-pretrain.yaml"
GROUPS = ("curation", "selection", "mixture")


@dataclass(frozen=True)
class TrainSet:
    name: str
    folder: Path
    made_s: float | None  # seconds to make the set; None for an input taken as it is
    size: str  # rows and words, for the line under the table


@dataclass(frozen=True)
class Ablation:
    group: str
    train: list[TrainSet]
    evals: dict[str, Path]
    tokens: int
    shape: dict[str, int] = field(default_factory=dict)  # proxy shape overrides of the tiny preset


@dataclass(frozen=True)
class Row:
    group: str
    baseline: str
    train: str
    eval: str
    loss: float
    loss_std: float
    diff: float | None
    low: float | None
    high: float | None
    train_s: float
    tokens_per_s: float
    made_s: float | None


# -- shard sets --------------------------------------------------------------------------------------------


def write_set(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-00000.parquet")
    return folder


def words(table: pa.Table) -> np.ndarray:
    return pc.list_value_length(pc.utf8_split_whitespace(table["text"])).to_numpy(zero_copy_only=False)


def size(table: pa.Table) -> str:
    text = f"{table.num_rows:,} rows, {int(words(table).sum()):,} words"
    if "domain" in table.column_names:
        # What a filter removed from one domain more than another shows in the eval loss; say it here.
        counts = pc.value_counts(table["domain"]).to_pylist()
        text += (
            " ("
            + ", ".join(f"{c['values']} {c['counts']}" for c in sorted(counts, key=lambda c: c["values"]))
            + ")"
        )
    return text


def normalised(texts: list[str]) -> set[str]:
    return {" ".join(t.lower().split()) for t in texts}


def held_out(table: pa.Table, seen: set[str]) -> pa.Table:
    """The rows whose text is in no train source (case and spacing aside): held out in fact, not only by
    seed."""
    fresh = [" ".join(t.lower().split()) not in seen for t in table["text"].to_pylist()]
    return table.filter(pa.array(fresh))


def clean_web(docs: int, seen: set[str]) -> pa.Table:
    """Clean documents (by the generator's truth table) of web seed 1 that are in no train source."""
    sample = generate_web(docs, seed=1)
    clean = sample.table.filter(pc.equal(sample.truth["kind"], "clean")).select(["id", "text", "domain"])
    return held_out(clean, seen)


def per_domain(table: pa.Table, count: int) -> pa.Table:
    """The first `count` documents of every domain, in the table's order."""
    domains = np.array(table["domain"].to_pylist())
    keep = [np.flatnonzero(domains == d)[:count] for d in sorted(set(domains))]
    return table.take(pa.array(np.sort(np.concatenate(keep))))


def instruction_texts(table: pa.Table) -> pa.Table:
    rows = table.to_pylist()
    texts = [prompt_text(r["instruction"], r["input"]) + (r["output"] or "") for r in rows]
    return pa.table({"id": [r["id"] for r in rows], "text": texts})


def random_rows(table: pa.Table, count: int, seed: int) -> pa.Table:
    """A seeded draw of `count` rows without replacement, in the table's order."""
    rng = np.random.default_rng(seed)
    return table.take(pa.array(np.sort(rng.choice(table.num_rows, size=count, replace=False))))


def random_words(table: pa.Table, total: int, seed: int) -> pa.Table:
    """A seeded random subset holding `total` words (the first rows of a permutation to reach it), in the
    table's order."""
    order = np.random.default_rng(seed).permutation(table.num_rows)
    count = int(np.searchsorted(np.cumsum(words(table)[order]), total)) + 1
    return table.take(pa.array(np.sort(order[:count])))


def timed(make: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = make(*args, **kwargs)
    return result, time.perf_counter() - start


# -- the three groups ------------------------------------------------------------------------------------


def curation(work: Path, args: argparse.Namespace, heldout: Path) -> list[Ablation]:
    out = work / "web-pretrain"
    command = [sys.executable, "-m", "thresher.cli", "run", str(RECIPE), "--input", str(WEB_JSONL)]
    command += ["--output", str(out), "--workers", str(args.workers), "--seed", str(args.seed), "-q"]
    _, recipe_s = timed(subprocess.run, command, check=True)
    steps = sorted(p for p in out.iterdir() if p.is_dir() and p.name[:2].isdigit())
    raw_dir, curated_dir = steps[0], steps[-1]  # ingest, and the recipe's last step
    raw, curated = (read(d).select(["id", "text", "domain"]) for d in (raw_dir, curated_dir))
    subset = random_words(raw, int(words(curated).sum()), args.seed)
    random_dir = write_set(work / "sets" / "raw-random", subset)
    train = [
        TrainSet("raw", raw_dir, None, size(raw)),
        TrainSet("curated", curated_dir, recipe_s, size(curated)),
        TrainSet("raw-random", random_dir, 0.0, size(subset)),
    ]
    return [Ablation("curation", train, {"clean": heldout}, args.web_tokens)]


def selection(work: Path, args: argparse.Namespace) -> list[Ablation]:
    pool = read(POOL)
    pool_texts = instruction_texts(pool)
    target = write_target(work / "target", args.target_task)
    seen = normalised(pool_texts["text"].to_pylist() + instruction_texts(read(target))["text"].to_pylist())
    generated = generate_instructions(3000, seed=10)
    correct = generated.filter(generated["is_correct"])
    of_task = correct.filter(pc.equal(correct["task"], args.target_task))
    evals = {
        args.target_task: write_set(
            work / "eval" / args.target_task, held_out(instruction_texts(of_task), seen)
        ),
        "all-tasks": write_set(work / "eval" / "all-tasks", held_out(instruction_texts(correct), seen)),
    }
    models = build_models(work / "models", args.device)
    runs = {
        "mods": ("select-mods", mods_params(models, args.k, args.device)),
        "less": ("select-less", less_params(models, target, args.fraction, args.device)),
        "dsir": ("select-dsir", dsir_params(target, args.fraction)),
    }
    chosen: dict[str, TrainSet] = {}
    for name, (stage, params) in runs.items():
        out = work / "select" / name
        _, seconds = timed(run_stage, stage, params, POOL, out, seed=args.seed, workers=1)
        table = instruction_texts(read(out))
        chosen[name] = TrainSet(name, write_set(work / "sets" / name, table), seconds, size(table))

    def against_random(names: list[str]) -> Ablation:
        rows = read(chosen[names[0]].folder).num_rows
        draw = random_rows(pool_texts, rows, args.seed)
        baseline = TrainSet(
            f"random-{rows}", write_set(work / "sets" / f"random-{rows}", draw), 0.0, size(draw)
        )
        # Instruction rows are short: smaller windows and batches give the small budget more steps.
        shape = {"context_length": 64, "batch_size": 8}
        return Ablation(
            "selection", [baseline, *(chosen[n] for n in names)], evals, args.instruct_tokens, shape
        )

    return [against_random(["mods"]), against_random(["less", "dsir"])]


def mixture(work: Path, args: argparse.Namespace, heldout: Path) -> list[Ablation]:
    params = {"preset": "tiny", "max_steps": args.doremi_steps, "threads": 1, "device": args.device}
    doremi = work / "doremi"
    manifest, doremi_s = timed(run_stage, "reweight-doremi", params, WEB, doremi, seed=args.seed, workers=1)
    uniform = work / "uniform_weights.json"
    uniform.write_text(json.dumps({d: 1.0 for d in sorted(manifest.summary["weights"])}) + "\n")
    train = []
    for name, weights, before in (
        ("uniform", uniform, None),
        ("doremi", work / "doremi" / "domain_weights.json", doremi_s),
    ):
        mix = {
            "weights": str(weights),
            "tokenizer": str(work / "doremi" / "tokenizer.json"),
            # DoReMi's tokens, not the ablation's (its tokenizer is trained on the train sets), but close:
            # a fifth more, so the ablation never repeats a mix to fill its budget.
            "tokens": int(args.web_tokens * 1.2),
        }
        out = work / "mix" / name
        _, seconds = timed(run_stage, "mix", mix, WEB, out, seed=args.seed, workers=1)
        made = seconds if before is None else before + seconds
        train.append(TrainSet(name, out, made, size(read(out))))
    return [Ablation("mixture", train, {"all-domains": heldout}, args.web_tokens)]


# -- running and printing ---------------------------------------------------------------------------------


def run_ablation(ablation: Ablation, work: Path, args: argparse.Namespace, index: int) -> list[Row]:
    params: dict[str, Any] = {
        "train": {t.name: str(t.folder) for t in ablation.train},
        "eval": {name: str(folder) for name, folder in ablation.evals.items()},
        "tokens": ablation.tokens,
        "seeds": args.seeds,
        "eval_docs": args.eval_docs,
        "preset": "tiny",
        "device": args.device,
        "threads": 1,
        **ablation.shape,
    }
    out = work / "ablate" / f"{index}-{ablation.group}"
    summary = run_stage(
        "ablate", params, ablation.train[0].folder, out, seed=args.seed, workers=args.workers
    ).summary
    made = {t.name: t.made_s for t in ablation.train}
    rows = []
    for cell in summary["results"]:
        runs = [t for t in summary["training"] if t["train"] == cell["train"]]
        rows.append(
            Row(
                ablation.group,
                summary["baseline"],
                cell["train"],
                cell["eval"],
                cell["loss_mean"],
                cell["loss_std"],
                cell["diff"],
                cell["diff_low"],
                cell["diff_high"],
                float(np.mean([t["seconds"] for t in runs])),
                float(np.mean([t["tokens_per_second"] for t in runs])),
                made[cell["train"]],
            )
        )
    return rows


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'ablation':<10} {'train':<12} {'vs':<12} {'eval':<12} {'diff':>8} {'95% interval':>19} "
        f"{'loss':>7} {'± std':>6} {'train s':>8} {'tokens/s':>9} {'made in s':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        diff = "" if r.diff is None else f"{r.diff:+.4f}"
        interval = "" if r.low is None else f"[{r.low:+.4f}, {r.high:+.4f}]"
        vs = "" if r.diff is None else r.baseline
        made = "" if r.made_s is None else f"{r.made_s:.1f}"
        print(
            f"{r.group:<10} {r.train:<12} {vs:<12} {r.eval:<12} {diff:>8} {interval:>19} {r.loss:>7.4f} "
            f"{r.loss_std:>6.4f} {r.train_s:>8.1f} {r.tokens_per_s:>9,.0f} {made:>9}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="Keep the outputs here (default: a temp dir)."
    )
    parser.add_argument("--only", choices=GROUPS, action="append", help="Run this group only; repeat.")
    parser.add_argument("--seeds", type=int, default=2, help="Proxy LMs per train set.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--web-tokens", type=int, default=100_000, help="Tokens per model: curation, mixture."
    )
    parser.add_argument("--instruct-tokens", type=int, default=40_000, help="Tokens per model: selection.")
    parser.add_argument("--eval-docs", type=int, default=300, help="Eval documents per eval set at most.")
    parser.add_argument("--per-domain", type=int, default=60, help="Held-out web documents per domain.")
    parser.add_argument("--doremi-steps", type=int, default=150, help="Steps of each DoReMi proxy model.")
    parser.add_argument("--k", type=int, default=50, help="MoDS seed-set size.")
    parser.add_argument("--fraction", type=float, default=0.1, help="LESS and DSIR selected share.")
    parser.add_argument("--target-task", default="list")
    parser.add_argument("--workers", type=int, default=2, help="Parallel tasks (one torch thread each).")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    groups = args.only or list(GROUPS)

    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="thresher-bench-ablate-"))
    try:
        ablations: list[Ablation] = []
        if "curation" in groups or "mixture" in groups:
            clean = clean_web(
                max(1500, args.eval_docs * 2, args.per_domain * 30), normalised(read(WEB)["text"].to_pylist())
            )
        if "curation" in groups:
            # The generator's own domain shares, as the raw set has them.
            natural = write_set(work / "eval" / "clean", clean.slice(0, args.eval_docs))
            ablations += curation(work, args, natural)
        if "selection" in groups:
            ablations += selection(work, args)
        if "mixture" in groups:
            # Equally many documents per domain: the eval text does not favour the mixture closest to the
            # sample's own shares.
            balanced = write_set(work / "eval" / "all-domains", per_domain(clean, args.per_domain))
            ablations += mixture(work, args, balanced)
        rows = [row for i, a in enumerate(ablations) for row in run_ablation(a, work, args, i)]
        print(f"\neval loss (nats/token) of tiny proxy LMs, {args.seeds} seeds; diff: loss minus the "
              f"baseline's (vs) on the same eval set, with its paired bootstrap 95% interval")  # fmt: skip
        print_table(rows)
        print()
        for a in ablations:
            sets = "; ".join(f"{t.name} {t.size}" for t in a.train)
            evals = "; ".join(
                f"{name} {min(read(folder).num_rows, args.eval_docs)} docs"
                for name, folder in a.evals.items()
            )
            print(f"{a.group}: {a.tokens:,} tokens per model; train {sets}; eval {evals}")
        print(f"whole bench {time.perf_counter() - start:.0f} s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
