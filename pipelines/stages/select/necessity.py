"""MoDS's necessity criterion (`select necessity`): the causal LM, fine-tuned on the seed set (or a
fine-tuned model the user gives), answers every other instruction (greedy or --num-beams, up to
--max-new-tokens within the model's context; answers cut at that limit are counted as
`generation_truncated`); the reward model scores those answers, and a row is necessary when its answer
scores strictly less than --necessity-threshold: the model does not yet handle it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_batches
from thresher.pipelines.engine.shards import ID_COLUMN, ShardSet, ShardWriter, dropped_table, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.select.coverage import STAGE_COLUMN
from thresher.pipelines.stages.select.instruction import (
    UNSCORABLE,
    InstructionParams,
    InstructionStage,
    all_cores,
    lookup_rows,
    model_inputs,
    record_file,
    set_torch_threads,
)
from thresher.pipelines.stages.select.reward import RewardParams, reward_scores

NECESSITY_COLUMN = "necessity_score"
MODEL_DIR = "necessity-model"
# Row outcomes, also the `_dropped/` reasons.
NOT_NECESSARY = "not_necessary"
GENERATION_UNSCORABLE = "generation_unscorable"
IN_SEED_SET = "in_seed_set"
NECESSITY_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        (NECESSITY_COLUMN, pa.float64()),
        ("status", pa.string()),
        ("generated", pa.string()),
        ("generation_truncated", pa.bool_()),
    ]
)
# Counted in the manifest: answers that hit the new-token limit before the model's EOS. They are scored
# like any other, but a cut answer tends to score low, so a high count inflates the necessary set.
GENERATION_TRUNCATED = "generation_truncated"
MAX_NEW_USED = "max_new_tokens_used"


class NecessityModelParams(StageParams):
    model: str | None = Field(
        None, description="Causal LM folder (e.g. the proxy LM) to fine-tune on the seed set."
    )
    finetuned_model: str | None = Field(
        None, description="An already fine-tuned causal LM folder: skips the fine-tuning."
    )
    necessity_threshold: float = Field(
        0.0, description="A row is necessary when the reward of the model's own answer is < this."
    )
    finetune_epochs: int = Field(3, ge=1, description="Epochs of fine-tuning on the seed set.")
    finetune_lr: float = Field(2e-5, gt=0, description="Fine-tuning learning rate (AdamW, linear decay).")
    max_new_tokens: int = Field(
        1024,
        ge=1,
        description="Longest generated answer in tokens (MoDS: 1024), bounded by what the prompt leaves of "
        "the model's context; answers cut there are counted as generation_truncated.",
    )
    num_beams: int = Field(
        1,
        ge=1,
        description="Beam search width for the answers (MoDS: 4); 1 is greedy, and each beam adds a "
        "greedy pass's worth of generation work.",
    )

    @model_validator(mode="after")
    def _one_model(self) -> NecessityModelParams:
        if (self.model is None) == (self.finetuned_model is None):
            raise ValueError(
                "give exactly one of --model (fine-tuned on the seed set here) and --finetuned-model"
            )
        return self


def finetune_on_rows(
    stage: InstructionStage,
    rows: Iterator[tuple[list[str | None], list[str], list[str | None]]],
    tc: TaskContext,
) -> dict[str, Any]:
    """Fine-tune the causal LM on the given rows; write it to OUTPUT/necessity-model/ (recorded)."""
    from thresher.scorers.deberta import save_model_dir
    from thresher.scorers.instruct_lm import InstructLM

    p = stage.params
    set_torch_threads(all_cores())
    lm = InstructLM(p.model, device=p.device, max_length=p.max_length, for_training=True)
    examples = []
    for instructions, inputs, outputs in rows:
        ok = [i for i in range(len(instructions)) if instructions[i] is not None and outputs[i] is not None]
        examples += lm.encode(
            [instructions[i] for i in ok], [inputs[i] for i in ok], [outputs[i] for i in ok]
        )
    losses = lm.finetune(
        examples,
        epochs=p.finetune_epochs,
        learning_rate=p.finetune_lr,
        batch_size=p.batch_size,
        seed=stage.ctx.seed,
    )
    out = save_model_dir(lm.model, lm.tokenizer, stage.ctx.output / MODEL_DIR)
    for f in sorted(out.iterdir()):
        record_file(tc, f)
    return {"finetune_examples": len(examples), "finetune_epoch_loss": losses}


def score_necessity(
    stage: InstructionStage, shard_path: Path, candidate: Any, out: Path, model: str, tc: TaskContext
) -> dict[str, Any]:
    """Generate an answer to every candidate row of a shard with the fine-tuned model and score it with
    the reward model; `candidate(rows, batch)` says which rows of a batch are candidates."""
    from thresher.scorers.deberta import RewardScorer
    from thresher.scorers.instruct_lm import InstructLM

    p = stage.params
    set_torch_threads(p.threads)
    lm = InstructLM(model, device=p.device, max_length=p.max_length)
    scorer = RewardScorer(p.reward_model, device=p.device, batch_size=p.batch_size, max_length=p.max_length)
    stats: Counter[str] = Counter({GENERATION_TRUNCATED: 0})
    limits: list[int] = []
    offset = 0
    with ShardWriter(out, NECESSITY_SCHEMA) as writer:
        for batch in iter_batches(shard_path, stage.read_columns(shard_path), 512):
            rows = np.arange(offset, offset + batch.num_rows)
            offset += batch.num_rows
            instructions, inputs, _ = stage.row_texts(batch)
            chosen = np.nonzero(candidate(rows, batch))[0]
            if len(chosen):
                answers = lm.generate(
                    [instructions[i] for i in chosen],
                    [inputs[i] for i in chosen],
                    max_new_tokens=p.max_new_tokens,
                    batch_size=p.batch_size,
                    num_beams=p.num_beams,
                )
                generated = answers.texts
                stats[GENERATION_TRUNCATED] += int(answers.truncated.sum())
                limits += answers.new_token_limits
                scores, truncated = reward_scores(
                    scorer, [instructions[i] for i in chosen], [inputs[i] for i in chosen], list(generated)
                )
                stats["truncated"] += truncated
                missing = np.isnan(scores)
                status = np.where(
                    missing,
                    GENERATION_UNSCORABLE,
                    np.where(scores < p.necessity_threshold, "necessary", NOT_NECESSARY),
                )
                stats.update(status.tolist())
                writer.write(
                    pa.table(
                        {
                            "row": pa.array(rows[chosen], pa.int64()),
                            NECESSITY_COLUMN: pa.array(scores, pa.float64(), mask=missing),
                            "status": pa.array(status.tolist(), pa.string()),
                            "generated": pa.array(generated, pa.string()),
                            "generation_truncated": pa.array(answers.truncated, pa.bool_()),
                        },
                        schema=NECESSITY_SCHEMA,
                    )
                )
            tc.progress(batch.num_rows)
        tc.record(writer.close())
    return {
        "generated": int(sum(stats[k] for k in ("necessary", NOT_NECESSARY, GENERATION_UNSCORABLE))),
        **stats,
        # The new-token limit the batches really ran with: --max-new-tokens, or less where the model's
        # context leaves less room after the prompt.
        MAX_NEW_USED: max(limits) if limits else None,
    }


def necessity_totals(records: list[TaskRecord]) -> dict[str, Any]:
    """The necessity tasks' counts summed, and the largest new-token limit any of them ran with."""
    totals: Counter[str] = Counter()
    used = [r.extra.get(MAX_NEW_USED) for r in records if r.phase == "necessity"]
    for r in records:
        if r.phase == "necessity":
            totals.update({k: v for k, v in r.extra.items() if isinstance(v, int) and k != MAX_NEW_USED})
    return {**dict(sorted(totals.items())), MAX_NEW_USED: max((u for u in used if u), default=None)}


