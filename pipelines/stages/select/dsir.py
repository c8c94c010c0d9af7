"""`thresher select dsir`: data selection with importance resampling (Xie et al., 2023), the cheap targeted
selection to reach for first and the baseline LESS and MoDS must beat.

Each document is a bag of hashed word unigrams and bigrams. Two bag-of-n-grams models are fitted, one on
the target set and one on the raw input; a document's log importance weight is the sum over its n-grams of
log p_target - log p_raw. The kept fraction is either the exact global top by weight (`--sample top`) or
a seeded sample without replacement with probability proportional to the weight (`--sample resample`,
the paper's: Gumbel-top-k, the noise a hash of each row's id, so any number of workers draws the same
set). Phases: `counts` (per shard, input and target), `fit`, `score` (per shard: weights and rank keys),
`cutoff` (the exact key of rank k), `select` (per shard)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.pipelines.engine import atomic, storage
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_batches
from thresher.pipelines.engine.shards import ID_COLUMN, ShardSet, iter_batches
from thresher.pipelines.engine.stage import (
    PhaseSpec,
    Stage,
    StageParams,
    TaskContext,
    TaskResult,
    TaskSpec,
    phase,
)
from thresher.pipelines.stats.order import tie_hashes
from thresher.pipelines.stats.runs import open_run, save_run
from thresher.pipelines.stats.top_fraction import KEY_DTYPE, KEY_FIELDS, rank_keys, top_cutoff
from thresher.pipelines.text.ngrams import ngram_hashes

SCORE_COLUMN = "dsir_log_weight"
BELOW = "dsir_not_selected"


class DSIRParams(StageParams):
    target: str = Field(description="Shard set of target-like text (what the selection should resemble).")
    fraction: float = Field(0.1, gt=0, le=1, description="Share of the input rows to keep.")
    sample: Literal["resample", "top"] = Field(
        "resample",
        description="resample: seeded, proportional to the importance weight; top: exact top fraction.",
    )
    text_columns: list[str] = Field(
        ["text"], description="Columns joined (with a space) into the featurised text."
    )
    buckets: int = Field(10_000, ge=16, le=1 << 22, description="Hash buckets of the n-gram features.")


def features(texts: pa.Array, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket, document) of every hashed word unigram and bigram of the texts (normalised as for
    decontamination), without a Python call per n-gram and without a dense documents x buckets matrix."""
    parts = [ngram_hashes(texts, n) for n in (1, 2)]
    hashes = np.concatenate([h for h, _ in parts])
    docs = np.concatenate([d for _, d in parts])
    return (hashes % np.uint64(buckets)).astype(np.int64), docs


