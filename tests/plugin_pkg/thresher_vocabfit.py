"""A third-party fit stage on `thresher.api`: one task reads every shard and writes a model artifact."""

from __future__ import annotations

import json
from collections import Counter

from thresher.api import (
    Field,
    PhaseSpec,
    Stage,
    StageParams,
    TaskContext,
    TaskResult,
    TaskSpec,
    iter_batches,
    phase,
)


class VocabFitParams(StageParams):
    text_column: str = "text"
    top: int = Field(20, ge=1, description="Words to keep in the vocabulary.")


class VocabFit(Stage[VocabFitParams]):
    name = "vocab-fit"
    summary = "Fit a word-frequency vocabulary (vocab.json) on a shard set."

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        shards = {"shards": [s.path for s in self.ctx.input.shards]}
        return [PhaseSpec.of(self.fit, [TaskSpec.named("vocab", shards, rows=self.ctx.input.num_rows)])]

    @phase()
    def fit(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        counts: Counter[str] = Counter()
        for path in task.input_list("shards"):
            for batch in iter_batches(path, [self.params.text_column]):
                for text in batch.column(self.params.text_column).to_pylist():
                    counts.update(text.split())
                tc.progress(batch.num_rows)
        with tc.artifact("vocab.json") as tmp:
            tmp.write_text(json.dumps(dict(sorted(counts.most_common(self.params.top))), sort_keys=True))
        tc.count("distinct_words", len(counts))
        return TaskResult()
