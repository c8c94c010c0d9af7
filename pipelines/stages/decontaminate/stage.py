"""Decontamination: find documents that share a word n-gram (13 by default) with evaluation data.

Two phases. `index` (one task) reads the evaluation files given with `--against` (JSON lines or
Parquet, any format `ingest` reads) and hashes every n-gram of their text fields to 64 bits, written
as one sorted array: memory grows with the evaluation n-grams, never with their strings. `check` (one
task per shard) hashes each document's n-grams the same way and looks them up.

- drop: contaminated documents go to `_dropped/` (reason `contaminated`, detail: the evaluation files).
- tag: nothing is dropped; `contaminated` (bool) and `contaminated_by` (the files, comma-separated, or
  null) are added.

Text on both sides is lowercased, stripped of punctuation and split on whitespace (as
lm-evaluation-harness's decontamination does); an evaluation text shorter than one n-gram cannot match
and is counted as `short_texts`. The manifest counts contaminated documents per evaluation file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_batches
from thresher.pipelines.engine.plan import phase_index_path
from thresher.pipelines.engine.stage import (
    PhaseSpec,
    Stage,
    StageParams,
    TaskContext,
    TaskResult,
    TaskSpec,
    phase,
)
from thresher.pipelines.stages.decontaminate.eval_index import EvalIndex, check_eval_file
from thresher.pipelines.text.ngrams import ngram_hashes

REASON = "contaminated"
TAG_COLUMNS = ("contaminated", "contaminated_by")
INDEX_FILE = "eval-ngrams.npz"


class DecontaminateParams(StageParams):
    against: list[str] = Field(
        description="Evaluation files (JSON lines, Parquet, CSV) whose prompts and answers must not "
        "appear in the data."
    )
    fields: list[str] = Field(
        [],
        description="Fields of the evaluation files to check, e.g. prompt,answer; default: every "
        "string (or list of strings) field.",
    )
    ngram: int = Field(13, ge=1, le=64, description="Words per n-gram; one shared n-gram is contamination.")
    mode: Literal["drop", "tag"] = Field(
        "drop", description="drop: drop contaminated documents; tag: add contaminated/contaminated_by."
    )
    text_column: str = Field("text", description="Column holding the text.")


class Decontaminate(Stage[DecontaminateParams]):
    name = "decontaminate"
    summary = "Drop or tag documents that share a word n-gram (13 by default) with evaluation data."
    example = (
        "thresher decontaminate data/04-pii data/05-decon --against evals/mmlu.jsonl,evals/gsm8k.parquet"
    )
    command = ("decontaminate",)

    _index: tuple[str, EvalIndex] | None = None  # (path, index): loaded once per worker process

    def _eval_files(self) -> list[Path]:
        if not self.params.against:
            raise UsageError("--against: name at least one evaluation file")
        files = [storage.location(f) for f in self.params.against]
        if len(files) > np.iinfo(np.uint16).max:
            raise UsageError("--against: at most 65535 evaluation files; concatenate some of them")
        for f in files:
            if not f.is_file():
                raise UsageError(f"--against {f}: file does not exist")
        return files

    def _labels(self) -> list[str]:
        """How each evaluation file is named in details and the manifest: its file name, or the path as
        given where two files share a name."""
        names = [storage.location(f).name for f in self.params.against]
        return [n if names.count(n) == 1 else f for n, f in zip(names, self.params.against, strict=True)]

    def side_inputs(self) -> list[Path]:
        return self._eval_files()

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        for f in self._eval_files():
            check_eval_file(f, self.params.fields)
        files = [str(f.resolve()) for f in self._eval_files()]
        if self.params.mode == "tag":
            for shard in self.ctx.input.shards:
                clash = [c for c in TAG_COLUMNS if shard.schema is not None and c in shard.schema.names]
                if clash:
                    raise UsageError(
                        f"{shard.path}: already has column '{clash[0]}'; --mode tag would overwrite it"
                    )
        index = str(phase_index_path(self.ctx.output, "index"))
        return [
            PhaseSpec.of(self.index, [TaskSpec.named("eval-ngrams", {"eval": files})]),
            PhaseSpec.of(
                self.check,
                [
                    TaskSpec.named(s.name, {"shard": s.path, "index": index}, rows=s.num_rows)
                    for s in self.ctx.input.shards
                ],
            ),
        ]

    @phase()
    def index(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        built, tallies = EvalIndex.build(task.input_list("eval"), p.fields, p.ngram)
        path = self.ctx.work / INDEX_FILE
        built.save(path)
        tc.record(path)
        per_file = {
            label: {"texts": t.texts, "short_texts": t.short_texts, "ngrams": t.ngrams}
            for label, t in zip(self._labels(), tallies, strict=True)
        }
        return TaskResult(extra={"eval_files": per_file, "distinct_ngrams": len(np.unique(built.hashes))})

    def _loaded_index(self) -> EvalIndex:
        path = str(self.ctx.work / INDEX_FILE)
        if self._index is None or self._index[0] != path:
            self._index = (path, EvalIndex.load(storage.location(path)))
        return self._index[1]

    @phase()
    def check(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p, labels = self.params, self._labels()
        index = self._loaded_index()

        def look_up(batch: pa.RecordBatch, offset: int) -> BatchOutcome:
            hashes, doc = ngram_hashes(batch.column(p.text_column), p.ngram)
            matched, by_file = index.matches(hashes, doc, batch.num_rows)
            hit = matched > 0
            counts = {"contaminated_documents": int(hit.sum()), "matched_ngrams": int(matched.sum())}
            for i, label in enumerate(labels):
                counts[f"documents_by_file.{label}"] = int(by_file[:, i].sum())
            names: list[str | None] = [
                ",".join(labels[j] for j in np.nonzero(row)[0]) if h else None
                for h, row in zip(hit.tolist(), by_file, strict=True)
            ]
            if p.mode == "drop":
                return BatchOutcome.drop_rows(batch, hit, REASON, names, counts)
            table = pa.Table.from_batches([batch])
            table = table.append_column(pa.field("contaminated", pa.bool_()), [pa.array(hit, pa.bool_())])
            table = table.append_column(
                pa.field("contaminated_by", pa.string()), [pa.array(names, pa.string())]
            )
            return BatchOutcome(table, None, counts)

        return map_batches(task.input("shard"), tc, look_up, writes_dropped=p.mode == "drop", batch_rows=2048)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        built = next((r.extra for r in records if r.phase == "index"), {})
        by_file = self.counted("documents_by_file")
        return {
            "mode": self.params.mode,
            "ngram": self.params.ngram,
            "contaminated_documents": self.counters.get("contaminated_documents", 0),
            "matched_ngrams": self.counters.get("matched_ngrams", 0),
            "documents_by_file": {label: by_file.get(label, 0) for label in self._labels()},
            "eval_files": built.get("eval_files", {}),
            "distinct_eval_ngrams": built.get("distinct_ngrams", 0),
        }
