"""Filter on score columns: `--where` conditions and a global `--top-fraction` cutoff.

`--where "quality_score >= 0.5 and lang == 'en'"` is one map phase. `--top-fraction F --by COLUMN` keeps
the best F of the rows (of those passing --where and having a score: null or NaN is no score) across the
whole shard set with one exact cutoff, in three phases: `rank` writes each shard's sorted rank keys,
`cutoff` (one task) finds the key of rank k, `filter` keeps rows at or above it. Ties are broken by a
seeded hash of the id, so the kept rows are the same for any number of workers; see
`pipelines/stats/top_fraction.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from thresher.pipelines.engine import atomic, storage
from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import FileRecord, TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_batches
from thresher.pipelines.engine.shards import ID_COLUMN, dropped_table, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.filter.where import Where, WhereSyntaxError, parse_where
from thresher.pipelines.stats.order import is_missing
from thresher.pipelines.stats.runs import open_run, save_run
from thresher.pipelines.stats.top_fraction import KEY_DTYPE, TopCutoff, rank_keys, score_quantiles, top_cutoff

WHERE_REASON = "where"
TOP_REASON = "below_top_fraction"
NO_SCORE_REASON = "no_score"
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


class ScoreFilterParams(StageParams):
    where: str | None = Field(
        None,
        description="Keep rows where this holds, e.g. \"quality_score >= 0.5 and lang == 'en'\": "
        "comparisons, and/or/not, parentheses, in (...), is [not] null.",
    )
    top_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Keep this share of the rows with the best --by, cut once for the whole set. Rows whose "
        "--by is null or NaN have no rank: the share is of the rows with a score, and they are dropped "
        "(reason no_score).",
    )
    by: str = Field("quality_score", description="Score column --top-fraction ranks by.")
    ascending: bool = Field(False, description="For --top-fraction, lower is better (e.g. perplexity).")

    @field_validator("where")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_where(value)
            except WhereSyntaxError as exc:
                raise PydanticCustomError("where_syntax", "{message}", {"message": str(exc)}) from None
        return value


class ScoreFilter(Stage):
    name = "filter"
    version = "2"  # 2: null and NaN scores are out of the --top-fraction population
    Params = ScoreFilterParams
    summary = "Keep rows by --where conditions and/or the global --top-fraction of a score column."
    example = (
        "thresher filter data/04-scored data/05-top --where \"lang == 'en'\" --top-fraction 0.1 "
        "--by quality_score"
    )
    command = ("filter",)
    params: ScoreFilterParams

    @cached_property
    def _where(self) -> Where | None:
        return parse_where(self.params.where) if self.params.where else None

    @property
    def _higher_is_better(self) -> bool:
        return not self.params.ascending

    def _cutoff_file(self) -> Path:
        return self.ctx.work / "cutoff.json"

    def _rank_file(self, shard_name: str) -> Path:
        return self.ctx.work / "ranks" / f"{storage.location(shard_name).stem}.npy"

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        p = self.params
        if p.where is None and p.top_fraction is None:
            raise UsageError("give --where CONDITION and/or --top-fraction FRACTION")
        self._check_columns()
        shards = self.ctx.input.shards
        if p.top_fraction is None:
            return [PhaseSpec("filter", [TaskSpec(s.name, (str(s.path),), {}, s.num_rows) for s in shards])]
        rank_files = tuple(str(self._rank_file(s.name)) for s in shards)
        cutoff = str(self._cutoff_file())
        return [
            PhaseSpec(
                "rank",
                [TaskSpec(s.name, (str(s.path),), {"shard": i}, s.num_rows) for i, s in enumerate(shards)],
            ),
            PhaseSpec("cutoff", [TaskSpec("cutoff", rank_files, {})]),
            PhaseSpec(
                "filter",
                [
                    TaskSpec(s.name, (str(s.path), cutoff), {"shard": i}, s.num_rows)
                    for i, s in enumerate(shards)
                ],
            ),
        ]

    def _check_columns(self) -> None:
        assert self.ctx.input is not None
        where = self._where
        for shard in self.ctx.input.shards:
            schema = shard.schema
            if schema is None:
                continue
            if where is not None:
                where.check(schema, str(shard.path))
            if self.params.top_fraction is not None:
                by = self.params.by
                if by not in schema.names:
                    raise UsageError(
                        f"{shard.path}: no score column '{by}' for --by (score it first?); "
                        f"columns are: {', '.join(schema.names)}"
                    )
                kind = schema.field(by).type
                if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                    raise UsageError(f"{shard.path}: --by column '{by}' has type {kind}, not a number")

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase == "rank":
            return self._rank(task, tc)
        if phase == "cutoff":
            return self._cutoff(task, tc)
        return self._filter(task, tc)

    def _eligible(self, batch: pa.RecordBatch) -> np.ndarray:
        where = self._where
        if where is None:
            return np.ones(batch.num_rows, dtype=bool)
        return where.mask(batch).to_numpy(zero_copy_only=False)

    def _keys(self, batch: pa.RecordBatch, shard: int, rows: np.ndarray) -> np.ndarray:
        return rank_keys(
            batch.column(self.params.by),
            batch.column(ID_COLUMN),
            shard,
            rows,
            higher_is_better=self._higher_is_better,
            seed=self.ctx.seed,
        )

    def _read_columns(self) -> list[str]:
        where = self._where
        return list(dict.fromkeys([ID_COLUMN, self.params.by, *(where.columns if where else ())]))

    def _rank(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        keys = []
        offset = 0
        for batch in iter_batches(storage.location(task.inputs[0]), self._read_columns()):
            eligible = self._eligible(batch)
            rows = np.nonzero(eligible)[0]
            keys.append(self._keys(batch.filter(pa.array(eligible)), task.args["shard"], rows + offset))
            offset += batch.num_rows
            tc.progress(batch.num_rows)
        path = self._rank_file(task.key)
        save_run(path, np.concatenate(keys) if keys else np.zeros(0, KEY_DTYPE))
        tc.record(FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path)))
        return TaskResult(extra={"eligible": int(sum(len(k) for k in keys))})

    def _cutoff(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        assert self.params.top_fraction is not None
        runs = [open_run(storage.location(p)) for p in task.inputs]
        cut = top_cutoff(runs, self.params.top_fraction, self._higher_is_better)
        result = {
            "eligible_rows": cut.rows,
            "scored_rows": cut.scored,
            "keep_rows": cut.keep,
            "cutoff_key": cut.key.hex() if cut.key else None,
            "cutoff_score": cut.score,
            "score_quantiles": score_quantiles(runs, QUANTILES, self._higher_is_better),
        }
        path = self._cutoff_file()
        atomic.write_json(path, result)
        tc.record(FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path)))
        return TaskResult(extra={k: v for k, v in result.items() if k != "cutoff_key"})

    def _filter(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        where = self._where
        top: Callable[[pa.RecordBatch, np.ndarray], np.ndarray] | None = None
        top_detail = ""
        if self.params.top_fraction is not None:
            decided = json.loads(storage.location(task.inputs[1]).read_text(encoding="utf-8"))
            key = bytes.fromhex(decided["cutoff_key"]) if decided["cutoff_key"] else None
            cut = TopCutoff(decided["eligible_rows"], decided["scored_rows"], decided["keep_rows"], key, None)
            top_detail = (
                f"{self.params.by} below the top-{self.params.top_fraction} cutoff {decided['cutoff_score']}"
            )

            def top(batch: pa.RecordBatch, rows: np.ndarray) -> np.ndarray:
                return cut.keeps(self._keys(batch, task.args.get("shard", 0), rows))

        def keep_best(batch: pa.RecordBatch, offset: int) -> BatchOutcome:
            rows = np.arange(offset, offset + batch.num_rows)
            eligible = self._eligible(batch) if where is not None else np.ones(batch.num_rows, dtype=bool)
            kept = eligible.copy()
            if top is not None and eligible.any():
                kept[eligible] = top(batch.filter(pa.array(eligible)), rows[eligible])
            if kept.all():
                return BatchOutcome(batch)
            ids = batch.column(ID_COLUMN)
            failed_where = ~eligible
            below = eligible & ~kept
            unscored = np.zeros(batch.num_rows, dtype=bool)
            if top is not None:
                unscored = below & is_missing(batch.column(self.params.by))
                below &= ~unscored
            parts = []
            if failed_where.any():
                parts.append(
                    dropped_table(
                        ids.filter(pa.array(failed_where)),
                        self.name,
                        WHERE_REASON,
                        [self.params.where] * int(failed_where.sum()),
                    )
                )
            if below.any():
                parts.append(
                    dropped_table(
                        ids.filter(pa.array(below)), self.name, TOP_REASON, [top_detail] * int(below.sum())
                    )
                )
            if unscored.any():
                detail = f"{self.params.by} is null or NaN"
                parts.append(
                    dropped_table(
                        ids.filter(pa.array(unscored)),
                        self.name,
                        NO_SCORE_REASON,
                        [detail] * int(unscored.sum()),
                    )
                )
            return BatchOutcome(batch.filter(pa.array(kept)), pa.concat_tables(parts))

        return map_batches(storage.location(task.inputs[0]), tc, keep_best, writes_dropped=True)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        p = self.params
        summary: dict[str, Any] = {"where": p.where}
        if p.top_fraction is not None:
            cutoff = next((r.extra for r in records if r.phase == "cutoff"), {})
            summary.update({"top_fraction": p.top_fraction, "by": p.by, "ascending": p.ascending, **cutoff})
        return summary
