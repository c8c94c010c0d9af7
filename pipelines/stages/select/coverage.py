"""MoDS's coverage criterion (`select kcenter`): normalised embeddings of the instructions from a local
encoder (--pooling mean or cls, of --embed-text instruction+input or instruction) and k-center greedy
from a seeded first centre pick a seed set of k rows that covers them.

Phases: `embed` (per shard) -> `centers` (one task: k-center over the embedding files) -> `select`
(per shard: keep the seed set, with `mods_stage` = seed and `kcenter_order`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_batches
from thresher.pipelines.engine.shards import ID_COLUMN, ShardWriter, dropped_table, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.select.embeddings import (
    EmbeddingFiles,
    EmbeddingWriter,
    EncoderParams,
    embedding_texts,
    text_encoder,
)
from thresher.pipelines.stages.select.instruction import (
    UNSCORABLE,
    InstructionParams,
    InstructionStage,
    all_cores,
    lookup_rows,
    model_inputs,
    set_torch_threads,
)

STAGE_COLUMN = "mods_stage"
ORDER_COLUMN = "kcenter_order"
NOT_SELECTED = "not_selected"
SEED_SCHEMA = pa.schema([("shard", pa.int32()), ("row", pa.int64()), ("order", pa.int32())])


def kcenter_seed(
    work: Path, shard_names: list[str], dim: int, k: int, seed: int, out: Path, tc: TaskContext
) -> dict[str, Any]:
    """k-center greedy over every shard's embedding file; writes (shard, row, order) of the centres."""
    from thresher.pipelines.stages.select.kcenter import kcenter_greedy

    set_torch_threads(all_cores())
    files = [EmbeddingFiles(work, name) for name in shard_names]
    blocks = [EmbeddingFiles.open(f.vectors, dim) for f in files]
    rows = [pq.read_table(storage.readable(f.rows))["row"].to_numpy() for f in files]
    result = kcenter_greedy(blocks, k, seed=seed)
    sizes = np.array([len(b) for b in blocks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    shard_of = np.searchsorted(offsets, result.centers, side="right") - 1
    row_of = np.array(
        [rows[s][c - offsets[s]] for s, c in zip(shard_of, result.centers, strict=True)], np.int64
    )
    write_centres(out, shard_of.astype(np.int32), row_of, np.arange(len(result.centers), dtype=np.int32), tc)
    radii = result.radii
    return {
        "candidates": int(offsets[-1]),
        "seeds": len(result.centers),
        "radius_after_first": round(float(radii[0]), 6) if len(radii) else None,
        "radius_final": round(float(radii[-1]), 6) if len(radii) else None,
    }


def write_centres(out: Path, shard: np.ndarray, row: np.ndarray, order: np.ndarray, tc: TaskContext) -> None:
    """The (shard, row, order) file of a k-center pass's centres, sorted by shard and row so that each
    per-shard task reads its own rows with a filter."""
    table = pa.table(
        {"shard": pa.array(shard), "row": pa.array(row), "order": pa.array(order)}, schema=SEED_SCHEMA
    ).sort_by([("shard", "ascending"), ("row", "ascending")])
    with ShardWriter(out, SEED_SCHEMA) as writer:
        writer.write(table)
        tc.record(writer.close())


def read_seed_rows(seed_file: Path, shard: int) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(storage.readable(seed_file), filters=[("shard", "=", shard)]).sort_by("row")
    return table["row"].to_numpy(), table["order"].to_numpy()


class KCenterParams(InstructionParams, EncoderParams):
    pass


class KCenterCoverage(InstructionStage):
    name = "select-kcenter"
    version = "1"
    Params = KCenterParams
    summary = (
        "MoDS coverage: keep a seed set of --k rows picked by k-center greedy on instruction embeddings."
    )
    example = (
        "thresher select kcenter data/02-quality data/03-seed --encoder models/all-MiniLM-L6-v2 --k 1000"
    )
    command = ("select", "kcenter")
    params: KCenterParams

    def side_inputs(self) -> list[Path]:
        return [storage.location(f) for f in model_inputs(self.params.encoder)]

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        self.check_new_columns([STAGE_COLUMN, ORDER_COLUMN])
        shards = self.ctx.input.shards
        models = model_inputs(self.params.encoder)
        emb = [EmbeddingFiles(self.ctx.work, s.name) for s in shards]
        seed_file = str(self.ctx.work / "seed.parquet")
        return [
            PhaseSpec(
                "embed",
                [
                    TaskSpec(s.name, (str(s.path), *models), {"shard": i}, s.num_rows)
                    for i, s in enumerate(shards)
                ],
            ),
            PhaseSpec(
                "centers",
                [TaskSpec("centers", tuple(str(p) for f in emb for p in (f.vectors, f.rows)), {})],
            ),
            PhaseSpec(
                "select",
                [
                    TaskSpec(s.name, (str(s.path), seed_file), {"shard": i}, s.num_rows)
                    for i, s in enumerate(shards)
                ],
            ),
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        assert self.ctx.input is not None
        if phase == "embed":
            return self._embed(task, tc)
        if phase == "centers":
            from thresher.scorers.encoder import TextEncoder

            dim = TextEncoder.dimension(self.params.encoder)
            names = [s.name for s in self.ctx.input.shards]
            return TaskResult(
                extra=kcenter_seed(
                    self.ctx.work,
                    names,
                    dim,
                    self.params.k,
                    self.ctx.seed,
                    self.ctx.work / "seed.parquet",
                    tc,
                )
            )
        return self._select(task, tc)

    def _embed(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        set_torch_threads(p.threads)
        encoder = text_encoder(p)
        writer = EmbeddingWriter(EmbeddingFiles(self.ctx.work, task.key))
        offset = missing = 0
        try:
            for batch in iter_batches(
                storage.location(task.inputs[0]), self.read_columns(storage.location(task.inputs[0])), 2048
            ):
                instructions, inputs, _ = self.row_texts(batch)
                ok = np.array([i is not None for i in instructions], dtype=bool)
                missing += int((~ok).sum())
                rows = np.nonzero(ok)[0]
                if len(rows):
                    texts = embedding_texts(p, instructions, inputs, rows)
                    writer.write(rows + offset, encoder.encode(texts))
                offset += batch.num_rows
                tc.progress(batch.num_rows)
            writer.close(tc)
        except BaseException:
            writer.abort()
            raise
        return TaskResult(
            extra={
                "embedded": writer.count,
                UNSCORABLE: missing,
                "dim": encoder.dim,
                "pooling": p.pooling,
                "embed_text": p.embed_text,
                "embed_max_length": encoder.max_length,
            }
        )

    def _select(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        seed_rows, order = read_seed_rows(storage.location(task.inputs[1]), task.args["shard"])

        def pick(batch: pa.RecordBatch, offset: int) -> BatchOutcome:
            rows = np.arange(offset, offset + batch.num_rows)
            hit, at = lookup_rows(rows, seed_rows)
            instructions = batch.column(self.params.instruction_column)
            unscorable = pc.is_null(instructions).to_numpy(zero_copy_only=False)
            table = pa.Table.from_batches([batch])
            table = table.append_column(STAGE_COLUMN, pa.array(np.where(hit, "seed", None), pa.string()))
            table = table.append_column(
                ORDER_COLUMN, pa.array(order[at].astype(np.int32), pa.int32(), mask=~hit)
            )
            drop = ~hit
            reasons = np.where(unscorable, UNSCORABLE, NOT_SELECTED)[drop].tolist()
            dropped = dropped_table(table[ID_COLUMN].filter(pa.array(drop)), self.name, reasons)
            return BatchOutcome(table.filter(pa.array(hit)), dropped)

        return map_batches(storage.location(task.inputs[0]), tc, pick, writes_dropped=True)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        centers = next((r.extra for r in records if r.phase == "centers"), {})
        embed = next((r.extra for r in records if r.phase == "embed"), {})
        p = self.params
        return {
            "k": p.k,
            "pooling": p.pooling,
            "embed_text": p.embed_text,
            "embed_max_length": embed.get("embed_max_length"),
            **centers,
        }