def read_necessity_table(path: Path) -> pa.Table:
    return pq.read_table(storage.readable(path)).sort_by("row")


class NecessityParams(InstructionParams, RewardParams, NecessityModelParams):
    seed_set: str = Field(..., description="The seed set (e.g. the output of `select kcenter`).")
    include_seed: bool = Field(
        True, description="Keep the input's rows that are in the seed set (mods_stage=seed) in the output."
    )


class Necessity(InstructionStage):
    name = "select-necessity"
    version = "2"
    Params = NecessityParams
    summary = (
        "MoDS necessity: fine-tune the LM on --seed-set, answer the other instructions, keep those whose "
        "answer's reward is < --necessity-threshold."
    )
    example = (
        "thresher select necessity data/02-quality data/04-mods --seed-set data/03-seed "
        "--model models/proxy-lm --reward-model models/reward-deberta"
    )
    command = ("select", "necessity")
    params: NecessityParams

    def _seed_set(self) -> ShardSet:
        return ShardSet.open(
            storage.location(self.params.seed_set),
            self.required_columns(),
            self.string_columns(),
            self.params.column_flags(),
        )

    def side_inputs(self) -> list[Path]:
        p = self.params
        models = model_inputs(p.reward_model, p.model, p.finetuned_model)
        return [*(s.path for s in self._seed_set().shards), *(storage.location(m) for m in models)]

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        p = self.params
        self.check_new_columns([STAGE_COLUMN, NECESSITY_COLUMN])
        shards = self.ctx.input.shards
        seed_files = tuple(str(s.path.resolve()) for s in self._seed_set().shards)
        phases = []
        if p.model is not None:
            phases.append(
                PhaseSpec("finetune", [TaskSpec("finetune", (*seed_files, *model_inputs(p.model)), {})])
            )
        lm_inputs = model_inputs(p.finetuned_model) if p.finetuned_model else ()
        scorer_inputs = model_inputs(p.reward_model)
        necessity = [str(self.ctx.work / "necessity" / s.name) for s in shards]
        phases += [
            PhaseSpec(
                "necessity",
                [
                    TaskSpec(
                        s.name,
                        (str(s.path), *seed_files, *lm_inputs, *scorer_inputs),
                        {"shard": i},
                        s.num_rows,
                    )
                    for i, s in enumerate(shards)
                ],
            ),
            PhaseSpec(
                "select",
                [
                    TaskSpec(s.name, (str(s.path), necessity[i], *seed_files), {"shard": i}, s.num_rows)
                    for i, s in enumerate(shards)
                ],
            ),
        ]
        return phases

    def _seed_ids(self) -> pa.Array:
        ids = [
            batch.column(ID_COLUMN)
            for s in self._seed_set().shards
            for batch in iter_batches(s.path, [ID_COLUMN])
        ]
        return pa.concat_arrays([pc.cast(i, pa.string()) for i in ids]) if ids else pa.array([], pa.string())

    def _tuned_model(self) -> str:
        p = self.params
        return p.finetuned_model or str(self.ctx.output / MODEL_DIR)

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase == "finetune":
            seed = self._seed_set()
            rows = (
                self.row_texts(b)
                for s in seed.shards
                for b in iter_batches(s.path, self.read_columns(s.path))
            )
            return TaskResult(extra=finetune_on_rows(self, rows, tc))
        seed_ids = self._seed_ids()
        if phase == "necessity":

            def candidate(rows: np.ndarray, batch: pa.RecordBatch) -> np.ndarray:
                in_seed = pc.is_in(batch.column(ID_COLUMN), value_set=seed_ids).to_numpy(zero_copy_only=False)
                instructions, _, _ = self.row_texts(batch)
                present = np.array([i is not None for i in instructions], dtype=bool)
                return ~in_seed & present

            out = self.ctx.work / "necessity" / task.key
            extra = score_necessity(
                self, storage.location(task.inputs[0]), candidate, out, self._tuned_model(), tc
            )
            return TaskResult(extra=extra)
        return self._select(task, tc, seed_ids)

    def _select(self, task: TaskSpec, tc: TaskContext, seed_ids: pa.Array) -> TaskResult:
        p = self.params
        results = read_necessity_table(storage.location(task.inputs[1]))
        result_rows = results["row"].to_numpy()
        result_status = np.asarray(results["status"].to_pylist(), dtype=object)
        result_scores = results[NECESSITY_COLUMN].to_numpy(zero_copy_only=False).astype(np.float64)

        def pick(batch: pa.RecordBatch, offset: int) -> BatchOutcome:
            rows = np.arange(offset, offset + batch.num_rows)
            in_seed = pc.is_in(batch.column(ID_COLUMN), value_set=seed_ids).to_numpy(zero_copy_only=False)
            hit, at = lookup_rows(rows, result_rows)
            status = np.where(hit, result_status[at] if len(result_rows) else None, UNSCORABLE)
            necessary = hit & (status == "necessary")
            keep = (in_seed & p.include_seed) | necessary
            stage = np.where(in_seed, "seed", np.where(necessary, "necessity", None))
            score = np.where(hit, result_scores[at] if len(result_rows) else np.nan, np.nan)
            table = pa.Table.from_batches([batch])
            table = table.append_column(STAGE_COLUMN, pa.array(stage, pa.string()))
            table = table.append_column(NECESSITY_COLUMN, pa.array(score, pa.float64(), mask=np.isnan(score)))
            drop = ~keep
            reasons = np.where(in_seed, IN_SEED_SET, status)[drop].tolist()
            details = [None if np.isnan(s) else f"{s:.6g}" for s in score[drop]]
            dropped = dropped_table(table[ID_COLUMN].filter(pa.array(drop)), self.name, reasons, details)
            return BatchOutcome(table.filter(pa.array(keep)), dropped)

        return map_batches(storage.location(task.inputs[0]), tc, pick, writes_dropped=True)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        finetune = next((r.extra for r in records if r.phase == "finetune"), {})
        return {
            "necessity_threshold": self.params.necessity_threshold,
            "model": MODEL_DIR if self.params.model else self.params.finetuned_model,
            **finetune,
            **necessity_totals(records),
        }
