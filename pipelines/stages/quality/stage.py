"""The fastText quality classifier: `quality train` (a fit stage) and `quality score` (a map stage).

Training takes labelled shards, either two shard sets (the input holds positives, `--negative DIR`
negatives) or a label column (in the input, or in a side file joined by id), holds out a seeded share of
rows, trains with one thread and the run's seed (so the same command gives the same model), and writes
`model.bin` and `metrics.json` (precision, recall, F1 and ROC AUC on the held-out rows; also in the
manifest's summary; and, for the report's reliability plot, the held-out labels and probabilities).

Scoring adds `quality_score`, the model's probability of the positive label, and with `--langid-model`
(a fastText language-ID model such as lid.176.bin) the columns `lang` and `lang_score`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.errors import ThresherError, UsageError
from thresher.pipelines.engine.manifest import FileRecord, RowCounts, TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_shard
from thresher.pipelines.engine.shards import ID_COLUMN, Shard, ShardSet, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.quality.training_files import (
    LabelledBatch,
    heldout_predictions,
    heldout_scores,
    write_training_files,
)
from thresher.scorers.fasttext_model import (
    MODEL_FILE,
    FastTextModel,
    TrainSettings,
    clean_label,
    fasttext_lines,
    resolve_model_path,
    train,
)
from thresher.scorers.metrics import binary_metrics

METRICS_FILE = "metrics.json"
DEBERTA_DIR = "model"  # --backbone deberta-v3: a save_pretrained folder
HISTOGRAM_BINS = 20


# ---------------------------------------------------------------------------------------------------------
# quality train


class QualityTrainParams(StageParams):
    text_column: str = Field("text", description="Column holding the text.")
    negative: str | None = Field(
        None, description="Shard set of negative examples; the input's rows are then all positives."
    )
    label_column: str | None = Field(
        None, description="Column whose values label the rows (in the input, or in --labels)."
    )
    labels: str | None = Field(
        None,
        description="Parquet or JSON-lines file with `id` and --label-column, joined to the input by id "
        "(labels kept apart from the text).",
    )
    positive_values: list[str] = Field(
        [],
        description="--label-column values that are positives. Without these and --negative-values, "
        "every value is its own label (e.g. for language ID).",
    )
    negative_values: list[str] = Field(
        [], description="--label-column values that are negatives; default: every value not positive."
    )
    label: str = Field("hq", description="Name of the positive label in the model; metrics are for it.")
    negative_label: str = Field("lq", description="Name of the negative label in the model.")
    holdout: float = Field(
        0.1, ge=0, lt=1, description="Share of rows held out for the metrics (by id hash)."
    )
    backbone: Literal["fasttext", "deberta-v3"] = Field(
        "fasttext",
        description="fasttext: a fastText classifier (model.bin). deberta-v3: fine-tune the local "
        "DeBERTa-v3-style model at --base as a one-logit quality/reward classifier (model/ folder).",
    )
    base: str | None = Field(
        None,
        description="--backbone deberta-v3: local folder (or HF cache name) of the base model to fine-tune.",
    )
    pair_column: str | None = Field(
        None,
        description="--backbone deberta-v3: column with the second text of "
        "a pair (e.g. output, with --text-column instruction).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="--backbone deberta-v3: where to train."
    )
    finetune_epochs: int = Field(3, ge=1, le=100, description="--backbone deberta-v3: epochs.")
    finetune_lr: float = Field(3e-5, gt=0, le=1, description="--backbone deberta-v3: learning rate.")
    batch_size: int = Field(16, ge=1, description="--backbone deberta-v3: batch size.")
    max_length: int = Field(512, ge=8, description="--backbone deberta-v3: tokens per (text, pair) input.")
    epoch: int = Field(10, ge=1, le=1000, description="fastText epochs.")
    lr: float = Field(0.5, gt=0, le=10, description="fastText learning rate.")
    dim: int = Field(32, ge=1, le=1024, description="fastText vector size.")
    word_ngrams: int = Field(2, ge=1, le=6, description="fastText word n-gram length.")
    min_count: int = Field(1, ge=1, description="fastText: ignore words seen fewer times.")
    bucket: int = Field(
        200_000, ge=0, description="fastText hash buckets for n-grams (model size grows with dim * bucket)."
    )

    @model_validator(mode="after")
    def _ngrams_need_buckets(self) -> QualityTrainParams:
        # fastText hashes word n-grams modulo --bucket: with none it divides by zero and kills the process.
        if self.bucket == 0 and self.word_ngrams > 1:
            raise ValueError("--bucket 0 only works with --word-ngrams 1")
        if self.backbone == "deberta-v3" and not self.base:
            raise ValueError("--backbone deberta-v3 needs --base, the local model folder to fine-tune")
        return self


class QualityTrain(Stage):
    name = "quality-train"
    version = "1"
    Params = QualityTrainParams
    summary = "Train a fastText quality classifier on labelled shards; write model.bin and held-out metrics."
    example = (
        "thresher quality train data/good data/model --negative data/bad\n\n"
        "    thresher quality train data/01 data/model --labels truth.parquet --label-column kind "
        "--positive-values clean --negative-values spam,boilerplate"
    )
    command = ("quality", "train")
    params: QualityTrainParams

    def _negative_set(self) -> ShardSet | None:
        if self.params.negative is None:
            return None
        return ShardSet.open(
            storage.location(self.params.negative),
            self.required_columns(),
            self.string_columns(),
            self.params.column_flags(),
        )

    def side_inputs(self) -> list[Path]:
        p = self.params
        if p.labels and not p.label_column:
            raise UsageError("--labels needs --label-column, the column of the file that holds the labels")
        if (p.negative is None) == (p.label_column is None):
            raise UsageError(
                "give either --negative DIR (the input holds positives) or --label-column COLUMN"
            )
        if p.negative is not None and (p.positive_values or p.negative_values):
            raise UsageError("--positive-values/--negative-values go with --label-column, not --negative")
        if clean_label(p.label) != p.label or clean_label(p.negative_label) != p.negative_label:
            raise UsageError("--label and --negative-label must be single words (no spaces)")
        negative = self._negative_set()
        files = [s.path for s in negative.shards] if negative else []
        if p.backbone == "deberta-v3" and p.base:
            from thresher.scorers.torch_runtime import model_files

            files.extend(model_files(p.base))
        if p.labels:
            path = storage.location(p.labels)
            if not path.is_file():
                raise UsageError(f"--labels {p.labels}: file does not exist")
            files.append(path)
        return files

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        p = self.params
        positives = self.ctx.input.shards
        negative = self._negative_set()
        negatives = negative.shards if negative else []
        if p.label_column and not p.labels:
            _require_column(positives, p.label_column, "--label-column")
        labels_file = str(storage.location(p.labels).resolve()) if p.labels else None
        if labels_file:
            _read_labels(
                storage.location(labels_file), p.label_column or ""
            )  # fail now, not after reading the shards
        inputs = tuple(str(s.path.resolve()) for s in [*positives, *negatives])
        args = {"negative_from": len(positives), "labels_file": labels_file}
        rows = sum(s.num_rows for s in [*positives, *negatives])
        return [
            PhaseSpec(
                "fit", [TaskSpec("model", (*inputs, *([labels_file] if labels_file else [])), args, rows)]
            )
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        n_shards = len(task.inputs) - (1 if task.args["labels_file"] else 0)
        shards = [storage.location(x) for x in task.inputs[:n_shards]]
        side_labels = (
            _read_labels(storage.location(task.args["labels_file"]), p.label_column or "")
            if task.args["labels_file"]
            else None
        )
        tally = _ReadTally()
        labelled = tally.count(self._labelled(shards, task.args["negative_from"], side_labels, tc))
        if p.backbone == "deberta-v3":
            result = self._finetune_deberta(labelled, tc)
            result.counts = tally.counts()
            return result
        work = storage.scratch(self.ctx.work, "quality-train")
        files = write_training_files(
            labelled,
            work,
            holdout=p.holdout,
            seed=self.ctx.seed,
            expected_rows=task.rows or 0,
        )
        labels = sorted(files.train_counts)
        if len(labels) < 2:
            found = ", ".join(f"{k}={v}" for k, v in sorted(files.train_counts.items())) or "no rows"
            raise ThresherError(f"{self.ctx.input_path}: training needs at least two labels; found {found}")
        if p.label not in files.train_counts:
            raise UsageError(f"--label {p.label}: no training row has it; labels are: {', '.join(labels)}")
        settings = TrainSettings(
            epoch=p.epoch,
            lr=p.lr,
            dim=p.dim,
            word_ngrams=p.word_ngrams,
            min_count=p.min_count,
            bucket=p.bucket,
            seed=self.ctx.seed,
        )
        model = train(files.train, settings)
        truth, scores = heldout_scores(model, files.heldout, p.label)
        metrics = binary_metrics(truth, scores)
        report = {
            "positive_label": p.label,
            "labels": labels,
            "train_rows": dict(sorted(files.train_counts.items())),
            "heldout_rows": dict(sorted(files.heldout_counts.items())),
            "heldout": metrics,
        }
        with tc.artifact(MODEL_FILE) as tmp:
            model.save(tmp)
        # The predictions go to metrics.json only, not the manifest's summary: they are the report's
        # reliability plot, and a manifest stays small.
        saved = {**report, "heldout_predictions": heldout_predictions(truth, scores)}
        with tc.artifact(METRICS_FILE) as tmp:
            tmp.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
        return TaskResult(tally.counts(), extra=report)

    def _finetune_deberta(self, batches: Iterator[LabelledBatch], tc: TaskContext) -> TaskResult:
        from thresher.scorers.deberta import FinetuneSettings, finetune_from_batches

        p = self.params
        assert p.base is not None
        out = self.ctx.output / DEBERTA_DIR
        settings = FinetuneSettings(
            epochs=p.finetune_epochs,
            learning_rate=p.finetune_lr,
            batch_size=p.batch_size,
            max_length=p.max_length,
            seed=self.ctx.seed,
            device=p.device,
        )
        report = finetune_from_batches(
            (
                (
                    b.ids.to_pylist(),
                    b.texts.to_pylist(),
                    b.pairs.to_pylist() if b.pairs is not None else None,
                    b.labels,
                )
                for b in batches
            ),
            positive=p.label,
            base=p.base,
            out_dir=out,
            holdout=p.holdout,
            settings=settings,
        )
        for f in sorted(out.iterdir()):
            tc.record(FileRecord(path=str(f), size=f.stat().st_size, digest=file_digest(f)))
        with tc.artifact(METRICS_FILE) as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        return TaskResult(extra=json.loads(json.dumps(report, default=str)))

    def _labelled(
        self, shards: list[Path], negative_from: int, side_labels: dict[str, str] | None, tc: TaskContext
    ) -> Iterator[LabelledBatch]:
        p = self.params
        for i, shard in enumerate(shards):
            fixed = None if p.label_column else (p.label if i < negative_from else p.negative_label)
            from_shard = p.label_column if p.label_column and side_labels is None else None
            columns = [
                ID_COLUMN,
                p.text_column,
                *([from_shard] if from_shard else []),
                *([p.pair_column] if p.pair_column else []),
            ]
            for batch in iter_batches(shard, columns):
                ids = batch.column(ID_COLUMN)
                if fixed is not None:
                    labels: list[str | None] = [fixed] * batch.num_rows
                else:
                    raw = (
                        batch.column(from_shard).to_pylist()
                        if from_shard
                        else [side_labels.get(x) for x in ids.to_pylist()]  # type: ignore[union-attr]
                    )
                    labels = [self._map_label(v) for v in raw]
                pairs = batch.column(p.pair_column) if p.pair_column else None
                yield LabelledBatch(ids, batch.column(p.text_column), labels, pairs)
                tc.progress(batch.num_rows)

    def _map_label(self, value: Any) -> str | None:
        p = self.params
        if value is None:
            return None
        value = str(value)
        if not p.positive_values and not p.negative_values:
            return clean_label(value)
        if value in p.positive_values:
            return p.label
        if value in p.negative_values or (p.positive_values and not p.negative_values):
            return p.negative_label
        if p.negative_values and not p.positive_values:
            return p.label
        return None

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        fit = [r for r in records if r.phase == "fit"]
        model = DEBERTA_DIR if self.params.backbone == "deberta-v3" else MODEL_FILE
        return {"model": model, "metrics": METRICS_FILE, **(fit[0].extra if fit else {})}


class _ReadTally:
    """Counts what training read: a classifier keeps no rows, but its manifest says how many rows it
    learnt from and how many had no label."""

    def __init__(self) -> None:
        self.read = 0
        self.unlabelled = 0

    def count(self, batches: Iterator[LabelledBatch]) -> Iterator[LabelledBatch]:
        for batch in batches:
            self.read += len(batch.labels)
            self.unlabelled += sum(1 for label in batch.labels if label is None)
            yield batch

    def counts(self) -> RowCounts:
        dropped = {"unlabelled": self.unlabelled} if self.unlabelled else {}
        return RowCounts(rows_in=self.read, rows_out=self.read - self.unlabelled, dropped=dropped)


def _read_labels(path: Path, column: str) -> dict[str, str]:
    """id -> label from a Parquet or JSON-lines side file."""
    try:
        if path.suffix in (".jsonl", ".json", ".ndjson"):
            import pyarrow.json as pj

            table = pj.read_json(path)
        else:
            table = pq.read_table(storage.readable(path))
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).splitlines()[0]
        raise ThresherError(f"{path}: cannot read labels (Parquet or JSON lines expected): {first}") from None
    for needed in (ID_COLUMN, column):
        if needed not in table.column_names:
            raise UsageError(f"{path}: no column '{needed}'; columns are: {', '.join(table.column_names)}")
    ids = pc.cast(table[ID_COLUMN], pa.string()).to_pylist()
    values = pc.cast(table[column], pa.string()).to_pylist()
    return {i: v for i, v in zip(ids, values, strict=True) if i is not None and v is not None}


def _require_column(shards: list[Shard], column: str, option: str) -> None:
    for shard in shards:
        if shard.schema is not None and column not in shard.schema.names:
            raise UsageError(
                f"{shard.path}: no column '{column}' ({option}); columns are: {', '.join(shard.schema.names)}"
            )


# ---------------------------------------------------------------------------------------------------------
# quality score


class QualityScoreParams(StageParams):
    model: str | None = Field(
        None, description="fastText quality model (.bin/.ftz), or the output folder of `quality train`."
    )
    label: str = Field("hq", description="Model label whose probability becomes the score.")
    output_column: str = Field("quality_score", description="Column to write the score to.")
    text_column: str = Field("text", description="Column holding the text.")
    langid_model: str | None = Field(
        None, description="fastText language-ID model (e.g. lid.176.bin): adds `lang` and `lang_score`."
    )


class QualityScore(Stage):
    name = "quality-score"
    version = "1"
    Params = QualityScoreParams
    summary = "Add quality_score (fastText P(label)) and, with --langid-model, lang and lang_score."
    example = "thresher quality score data/03 data/04-scored --model data/model --workers 8"
    command = ("quality", "score")
    params: QualityScoreParams

    def _models(self) -> tuple[Path | None, Path | None]:
        p = self.params
        if p.model is None and p.langid_model is None:
            raise UsageError("give --model (a quality classifier) and/or --langid-model")
        model = resolve_model_path(p.model, "--model") if p.model else None
        langid = resolve_model_path(p.langid_model, "--langid-model") if p.langid_model else None
        return model, langid

    def _new_columns(self) -> list[str]:
        p = self.params
        return [*([p.output_column] if p.model else []), *(["lang", "lang_score"] if p.langid_model else [])]

    def side_inputs(self) -> list[Path]:
        return [m for m in self._models() if m is not None]

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        model, langid = self._models()
        if model is not None:
            FastTextModel.load(model).require_label(self.params.label)
        if langid is not None:
            FastTextModel.load(langid)
        for shard in self.ctx.input.shards:
            names = shard.schema.names if shard.schema is not None else []
            for column in self._new_columns():
                if column in names:
                    raise UsageError(
                        f"{shard.path}: already has column '{column}'; pass --output-column or drop it first"
                    )
        args = {
            "model": str(model.resolve()) if model else None,
            "langid_model": str(langid.resolve()) if langid else None,
        }
        models = tuple(m for m in (args["model"], args["langid_model"]) if m)
        return [
            PhaseSpec(
                "score",
                [TaskSpec(s.name, (str(s.path), *models), args, s.num_rows) for s in self.ctx.input.shards],
            )
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        model = FastTextModel.load(storage.location(task.args["model"])) if task.args["model"] else None
        langid = (
            FastTextModel.load(storage.location(task.args["langid_model"]))
            if task.args["langid_model"]
            else None
        )
        histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        languages: Counter[str] = Counter()
        total = 0.0

        def add_scores(batch: pa.RecordBatch) -> BatchOutcome:
            nonlocal total
            lines = fasttext_lines(batch.column(p.text_column))
            table = pa.Table.from_batches([batch])
            if model is not None:
                scores = model.probabilities(lines, p.label)
                histogram[:] += np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
                total += float(scores.sum(dtype=np.float64))
                table = table.append_column(pa.field(p.output_column, pa.float32()), [scores])
            if langid is not None:
                langs, probs = langid.top_labels(lines)
                languages.update(x for x in langs if x is not None)
                table = table.append_column(pa.field("lang", pa.string()), [pa.array(langs, pa.string())])
                table = table.append_column(pa.field("lang_score", pa.float32()), [probs])
            return BatchOutcome(table)

        result = map_shard(storage.location(task.inputs[0]), tc, add_scores, writes_dropped=False)
        result.extra.update(
            {"histogram": histogram.tolist(), "score_sum": total, "languages": dict(languages)}
        )
        return result

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        rows = sum(r.counts.rows_in for r in records if r.counts is not None)
        summary: dict[str, Any] = {"rows": rows}
        if self.params.model:
            histogram = np.sum([r.extra.get("histogram", [0] * HISTOGRAM_BINS) for r in records], axis=0)
            total = sum(r.extra.get("score_sum", 0.0) for r in records)
            summary[self.params.output_column] = {
                "label": self.params.label,
                "mean": round(total / rows, 6) if rows else None,
                "histogram": {
                    "edges": [round(i / HISTOGRAM_BINS, 4) for i in range(HISTOGRAM_BINS + 1)],
                    "counts": [int(c) for c in histogram],
                },
            }
        if self.params.langid_model:
            languages: Counter[str] = Counter()
            for r in records:
                languages.update(r.extra.get("languages", {}))
            summary["languages"] = dict(languages.most_common(50))
        return summary
