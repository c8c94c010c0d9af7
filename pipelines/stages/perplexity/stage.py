"""Perplexity stages: score each document under a small LM and, optionally, bucket the scores by percentile.

`perplexity-kenlm` adds `kenlm_ppl` (and `kenlm_bucket`), cc_net style; `perplexity-lm` adds `lm_ppl` (and
`lm_bucket` when asked) under a local Hugging Face causal LM. Documents with nothing to score (empty text)
get a null score and a null bucket and are counted in the summary; no row is ever dropped.

Buckets need cutoffs. From `--cutoffs-file` (a previous run's `_<column>_cutoffs.json`) this is one map
phase. Otherwise the cutoffs are this shard set's own percentiles, exact, in three phases: `score` (per
shard: scores saved row-aligned, plus a sorted copy), `cutoffs` (one task: exact percentiles over the
sorted copies, written as the cutoff file) and `bucket` (per shard: the input rows with score and bucket).
Only scores, eight bytes a document, pass between phases; the text is read again rather than copied.

cc_net scores each language with its own model and cuts each at its own percentiles (30 and 60 in its
code). `--group-column lang` does the same: cutoffs per value of the column (the sorted copies are sorted
within each group), and `--group-models en=DIR,de=DIR` picks the model per group (`--model` for the rest).
A row whose group is null, or has no cutoffs or no model, gets a null bucket (cc_net's "all") and is
counted in the summary.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import atomic_open
from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.engine.manifest import FileRecord, TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_shard
from thresher.pipelines.engine.shards import iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stats.order import is_missing
from thresher.pipelines.stats.percentile_buckets import (
    BucketCutoffs,
    assign_buckets,
    assign_group_buckets,
    exact_percentiles,
    save_runs,
)
from thresher.pipelines.stats.runs import load_group_runs, runs_index

SUMMARY_PERCENTILES = (10.0, 50.0, 90.0)
# Why a scored row has no bucket (counted in the summary).
NO_GROUP = "no_group"  # its group value is null
NO_CUTOFFS = "no_cutoffs"  # its group has no cutoffs (no scored row in this run, or not in the file)
NO_MODEL = "no_model"  # its group has no model (not in --group-models, and no --model): no score


class PerplexityParams(StageParams):
    text_column: str = Field("text", description="Column holding the text to score.")
    buckets: list[str] = Field(
        ["head", "middle", "tail"],
        description="Bucket names, lowest perplexity first; empty: no buckets. A document without a score "
        "(null or NaN: empty text, no model) gets a null bucket.",
    )
    percentiles: list[float] = Field(
        [30.0, 60.0],
        description="Percentile cutoffs between the buckets. The default 30,60 is cc_net's code default "
        "(head below the 30th percentile, middle below the 60th, tail above). Percentiles are of the "
        "documents with a score: null or NaN scores are left out.",
    )
    cutoffs_file: str | None = Field(
        None,
        description="Take the cutoffs from this file (a previous run's _<column>_cutoffs.json) instead of "
        "this shard set's percentiles.",
    )
    group_column: str | None = Field(
        None,
        description="Cut at percentiles per value of this column, as cc_net cuts per language "
        "(--group-column lang); rows with a null value get no bucket. Default: one set of cutoffs.",
    )
    group_models: list[str] = Field(
        [],
        description="GROUP=MODEL pairs (needs --group-column): score each group with its own model, as "
        "cc_net does per language; other groups use --model, or get no score without it.",
    )
    batch_rows: int = Field(1024, ge=1, description="Documents scored per batch.")

    @model_validator(mode="after")
    def _check_buckets(self) -> PerplexityParams:
        if self.group_models:
            if self.group_column is None:
                raise ValueError("--group-models needs --group-column (the column naming each row's group)")
            self.group_model_map()
        if getattr(self, "model", None) is None and not self.group_models:
            raise ValueError("give --model, or --group-models with a model per group")
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

    def group_model_map(self) -> dict[str, str]:
        """--group-models as group -> model."""
        mapping: dict[str, str] = {}
        for pair in self.group_models:
            group, sep, model = pair.partition("=")
            if not sep or not group.strip() or not model.strip():
                raise ValueError(f"--group-models: {pair!r} is not GROUP=MODEL")
            if group.strip() in mapping:
                raise ValueError(f"--group-models: group {group.strip()!r} is given twice")
            mapping[group.strip()] = model.strip()
        return mapping


class PerplexityStage(Stage):
    """Shared plan and bookkeeping; subclasses say how to resolve and load a model and what files it
    depends on."""

    score_column: ClassVar[str]
    bucket_column: ClassVar[str]
    params: PerplexityParams

    @abstractmethod
    def resolve_model(self, model: str, default: bool) -> dict[str, str]:
        """A model option's resolved files as task args (`default`: it is --model, not a group's).
        Raises a one-line ThresherError naming the option when they are not there."""

    @abstractmethod
    def model_files(self, args: dict[str, str]) -> list[Path]:
        """The files of a resolved model: their content joins the fingerprint through `side_inputs`."""

    @abstractmethod
    def load_scorer(self, args: dict[str, str]) -> Any:
        """An object with `score(texts) -> DocScores`."""

    # --- models --------------------------------------------------------------------------------------

    def _resolved(self) -> dict[str, Any]:
        """{"default": args of --model or None, "groups": {group: args}}."""
        p = self.params
        model = getattr(p, "model", None)
        groups = {}
        for group, name in p.group_model_map().items():
            try:
                groups[group] = self.resolve_model(name, default=False)
            except ThresherError as exc:
                reason = str(exc).removeprefix(f"--model {name}: ")
                raise ThresherError(f"--group-models {group}={name}: {reason}") from None
        return {"default": self.resolve_model(model, default=True) if model else None, "groups": groups}

    def side_inputs(self) -> list[Path]:
        resolved = self._resolved()
        every = [resolved["default"], *resolved["groups"].values()]
        return sorted({f for args in every if args for f in self.model_files(args)})

    def model_args(self) -> dict[str, Any]:
        """The resolved models every task loads, each loaded once now so a bad model fails before any
        task runs."""
        resolved = self._resolved()
        for args in [resolved["default"], *resolved["groups"].values()]:
            if args:
                self.load_scorer(args)
        return resolved

    def required_columns(self) -> list[str]:
        group = self.params.group_column
        return [*super().required_columns(), *([group] if group else [])]

    @property
    def cutoffs_name(self) -> str:
        # Leading underscore: Parquet dataset readers skip it, like _manifest.json, when reading the folder.
        return f"_{self.score_column}_cutoffs.json"

    def _global(self) -> bool:
        return bool(self.params.buckets) and self.params.cutoffs_file is None

    def _scores_file(self, shard_name: str) -> Path:
        return self.ctx.work / "scores" / (storage.location(shard_name).stem + ".npy")

    def _run_file(self, shard_name: str) -> Path:
        return self.ctx.work / "sorted" / (storage.location(shard_name).stem + ".npy")

    def _read_cutoffs(self, path: Path) -> BucketCutoffs:
        p = self.params
        return BucketCutoffs.read(path, self.score_column, p.buckets, p.group_column)

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        shards = self.ctx.input.shards
        args = self.model_args()
        if not self._global():
            extra: tuple[str, ...] = ()
            if self.params.buckets and self.params.cutoffs_file:
                # Read now so a bad file fails before scoring; its digest joins the tasks' inputs.
                self._read_cutoffs(storage.location(self.params.cutoffs_file))
                extra = (str(storage.location(self.params.cutoffs_file).resolve()),)
            return [
                PhaseSpec(
                    "score", [TaskSpec(s.name, (str(s.path), *extra), args, s.num_rows) for s in shards]
                )
            ]
        runs = tuple(
            str(f) for s in shards for f in (self._run_file(s.name), runs_index(self._run_file(s.name)))
        )
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

    def _groups(self, batch: pa.RecordBatch) -> list[str | None] | None:
        """Each row's group as a string (null stays None); None when there is no --group-column."""
        column = self.params.group_column
        if column is None:
            return None
        return pc.cast(batch.column(column), pa.string()).to_pylist()

    def _read_columns(self) -> list[str]:
        p = self.params
        return [p.text_column, *([p.group_column] if p.group_column else [])]

    def _score_texts(self, scorers: _TaskScorers, batch: pa.RecordBatch, tally: Counter[str]) -> np.ndarray:
        texts = batch.column(self.params.text_column).to_pylist()
        groups = self._groups(batch) if self.params.group_models else None
        ppl = np.full(len(texts), np.nan, dtype=np.float64)
        # Rows by the model that scores them: one call per model and batch.
        by_model: dict[str | None, list[int]] = {}
        for i in range(len(texts)):
            by_model.setdefault(scorers.key_for(groups[i] if groups else None), []).append(i)
        for key, rows in sorted(by_model.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
            scorer = scorers.get(key)
            if scorer is None:
                tally[NO_MODEL] += len(rows)
                continue
            result = scorer.score([texts[i] for i in rows])
            ppl[rows] = result.ppl
            tally["scored"] += int(np.count_nonzero(result.tokens))
            tally["empty"] += int(np.count_nonzero(result.tokens == 0))
            tally["tokens"] += int(result.tokens.sum())
        return ppl

    def _tally(self) -> Counter[str]:
        tally: Counter[str] = Counter({"scored": 0, "empty": 0, "tokens": 0})
        if self.params.group_models:
            tally[NO_MODEL] = 0
        return tally

    def _score_and_write(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        """One pass: score, bucket from the cutoff file when there is one, write the shard."""
        scorers = _TaskScorers(self, task.args)
        cutoffs = None
        if self.params.buckets:
            cutoffs = self._read_cutoffs(storage.location(task.inputs[1]))
        tally = self._tally()
        buckets = _BucketCounts()

        def annotate(batch: pa.RecordBatch) -> BatchOutcome:
            ppl = self._score_texts(scorers, batch, tally)
            return BatchOutcome(self._with_scores(batch, ppl, cutoffs, buckets))

        result = map_shard(
            storage.location(task.inputs[0]),
            tc,
            annotate,
            writes_dropped=False,
            batch_rows=self.params.batch_rows,
        )
        result.extra = {**tally, **buckets.extra()}
        return result

    def _score_to_work(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        scorers = _TaskScorers(self, task.args)
        tally = self._tally()
        parts, groups = [], []
        for batch in iter_batches(
            storage.location(task.inputs[0]), self._read_columns(), self.params.batch_rows
        ):
            parts.append(self._score_texts(scorers, batch, tally))
            groups += self._groups(batch) or []
            tc.progress(batch.num_rows)
        scores = np.concatenate(parts) if parts else np.zeros(0, np.float64)
        scores_file, run_file = self._scores_file(task.key), self._run_file(task.key)
        with atomic_open(scores_file, "wb") as f:
            np.save(f, scores, allow_pickle=False)
        save_runs(run_file, scores, groups if self.params.group_column else None)
        for path in (scores_file, run_file, runs_index(run_file)):
            tc.record(FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path)))
        return TaskResult(extra=dict(tally))

    def _cutoffs(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        by_group: dict[str | None, list[np.ndarray]] = {}
        for path in task.inputs[::2]:
            for group, run in load_group_runs(storage.location(path)).items():
                by_group.setdefault(group, []).append(run)
        every = [run for runs in by_group.values() for run in runs]
        documents = sum(len(r) for r in every)
        if p.group_column is None:
            values: Any = exact_percentiles(every, p.percentiles)
            cutoffs = BucketCutoffs(
                column=self.score_column,
                buckets=list(p.buckets),
                percentiles=list(p.percentiles),
                cutoffs=values,
                documents=documents,
            )
        else:
            counts = {str(g): sum(len(r) for r in runs) for g, runs in sorted(by_group.items())}
            if not documents:
                raise ThresherError("no document with a group has a score, so there are no percentiles")
            values = {
                str(g): exact_percentiles(runs, p.percentiles)
                for g, runs in sorted(by_group.items())
                if counts[str(g)]
            }
            cutoffs = BucketCutoffs(
                column=self.score_column,
                buckets=list(p.buckets),
                percentiles=list(p.percentiles),
                documents=documents,
                group_column=p.group_column,
                groups=values,
                group_documents={g: n for g, n in counts.items() if n},
            )
        with tc.artifact(self.cutoffs_name) as tmp:
            cutoffs.write(tmp)
        quantiles = exact_percentiles(every, SUMMARY_PERCENTILES)
        return TaskResult(
            extra={
                "cutoffs": values,
                "quantiles": dict(zip(map(str, SUMMARY_PERCENTILES), quantiles, strict=True)),
            }
        )

    def _bucket(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        scores = np.load(storage.local_file(task.inputs[1]), mmap_mode="r", allow_pickle=False)
        cutoffs = self._read_cutoffs(storage.location(task.inputs[2]))
        buckets = _BucketCounts()
        offset = 0

        def annotate(batch: pa.RecordBatch) -> BatchOutcome:
            nonlocal offset
            ppl = np.asarray(scores[offset : offset + batch.num_rows])
            offset += batch.num_rows
            return BatchOutcome(self._with_scores(batch, ppl, cutoffs, buckets))

        result = map_shard(
            storage.location(task.inputs[0]),
            tc,
            annotate,
            writes_dropped=False,
            batch_rows=self.params.batch_rows,
        )
        result.extra = buckets.extra()
        return result

    def _with_scores(
        self, batch: pa.RecordBatch, ppl: np.ndarray, cutoffs: BucketCutoffs | None, counts: _BucketCounts
    ) -> pa.Table:
        table = pa.Table.from_batches([batch])
        columns = {self.score_column: pa.array(ppl, pa.float64(), mask=np.isnan(ppl))}
        if cutoffs is not None:
            groups = self._groups(batch)
            if groups is None:
                labels = assign_buckets(ppl, cutoffs.cutoffs, cutoffs.buckets)
            else:
                labels = assign_group_buckets(ppl, groups, cutoffs.groups, cutoffs.buckets)
            columns[self.bucket_column] = labels
            counts.add(labels.to_pylist(), groups, ppl, cutoffs)
        for name, values in columns.items():
            # Scoring again with another model replaces the old column instead of failing on a duplicate.
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, values)
        return table

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        p = self.params
        scored = [r for r in records if r.phase == "score"]
        keys = ("scored", "empty", "tokens", *((NO_MODEL,) if p.group_models else ()))
        summary: dict[str, Any] = {key: sum(r.extra.get(key, 0) for r in scored) for key in keys}
        if p.buckets:
            merged = _BucketCounts.merge([r.extra for r in records])
            summary["buckets"] = {name: merged["buckets"].get(name, 0) for name in p.buckets}
            if p.group_column:
                summary["group_buckets"] = {
                    g: {name: counts.get(name, 0) for name in p.buckets}
                    for g, counts in sorted(merged["group_buckets"].items())
                }
                summary["unbucketed"] = {k: merged["unbucketed"].get(k, 0) for k in (NO_GROUP, NO_CUTOFFS)}
        cut = [r for r in records if r.phase == "cutoffs"]
        if cut:
            summary["cutoffs"] = cut[0].extra["cutoffs"]
            summary["percentiles"] = list(p.percentiles)
            summary["quantiles"] = cut[0].extra["quantiles"]
        elif p.buckets and p.cutoffs_file:
            summary["cutoffs_file"] = p.cutoffs_file
        if p.group_column:
            summary["group_column"] = p.group_column
        return summary


class _TaskScorers:
    """The scorers one task uses, loaded on first use: --model's and each group's own."""

    def __init__(self, stage: PerplexityStage, args: dict[str, Any]) -> None:
        self.stage = stage
        self.args = args
        self._loaded: dict[str | None, Any] = {}

    def key_for(self, group: str | None) -> str | None:
        """The group whose own model scores a row of `group`; None: --model's."""
        return group if group is not None and group in self.args["groups"] else None

    def get(self, key: str | None) -> Any:
        """The scorer of `key` (None: --model's, or None when there is no --model)."""
        if key not in self._loaded:
            args = self.args["default"] if key is None else self.args["groups"][key]
            self._loaded[key] = self.stage.load_scorer(args) if args else None
        return self._loaded[key]


class _BucketCounts:
    """Per-task bucket counts: overall, per group, and the scored rows left without a bucket (why)."""

    def __init__(self) -> None:
        self.buckets: Counter[str] = Counter()
        self.group_buckets: dict[str, Counter[str]] = {}
        self.unbucketed: Counter[str] = Counter()

    def add(
        self,
        labels: list[str | None],
        groups: list[str | None] | None,
        ppl: np.ndarray,
        cutoffs: BucketCutoffs,
    ) -> None:
        scored = ~is_missing(ppl)
        for i, label in enumerate(labels):
            if label is not None:
                self.buckets[label] += 1
                if groups is not None:
                    self.group_buckets.setdefault(str(groups[i]), Counter())[label] += 1
            elif groups is not None and scored[i]:
                self.unbucketed[NO_GROUP if groups[i] is None else NO_CUTOFFS] += 1

    def extra(self) -> dict[str, Any]:
        out: dict[str, Any] = {"buckets": dict(self.buckets)}
        if self.group_buckets or self.unbucketed:
            out["group_buckets"] = {g: dict(c) for g, c in self.group_buckets.items()}
            out["unbucketed"] = dict(self.unbucketed)
        return out

    @staticmethod
    def merge(extras: list[dict[str, Any]]) -> dict[str, Any]:
        buckets: Counter[str] = Counter()
        groups: dict[str, Counter[str]] = {}
        unbucketed: Counter[str] = Counter()
        for extra in extras:
            buckets.update(extra.get("buckets", {}))
            for g, counts in extra.get("group_buckets", {}).items():
                groups.setdefault(g, Counter()).update(counts)
            unbucketed.update(extra.get("unbucketed", {}))
        return {"buckets": buckets, "group_buckets": groups, "unbucketed": unbucketed}


# ---------------------------------------------------------------------------------------------------------
# KenLM


class KenLMPerplexityParams(PerplexityParams):
    model: str | None = Field(
        None,
        description="A `thresher lm train-kenlm` output folder, or a KenLM .binary/.arpa file (with "
        "--group-models: the model of the groups not listed there).",
    )
    tokenizer: str | None = Field(
        None, description="Sentencepiece model (default: tokenizer.model in the model's folder)."
    )
    threads: int = Field(1, ge=1, description="Sentencepiece encoding threads per task.")


@functools.lru_cache(maxsize=16)
def _kenlm_scorer(model: str, tokenizer: str, threads: int) -> Any:
    # One load per process: a pool worker runs many shards, and a KenLM model can take gigabytes. Room
    # for a model per group: a shard mixing languages needs each of theirs in every task, as in cc_net.
    from thresher.scorers.kenlm_model import KenLMFiles, KenLMScorer

    return KenLMScorer(KenLMFiles(storage.location(model), storage.location(tokenizer)), threads)


class KenLMPerplexity(PerplexityStage):
    name = "perplexity-kenlm"
    version = "2"  # 2: infinite perplexities count in the percentiles, -0.0 is 0.0
    Params = KenLMPerplexityParams
    summary = "Add kenlm_ppl (cc_net-normalised sentencepiece + KenLM) and kenlm_bucket (head/middle/tail)."
    example = "thresher perplexity kenlm data/01-exact data/02-ppl --model data/kenlm-wiki"
    command = ("perplexity", "kenlm")
    score_column = "kenlm_ppl"
    bucket_column = "kenlm_bucket"
    params: KenLMPerplexityParams

    def resolve_model(self, model: str, default: bool) -> dict[str, str]:
        from thresher.scorers.kenlm_model import resolve_files

        # --tokenizer goes with --model; a group's model brings its own tokenizer.model.
        files = resolve_files(model, self.params.tokenizer if default else None)
        return {"model": str(files.model.resolve()), "tokenizer": str(files.tokenizer.resolve())}

    def model_files(self, args: dict[str, str]) -> list[Path]:
        return [storage.location(args["model"]), storage.location(args["tokenizer"])]

    def load_scorer(self, args: dict[str, str]) -> Any:
        return _kenlm_scorer(args["model"], args["tokenizer"], self.params.threads)


# ---------------------------------------------------------------------------------------------------------
# Causal LM


class LMPerplexityParams(PerplexityParams):
    model: str | None = Field(
        None,
        description="Local Hugging Face causal LM folder, or a hub name in the local cache (with "
        "--group-models: the model of the groups not listed there).",
    )
    buckets: list[str] = Field(
        [],
        description="Bucket names, lowest perplexity first; empty: no buckets. A document without a score "
        "(null or NaN: empty text, no model) gets a null bucket.",
    )
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


@functools.lru_cache(maxsize=4)
def _lm_scorer(folder: str, options: tuple[tuple[str, Any], ...]) -> Any:
    # A few, not one: with --group-models a task needs each group's model, and a cache of one would load
    # them again in every task.
    from thresher.scorers.causal_lm import CausalLMScorer

    return CausalLMScorer(storage.location(folder), **dict(options))


class LMPerplexity(PerplexityStage):
    name = "perplexity-lm"
    version = "2"  # 2: infinite perplexities count in the percentiles, -0.0 is 0.0
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

    def resolve_model(self, model: str, default: bool) -> dict[str, str]:
        from thresher.scorers.causal_lm import resolve_model_dir

        return {"model": str(resolve_model_dir(model).resolve())}

    def model_files(self, args: dict[str, str]) -> list[Path]:
        return [storage.location(args["model"])]

    def load_scorer(self, args: dict[str, str]) -> Any:
        return _lm_scorer(args["model"], self._options())
