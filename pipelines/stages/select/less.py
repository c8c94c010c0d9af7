"""LESS (Xia et al. 2024): select the pool rows whose gradients point where the target task's do.

Phases:
1. `warmup` (one task): LoRA-train the proxy causal LM on a seeded --warmup-fraction of the pool (rows
   chosen by a hash of their id, so the choice does not depend on sharding) for --epochs epochs; one
   checkpoint per epoch with the LoRA weights, AdamW's moments and the epoch's mean learning rate.
   Defaults follow LESS's reference scripts: LoRA r 128 / alpha 512 / dropout 0.1 on q, k, v and o,
   lr 2e-5 with linear decay after 3% warmup, 4 epochs, 128 examples per optimiser step (accumulated
   over --batch-size micro-batches), loss = mean of per-example mean losses, gradients clipped at 1.0,
   examples up to 2048 tokens. One epoch is ceil(warmup rows / 128) optimiser steps.
2. `target` (one task): plain-gradient features of every target example at every checkpoint.
3. `features` (per shard): Adam-preconditioned gradient features of the shard's rows, written to a
   per-shard work file, and each row's score: the learning-rate-weighted sum over checkpoints of its mean
   cosine to each target subtask (--target-subtask-column), maximised over subtasks; plus the row's
   sorted rank key (`pipelines/stats/top_fraction.py`).
4. `cutoff` (one task): the exact rank-k key over all shards' keys, k = --fraction of the rows with a score.
5. `select` (per shard): keep the rows at or above the cutoff; add `less_score` and `less_subtask`.

Nothing holds the pool: gradients and features live per batch, then per shard on disk. A row that yields
no gradient (no instruction/output, or no answer token left within --max-length) is never selected and is
dropped with its own reason, counted in the manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import Field

from thresher.pipelines.engine import atomic, storage
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_batches
from thresher.pipelines.engine.shards import ID_COLUMN, ShardSet, ShardWriter, dropped_table, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.select.instruction import (
    UNSCORABLE,
    InstructionParams,
    InstructionStage,
    all_cores,
    model_inputs,
    record_file,
    set_torch_threads,
)
from thresher.pipelines.stats.runs import open_run, save_run
from thresher.pipelines.stats.top_fraction import KEY_DTYPE, rank_keys, top_cutoff

SCORE_COLUMN = "less_score"
SUBTASK_COLUMN = "less_subtask"
BELOW = "below_top_fraction"
NO_ANSWER = "no_answer_tokens"
SCORES_SCHEMA = pa.schema([("row", pa.int64()), (SCORE_COLUMN, pa.float64()), (SUBTASK_COLUMN, pa.string())])
_HASH_SCALE = float(2**64)
# Rows whose gradients one features batch holds: bounded so a big LoRA (gradient dim) stays in memory.
_FEATURE_VALUES_PER_BATCH = 1 << 26


class LESSParams(InstructionParams):
    target: str = Field(..., description="Shard set of target-task examples (instruction, input, output).")
    model: str = Field(..., description="Causal LM folder to warm up with LoRA (e.g. the proxy LM).")
    fraction: float = Field(0.05, gt=0, le=1, description="Share of the pool to select (top scores, global).")
    warmup_fraction: float = Field(
        0.05, gt=0, le=1, description="Share of the pool the LoRA warmup trains on."
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="Rows per forward/backward pass: the warmup's micro-batch and the feature batches; "
        "lower it to save memory (the optimisation does not change).",
    )
    max_length: int = Field(
        2048,
        ge=8,
        description="Token limit per example (LESS: 2048), capped at the model's context; longer examples "
        "keep their beginning.",
    )
    epochs: int = Field(4, ge=1, le=100, description="Warmup epochs; one checkpoint per epoch.")
    learning_rate: float = Field(2e-5, gt=0, description="Warmup peak learning rate (linear schedule).")
    warmup_batch_size: int = Field(
        128,
        ge=1,
        description="Warmup examples per optimiser step (LESS: 128). Gradients accumulate over --batch-size "
        "micro-batches, so memory follows --batch-size; an epoch is ceil(warmup rows / this) steps "
        "(8x fewer than a batch of 16).",
    )
    max_grad_norm: float = Field(
        1.0, ge=0, description="Warmup gradient clipping by global norm (LESS's trainer: 1.0); 0: none."
    )
    lora_rank: int = Field(128, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(512, ge=1, description="LoRA alpha (scale = alpha / rank).")
    lora_dropout: float = Field(
        0.1, ge=0, lt=1, description="LoRA dropout during warmup (off for gradients)."
    )
    lora_target_modules: list[str] = Field(
        [],
        description="Modules LoRA wraps; default: the attention projections q, k, v, o as LESS (Llama: "
        "q_proj,k_proj,v_proj,o_proj; GPT-2: c_attn,attn.c_proj), or peft's choice where none match.",
    )
    proj_dim: int = Field(
        8192, ge=1, description="Random-projection size of the gradient features (capped at the LoRA size)."
    )
    target_subtask_column: str = Field(
        "task", description="Target column naming subtasks (scores take the best subtask); absent: one."
    )


def _warmup_rows(ids: pa.Array, fraction: float, seed: int) -> np.ndarray:
    raw = pc.cast(pc.fill_null(ids, ""), pa.binary()).to_pylist()
    h = np.array([xxhash.xxh3_64_intdigest(v, seed=seed) for v in raw], dtype=np.float64)
    return h / _HASH_SCALE < fraction


class LESSSelect(InstructionStage):
    name = "select-less"
    version = "3"  # 3: the top fraction is a share of the scored rows only
    Params = LESSParams
    summary = (
        "LESS: score rows by LoRA-gradient similarity to a --target set (Adam-preconditioned, projected) "
        "and keep the top --fraction."
    )
    example = (
        "thresher select less data/01-dedup data/02-less --target data/target --model models/proxy-lm "
        "--fraction 0.05"
    )
    command = ("select", "less")
    params: LESSParams

    # -- plan ----------------------------------------------------------------------------------------------
    def _target_set(self) -> ShardSet:
        return ShardSet.open(
            storage.location(self.params.target),
            self.required_columns(),
            self.string_columns(),
            self.params.column_flags(),
        )

    def side_inputs(self) -> list[Path]:
        return [
            *(s.path for s in self._target_set().shards),
            *(storage.location(m) for m in model_inputs(self.params.model)),
        ]

    def _warmup_settings(self) -> Any:
        from thresher.scorers.lora_grads import WarmupSettings

        p = self.params
        return WarmupSettings(
            epochs=p.epochs,
            learning_rate=p.learning_rate,
            batch_size=p.warmup_batch_size,
            micro_batch_size=p.batch_size,
            max_grad_norm=p.max_grad_norm,
            seed=self.ctx.seed,
            lora=self._lora(),
        )

    def _lora(self) -> Any:
        from thresher.scorers.lora_grads import LoraSettings

        p = self.params
        return LoraSettings(
            rank=p.lora_rank,
            alpha=p.lora_alpha,
            dropout=p.lora_dropout,
            target_modules=tuple(p.lora_target_modules) or None,
        )

    def _paths(self) -> dict[str, Path]:
        work = self.ctx.work
        return {
            "checkpoints": work / "checkpoints",
            "target": work / "target-features.npy",
            "subtasks": work / "target-subtasks.json",
            "cutoff": work / "cutoff.json",
        }

    def _shard_paths(self, name: str) -> dict[str, Path]:
        work = self.ctx.work
        return {
            "features": work / "features" / name,
            "scores": work / "scores" / name,
            "keys": work / "keys" / f"{name}.npy",
        }

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        p = self.params
        self.check_new_columns([SCORE_COLUMN, SUBTASK_COLUMN])
        shards = self.ctx.input.shards
        models = model_inputs(p.model)
        target = tuple(str(s.path.resolve()) for s in self._target_set().shards)
        paths = self._paths()
        checkpoints = tuple(
            str(paths["checkpoints"] / f"epoch-{e}.safetensors") for e in range(1, p.epochs + 1)
        )
        meta = str(paths["checkpoints"] / "checkpoints.json")
        per_shard = [self._shard_paths(s.name) for s in shards]
        return [
            PhaseSpec(
                "warmup",
                [TaskSpec("warmup", (*(str(s.path) for s in shards), *models), {}, self.ctx.input.num_rows)],
            ),
            PhaseSpec("target", [TaskSpec("target", (*target, meta, *checkpoints, *models), {})]),
            PhaseSpec(
                "features",
                [
                    TaskSpec(
                        s.name,
                        (
                            str(s.path),
                            str(paths["target"]),
                            str(paths["subtasks"]),
                            meta,
                            *checkpoints,
                            *models,
                        ),
                        {"shard": i},
                        s.num_rows,
                    )
                    for i, s in enumerate(shards)
                ],
            ),
            PhaseSpec("cutoff", [TaskSpec("cutoff", tuple(str(f["keys"]) for f in per_shard), {})]),
            PhaseSpec(
                "select",
                [
                    TaskSpec(
                        s.name,
                        (str(s.path), str(per_shard[i]["scores"]), str(paths["cutoff"])),
                        {"shard": i},
                        s.num_rows,
                    )
                    for i, s in enumerate(shards)
                ],
            ),
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        return getattr(self, f"_{phase}")(task, tc)

    # -- phase 1 -------------------------------------------------------------------------------------------
    def _warmup(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.instruct_lm import InstructLM
        from thresher.scorers.lora_grads import CHECKPOINT_META, warmup_lora

        assert self.ctx.input is not None
        p = self.params
        set_torch_threads(all_cores())
        lm = InstructLM(p.model, device=p.device, max_length=p.max_length)
        examples = []
        skipped = 0
        for shard in self.ctx.input.shards:
            for batch in iter_batches(shard.path, self.read_columns(shard.path)):
                chosen = _warmup_rows(batch.column(ID_COLUMN), p.warmup_fraction, self.ctx.seed)
                instructions, inputs, outputs = self.row_texts(batch)
                ok = [
                    i for i in np.nonzero(chosen)[0] if instructions[i] is not None and outputs[i] is not None
                ]
                encoded = lm.encode(
                    [instructions[i] for i in ok], [inputs[i] for i in ok], [outputs[i] for i in ok]
                )
                skipped += sum(e.answer_tokens == 0 for e in encoded)
                examples += [e for e in encoded if e.answer_tokens > 0]
                tc.progress(batch.num_rows)
        max_length = lm.max_length
        del lm
        if not examples:
            raise ThresherError(
                f"{self.ctx.input_path}: --warmup-fraction {p.warmup_fraction} picked no usable row; raise it"
            )
        settings = self._warmup_settings()
        folder = self._paths()["checkpoints"]
        result = warmup_lora(p.model, examples, folder, settings, p.device)
        for c in result.checkpoints:
            record_file(tc, storage.location(c.path))
        record_file(tc, folder / CHECKPOINT_META)
        return TaskResult(
            extra={
                "warmup_rows": len(examples),
                "warmup_rows_without_answer_tokens": skipped,
                "max_length": max_length,
                "lora_target_modules": result.target_modules,
                "examples_per_step": settings.batch_size,
                "micro_batches_per_step": result.micro_batches_per_step,
                "steps_per_epoch": result.steps_per_epoch,
                "max_grad_norm": settings.max_grad_norm,
                "epoch_loss": result.epoch_loss,
                "checkpoints": [
                    {"epoch": c.epoch, "learning_rate": c.learning_rate, "steps": c.steps}
                    for c in result.checkpoints
                ],
            }
        )

    def _featurizer(self, threads: int) -> Any:
        from thresher.scorers.lora_grads import GradientFeaturizer, read_checkpoints

        p = self.params
        set_torch_threads(threads)
        return GradientFeaturizer(
            p.model,
            read_checkpoints(self._paths()["checkpoints"]),
            self._lora(),
            p.proj_dim,
            self.ctx.seed,
            p.device,
            p.max_length,
            batch_size=p.batch_size,
        )

    # -- phase 2 -------------------------------------------------------------------------------------------
    def _target(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        featurizer = self._featurizer(all_cores())
        examples, subtasks = [], []
        target = self._target_set()
        for shard in target.shards:
            names = shard.schema.names if shard.schema is not None else []
            column = p.target_subtask_column if p.target_subtask_column in names else None
            for batch in iter_batches(
                shard.path, [*self.read_columns(shard.path), *([column] if column else [])]
            ):
                instructions, inputs, outputs = self.row_texts(batch)
                labels = batch.column(column).to_pylist() if column else ["all"] * batch.num_rows
                ok = [
                    i for i in range(batch.num_rows) if instructions[i] is not None and outputs[i] is not None
                ]
                examples += featurizer.lm.encode(
                    [instructions[i] for i in ok], [inputs[i] for i in ok], [outputs[i] for i in ok]
                )
                subtasks += [str(labels[i]) if labels[i] is not None else "all" for i in ok]
        features = featurizer.features(examples, adam=False)
        usable = ~np.isnan(features[0]).any(axis=1)
        if not usable.any():
            raise ThresherError(
                f"{p.target}: no target example has answer tokens within --max-length {p.max_length}"
            )
        paths = self._paths()
        with atomic.atomic_path(paths["target"]) as tmp, open(tmp, "wb") as f:
            np.save(f, features[:, usable], allow_pickle=False)
        kept = [s for s, u in zip(subtasks, usable, strict=True) if u]
        atomic.write_json(paths["subtasks"], kept)
        record_file(tc, paths["target"])
        record_file(tc, paths["subtasks"])
        return TaskResult(
            extra={
                "target_examples": int(usable.sum()),
                "target_unusable": int((~usable).sum()),
                "subtasks": dict(sorted(Counter(kept).items())),
                "gradient_dim": featurizer.dim,
                "proj_dim": featurizer.proj_dim,
            }
        )

    # -- phase 3 -------------------------------------------------------------------------------------------
    def _features(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.lora_grads import subtask_scores

        p = self.params
        featurizer = self._featurizer(p.threads)
        paths = self._paths()
        target = np.load(
            storage.readable(paths["target"]), allow_pickle=False
        )  # (checkpoints, n_target, k): small
        subtasks = json.loads(paths["subtasks"].read_text(encoding="utf-8"))
        weights = np.array([c.learning_rate for c in featurizer.checkpoints], dtype=np.float64)
        files = self._shard_paths(task.key)
        files["features"].mkdir(parents=True, exist_ok=True)
        n_rows = task.rows or 0
        memmaps, tmps = [], []
        for c in range(len(featurizer.checkpoints)):
            path = files["features"] / f"epoch-{c + 1}.npy"
            tmp = atomic.tmp_path_for(path)
            tmps.append((tmp, path))
            # float16: features are unit vectors compared by dot products; half the disk of float32.
            shape = (n_rows, featurizer.proj_dim)
            memmaps.append(
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
                if n_rows
                else np.zeros(shape, np.float16)  # numpy cannot memory-map an empty array
            )
        scores_writer = ShardWriter(files["scores"], SCORES_SCHEMA)
        all_scores: list[np.ndarray] = []
        ids: list[pa.Array] = []
        counts: Counter[str] = Counter()
        offset = 0
        try:
            batch_rows = int(np.clip(_FEATURE_VALUES_PER_BATCH // featurizer.dim, 16, 256))
            for batch in iter_batches(
                storage.location(task.inputs[0]),
                self.read_columns(storage.location(task.inputs[0])),
                batch_rows,
            ):
                instructions, inputs, outputs = self.row_texts(batch)
                ok = [
                    i for i in range(batch.num_rows) if instructions[i] is not None and outputs[i] is not None
                ]
                encoded = featurizer.lm.encode(
                    [instructions[i] for i in ok], [inputs[i] for i in ok], [outputs[i] for i in ok]
                )
                features = np.full((len(weights), batch.num_rows, featurizer.proj_dim), np.nan, np.float32)
                features[:, ok] = featurizer.features(encoded, adam=True)
                for c, m in enumerate(memmaps):
                    m[offset : offset + batch.num_rows] = features[c]
                similarity = np.einsum("c,cnk,ctk->nt", weights, np.nan_to_num(features), target)
                score, best = subtask_scores(similarity, subtasks)
                missing = np.isnan(features[0]).any(axis=1)
                score = np.where(missing, np.nan, score)
                counts[UNSCORABLE] += batch.num_rows - len(ok)
                counts[NO_ANSWER] += int(missing.sum()) - (batch.num_rows - len(ok))
                rows = np.arange(offset, offset + batch.num_rows)
                scores_writer.write(
                    pa.table(
                        {
                            "row": pa.array(rows, pa.int64()),
                            SCORE_COLUMN: pa.array(score, pa.float64(), mask=missing),
                            SUBTASK_COLUMN: pa.array(
                                [None if m else b for m, b in zip(missing, best, strict=True)], pa.string()
                            ),
                        },
                        schema=SCORES_SCHEMA,
                    )
                )
                all_scores.append(score)
                ids.append(batch.column(ID_COLUMN))
                offset += batch.num_rows
                tc.progress(batch.num_rows)
            for (tmp, _), m in zip(tmps, memmaps, strict=True):
                if isinstance(m, np.memmap):
                    m.flush()
                else:
                    with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
                        np.save(f, m, allow_pickle=False)
            del memmaps
            for tmp, path in tmps:
                tmp.replace(path)
                record_file(tc, path)
            tc.record(scores_writer.close())
        except BaseException:
            scores_writer.abort()
            for tmp, _ in tmps:
                tmp.unlink(missing_ok=True)
            raise
        scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
        id_array = (
            pa.concat_arrays([pc.cast(i, pa.string()) for i in ids]) if ids else pa.array([], pa.string())
        )
        keys = rank_keys(
            pa.array(scores, pa.float64()),
            id_array,
            task.args["shard"],
            np.arange(len(scores)),
            higher_is_better=True,
            seed=self.ctx.seed,
        )
        save_run(files["keys"], keys)
        record_file(tc, files["keys"])
        return TaskResult(
            extra={
                "rows": len(scores),
                "scored": int(np.isfinite(scores).sum()),
                **{k: v for k, v in counts.items()},
            }
        )

    # -- phase 4 -------------------------------------------------------------------------------------------
    def _cutoff(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        # Rows without a score are not ranked and never selected; the fraction is of the scored rows.
        cut = top_cutoff(
            [open_run(storage.location(path)) for path in task.inputs], self.params.fraction, True
        )
        key = cut.key.hex() if cut.key else None
        atomic.write_json(self._paths()["cutoff"], {"k": cut.keep, "key": key})
        record_file(tc, self._paths()["cutoff"])
        return TaskResult(
            extra={"rows": cut.rows, "scored": cut.scored, "selected": cut.keep, "cutoff_score": cut.score}
        )

    # -- phase 5 -------------------------------------------------------------------------------------------
    def _select(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        scores = pq.read_table(storage.readable(task.inputs[1])).sort_by("row")
        cutoff = json.loads(storage.location(task.inputs[2]).read_text(encoding="utf-8"))
        cut = np.array(bytes.fromhex(cutoff["key"]), KEY_DTYPE) if cutoff["key"] else None
        values = scores[SCORE_COLUMN].to_numpy(zero_copy_only=False).astype(np.float64)
        subtask = scores[SUBTASK_COLUMN]

        def pick(batch: pa.RecordBatch, offset: int) -> BatchOutcome:
            rows = np.arange(offset, offset + batch.num_rows)
            score = values[rows]
            missing = np.isnan(score)
            keys = rank_keys(
                pa.array(score, pa.float64()),
                batch.column(ID_COLUMN),
                task.args["shard"],
                rows,
                higher_is_better=True,
                seed=self.ctx.seed,
            )
            keep = ~missing & (keys <= cut) if cut is not None else np.zeros(len(rows), bool)
            table = pa.Table.from_batches([batch])
            table = table.append_column(SCORE_COLUMN, pa.array(score, pa.float64(), mask=missing))
            table = table.append_column(SUBTASK_COLUMN, subtask.take(pa.array(rows)))
            instructions, _, outputs = self.row_texts(batch)
            no_text = np.array([i is None or o is None for i, o in zip(instructions, outputs, strict=True)])
            drop = ~keep
            reasons = np.where(no_text, UNSCORABLE, np.where(missing, NO_ANSWER, BELOW))[drop].tolist()
            details = [None if np.isnan(s) else f"{s:.6g}" for s in score[drop]]
            dropped = dropped_table(table[ID_COLUMN].filter(pa.array(drop)), self.name, reasons, details)
            return BatchOutcome(table.filter(pa.array(keep)), dropped)

        return map_batches(storage.location(task.inputs[0]), tc, pick, writes_dropped=True)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        by_phase: dict[str, list[TaskRecord]] = {}
        for r in records:
            by_phase.setdefault(r.phase, []).append(r)
        failures: Counter[str] = Counter()
        for r in by_phase.get("features", []):
            failures.update({k: r.extra.get(k, 0) for k in (UNSCORABLE, NO_ANSWER)})
        warmup = by_phase.get("warmup", [None])[0]
        target = by_phase.get("target", [None])[0]
        cutoff = by_phase.get("cutoff", [None])[0]
        return {
            "fraction": self.params.fraction,
            "warmup": warmup.extra if warmup else {},
            "target": target.extra if target else {},
            "selection": cutoff.extra if cutoff else {},
            "failures": dict(failures),
        }
