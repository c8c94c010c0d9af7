"""Instruction selection on the sample data: how well MoDS, LESS and DSIR choose, and how fast, next to
random selection of the same size.

    python bench/selection.py                  # sample_data/instructions (1000 rows)
    python bench/selection.py --rows 5000      # a generated pool of another size

Models are tiny and built here (no downloads; see tests/tiny_models.py): a DeBERTa-v3-style backbone
fine-tuned into a reward model on generated rows labelled by `is_correct` (another seed than the pool),
a BERT encoder, and a GPT-2 proxy LM. So the figures measure the machinery, not what a real reward model
or LM would pick.

- MoDS precision: the share of selected rows whose answer is correct (`is_correct`), next to the pool's
  rate (what random selection of the same size gets in expectation). Also the quality step alone: the
  share of wrong answers it removes and of correct ones it keeps.
- LESS and DSIR precision: with a target set of one task type, the share of the selected top fraction that
  is of that task, next to its share of the pool. DSIR needs no model (hashed word unigrams and bigrams of
  instruction, input and output); it runs with its default `resample` draw and with `top`.
- examples/s: pool rows over the stage's wall time (model loading and warmup included).

The stages run with their defaults except where a tiny model needs otherwise (learning rates, LoRA rank,
token limits, MoDS's answer length); so MoDS's second k-center pass keeps 3 x k necessary rows and
LESS's warmup takes 128 examples per optimiser step, as in the papers. The last lines print what each run
really used, from its manifest.

bench/ablate.py imports the model building and the stage params from here, so both benches select alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny_models import build_tiny_deberta, build_tiny_encoder, build_tiny_gpt2  # noqa: E402

from thresher.pipelines.engine.executor import run_stage  # noqa: E402
from thresher.pipelines.testing.sample_data import generate_instructions  # noqa: E402
from thresher.scorers.deberta import FinetuneSettings, LabelledPairs, finetune_classifier, question_text  # noqa: E402

POOL = ROOT / "sample_data" / "instructions"
# DSIR featurises the whole row: the task shows in the instruction, the input and the answer alike.
ROW_COLUMNS = ["instruction", "input", "output"]


@dataclass(frozen=True)
class TinyModels:
    reward: Path
    encoder: Path
    lm: Path
    reward_auc: float  # held-out ROC AUC of the reward model on correct vs wrong answers


def pairs(table: pa.Table) -> LabelledPairs:
    rows = table.to_pylist()
    return LabelledPairs(
        [question_text(r["instruction"], r["input"]) for r in rows],
        [r["output"] for r in rows],
        np.array([r["is_correct"] for r in rows]),
    )


def read(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))])


def timed(stage: str, params: dict[str, Any], source: Path, out: Path, workers: int) -> float:
    start = time.perf_counter()
    run_stage(stage, params, source, out, seed=0, workers=workers)
    return time.perf_counter() - start


def build_models(work: Path, device: str) -> TinyModels:
    """The reward model (fine-tuned on rows of other seeds than the pool), the encoder and the proxy LM."""
    backbone = build_tiny_deberta(work / "deberta")
    report = finetune_classifier(
        pairs(generate_instructions(3000, seed=21)),
        str(backbone),
        work / "reward",
        FinetuneSettings(epochs=3, learning_rate=1e-3, batch_size=32, max_length=128, device=device),
        heldout=pairs(generate_instructions(1000, seed=22)),
    )
    encoder = build_tiny_encoder(work / "encoder")
    lm = build_tiny_gpt2(work / "gpt2", context=256)
    return TinyModels(work / "reward", Path(encoder), Path(lm), float(report["heldout"]["roc_auc"]))


def write_target(folder: Path, task: str, rows: int = 10) -> Path:
    """`rows` correct rows of one task type, generated with another seed than the pool."""
    target = generate_instructions(300, seed=9)
    good = (np.array(target["task"].to_pylist()) == task) & np.array(target["is_correct"].to_pylist())
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(target.filter(pa.array(good)).slice(0, rows), folder / "part-00000.parquet")
    return folder


def common_params(device: str) -> dict[str, Any]:
    return {"device": device, "max_length": 256}


def mods_params(models: TinyModels, k: int, device: str) -> dict[str, Any]:
    return {
        **common_params(device), "reward_model": str(models.reward), "encoder": str(models.encoder),
        "model": str(models.lm), "k": k, "threshold": 0.0, "necessity_threshold": 0.0,
        "finetune_epochs": 2, "finetune_lr": 1e-3, "max_new_tokens": 16,
    }  # fmt: skip


def less_params(models: TinyModels, target: Path, fraction: float, device: str) -> dict[str, Any]:
    return {
        **common_params(device), "target": str(target), "model": str(models.lm), "fraction": fraction,
        "warmup_fraction": 0.05, "epochs": 2, "learning_rate": 1e-3, "lora_rank": 8, "lora_alpha": 32,
        "lora_dropout": 0.0, "proj_dim": 1024,
    }  # fmt: skip


def dsir_params(target: Path, fraction: float, sample: str = "resample") -> dict[str, Any]:
    return {"target": str(target), "fraction": fraction, "sample": sample, "text_columns": ROW_COLUMNS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=0, help="Generated pool size; 0: sample_data/instructions."
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--k", type=int, default=50, help="MoDS seed-set size.")
    parser.add_argument("--fraction", type=float, default=0.1, help="LESS and DSIR selected share.")
    parser.add_argument("--target-task", default="list")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="thresher-bench-select-") as tmp:
        work = Path(tmp)
        if args.rows:
            pool_dir = work / "pool"
            pool_dir.mkdir()
            pq.write_table(generate_instructions(args.rows, seed=0), pool_dir / "part-00000.parquet")
        else:
            pool_dir = POOL
        pool = read(pool_dir)
        n = pool.num_rows
        correct = np.array(pool["is_correct"].to_pylist())
        tasks = np.array(pool["task"].to_pylist())

        start = time.perf_counter()
        models = build_models(work, args.device)
        print(f"models built and reward model fine-tuned in {time.perf_counter() - start:.0f}s; "
              f"reward held-out AUC {models.reward_auc:.3f}")  # fmt: skip

        quality_s = timed(
            "select-reward",
            {**common_params(args.device), "reward_model": str(models.reward), "threshold": 0.0},
            pool_dir, work / "quality", args.workers,
        )  # fmt: skip
        kept = set(read(work / "quality")["id"].to_pylist())
        passed = np.array([i in kept for i in pool["id"].to_pylist()])
        mods_s = timed(
            "select-mods", mods_params(models, args.k, args.device), pool_dir, work / "mods", args.workers
        )
        mods = read(work / "mods")
        stages = mods["mods_stage"].to_pylist()
        mods_summary = json.loads((work / "mods" / "_manifest.json").read_text())["summary"]

        target_dir = write_target(work / "target", args.target_task)
        less_s = timed(
            "select-less",
            less_params(models, target_dir, args.fraction, args.device),
            pool_dir,
            work / "less",
            args.workers,
        )
        less = read(work / "less")
        summary = json.loads((work / "less" / "_manifest.json").read_text())["summary"]

        def task_share(table: pa.Table) -> float:
            return float(np.mean(np.array(table["task"].to_pylist()) == args.target_task))

        dsir: list[tuple[str, pa.Table, float]] = []
        for sample in ("resample", "top"):
            out = work / f"dsir-{sample}"
            seconds = timed(
                "select-dsir", dsir_params(target_dir, args.fraction, sample), pool_dir, out, args.workers
            )
            dsir.append((sample, read(out), seconds))

        base_correct = correct.mean()
        base_task = (tasks == args.target_task).mean()
        rows = [
            ("quality (reward > 0)", int(passed.sum()), correct[passed].mean(), base_correct, quality_s),
            (f"MoDS (k={args.k} + necessity)", mods.num_rows, np.mean(mods["is_correct"].to_pylist()),
             base_correct, mods_s),
            (f"LESS top {args.fraction:g}, target={args.target_task}", less.num_rows, task_share(less),
             base_task, less_s),
        ]  # fmt: skip
        rows += [
            (f"DSIR {sample} {args.fraction:g}, target={args.target_task}", table.num_rows,
             task_share(table), base_task, seconds)
            for sample, table, seconds in dsir
        ]  # fmt: skip
        print(
            f"\npool: {pool_dir} ({n} rows, {base_correct:.1%} correct, {base_task:.1%} {args.target_task})"
        )
        print(f"{'selection':<36} {'rows':>5} {'precision':>9} {'random':>7} {'seconds':>8} {'rows/s':>7}")
        for name, count, precision, baseline, seconds in rows:
            rate = n / seconds
            print(f"{name:<36} {count:>5} {precision:>9.3f} {baseline:>7.3f} {seconds:>8.1f} {rate:>7.1f}")
        wrong = ~correct
        print(f"\nquality step: removed {(~passed & wrong).sum()}/{wrong.sum()} wrong answers, "
              f"kept {(passed & correct).sum()}/{correct.sum()} correct ones")  # fmt: skip
        necessity, augment = mods_summary["necessity"], mods_summary["augment"]
        augment_k = augment["k"] if augment else None
        print(f"MoDS: {stages.count('seed')} seed + {stages.count('necessity')} necessity rows "
              f"(of {necessity.get('necessary', 0)} necessary; second k-center pass k={augment_k}; "
              f"{necessity['generation_truncated']}/{necessity['generated']} answers cut at "
              f"{necessity['max_new_tokens_used']} tokens)")  # fmt: skip
        warmup = summary["warmup"]
        modules = ",".join(warmup["lora_target_modules"])
        print(f"LESS: LoRA on {modules}, {warmup['warmup_rows']} warmup rows, "
              f"{warmup['examples_per_step']} per step = {warmup['steps_per_epoch']} steps/epoch, "
              f"gradient dim {summary['target']['gradient_dim']} -> {summary['target']['proj_dim']}, "
              f"failures {summary['failures']}")  # fmt: skip
        dsir_manifest = json.loads((work / "dsir-resample" / "_manifest.json").read_text())
        print(f"DSIR: word unigrams + bigrams of {'+'.join(ROW_COLUMNS)}, {len(read(target_dir))} target "
              f"rows, {dsir_manifest['params']['buckets']:,} hash buckets")  # fmt: skip


if __name__ == "__main__":
    main()
