"""A plugin as a third party would write it: only the public stage API of thresher.pipelines."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.pipelines.engine.mapping import BatchOutcome, map_shard
from thresher.pipelines.engine.shards import dropped_table, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec


class WordCountParams(StageParams):
    min_words: int = Field(0, ge=0, description="Drop rows with fewer words.")


class WordCount(Stage):
    """Map stage: annotate `n_words`, drop short rows."""

    name = "word-count"
    Params = WordCountParams
    summary = "Add n_words; drop rows under --min-words."
    params: WordCountParams

    def required_columns(self) -> list[str]:
        return ["id", "text"]

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        return [
            PhaseSpec(
                "map", [TaskSpec(s.name, (str(s.path),), {}, s.num_rows) for s in self.ctx.input.shards]
            )
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        def annotate(batch: pa.RecordBatch) -> BatchOutcome:
            words = pc.list_value_length(pc.utf8_split_whitespace(batch.column("text")))
            table = pa.Table.from_batches([batch]).append_column("n_words", words)
            short = pc.less(words, self.params.min_words)
            dropped = dropped_table(table["id"].filter(short).combine_chunks(), self.name, "too_few_words")
            return BatchOutcome(table.filter(pc.invert(short)), dropped)

        return map_shard(Path(task.inputs[0]), tc, annotate, writes_dropped=True)


class VocabFitParams(StageParams):
    top: int = Field(20, ge=1, description="Words to keep in the vocabulary.")


class VocabFit(Stage):
    """Fit stage: one task reads every shard and writes a model artifact."""

    name = "vocab-fit"
    Params = VocabFitParams
    summary = "Fit a word-frequency vocabulary (vocab.json) on a shard set."
    params: VocabFitParams

    def required_columns(self) -> list[str]:
        return ["id", "text"]

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        shards = self.ctx.input.shards
        return [
            PhaseSpec(
                "fit", [TaskSpec("vocab", tuple(str(s.path) for s in shards), {}, self.ctx.input.num_rows)]
            )
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        counts: Counter[str] = Counter()
        for path in task.inputs:
            for batch in iter_batches(Path(path), ["text"]):
                for text in batch.column("text").to_pylist():
                    counts.update(text.split())
                tc.progress(batch.num_rows)
        with tc.artifact("vocab.json") as tmp:
            tmp.write_text(json.dumps(dict(sorted(counts.most_common(self.params.top))), sort_keys=True))
        return TaskResult(extra={"distinct_words": len(counts)})
