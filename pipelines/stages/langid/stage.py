"""Language ID: the language of each document from a fastText language-ID model, optionally kept to a few.

The model is the user's: lid.176.bin/.ftz (labels `__label__en`), GlotLID (`__label__eng_Latn`) or one
trained with `thresher quality train --label-column lang`. Adds `lang` (the label without its prefix)
and `lang_score` (the model's probability for it). With `--keep en,de` the other documents go to
`_dropped/` (reason `language`, detail the detected language); a --keep value also matches the labels it
is the language part of (`eng` keeps `eng_Latn`). Without --keep nothing is dropped. The manifest counts
documents per language.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, MapStage
from thresher.pipelines.engine.stage import PhaseSpec, StageParams, TaskSpec
from thresher.scorers.fasttext_model import FastTextModel, fasttext_lines, resolve_model_path

REASON = "language"
COLUMNS = ("lang", "lang_score")
UNKNOWN = "unknown"  # what the detail says for a document the model gave no label


class LangIDParams(StageParams):
    model: str = Field(
        description="fastText language-ID model (.bin/.ftz, e.g. lid.176.bin or GlotLID), or a "
        "`quality train` output folder."
    )
    keep: list[str] = Field(
        [], description="Languages to keep, e.g. en,de (model labels without __label__); default: all."
    )
    text_column: str = Field("text", description="Column holding the text.")


def language_part(label: str) -> str:
    """`eng` of GlotLID's `eng_Latn`; lid.176's `en` is all language."""
    return label.split("_", 1)[0]


class LangID(MapStage[LangIDParams]):
    name = "langid"
    summary = "Add lang and lang_score from a fastText language-ID model; --keep drops other languages."
    example = "thresher langid data/01-exact data/02-langid --model lid.176.bin --keep en,de"
    command = ("langid",)
    phase_name = "identify"

    model: FastTextModel | None = None  # loaded once per worker process

    def _model_path(self) -> Path:
        return resolve_model_path(self.params.model, "--model")

    def side_inputs(self) -> list[Path]:
        return [self._model_path()]

    def writes_dropped(self) -> bool:
        return bool(self.params.keep)

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        # Loaded now, so a broken or foreign model file fails before any task runs.
        labels = FastTextModel.load(self._model_path()).labels
        known = set(labels) | {language_part(x) for x in labels}
        unknown = [k for k in self.params.keep if k not in known]
        if unknown:
            shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
            raise UsageError(f"--keep {unknown[0]}: the model has no such language (its labels: {shown})")
        for shard in self.ctx.input.shards:
            clash = [c for c in COLUMNS if shard.schema is not None and c in shard.schema.names]
            if clash:
                raise UsageError(f"{shard.path}: already has column '{clash[0]}'; drop it before langid")
        return super().phases()

    def task_args(self) -> dict[str, Any]:
        # Absolute: a task may run in another directory (a Slurm array task, a Ray worker).
        return {"model": str(self._model_path().resolve())}

    def setup(self) -> None:
        if storage.location(self.params.model).exists():
            self.model = FastTextModel.load(self._model_path())

    def start_task(self, task: TaskSpec) -> None:
        # Normally the model `setup` loaded; a worker started elsewhere, where a relative --model does
        # not resolve, loads the planned path once instead (FastTextModel.load caches per process).
        wanted = storage.location(task.args["model"])
        if self.model is None or self.model.path != wanted:
            self.model = FastTextModel.load(wanted)

    def map_batch(self, batch: pa.RecordBatch, offset: int) -> BatchOutcome:
        assert self.model is not None
        langs, probs = self.model.top_labels(fasttext_lines(batch.column(self.params.text_column)))
        counts = Counter(f"languages.{lang or UNKNOWN}" for lang in langs)
        table = pa.Table.from_batches([batch])
        table = table.append_column(pa.field("lang", pa.string()), [pa.array(langs, pa.string())])
        table = table.append_column(pa.field("lang_score", pa.float32()), [pa.array(probs, pa.float32())])
        keep = set(self.params.keep)
        if not keep:
            return BatchOutcome(table, None, dict(counts))
        drop = [lang is None or (lang not in keep and language_part(lang) not in keep) for lang in langs]
        details = [lang or UNKNOWN for lang in langs]
        return BatchOutcome.drop_rows(table, drop, REASON, details, dict(counts))

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        languages = Counter(self.counted("languages"))
        return {
            "keep": list(self.params.keep),
            "languages": dict(languages.most_common(50)),
            "dropped": self.totals.dropped.get(REASON, 0),
        }
