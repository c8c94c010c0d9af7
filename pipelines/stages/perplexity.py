"""Perplexity stages: score each document under a small LM and, optionally, bucket the scores by percentile.

`perplexity-kenlm` adds `kenlm_ppl` (and `kenlm_bucket`), cc_net style; `perplexity-lm` adds `lm_ppl` (and
`lm_bucket` when asked) under a local Hugging Face causal LM. Documents with nothing to score (empty text)
get a null score and a null bucket and are counted in the summary; no row is ever dropped.

Buckets need cutoffs. From `--cutoffs-file` (a previous run's `_<column>_cutoffs.json`) this is one map
phase. Otherwise the cutoffs are this shard set's own percentiles, exact, in three phases: `score` (per
shard: scores saved row-aligned, plus a sorted copy), `cutoffs` (one task: exact percentiles over the
sorted copies, written as the cutoff file) and `bucket` (per shard: the input rows with score and bucket).
Only scores, eight bytes a document, pass between phases; the text is read again rather than copied.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from thresher.pipelines.atomic import atomic_open
from thresher.pipelines.digest import file_digest
from thresher.pipelines.manifest import FileRecord, TaskRecord
from thresher.pipelines.mapping import BatchOutcome, map_shard
from thresher.pipelines.shards import iter_batches
from thresher.pipelines.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.percentile_buckets import (
    BucketCutoffs,
    assign_buckets,
    exact_percentiles,
    load_run,
    save_run,
)

SUMMARY_PERCENTILES = (10.0, 50.0, 90.0)


class PerplexityParams(StageParams):
    text_column: str = Field("text", description="Column holding the text to score.")
    buckets: list[str] = Field(
        ["head", "middle", "tail"], description="Bucket names, lowest perplexity first; empty: no buckets."
    )
    percentiles: list[float] = Field([30.0, 60.0], description="Percentile cutoffs between the buckets.")
    cutoffs_file: str | None = Field(
        None,
        description="Take the cutoffs from this file (a previous run's _<column>_cutoffs.json) instead of "
        "this shard set's percentiles.",
    )
    batch_rows: int = Field(1024, ge=1, description="Documents scored per batch.")

    @model_validator(mode="after")
    def _check_buckets(self) -> PerplexityParams:
        if not self.buckets:
            return self
        if len(set(self.buckets)) != len(self.buckets):
            raise ValueError(f"bucket names repeat: {','.join(self.buckets)}")
        if self.cutoffs_file is None:
            if len(self.percentiles) != len(self.buckets) - 1:
                raise ValueError(
                    f"{len(self.buckets)} buckets need {len(self.buckets) - 1} percentiles, "
                    f"got {len(self.percentiles)}"
                )
            increasing = all(a < b for a, b in zip(self.percentiles, self.percentiles[1:], strict=False))
            if not increasing or not all(0 < p < 100 for p in self.percentiles):
                raise ValueError("percentiles must increase strictly, each between 0 and 100")
        return self


class PerplexityStage(Stage):
    """Shared plan and bookkeeping; subclasses say how to load a scorer and what files it depends on."""

    score_column: ClassVar[str]
    bucket_column: ClassVar[str]
    params: PerplexityParams

    @abstractmethod
    def model_args(self) -> dict[str, Any]:
        """The resolved model files every task loads, checked at plan time so a bad model fails before any
        task runs. (The files' content joins the fingerprint through `side_inputs`.)"""

    @abstractmethod
    def load_scorer(self, args: dict[str, Any]) -> Any:
        """An object with `score(texts) -> DocScores`."""

    @property
    def cutoffs_name(self) -> str:
        # Leading underscore: Parquet dataset readers skip it, like _manifest.json, when reading the folder.
        return f"_{self.score_column}_cutoffs.json"

    def _global(self) -> bool:
        return bool(self.params.buckets) and self.params.cutoffs_file is None

    def _scores_file(self, shard_name: str) -> Path:
        return self.ctx.work / "scores" / (Path(shard_name).stem + ".npy")

    def _run_file(self, shard_name: str) -> Path:
        return self.ctx.work / "sorted" / (Path(shard_name).stem + ".npy")

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        shards = self.ctx.input.shards
        args = self.model_args()
        if not self._global():
            extra: tuple[str, ...] = ()
            if self.params.buckets and self.params.cutoffs_file:
                # Read now so a bad file fails before scoring; its digest joins the tasks' inputs.
                BucketCutoffs.read(Path(self.params.cutoffs_file), self.score_column, self.params.buckets)
                extra = (str(Path(self.params.cutoffs_file).resolve()),)
            return [
                PhaseSpec(
                    "score", [TaskSpec(s.name, (str(s.path), *extra), args, s.num_rows) for s in shards]
                )
            ]
        runs = tuple(str(self._run_file(s.name)) for s in shards)
        cutoffs = str(self.ctx.output / self.cutoffs_name)
        return [
            PhaseSpec("score", [TaskSpec(s.name, (str(s.path),), args, s.num_rows) for s in shards]),
            PhaseSpec("cutoffs", [TaskSpec("cutoffs", runs, {})]),
            PhaseSpec(
                "bucket",
                [
                    TaskSpec(s.name, (str(s.path), str(self._scores_file(s.name)), cutoffs), {}, s.num_rows)
                    for s in shards
                ],
            ),
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase == "cutoffs":
            return self._cutoffs(task, tc)
        if phase == "bucket":
            return self._bucket(task, tc)
        if self._global():
            return self._score_to_work(task, tc)
        return self._score_and_write(task, tc)

    # --- phases --------------------------------------------------------------------------------------

    def _score_texts(self, scorer: Any, batch: pa.RecordBatch, tally: dict[str, int]) -> np.ndarray:
        result = scorer.score(batch.column(self.params.text_column).to_pylist())
        tally["scored"] += int(np.count_nonzero(result.tokens))
        tally["empty"] += int(np.count_nonzero(result.tokens == 0))
        tally["tokens"] += int(result.tokens.sum())
        return result.ppl

    def _score_and_write(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        """One pass: score, bucket from the cutoff file when there is one, write the shard."""
        scorer = self.load_scorer(task.args)
        cutoffs = None
        if self.params.buckets:
            cutoffs = BucketCutoffs.read(Path(task.inputs[1]), self.score_column, self.params.buckets)
        tally = {"scored": 0, "empty": 0, "tokens": 0}
        buckets: dict[str, int] = {}

        def annotate(batch: pa.RecordBatch) -> BatchOutcome:
            ppl = self._score_texts(scorer, batch, tally)
            return BatchOutcome(self._with_scores(batch, ppl, cutoffs, buckets))

        result = map_shard(
            Path(task.inputs[0]), tc, annotate, writes_dropped=False, batch_rows=self.params.batch_rows
        )
        result.extra = {**tally, "buckets": buckets}
        return result

    def _score_to_work(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        scorer = self.load_scorer(task.args)
        tally = {"scored": 0, "empty": 0, "tokens": 0}
        parts = []
        for batch in iter_batches(Path(task.inputs[0]), [self.params.text_column], self.params.batch_rows):
            parts.append(self._score_texts(scorer, batch, tally))
            tc.progress(batch.num_rows)
        scores = np.concatenate(parts) if parts else np.zeros(0, np.float64)
        scores_file, run_file = self._scores_file(task.key), self._run_file(task.key)
        with atomic_open(scores_file, "wb") as f:
            np.save(f, scores, allow_pickle=False)
        save_run(run_file, scores)
        for path in (scores_file, run_file):
            tc.record(FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path)))
        return TaskResult(extra=tally)

    def _cutoffs(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        runs = [load_run(Path(p)) for p in task.inputs]
        values = exact_percentiles(runs, self.params.percentiles)
        cutoffs = BucketCutoffs(
            column=self.score_column,
            buckets=list(self.params.buckets),
            percentiles=list(self.params.percentiles),
            cutoffs=values,
            documents=sum(len(r) for r in runs),
        )
        with tc.artifact(self.cutoffs_name) as tmp:
            cutoffs.write(tmp)
        quantiles = exact_percentiles(runs, SUMMARY_PERCENTILES)
        return TaskResult(
            extra={
                "cutoffs": values,
                "quantiles": dict(zip(map(str, SUMMARY_PERCENTILES), quantiles, strict=True)),
            }
        )

    def _bucket(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        scores = np.load(task.inputs[1], mmap_mode="r", allow_pickle=False)
        cutoffs = BucketCutoffs.read(Path(task.inputs[2]), self.score_column, self.params.buckets)
        buckets: dict[str, int] = {}
        offset = 0

        def annotate(batch: pa.RecordBatch) -> BatchOutcome:
            nonlocal offset
            ppl = np.asarray(scores[offset : offset + batch.num_rows])
            offset += batch.num_rows
            return BatchOutcome(self._with_scores(batch, ppl, cutoffs, buckets))

        result = map_shard(
            Path(task.inputs[0]), tc, annotate, writes_dropped=False, batch_rows=self.params.batch_rows
        )
        result.extra = {"buckets": buckets}
        return result

    def _with_scores(
        self, batch: pa.RecordBatch, ppl: np.ndarray, cutoffs: BucketCutoffs | None, counts: dict[str, int]
    ) -> pa.Table:
        table = pa.Table.from_batches([batch])
        columns = {self.score_column: pa.array(ppl, pa.float64(), mask=np.isnan(ppl))}
        if cutoffs is not None:
            labels = assign_buckets(ppl, cutoffs.cutoffs, cutoffs.buckets)
            columns[self.bucket_column] = labels
            for name in labels.drop_null().to_pylist():
                counts[name] = counts.get(name, 0) + 1
        for name, values in columns.items():
            # Scoring again with another model replaces the old column instead of failing on a duplicate.
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, values)
        return table

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        scored = [r for r in records if r.phase == "score"]
        summary: dict[str, Any] = {
            key: sum(r.extra.get(key, 0) for r in scored) for key in ("scored", "empty", "tokens")
        }
        buckets: dict[str, int] = {}
        for r in records:
            for name, n in r.extra.get("buckets", {}).items():
                buckets[name] = buckets.get(name, 0) + n
        if self.params.buckets:
            summary["buckets"] = {name: buckets.get(name, 0) for name in self.params.buckets}
        cut = [r for r in records if r.phase == "cutoffs"]
        if cut:
            summary["cutoffs"] = cut[0].extra["cutoffs"]
            summary["percentiles"] = list(self.params.percentiles)
            summary["quantiles"] = cut[0].extra["quantiles"]
        elif self.params.buckets and self.params.cutoffs_file:
            summary["cutoffs_file"] = self.params.cutoffs_file
        return summary


# ---------------------------------------------------------------------------------------------------------
# KenLM


class KenLMPerplexityParams(PerplexityParams):
    model: str = Field(
        description="A `thresher lm train-kenlm` output folder, or a KenLM .binary/.arpa file."
    )
    tokenizer: str | None = Field(
        None, description="Sentencepiece model (default: tokenizer.model in the model's folder)."
    )
    threads: int = Field(1, ge=1, description="Sentencepiece encoding threads per task.")


@functools.lru_cache(maxsize=2)
def _kenlm_scorer(model: str, tokenizer: str, threads: int) -> Any:
    # One load per process: a pool worker runs many shards, and a KenLM model can take gigabytes.
    from thresher.scorers.kenlm_model import KenLMFiles, KenLMScorer

    return KenLMScorer(KenLMFiles(Path(model), Path(tokenizer)), threads)


class KenLMPerplexity(PerplexityStage):
    name = "perplexity-kenlm"
    version = "1"
    Params = KenLMPerplexityParams
    summary = "Add kenlm_ppl (cc_net-normalised sentencepiece + KenLM) and kenlm_bucket (head/middle/tail)."
    example = "thresher perplexity kenlm data/01-exact data/02-ppl --model data/kenlm-wiki"
    command = ("perplexity", "kenlm")
    score_column = "kenlm_ppl"
    bucket_column = "kenlm_bucket"
    params: KenLMPerplexityParams

    def side_inputs(self) -> list[Path]:
        from thresher.scorers.kenlm_model import resolve_files

        files = resolve_files(self.params.model, self.params.tokenizer)
        return [files.model, files.tokenizer]

    def model_args(self) -> dict[str, Any]:
        model, tokenizer = (str(p.resolve()) for p in self.side_inputs())
        # Load once at plan time: a corrupt model or a mismatched tokenizer fails before any task.
        _kenlm_scorer(model, tokenizer, self.params.threads)
        return {"model": model, "tokenizer": tokenizer}

    def load_scorer(self, args: dict[str, Any]) -> Any:
        return _kenlm_scorer(args["model"], args["tokenizer"], self.params.threads)


# ---------------------------------------------------------------------------------------------------------
# Causal LM


class LMPerplexityParams(PerplexityParams):
    model: str = Field(description="Local Hugging Face causal LM folder, or a hub name in the local cache.")
    buckets: list[str] = Field([], description="Bucket names, lowest perplexity first; empty: no buckets.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to run; CUDA uses bf16.")
    batch_size: int = Field(16, ge=1, description="Token windows per forward pass.")
    max_length: int | None = Field(
        None, ge=2, description="Tokens per window (default: the model's context)."
    )
    long_docs: Literal["stride", "truncate"] = Field(
        "stride", description="Documents longer than a window: strided windows over all of it, or cut."
    )
    stride: int | None = Field(None, ge=1, description="Window step for long documents (default: half).")
    sort_by_length: bool = Field(True, description="Batch windows of similar length to cut padding.")
    threads: int = Field(
        1, ge=1, description="torch CPU threads per task (--workers already runs one task per core)."
    )


@functools.lru_cache(maxsize=1)
def _lm_scorer(folder: str, options: tuple[tuple[str, Any], ...]) -> Any:
    from thresher.scorers.causal_lm import CausalLMScorer

    return CausalLMScorer(Path(folder), **dict(options))


class LMPerplexity(PerplexityStage):
    name = "perplexity-lm"
    version = "1"
    Params = LMPerplexityParams
    summary = "Add lm_ppl: perplexity under a local Hugging Face causal LM (CUDA + bf16 when present)."
    example = "thresher perplexity lm data/01-exact data/02-lm --model data/proxy/model"
    command = ("perplexity", "lm")
    score_column = "lm_ppl"
    bucket_column = "lm_bucket"
    params: LMPerplexityParams

    def _options(self) -> tuple[tuple[str, Any], ...]:
        p = self.params
        return (
            ("device", p.device),
            ("batch_size", p.batch_size),
            ("max_length", p.max_length),
            ("stride", p.stride),
            ("long_docs", p.long_docs),
            ("sort_by_length", p.sort_by_length),
            ("threads", p.threads),
        )

    def side_inputs(self) -> list[Path]:
        from thresher.scorers.causal_lm import resolve_model_dir

        return [resolve_model_dir(self.params.model)]

    def model_args(self) -> dict[str, Any]:
        folder = str(self.side_inputs()[0].resolve())
        # Load once at plan time: a broken model fails before any task, and in-process tasks reuse it.
        _lm_scorer(folder, self._options())
        return {"model": folder}

    def load_scorer(self, args: dict[str, Any]) -> Any:
        return _lm_scorer(args["model"], self._options())
