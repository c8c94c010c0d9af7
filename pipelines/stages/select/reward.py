"""MoDS's quality criterion (`select reward`, Du et al. 2023): a reward model scores each
(instruction + "\\n" + input, output) pair; a row passes when its score is strictly greater than
--threshold. A row that cannot be scored (no instruction or output, or a non-finite score) is dropped
as `unscorable`, counted in the manifest.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_shard
from thresher.pipelines.engine.shards import ID_COLUMN, dropped_table
from thresher.pipelines.engine.stage import PhaseSpec, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.select.instruction import (
    UNSCORABLE,
    InstructionParams,
    InstructionStage,
    model_inputs,
    set_torch_threads,
)

REWARD_COLUMN = "reward_score"
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
# Row outcomes, also the `_dropped/` reasons.
PASSED = "passed"
LOW_REWARD = "low_reward"


class RewardParams(StageParams):
    reward_model: str = Field(
        ...,
        description="Reward / quality model folder (sequence classification, e.g. "
        "reward-model-deberta-v3-large-v2, or the output of `quality train --backbone deberta-v3`).",
    )


def reward_scores(
    scorer: Any, instructions: list[str | None], inputs: list[str], outputs: list[str | None]
) -> tuple[np.ndarray, int]:
    """Scores (NaN where the row has no instruction or output, or the score is not finite) and the
    number of pairs truncated to the model's limit."""
    from thresher.scorers.deberta import question_text

    scores = np.full(len(instructions), np.nan, dtype=np.float64)
    ok = [i for i in range(len(instructions)) if instructions[i] is not None and outputs[i] is not None]
    if not ok:
        return scores, 0
    result = scorer.score(
        [question_text(instructions[i], inputs[i]) for i in ok], [outputs[i] or "" for i in ok]
    )
    scores[ok] = result.scores
    return scores, int(result.truncated.sum())


def score_quantiles(values: list[float]) -> dict[str, float] | None:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(finite):
        return None
    return {f"{q:g}": round(float(np.quantile(finite, q)), 6) for q in QUANTILES}


class RewardScoreParams(InstructionParams, RewardParams):
    threshold: float = Field(0.0, description="Keep rows whose reward score is > this (strictly).")
    keep_all: bool = Field(
        False, description="Only add reward_score; drop nothing (unscorable rows get null)."
    )


class RewardScore(InstructionStage):
    name = "select-reward"
    version = "1"
    Params = RewardScoreParams
    summary = "MoDS quality: add reward_score from a reward model; keep rows scoring > --threshold."
    example = (
        "thresher select reward data/01-dedup data/02-quality --reward-model models/reward-deberta "
        "--threshold 0.0"
    )
    command = ("select", "reward")
    params: RewardScoreParams

    def side_inputs(self) -> list[Path]:
        return [storage.location(f) for f in model_inputs(self.params.reward_model)]

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        self.check_new_columns([REWARD_COLUMN])
        models = model_inputs(self.params.reward_model)
        return [
            PhaseSpec(
                "score",
                [TaskSpec(s.name, (str(s.path), *models), {}, s.num_rows) for s in self.ctx.input.shards],
            )
        ]

    def setup(self) -> None:
        # Once per worker process: the model loads once, not for every shard.
        from thresher.scorers.deberta import RewardScorer

        p = self.params
        set_torch_threads(p.threads)
        self.scorer = RewardScorer(
            p.reward_model, device=p.device, batch_size=p.batch_size, max_length=p.max_length
        )

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p, scorer = self.params, self.scorer
        stats: Counter[str] = Counter()
        kept_scores: list[float] = []

        def score(batch: pa.RecordBatch) -> BatchOutcome:
            scores, truncated = reward_scores(scorer, *self.row_texts(batch))
            stats["truncated"] += truncated
            missing = np.isnan(scores)
            stats[UNSCORABLE] += int(missing.sum())
            table = pa.Table.from_batches([batch]).append_column(
                REWARD_COLUMN, pa.array(scores, pa.float64(), mask=missing)
            )
            if p.keep_all:
                kept_scores.extend(scores[~missing].tolist())
                return BatchOutcome(table)
            keep = ~missing & (scores > p.threshold)
            drop = ~keep
            reasons = np.where(missing, UNSCORABLE, LOW_REWARD)[drop]
            details = [None if np.isnan(s) else f"{s:.6g}" for s in scores[drop]]
            kept_scores.extend(scores[keep].tolist())
            dropped = dropped_table(
                table[ID_COLUMN].filter(pa.array(drop)), self.name, reasons.tolist(), details
            )
            return BatchOutcome(table.filter(pa.array(keep)), dropped)

        result = map_shard(storage.location(task.inputs[0]), tc, score, writes_dropped=True, batch_rows=2048)
        result.extra.update({"truncated": stats["truncated"], UNSCORABLE: stats[UNSCORABLE]})
        result.extra["kept_score_quantiles"] = score_quantiles(kept_scores)
        return result

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        return {
            "threshold": self.params.threshold,
            "truncated": sum(r.extra.get("truncated", 0) for r in records),
            UNSCORABLE: sum(r.extra.get(UNSCORABLE, 0) for r in records),
        }