class DSIRSelect(Stage[DSIRParams]):
    name = "select-dsir"
    version = "1"
    summary = (
        "DSIR: keep the rows most like a target set (hashed n-gram importance weights), top or resampled."
    )
    example = "thresher select dsir data/web data/web-dsir --target data/wiki --fraction 0.1"
    command = ("select", "dsir")

    def required_columns(self) -> list[str]:
        return [ID_COLUMN, *self.params.text_columns]

    def string_columns(self) -> list[str]:
        return list(self.params.text_columns)

    def _target_set(self) -> ShardSet:
        return ShardSet.open(
            storage.location(self.params.target), self.required_columns(), self.string_columns()
        )

    def side_inputs(self) -> list[Path]:
        return [s.path for s in self._target_set().shards]

    def _file(self, kind: str, name: str, suffix: str) -> Path:
        return self.ctx.work / kind / f"{storage.location(name).stem}.{suffix}"

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        self.check_new_columns([SCORE_COLUMN])
        shards, target = self.ctx.input.shards, self._target_set().shards
        counts = [
            TaskSpec.named(f"{kind}-{s.name}", {"shard": str(s.path)}, {"kind": kind}, s.num_rows)
            for kind, group in (("raw", shards), ("target", target))
            for s in group
        ]
        count_files = [str(self._file(t.args["kind"], t.input("shard").name, "npy")) for t in counts]
        logratio = str(self.ctx.work / "logratio.npy")
        cutoff = str(self.ctx.work / "cutoff.json")
        return [
            PhaseSpec("counts", counts),
            PhaseSpec("fit", [TaskSpec.named("fit", {"counts": count_files})]),
            PhaseSpec(
                "score",
                [
                    TaskSpec.named(
                        s.name, {"shard": str(s.path), "logratio": logratio}, {"shard": i}, s.num_rows
                    )
                    for i, s in enumerate(shards)
                ],
            ),
            PhaseSpec(
                "cutoff",
                [
                    TaskSpec.named(
                        "cutoff", {"keys": [str(self._file("keys", s.name, "run")) for s in shards]}
                    )
                ],
            ),
            PhaseSpec(
                "select",
                [
                    TaskSpec.named(s.name, {"shard": str(s.path), "cutoff": cutoff}, {"shard": i}, s.num_rows)
                    for i, s in enumerate(shards)
                ],
            ),
        ]

    def _texts(self, batch: pa.RecordBatch) -> pa.Array:
        columns = [pc.fill_null(batch.column(c), "") for c in self.params.text_columns]
        return columns[0] if len(columns) == 1 else pc.binary_join_element_wise(*columns, " ")

    def _read(self, path: Path, tc: TaskContext) -> Any:
        for batch in iter_batches(path, [ID_COLUMN, *self.params.text_columns]):
            tc.progress(batch.num_rows)
            yield batch

    @phase()
    def counts(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        total = np.zeros(self.params.buckets, np.float64)
        for batch in self._read(task.input("shard"), tc):
            bucket, _ = features(self._texts(batch), self.params.buckets)
            total += np.bincount(bucket, minlength=self.params.buckets)
        out = self._file(task.args["kind"], task.input("shard").name, "npy")
        with atomic.atomic_open(out, "wb") as f:
            np.save(f, total, allow_pickle=False)
        tc.record(out)
        return TaskResult(extra={"ngrams": int(total.sum())})

    @phase()
    def fit(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        sums = {"raw": np.zeros(self.params.buckets), "target": np.zeros(self.params.buckets)}
        for path in task.input_list("counts"):
            sums[path.parent.name] += np.load(storage.readable(path), allow_pickle=False)
        # Add-one smoothing: an n-gram never seen on one side must not give an infinite weight.
        log_p = {k: np.log((v + 1) / (v.sum() + len(v))) for k, v in sums.items()}
        out = self.ctx.work / "logratio.npy"
        with atomic.atomic_open(out, "wb") as f:
            np.save(f, log_p["target"] - log_p["raw"], allow_pickle=False)
        tc.record(out)
        return TaskResult(extra={k: int(v.sum()) for k, v in sums.items()})

    @phase()
    def score(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        logratio = np.load(storage.readable(task.input("logratio")), allow_pickle=False)
        weights, keys, offset = [], [], 0
        for batch in self._read(task.input("shard"), tc):
            bucket, doc = features(self._texts(batch), self.params.buckets)
            w = np.bincount(doc, weights=logratio[bucket], minlength=batch.num_rows)
            ranked = w
            if self.params.sample == "resample":
                # Gumbel-top-k: the k largest of log w + Gumbel noise are a draw of k rows without
                # replacement with probability proportional to w. Noise from the id, so it is the same draw
                # on every run and split.
                u = (tie_hashes(batch.column(ID_COLUMN), self.ctx.seed).astype(np.float64) + 0.5) / 2.0**64
                ranked = w - np.log(-np.log(u))
            rows = np.arange(offset, offset + batch.num_rows)
            keys.append(
                rank_keys(
                    pa.array(ranked),
                    batch.column(ID_COLUMN),
                    task.args["shard"],
                    rows,
                    higher_is_better=True,
                    seed=self.ctx.seed,
                )
            )
            weights.append(w)
            offset += batch.num_rows
        name = task.input("shard").name
        run = np.sort(np.concatenate(keys)) if keys else np.zeros(0, KEY_DTYPE)
        save_run(self._file("keys", name, "run"), run)
        tc.record(self._file("keys", name, "run"))
        with atomic.atomic_open(self._file("weights", name, "npy"), "wb") as f:
            np.save(f, np.concatenate(weights) if weights else np.zeros(0), allow_pickle=False)
        tc.record(self._file("weights", name, "npy"))
        return TaskResult()

    @phase()
    def cutoff(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        cut = top_cutoff([open_run(p) for p in task.input_list("keys")], self.params.fraction, True)
        atomic.write_json(self.ctx.work / "cutoff.json", {"key": cut.key.hex() if cut.key else None})
        tc.record(self.ctx.work / "cutoff.json")
        return TaskResult(extra={"rows": cut.rows, "selected": cut.keep})

    @phase()
    def select(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        shard = task.input("shard")
        stored = json.loads(task.input("cutoff").read_text(encoding="utf-8"))["key"]
        cut = np.array(bytes.fromhex(stored), KEY_DTYPE) if stored else None
        weights = np.load(storage.readable(self._file("weights", shard.name, "npy")), allow_pickle=False)
        keys = open_run(self._file("keys", shard.name, "run"))
        # Each key carries its row's position in the shard: the selected keys name the selected rows.
        chosen = np.zeros(len(weights), bool)
        if cut is not None:
            chosen[keys[keys <= cut].view(KEY_FIELDS)["row"].astype(np.int64)] = True

        def pick(batch: pa.RecordBatch, offset: int) -> BatchOutcome:
            rows = slice(offset, offset + batch.num_rows)
            table = batch.append_column(SCORE_COLUMN, pa.array(weights[rows]))
            detail = [f"{w:.6g}" for w in weights[rows]]
            return BatchOutcome.drop_rows(table, ~chosen[rows], BELOW, detail)

        return map_batches(shard, tc, pick, writes_dropped=True)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        cutoff = next((r.extra for r in records if r.phase == "cutoff"), {})
        return {"fraction": self.params.fraction, "sample": self.params.sample, **cutoff}
