"""MoDS (Du et al. 2023, "MoDS: Model-oriented Data Selection for Instruction Tuning"): `select mods`
chains its three criteria, each also a stage of its own: quality (reward.py, `select reward`), coverage
(coverage.py, `select kcenter`) and necessity (necessity.py, `select necessity`).

`select mods` phases: `score` (per shard: reward scores, and embeddings of the rows that pass) -> `seed`
(one task: k-center over the embedding files) -> `finetune` (one task; skipped with --finetuned-model)
-> `necessity` (per shard: generate and score) -> `augment` (one task: MoDS's second k-center pass, which
keeps --augment-k of the necessary rows, default 3 x --k, with the seed set's centres counted as chosen;
skipped with --keep-all-necessary) -> `select` (per shard). The output holds the seed and the
(augmented) necessary rows, with `mods_stage` (seed / necessity), `reward_score`, `necessity_score` and
`kcenter_order` (the order either k-center pass picked the row in); every other row is in `_dropped/`
with its reason. A row that cannot be scored (no instruction or output, or a non-finite score) is
dropped as `unscorable`, counted in the manifest, never passed over in silence.

Embeddings and scores go to per-shard work files; the one task that sees the whole set (k-center) reads
the embeddings memory-mapped. Models are read from local folders only (see scorers/torch_runtime.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_batches
from thresher.pipelines.engine.shards import ID_COLUMN, ShardWriter, dropped_table, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.select.coverage import (
    ORDER_COLUMN,
    STAGE_COLUMN,
    kcenter_seed,
    read_seed_rows,
    write_centres,
)
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
from thresher.pipelines.stages.select.necessity import (
    GENERATION_UNSCORABLE,
    MODEL_DIR,
    NECESSITY_COLUMN,
    NecessityModelParams,
    finetune_on_rows,
    necessity_totals,
    read_necessity_table,
    score_necessity,
)
from thresher.pipelines.stages.select.reward import (
    LOW_REWARD,
    PASSED,
    REWARD_COLUMN,
    RewardParams,
    reward_scores,
    score_quantiles,
)

QUALITY_SCHEMA = pa.schema([("row", pa.int64()), (REWARD_COLUMN, pa.float64()), ("status", pa.string())])
NOT_IN_AUGMENT_SET = "not_in_augment_set"
# MoDS keeps 3,000 augmented rows next to its 1,000-row seed set (4,000 in all).
AUGMENT_PER_SEED = 3


class MoDSParams(InstructionParams, RewardParams, EncoderParams, NecessityModelParams):
    threshold: float = Field(0.0, description="Quality: a row passes when its reward score is > this.")
    augment_k: int | None = Field(
        None,
        ge=1,
        description="MoDS's second k-center pass: keep at most this many of the necessary rows, the ones "
        "farthest (in instruction embeddings) from the seed set and from each other. Default: 3 x --k "
        "(MoDS: 1000 seed + 3000 augmented rows).",
    )
    keep_all_necessary: bool = Field(
        False,
        description="Skip the second k-center pass and keep every necessary row (what MoDS's released "
        "merge script does).",
    )

    @model_validator(mode="after")
    def _one_augment_rule(self) -> MoDSParams:
        if self.keep_all_necessary and self.augment_k is not None:
            raise ValueError("give --augment-k or --keep-all-necessary, not both")
        return self

    @property
    def effective_augment_k(self) -> int | None:
        """How many necessary rows the second k-center pass keeps; None: every one (no second pass)."""
        if self.keep_all_necessary:
            return None
        return self.augment_k if self.augment_k is not None else AUGMENT_PER_SEED * self.k


class MoDSSelect(InstructionStage):
    name = "select-mods"
    version = "2"
    Params = MoDSParams
    summary = (
        "MoDS: reward > --threshold, then a k-center seed set of --k, then the rows the seed-tuned LM "
        "still answers badly; adds mods_stage, reward_score, necessity_score, kcenter_order."
    )
    example = (
        "thresher select mods data/01-dedup data/02-mods --reward-model models/reward-deberta "
        "--encoder models/all-MiniLM-L6-v2 --model models/proxy-lm --k 1000"
    )
    command = ("select", "mods")
    params: MoDSParams

    def side_inputs(self) -> list[Path]:
        p = self.params
        return [
            storage.location(f) for f in model_inputs(p.reward_model, p.encoder, p.model, p.finetuned_model)
        ]

    def _files(self, shard_name: str) -> dict[str, Path]:
        work = self.ctx.work
        emb = EmbeddingFiles(work, shard_name)
        return {
            "quality": work / "quality" / shard_name,
            "vectors": emb.vectors,
            "rows": emb.rows,
            "necessity": work / "necessity" / shard_name,
        }

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        p = self.params
        self.check_new_columns([REWARD_COLUMN, STAGE_COLUMN, NECESSITY_COLUMN, ORDER_COLUMN])
        shards = self.ctx.input.shards
        files = [self._files(s.name) for s in shards]
        seed_file = str(self.ctx.work / "seed.parquet")
        scoring = model_inputs(p.reward_model, p.encoder)
        lm_inputs = model_inputs(p.finetuned_model) if p.finetuned_model else ()
        phases = [
            PhaseSpec(
                "score",
                [
                    TaskSpec(s.name, (str(s.path), *scoring), {"shard": i}, s.num_rows)
                    for i, s in enumerate(shards)
                ],
            ),
            PhaseSpec(
                "seed",
                [TaskSpec("seed", tuple(str(f[k]) for f in files for k in ("vectors", "rows")), {})],
            ),
        ]
        if p.model is not None:
            phases.append(
                PhaseSpec(
                    "finetune",
                    [
                        TaskSpec(
                            "finetune",
                            (seed_file, *(str(s.path) for s in shards), *model_inputs(p.model)),
                            {},
                        )
                    ],
                )
            )
        augment_file = str(self.ctx.work / "augment.parquet")
        phases += [
            PhaseSpec(
                "necessity",
                [
                    TaskSpec(
                        s.name,
                        (
                            str(s.path),
                            str(files[i]["quality"]),
                            seed_file,
                            *lm_inputs,
                            *model_inputs(p.reward_model),
                        ),
                        {"shard": i},
                        s.num_rows,
                    )
                    for i, s in enumerate(shards)
                ],
            ),
        ]
        if p.effective_augment_k is not None:
            phases.append(
                PhaseSpec(
                    "augment",
                    [
                        TaskSpec(
                            "augment",
                            (
                                seed_file,
                                *(str(f[k]) for f in files for k in ("vectors", "rows", "necessity")),
                            ),
                            {},
                        )
                    ],
                )
            )
        augment = (augment_file,) if p.effective_augment_k is not None else ()
        phases.append(
            PhaseSpec(
                "select",
                [
                    TaskSpec(
                        s.name,
                        (
                            str(s.path),
                            str(files[i]["quality"]),
                            seed_file,
                            str(files[i]["necessity"]),
                            *augment,
                        ),
                        {"shard": i},
                        s.num_rows,
                    )
                    for i, s in enumerate(shards)
                ],
            )
        )
        return phases

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        assert self.ctx.input is not None
        if phase == "score":
            return self._score(task, tc)
        if phase == "seed":
            from thresher.scorers.encoder import TextEncoder

            dim = TextEncoder.dimension(self.params.encoder)
            names = [s.name for s in self.ctx.input.shards]
            seed_file = self.ctx.work / "seed.parquet"
            return TaskResult(
                extra=kcenter_seed(self.ctx.work, names, dim, self.params.k, self.ctx.seed, seed_file, tc)
            )
        if phase == "finetune":
            return TaskResult(extra=finetune_on_rows(self, self._seed_batches(), tc))
        if phase == "necessity":
            return self._necessity(task, tc)
        if phase == "augment":
            return TaskResult(extra=self._augment(tc))
        return self._select(task, tc)

    def _augment(self, tc: TaskContext) -> dict[str, Any]:
        """The second k-center pass: among the necessary rows, the --augment-k (default 3 x --k) farthest
        from the seed set (its centres count as chosen) and from each other."""
        from thresher.pipelines.stages.select.kcenter import kcenter_greedy
        from thresher.scorers.encoder import TextEncoder

        assert self.ctx.input is not None
        k = self.params.effective_augment_k
        assert k is not None
        set_torch_threads(all_cores())
        dim = TextEncoder.dimension(self.params.encoder)
        seed_file = self.ctx.work / "seed.parquet"
        seeds: list[np.ndarray] = []
        blocks: list[np.ndarray] = []
        where: list[tuple[int, np.ndarray]] = []
        for i, shard in enumerate(self.ctx.input.shards):
            files = self._files(shard.name)
            vectors = EmbeddingFiles.open(files["vectors"], dim)
            rows = pq.read_table(storage.readable(files["rows"]))["row"].to_numpy()
            seed_rows, _ = read_seed_rows(seed_file, i)
            necessity = read_necessity_table(files["necessity"])
            status = np.asarray(necessity["status"].to_pylist(), dtype=object)
            necessary = necessity["row"].to_numpy()[status == "necessary"]
            # Embedding files list rows in order, so both lookups are binary searches. Only the seed and
            # necessary rows' vectors are gathered into memory (k + necessary rows x dim floats).
            seeds.append(np.asarray(vectors[np.searchsorted(rows, seed_rows)], np.float32))
            blocks.append(np.asarray(vectors[np.searchsorted(rows, necessary)], np.float32))
            where.append((i, necessary))
        seed_block = np.concatenate(seeds) if seeds else np.zeros((0, dim), np.float32)
        result = kcenter_greedy([seed_block, *blocks], k, chosen=range(len(seed_block)))
        sizes = np.array([len(seed_block), *(len(b) for b in blocks)], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        block_of = np.searchsorted(offsets, result.centers, side="right") - 1
        shard_of = np.array([where[b - 1][0] for b in block_of], np.int32)
        row_of = np.array(
            [where[b - 1][1][c - offsets[b]] for b, c in zip(block_of, result.centers, strict=True)], np.int64
        )
        order = np.arange(len(row_of), dtype=np.int32) + len(seed_block)
        write_centres(self.ctx.work / "augment.parquet", shard_of, row_of, order, tc)
        return {
            "necessary": int(sizes[1:].sum()),
            "augmented": len(row_of),
            "radius_final": round(float(result.radii[-1]), 6) if len(result.radii) else None,
        }

    def _score(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.deberta import RewardScorer

        p = self.params
        set_torch_threads(p.threads)
        scorer = RewardScorer(
            p.reward_model, device=p.device, batch_size=p.batch_size, max_length=p.max_length
        )
        encoder = text_encoder(p)
        files = self._files(task.key)
        embeddings = EmbeddingWriter(EmbeddingFiles(self.ctx.work, task.key))
        quality = ShardWriter(files["quality"], QUALITY_SCHEMA)
        stats: Counter[str] = Counter()
        passed_scores: list[float] = []
        offset = 0
        try:
            for batch in iter_batches(
                storage.location(task.inputs[0]), self.read_columns(storage.location(task.inputs[0])), 2048
            ):
                instructions, inputs, outputs = self.row_texts(batch)
                scores, truncated = reward_scores(scorer, instructions, inputs, outputs)
                stats["truncated"] += truncated
                missing = np.isnan(scores)
                passed = ~missing & (scores > p.threshold)
                status = np.where(missing, UNSCORABLE, np.where(passed, PASSED, LOW_REWARD))
                stats.update(status.tolist())
                rows = np.arange(offset, offset + batch.num_rows)
                quality.write(
                    pa.table(
                        {
                            "row": pa.array(rows, pa.int64()),
                            REWARD_COLUMN: pa.array(scores, pa.float64(), mask=missing),
                            "status": pa.array(status.tolist(), pa.string()),
                        },
                        schema=QUALITY_SCHEMA,
                    )
                )
                chosen = np.nonzero(passed)[0]
                if len(chosen):
                    texts = embedding_texts(p, instructions, inputs, chosen)
                    embeddings.write(rows[chosen], encoder.encode(texts))
                    passed_scores += scores[chosen].tolist()
                offset += batch.num_rows
                tc.progress(batch.num_rows)
            tc.record(quality.close())
            embeddings.close(tc)
        except BaseException:
            quality.abort()
            embeddings.abort()
            raise
        return TaskResult(extra={**stats, "passed_score_quantiles": score_quantiles(passed_scores)})

    def _seed_batches(self) -> Iterator[tuple[list[str | None], list[str], list[str | None]]]:
        assert self.ctx.input is not None
        seed_file = self.ctx.work / "seed.parquet"
        for i, shard in enumerate(self.ctx.input.shards):
            wanted, _ = read_seed_rows(seed_file, i)
            if not len(wanted):
                continue
            offset = 0
            for batch in iter_batches(shard.path, self.read_columns(shard.path)):
                rows = np.arange(offset, offset + batch.num_rows)
                offset += batch.num_rows
                hit, _ = lookup_rows(rows, wanted)
                if hit.any():
                    yield self.row_texts(batch.filter(pa.array(hit)))

    def _necessity(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        quality = pq.read_table(storage.readable(task.inputs[1])).sort_by("row")
        passed_rows = quality["row"].to_numpy()[
            pc.equal(quality["status"], PASSED).to_numpy(zero_copy_only=False)
        ]
        seed_rows, _ = read_seed_rows(storage.location(task.inputs[2]), task.args["shard"])
        candidates = np.setdiff1d(passed_rows, seed_rows, assume_unique=True)

        def candidate(rows: np.ndarray, batch: pa.RecordBatch) -> np.ndarray:
            return lookup_rows(rows, candidates)[0]

        model = p.finetuned_model or str(self.ctx.output / MODEL_DIR)
        out = self._files(task.key)["necessity"]
        return TaskResult(
            extra=score_necessity(self, storage.location(task.inputs[0]), candidate, out, model, tc)
        )

    def _select(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        quality = pq.read_table(storage.readable(task.inputs[1])).sort_by("row")
        q_scores = quality[REWARD_COLUMN].to_numpy(zero_copy_only=False)
        q_status = np.asarray(quality["status"].to_pylist(), dtype=object)
        seed_rows, order = read_seed_rows(storage.location(task.inputs[2]), task.args["shard"])
        necessity = read_necessity_table(storage.location(task.inputs[3]))
        n_rows = necessity["row"].to_numpy()
        n_scores = necessity[NECESSITY_COLUMN].to_numpy(zero_copy_only=False)
        n_status = np.asarray(necessity["status"].to_pylist(), dtype=object)
        augmented = len(task.inputs) > 4
        if augmented:
            aug_rows, aug_order = read_seed_rows(storage.location(task.inputs[4]), task.args["shard"])

        def pick(batch: pa.RecordBatch, offset: int) -> BatchOutcome:
            rows = np.arange(offset, offset + batch.num_rows)
            reward = q_scores[rows]
            is_seed, seed_at = lookup_rows(rows, seed_rows)
            judged, n_at = lookup_rows(rows, n_rows)
            n_state = np.where(judged, n_status[n_at] if len(n_rows) else None, None)
            necessary = judged & (n_state == "necessary")
            picked_order = np.where(is_seed, order[seed_at] if len(order) else 0, -1)
            if augmented:
                in_augment, aug_at = lookup_rows(rows, aug_rows)
                n_state = np.where(necessary & ~in_augment, NOT_IN_AUGMENT_SET, n_state)
                necessary &= in_augment
                picked_order = np.where(necessary, aug_order[aug_at] if len(aug_order) else 0, picked_order)
            keep = is_seed | necessary
            reason = np.where(q_status[rows] != PASSED, q_status[rows], n_state)
            stage = np.where(is_seed, "seed", np.where(necessary, "necessity", None))
            n_score = np.where(judged, n_scores[n_at] if len(n_rows) else np.nan, np.nan)
            table = pa.Table.from_batches([batch])
            for name, values in (
                (REWARD_COLUMN, pa.array(reward, pa.float64(), mask=np.isnan(reward))),
                (STAGE_COLUMN, pa.array(stage, pa.string())),
                (NECESSITY_COLUMN, pa.array(n_score, pa.float64(), mask=np.isnan(n_score))),
                (ORDER_COLUMN, pa.array(picked_order.astype(np.int32), pa.int32(), mask=picked_order < 0)),
            ):
                table = table.append_column(name, values)
            drop = ~keep
            detail_scores = np.where(q_status[rows] != PASSED, reward, n_score)[drop]
            details = [None if np.isnan(s) else f"{s:.6g}" for s in detail_scores]
            dropped = dropped_table(
                table[ID_COLUMN].filter(pa.array(drop)), self.name, reason[drop].tolist(), details
            )
            return BatchOutcome(table.filter(pa.array(keep)), dropped)

        return map_batches(storage.location(task.inputs[0]), tc, pick, writes_dropped=True)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        quality: Counter[str] = Counter()
        for r in records:
            if r.phase == "score":
                quality.update({k: v for k, v in r.extra.items() if isinstance(v, int)})
        necessity = necessity_totals(records)
        seed = next((r.extra for r in records if r.phase == "seed"), {})
        finetune = next((r.extra for r in records if r.phase == "finetune"), {})
        augment = next((r.extra for r in records if r.phase == "augment"), None)
        p = self.params
        return {
            "threshold": p.threshold,
            "necessity_threshold": p.necessity_threshold,
            "quality": dict(sorted(quality.items())),
            "coverage": {"k": p.k, **seed},
            "necessity": {
                "model": MODEL_DIR if p.model else p.finetuned_model,
                **finetune,
                **necessity,
            },
            "augment": None if augment is None else {"k": p.effective_augment_k, **augment},
            "failures": quality[UNSCORABLE] + necessity.get(GENERATION_UNSCORABLE, 0),
        }
