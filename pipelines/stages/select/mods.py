"""MoDS (Du et al. 2023, "MoDS: Model-oriented Data Selection for Instruction Tuning") as stages.

Three criteria, each usable alone, and `select mods` chaining them:

- quality (`select reward`): a reward model scores each (instruction + "\\n" + input, output) pair; a row
  passes when its score is strictly greater than --threshold.
- coverage (`select kcenter`): normalised embeddings of the instructions from a local encoder
  (--pooling mean or cls, of --embed-text instruction+input or instruction) and k-center greedy from a
  seeded first centre pick a seed set of k rows that covers them.
- necessity (`select necessity`): the causal LM, fine-tuned on the seed set (or a fine-tuned model the
  user gives), answers every other instruction (greedy or --num-beams, up to --max-new-tokens within the
  model's context; answers cut at that limit are counted as `generation_truncated`); the reward model
  scores those answers, and a row is necessary when its answer scores strictly less than
  --necessity-threshold: the model does not yet handle it.

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

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import FileRecord, TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_shard
from thresher.pipelines.engine.shards import ID_COLUMN, ShardSet, ShardWriter, dropped_table, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec

REWARD_COLUMN = "reward_score"
NECESSITY_COLUMN = "necessity_score"
STAGE_COLUMN = "mods_stage"
ORDER_COLUMN = "kcenter_order"
MODEL_DIR = "necessity-model"
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)

# Row outcomes, also the `_dropped/` reasons.
PASSED = "passed"
LOW_REWARD = "low_reward"
UNSCORABLE = "unscorable"
NOT_SELECTED = "not_selected"
NOT_NECESSARY = "not_necessary"
NOT_IN_AUGMENT_SET = "not_in_augment_set"
GENERATION_UNSCORABLE = "generation_unscorable"
IN_SEED_SET = "in_seed_set"

QUALITY_SCHEMA = pa.schema([("row", pa.int64()), (REWARD_COLUMN, pa.float64()), ("status", pa.string())])
SEED_SCHEMA = pa.schema([("shard", pa.int32()), ("row", pa.int64()), ("order", pa.int32())])
NECESSITY_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        (NECESSITY_COLUMN, pa.float64()),
        ("status", pa.string()),
        ("generated", pa.string()),
        ("generation_truncated", pa.bool_()),
    ]
)
# Counted in the manifest: answers that hit the new-token limit before the model's EOS. They are scored
# like any other, but a cut answer tends to score low, so a high count inflates the necessary set.
GENERATION_TRUNCATED = "generation_truncated"
# MoDS keeps 3,000 augmented rows next to its 1,000-row seed set (4,000 in all).
AUGMENT_PER_SEED = 3
MAX_NEW_USED = "max_new_tokens_used"


# ---------------------------------------------------------------------------------------------------------
# Params shared by the four stages


class InstructionParams(StageParams):
    instruction_column: str = Field("instruction", description="Column holding the instruction.")
    input_column: str = Field(
        "input", description="Column holding the optional input (context); absent column: no input."
    )
    output_column: str = Field("output", description="Column holding the response.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where models run (auto: a GPU if any)."
    )
    batch_size: int = Field(16, ge=1, description="Rows per model batch (batches are length-bucketed).")
    max_length: int = Field(512, ge=8, description="Token limit per example; longer ones are truncated.")
    threads: int = Field(
        1,
        ge=1,
        description="torch CPU threads per per-shard task (--workers already runs one task per core); "
        "single-task phases (k-center, fine-tuning) use every core.",
    )


class RewardParams(StageParams):
    reward_model: str = Field(
        ...,
        description="Reward / quality model folder (sequence classification, e.g. "
        "reward-model-deberta-v3-large-v2, or the output of `quality train --backbone deberta-v3`).",
    )


class EncoderParams(StageParams):
    encoder: str = Field(..., description="Sentence encoder folder for instruction embeddings.")
    k: int = Field(1000, ge=1, description="Size of the seed set k-center greedy picks (MoDS: 1000).")
    pooling: Literal["mean", "cls"] = Field(
        "mean",
        description="Embedding of a text: the mean of the encoder's last hidden states (what "
        "sentence-transformers encoders such as all-MiniLM-L6-v2 are trained for), or the first, [CLS], "
        "token's (MoDS, with bert-base-uncased). Either is L2-normalised.",
    )
    embed_text: Literal["instruction+input", "instruction"] = Field(
        "instruction+input",
        description="What is embedded: the instruction and its input (rows sharing one instruction "
        "template stay apart), or the instruction alone (MoDS).",
    )
    embed_max_length: int | None = Field(
        None, ge=2, description="Encoder token limit (MoDS: 96); default: --max-length."
    )


class NecessityModelParams(StageParams):
    model: str | None = Field(
        None, description="Causal LM folder (e.g. the proxy LM) to fine-tune on the seed set."
    )
    finetuned_model: str | None = Field(
        None, description="An already fine-tuned causal LM folder: skips the fine-tuning."
    )
    necessity_threshold: float = Field(
        0.0, description="A row is necessary when the reward of the model's own answer is < this."
    )
    finetune_epochs: int = Field(3, ge=1, description="Epochs of fine-tuning on the seed set.")
    finetune_lr: float = Field(2e-5, gt=0, description="Fine-tuning learning rate (AdamW, linear decay).")
    max_new_tokens: int = Field(
        1024,
        ge=1,
        description="Longest generated answer in tokens (MoDS: 1024), bounded by what the prompt leaves of "
        "the model's context; answers cut there are counted as generation_truncated.",
    )
    num_beams: int = Field(
        1,
        ge=1,
        description="Beam search width for the answers (MoDS: 4); 1 is greedy, and each beam adds a "
        "greedy pass's worth of generation work.",
    )

    @model_validator(mode="after")
    def _one_model(self) -> NecessityModelParams:
        if (self.model is None) == (self.finetuned_model is None):
            raise ValueError(
                "give exactly one of --model (fine-tuned on the seed set here) and --finetuned-model"
            )
        return self


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _model_inputs(*models: str | None) -> tuple[str, ...]:
    from thresher.scorers.torch_runtime import model_files

    return tuple(str(f.resolve()) for m in models if m for f in model_files(m))


class _InstructionStage(Stage):
    """Column handling and row reading shared by the MoDS stages."""

    params: Any

    def required_columns(self) -> list[str]:
        p = self.params
        return [ID_COLUMN, p.instruction_column, p.output_column]

    def string_columns(self) -> list[str]:
        p = self.params
        return [p.instruction_column, p.output_column]

    def _columns(self, path: Path) -> list[str]:
        p = self.params
        names = pq.read_schema(path).names
        return [
            ID_COLUMN,
            p.instruction_column,
            *([p.input_column] if p.input_column in names else []),
            p.output_column,
        ]

    def _rows(self, batch: pa.RecordBatch) -> tuple[list[str | None], list[str], list[str | None]]:
        """(instruction, input, output) of a batch; a missing input column reads as empty inputs."""
        p = self.params
        names = batch.schema.names
        inputs = (
            [x or "" for x in batch.column(p.input_column).to_pylist()]
            if p.input_column in names
            else [""] * batch.num_rows
        )
        return (
            batch.column(p.instruction_column).to_pylist(),
            inputs,
            batch.column(p.output_column).to_pylist(),
        )

    def _check_new_columns(self, columns: list[str]) -> None:
        assert self.ctx.input is not None
        for shard in self.ctx.input.shards:
            names = shard.schema.names if shard.schema is not None else []
            for column in columns:
                if column in names:
                    raise UsageError(
                        f"{shard.path}: already has column '{column}'; drop it before this stage"
                    )


def _reward_scores(
    scorer: Any, instructions: list[str | None], inputs: list[str], outputs: list[str | None]
) -> tuple[np.ndarray, int]:
    """Scores (NaN where the row has no instruction or output, or the score is not finite) and the
    number of pairs truncated to the model's limit."""
    from thresher.scorers.deberta import question_text

    scores = np.full(len(instructions), np.nan, dtype=np.float64)
    ok = [i for i in range(len(instructions)) if instructions[i] is not None and outputs[i] is not None]
    if not ok:
        return scores, 0
    result = scorer.score(
        [question_text(instructions[i], inputs[i]) for i in ok], [outputs[i] or "" for i in ok]
    )
    scores[ok] = result.scores
    return scores, int(result.truncated.sum())


def _embedding_texts(params: Any, instructions: list[str | None], inputs: list[str], rows: Any) -> list[str]:
    """The text each chosen row is embedded by (--embed-text)."""
    from thresher.scorers.deberta import question_text

    if params.embed_text == "instruction":
        return [instructions[i] or "" for i in rows]
    return [question_text(instructions[i], inputs[i]) for i in rows]


def _encoder(params: Any) -> Any:
    from thresher.scorers.encoder import TextEncoder

    return TextEncoder(
        params.encoder,
        device=params.device,
        batch_size=params.batch_size,
        max_length=params.embed_max_length or params.max_length,
        pooling=params.pooling,
    )


def _quantiles(values: list[float]) -> dict[str, float] | None:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(finite):
        return None
    return {f"{q:g}": round(float(np.quantile(finite, q)), 6) for q in QUANTILES}


def _record(tc: TaskContext, path: Path) -> None:
    from thresher.pipelines.engine.digest import file_digest

    tc.record(FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path)))


# ---------------------------------------------------------------------------------------------------------
# select reward


class RewardScoreParams(InstructionParams, RewardParams):
    threshold: float = Field(0.0, description="Keep rows whose reward score is > this (strictly).")
    keep_all: bool = Field(
        False, description="Only add reward_score; drop nothing (unscorable rows get null)."
    )


class RewardScore(_InstructionStage):
    name = "select-reward"
    version = "1"
    Params = RewardScoreParams
    summary = "MoDS quality: add reward_score from a reward model; keep rows scoring > --threshold."
    example = (
        "thresher select reward data/01-dedup data/02-quality --reward-model models/reward-deberta "
        "--threshold 0.0"
    )
    command = ("select", "reward")
    params: RewardScoreParams

    def side_inputs(self) -> list[Path]:
        return [Path(f) for f in _model_inputs(self.params.reward_model)]

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        self._check_new_columns([REWARD_COLUMN])
        models = _model_inputs(self.params.reward_model)
        return [
            PhaseSpec(
                "score",
                [TaskSpec(s.name, (str(s.path), *models), {}, s.num_rows) for s in self.ctx.input.shards],
            )
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.deberta import RewardScorer

        p = self.params
        _threads(p.threads)
        scorer = RewardScorer(
            p.reward_model, device=p.device, batch_size=p.batch_size, max_length=p.max_length
        )
        stats: Counter[str] = Counter()
        kept_scores: list[float] = []

        def score(batch: pa.RecordBatch) -> BatchOutcome:
            scores, truncated = _reward_scores(scorer, *self._rows(batch))
            stats["truncated"] += truncated
            missing = np.isnan(scores)
            stats[UNSCORABLE] += int(missing.sum())
            table = pa.Table.from_batches([batch]).append_column(
                REWARD_COLUMN, pa.array(scores, pa.float64(), mask=missing)
            )
            if p.keep_all:
                kept_scores.extend(scores[~missing].tolist())
                return BatchOutcome(table)
            keep = ~missing & (scores > p.threshold)
            drop = ~keep
            reasons = np.where(missing, UNSCORABLE, LOW_REWARD)[drop]
            details = [None if np.isnan(s) else f"{s:.6g}" for s in scores[drop]]
            kept_scores.extend(scores[keep].tolist())
            dropped = dropped_table(
                table[ID_COLUMN].filter(pa.array(drop)), self.name, reasons.tolist(), details
            )
            return BatchOutcome(table.filter(pa.array(keep)), dropped)

        result = map_shard(Path(task.inputs[0]), tc, score, writes_dropped=True, batch_rows=2048)
        result.extra.update({"truncated": stats["truncated"], UNSCORABLE: stats[UNSCORABLE]})
        result.extra["kept_score_quantiles"] = _quantiles(kept_scores)
        return result

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        return {
            "threshold": self.params.threshold,
            "truncated": sum(r.extra.get("truncated", 0) for r in records),
            UNSCORABLE: sum(r.extra.get(UNSCORABLE, 0) for r in records),
        }


# ---------------------------------------------------------------------------------------------------------
# Embeddings and k-center, shared by select kcenter and select mods


class _EmbeddingFiles:
    """Per-shard raw float32 embedding rows (no header: appended batch by batch, so a shard's
    embeddings never sit in memory whole) and the shard rows they belong to."""

    def __init__(self, work: Path, shard_name: str) -> None:
        self.vectors = work / "embeddings" / f"{shard_name}.f32"
        self.rows = work / "embeddings" / f"{shard_name}.rows.parquet"

    @staticmethod
    def open(path: Path, dim: int) -> np.ndarray:
        n = path.stat().st_size // (4 * dim)
        if n == 0:
            return np.zeros((0, dim), np.float32)
        return np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))


class _EmbeddingWriter:
    def __init__(self, files: _EmbeddingFiles) -> None:
        from thresher.pipelines.engine.atomic import tmp_path_for

        files.vectors.parent.mkdir(parents=True, exist_ok=True)
        self.files = files
        self._tmp = tmp_path_for(files.vectors)
        self._out = open(self._tmp, "wb")  # noqa: SIM115 - closed in close/abort
        self._rows = ShardWriter(files.rows, pa.schema([("row", pa.int64())]))
        self.count = 0

    def write(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        self._out.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._rows.write(pa.table({"row": pa.array(rows, pa.int64())}))
        self.count += len(rows)

    def close(self, tc: TaskContext) -> None:
        self._out.close()
        os.replace(self._tmp, self.files.vectors)
        _record(tc, self.files.vectors)
        tc.record(self._rows.close())

    def abort(self) -> None:
        self._out.close()
        self._tmp.unlink(missing_ok=True)
        self._rows.abort()


def _kcenter_seed(
    work: Path, shard_names: list[str], dim: int, k: int, seed: int, out: Path, tc: TaskContext
) -> dict[str, Any]:
    """k-center greedy over every shard's embedding file; writes (shard, row, order) of the centres."""
    from thresher.pipelines.stages.select.kcenter import kcenter_greedy

    _threads(_all_cores())
    files = [_EmbeddingFiles(work, name) for name in shard_names]
    blocks = [_EmbeddingFiles.open(f.vectors, dim) for f in files]
    rows = [pq.read_table(f.rows)["row"].to_numpy() for f in files]
    result = kcenter_greedy(blocks, k, seed=seed)
    sizes = np.array([len(b) for b in blocks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    shard_of = np.searchsorted(offsets, result.centers, side="right") - 1
    row_of = np.array(
        [rows[s][c - offsets[s]] for s, c in zip(shard_of, result.centers, strict=True)], np.int64
    )
    table = pa.table(
        {
            "shard": pa.array(shard_of.astype(np.int32)),
            "row": pa.array(row_of),
            "order": pa.array(np.arange(len(result.centers), dtype=np.int32)),
        },
        schema=SEED_SCHEMA,
    ).sort_by([("shard", "ascending"), ("row", "ascending")])
    with ShardWriter(out, SEED_SCHEMA) as writer:
        writer.write(table)
        tc.record(writer.close())
    radii = result.radii
    return {
        "candidates": int(offsets[-1]),
        "seeds": len(result.centers),
        "radius_after_first": round(float(radii[0]), 6) if len(radii) else None,
        "radius_final": round(float(radii[-1]), 6) if len(radii) else None,
    }


def _seed_rows(seed_file: Path, shard: int) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(seed_file, filters=[("shard", "=", shard)]).sort_by("row")
    return table["row"].to_numpy(), table["order"].to_numpy()


def _lookup(rows: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `rows`: whether it is in sorted `keys`, and its position there (0 where absent)."""
    if not len(keys):
        return np.zeros(len(rows), bool), np.zeros(len(rows), np.int64)
    at = np.minimum(np.searchsorted(keys, rows), len(keys) - 1)
    return keys[at] == rows, at


# ---------------------------------------------------------------------------------------------------------
# select kcenter


class KCenterParams(InstructionParams, EncoderParams):
    pass


class KCenterCoverage(_InstructionStage):
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
        return [Path(f) for f in _model_inputs(self.params.encoder)]

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        self._check_new_columns([STAGE_COLUMN, ORDER_COLUMN])
        shards = self.ctx.input.shards
        models = _model_inputs(self.params.encoder)
        emb = [_EmbeddingFiles(self.ctx.work, s.name) for s in shards]
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
                extra=_kcenter_seed(
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
        _threads(p.threads)
        encoder = _encoder(p)
        writer = _EmbeddingWriter(_EmbeddingFiles(self.ctx.work, task.key))
        offset = missing = 0
        try:
            for batch in iter_batches(Path(task.inputs[0]), self._columns(Path(task.inputs[0])), 2048):
                instructions, inputs, _ = self._rows(batch)
                ok = np.array([i is not None for i in instructions], dtype=bool)
                missing += int((~ok).sum())
                rows = np.nonzero(ok)[0]
                if len(rows):
                    texts = _embedding_texts(p, instructions, inputs, rows)
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
        seed_rows, order = _seed_rows(Path(task.inputs[1]), task.args["shard"])
        offset = 0

        def pick(batch: pa.RecordBatch) -> BatchOutcome:
            nonlocal offset
            rows = np.arange(offset, offset + batch.num_rows)
            offset += batch.num_rows
            hit, at = _lookup(rows, seed_rows)
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

        return map_shard(Path(task.inputs[0]), tc, pick, writes_dropped=True)

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


# ---------------------------------------------------------------------------------------------------------
# Necessity, shared by select necessity and select mods


def _finetune_on_rows(
    stage: _InstructionStage,
    rows: Iterator[tuple[list[str | None], list[str], list[str | None]]],
    tc: TaskContext,
) -> dict[str, Any]:
    """Fine-tune the causal LM on the given rows; write it to OUTPUT/necessity-model/ (recorded)."""
    from thresher.scorers.deberta import save_model_dir
    from thresher.scorers.instruct_lm import InstructLM

    p = stage.params
    _threads(_all_cores())
    lm = InstructLM(p.model, device=p.device, max_length=p.max_length, for_training=True)
    examples = []
    for instructions, inputs, outputs in rows:
        ok = [i for i in range(len(instructions)) if instructions[i] is not None and outputs[i] is not None]
        examples += lm.encode(
            [instructions[i] for i in ok], [inputs[i] for i in ok], [outputs[i] for i in ok]
        )
    losses = lm.finetune(
        examples,
        epochs=p.finetune_epochs,
        learning_rate=p.finetune_lr,
        batch_size=p.batch_size,
        seed=stage.ctx.seed,
    )
    out = save_model_dir(lm.model, lm.tokenizer, stage.ctx.output / MODEL_DIR)
    for f in sorted(out.iterdir()):
        _record(tc, f)
    return {"finetune_examples": len(examples), "finetune_epoch_loss": losses}


def _necessity_scores(
    stage: _InstructionStage, shard_path: Path, candidate: Any, out: Path, model: str, tc: TaskContext
) -> dict[str, Any]:
    """Generate an answer to every candidate row of a shard with the fine-tuned model and score it with
    the reward model; `candidate(rows, batch)` says which rows of a batch are candidates."""
    from thresher.scorers.deberta import RewardScorer
    from thresher.scorers.instruct_lm import InstructLM

    p = stage.params
    _threads(p.threads)
    lm = InstructLM(model, device=p.device, max_length=p.max_length)
    scorer = RewardScorer(p.reward_model, device=p.device, batch_size=p.batch_size, max_length=p.max_length)
    stats: Counter[str] = Counter({GENERATION_TRUNCATED: 0})
    limits: list[int] = []
    offset = 0
    with ShardWriter(out, NECESSITY_SCHEMA) as writer:
        for batch in iter_batches(shard_path, stage._columns(shard_path), 512):
            rows = np.arange(offset, offset + batch.num_rows)
            offset += batch.num_rows
            instructions, inputs, _ = stage._rows(batch)
            chosen = np.nonzero(candidate(rows, batch))[0]
            if len(chosen):
                answers = lm.generate(
                    [instructions[i] for i in chosen],
                    [inputs[i] for i in chosen],
                    max_new_tokens=p.max_new_tokens,
                    batch_size=p.batch_size,
                    num_beams=p.num_beams,
                )
                generated = answers.texts
                stats[GENERATION_TRUNCATED] += int(answers.truncated.sum())
                limits += answers.new_token_limits
                scores, truncated = _reward_scores(
                    scorer, [instructions[i] for i in chosen], [inputs[i] for i in chosen], list(generated)
                )
                stats["truncated"] += truncated
                missing = np.isnan(scores)
                status = np.where(
                    missing,
                    GENERATION_UNSCORABLE,
                    np.where(scores < p.necessity_threshold, "necessary", NOT_NECESSARY),
                )
                stats.update(status.tolist())
                writer.write(
                    pa.table(
                        {
                            "row": pa.array(rows[chosen], pa.int64()),
                            NECESSITY_COLUMN: pa.array(scores, pa.float64(), mask=missing),
                            "status": pa.array(status.tolist(), pa.string()),
                            "generated": pa.array(generated, pa.string()),
                            "generation_truncated": pa.array(answers.truncated, pa.bool_()),
                        },
                        schema=NECESSITY_SCHEMA,
                    )
                )
            tc.progress(batch.num_rows)
        tc.record(writer.close())
    return {
        "generated": int(sum(stats[k] for k in ("necessary", NOT_NECESSARY, GENERATION_UNSCORABLE))),
        **stats,
        # The new-token limit the batches really ran with: --max-new-tokens, or less where the model's
        # context leaves less room after the prompt.
        MAX_NEW_USED: max(limits) if limits else None,
    }


def _necessity_totals(records: list[TaskRecord]) -> dict[str, Any]:
    """The necessity tasks' counts summed, and the largest new-token limit any of them ran with."""
    totals: Counter[str] = Counter()
    used = [r.extra.get(MAX_NEW_USED) for r in records if r.phase == "necessity"]
    for r in records:
        if r.phase == "necessity":
            totals.update({k: v for k, v in r.extra.items() if isinstance(v, int) and k != MAX_NEW_USED})
    return {**dict(sorted(totals.items())), MAX_NEW_USED: max((u for u in used if u), default=None)}


def _necessity_table(path: Path) -> pa.Table:
    return pq.read_table(path).sort_by("row")


# ---------------------------------------------------------------------------------------------------------
# select necessity


class NecessityParams(InstructionParams, RewardParams, NecessityModelParams):
    seed_set: str = Field(..., description="The seed set (e.g. the output of `select kcenter`).")
    include_seed: bool = Field(
        True, description="Keep the input's rows that are in the seed set (mods_stage=seed) in the output."
    )


class Necessity(_InstructionStage):
    name = "select-necessity"
    version = "2"
    Params = NecessityParams
    summary = (
        "MoDS necessity: fine-tune the LM on --seed-set, answer the other instructions, keep those whose "
        "answer's reward is < --necessity-threshold."
    )
    example = (
        "thresher select necessity data/02-quality data/04-mods --seed-set data/03-seed "
        "--model models/proxy-lm --reward-model models/reward-deberta"
    )
    command = ("select", "necessity")
    params: NecessityParams

    def _seed_set(self) -> ShardSet:
        return ShardSet.open(
            Path(self.params.seed_set),
            self.required_columns(),
            self.string_columns(),
            self.params.column_flags(),
        )

    def side_inputs(self) -> list[Path]:
        p = self.params
        models = _model_inputs(p.reward_model, p.model, p.finetuned_model)
        return [*(s.path for s in self._seed_set().shards), *(Path(m) for m in models)]

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        p = self.params
        self._check_new_columns([STAGE_COLUMN, NECESSITY_COLUMN])
        shards = self.ctx.input.shards
        seed_files = tuple(str(s.path.resolve()) for s in self._seed_set().shards)
        phases = []
        if p.model is not None:
            phases.append(
                PhaseSpec("finetune", [TaskSpec("finetune", (*seed_files, *_model_inputs(p.model)), {})])
            )
        lm_inputs = _model_inputs(p.finetuned_model) if p.finetuned_model else ()
        scorer_inputs = _model_inputs(p.reward_model)
        necessity = [str(self.ctx.work / "necessity" / s.name) for s in shards]
        phases += [
            PhaseSpec(
                "necessity",
                [
                    TaskSpec(
                        s.name,
                        (str(s.path), *seed_files, *lm_inputs, *scorer_inputs),
                        {"shard": i},
                        s.num_rows,
                    )
                    for i, s in enumerate(shards)
                ],
            ),
            PhaseSpec(
                "select",
                [
                    TaskSpec(s.name, (str(s.path), necessity[i], *seed_files), {"shard": i}, s.num_rows)
                    for i, s in enumerate(shards)
                ],
            ),
        ]
        return phases

    def _seed_ids(self) -> pa.Array:
        ids = [
            batch.column(ID_COLUMN)
            for s in self._seed_set().shards
            for batch in iter_batches(s.path, [ID_COLUMN])
        ]
        return pa.concat_arrays([pc.cast(i, pa.string()) for i in ids]) if ids else pa.array([], pa.string())

    def _tuned_model(self) -> str:
        p = self.params
        return p.finetuned_model or str(self.ctx.output / MODEL_DIR)

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase == "finetune":
            seed = self._seed_set()
            rows = (self._rows(b) for s in seed.shards for b in iter_batches(s.path, self._columns(s.path)))
            return TaskResult(extra=_finetune_on_rows(self, rows, tc))
        seed_ids = self._seed_ids()
        if phase == "necessity":

            def candidate(rows: np.ndarray, batch: pa.RecordBatch) -> np.ndarray:
                in_seed = pc.is_in(batch.column(ID_COLUMN), value_set=seed_ids).to_numpy(zero_copy_only=False)
                instructions, _, _ = self._rows(batch)
                present = np.array([i is not None for i in instructions], dtype=bool)
                return ~in_seed & present

            out = self.ctx.work / "necessity" / task.key
            extra = _necessity_scores(self, Path(task.inputs[0]), candidate, out, self._tuned_model(), tc)
            return TaskResult(extra=extra)
        return self._select(task, tc, seed_ids)

    def _select(self, task: TaskSpec, tc: TaskContext, seed_ids: pa.Array) -> TaskResult:
        p = self.params
        results = _necessity_table(Path(task.inputs[1]))
        result_rows = results["row"].to_numpy()
        result_status = np.asarray(results["status"].to_pylist(), dtype=object)
        result_scores = results[NECESSITY_COLUMN].to_numpy(zero_copy_only=False).astype(np.float64)
        offset = 0

        def pick(batch: pa.RecordBatch) -> BatchOutcome:
            nonlocal offset
            rows = np.arange(offset, offset + batch.num_rows)
            offset += batch.num_rows
            in_seed = pc.is_in(batch.column(ID_COLUMN), value_set=seed_ids).to_numpy(zero_copy_only=False)
            hit, at = _lookup(rows, result_rows)
            status = np.where(hit, result_status[at] if len(result_rows) else None, UNSCORABLE)
            necessary = hit & (status == "necessary")
            keep = (in_seed & p.include_seed) | necessary
            stage = np.where(in_seed, "seed", np.where(necessary, "necessity", None))
            score = np.where(hit, result_scores[at] if len(result_rows) else np.nan, np.nan)
            table = pa.Table.from_batches([batch])
            table = table.append_column(STAGE_COLUMN, pa.array(stage, pa.string()))
            table = table.append_column(NECESSITY_COLUMN, pa.array(score, pa.float64(), mask=np.isnan(score)))
            drop = ~keep
            reasons = np.where(in_seed, IN_SEED_SET, status)[drop].tolist()
            details = [None if np.isnan(s) else f"{s:.6g}" for s in score[drop]]
            dropped = dropped_table(table[ID_COLUMN].filter(pa.array(drop)), self.name, reasons, details)
            return BatchOutcome(table.filter(pa.array(keep)), dropped)

        return map_shard(Path(task.inputs[0]), tc, pick, writes_dropped=True)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        finetune = next((r.extra for r in records if r.phase == "finetune"), {})
        return {
            "necessity_threshold": self.params.necessity_threshold,
            "model": MODEL_DIR if self.params.model else self.params.finetuned_model,
            **finetune,
            **_necessity_totals(records),
        }


# ---------------------------------------------------------------------------------------------------------
# select mods


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


class MoDSSelect(_InstructionStage):
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
        return [Path(f) for f in _model_inputs(p.reward_model, p.encoder, p.model, p.finetuned_model)]

    def _files(self, shard_name: str) -> dict[str, Path]:
        work = self.ctx.work
        emb = _EmbeddingFiles(work, shard_name)
        return {
            "quality": work / "quality" / shard_name,
            "vectors": emb.vectors,
            "rows": emb.rows,
            "necessity": work / "necessity" / shard_name,
        }

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        p = self.params
        self._check_new_columns([REWARD_COLUMN, STAGE_COLUMN, NECESSITY_COLUMN, ORDER_COLUMN])
        shards = self.ctx.input.shards
        files = [self._files(s.name) for s in shards]
        seed_file = str(self.ctx.work / "seed.parquet")
        scoring = _model_inputs(p.reward_model, p.encoder)
        lm_inputs = _model_inputs(p.finetuned_model) if p.finetuned_model else ()
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
                            (seed_file, *(str(s.path) for s in shards), *_model_inputs(p.model)),
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
                            *_model_inputs(p.reward_model),
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
                extra=_kcenter_seed(self.ctx.work, names, dim, self.params.k, self.ctx.seed, seed_file, tc)
            )
        if phase == "finetune":
            return TaskResult(extra=_finetune_on_rows(self, self._seed_batches(), tc))
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
        _threads(_all_cores())
        dim = TextEncoder.dimension(self.params.encoder)
        seed_file = self.ctx.work / "seed.parquet"
        seeds: list[np.ndarray] = []
        blocks: list[np.ndarray] = []
        where: list[tuple[int, np.ndarray]] = []
        for i, shard in enumerate(self.ctx.input.shards):
            files = self._files(shard.name)
            vectors = _EmbeddingFiles.open(files["vectors"], dim)
            rows = pq.read_table(files["rows"])["row"].to_numpy()
            seed_rows, _ = _seed_rows(seed_file, i)
            necessity = _necessity_table(files["necessity"])
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
        table = pa.table(
            {
                "shard": pa.array(shard_of),
                "row": pa.array(row_of),
                "order": pa.array(np.arange(len(row_of), dtype=np.int32) + len(seed_block)),
            },
            schema=SEED_SCHEMA,
        ).sort_by([("shard", "ascending"), ("row", "ascending")])
        with ShardWriter(self.ctx.work / "augment.parquet", SEED_SCHEMA) as writer:
            writer.write(table)
            tc.record(writer.close())
        return {
            "necessary": int(sizes[1:].sum()),
            "augmented": len(row_of),
            "radius_final": round(float(result.radii[-1]), 6) if len(result.radii) else None,
        }

    def _score(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.deberta import RewardScorer

        p = self.params
        _threads(p.threads)
        scorer = RewardScorer(
            p.reward_model, device=p.device, batch_size=p.batch_size, max_length=p.max_length
        )
        encoder = _encoder(p)
        files = self._files(task.key)
        embeddings = _EmbeddingWriter(_EmbeddingFiles(self.ctx.work, task.key))
        quality = ShardWriter(files["quality"], QUALITY_SCHEMA)
        stats: Counter[str] = Counter()
        passed_scores: list[float] = []
        offset = 0
        try:
            for batch in iter_batches(Path(task.inputs[0]), self._columns(Path(task.inputs[0])), 2048):
                instructions, inputs, outputs = self._rows(batch)
                scores, truncated = _reward_scores(scorer, instructions, inputs, outputs)
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
                    texts = _embedding_texts(p, instructions, inputs, chosen)
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
        return TaskResult(extra={**stats, "passed_score_quantiles": _quantiles(passed_scores)})

    def _seed_batches(self) -> Iterator[tuple[list[str | None], list[str], list[str | None]]]:
        assert self.ctx.input is not None
        seed_file = self.ctx.work / "seed.parquet"
        for i, shard in enumerate(self.ctx.input.shards):
            wanted, _ = _seed_rows(seed_file, i)
            if not len(wanted):
                continue
            offset = 0
            for batch in iter_batches(shard.path, self._columns(shard.path)):
                rows = np.arange(offset, offset + batch.num_rows)
                offset += batch.num_rows
                hit, _ = _lookup(rows, wanted)
                if hit.any():
                    yield self._rows(batch.filter(pa.array(hit)))

    def _necessity(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        quality = pq.read_table(task.inputs[1]).sort_by("row")
        passed_rows = quality["row"].to_numpy()[
            pc.equal(quality["status"], PASSED).to_numpy(zero_copy_only=False)
        ]
        seed_rows, _ = _seed_rows(Path(task.inputs[2]), task.args["shard"])
        candidates = np.setdiff1d(passed_rows, seed_rows, assume_unique=True)

        def candidate(rows: np.ndarray, batch: pa.RecordBatch) -> np.ndarray:
            return _lookup(rows, candidates)[0]

        model = p.finetuned_model or str(self.ctx.output / MODEL_DIR)
        out = self._files(task.key)["necessity"]
        return TaskResult(extra=_necessity_scores(self, Path(task.inputs[0]), candidate, out, model, tc))

    def _select(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        quality = pq.read_table(task.inputs[1]).sort_by("row")
        q_scores = quality[REWARD_COLUMN].to_numpy(zero_copy_only=False)
        q_status = np.asarray(quality["status"].to_pylist(), dtype=object)
        seed_rows, order = _seed_rows(Path(task.inputs[2]), task.args["shard"])
        necessity = _necessity_table(Path(task.inputs[3]))
        n_rows = necessity["row"].to_numpy()
        n_scores = necessity[NECESSITY_COLUMN].to_numpy(zero_copy_only=False)
        n_status = np.asarray(necessity["status"].to_pylist(), dtype=object)
        augmented = len(task.inputs) > 4
        if augmented:
            aug_rows, aug_order = _seed_rows(Path(task.inputs[4]), task.args["shard"])
        offset = 0

        def pick(batch: pa.RecordBatch) -> BatchOutcome:
            nonlocal offset
            rows = np.arange(offset, offset + batch.num_rows)
            offset += batch.num_rows
            reward = q_scores[rows]
            is_seed, seed_at = _lookup(rows, seed_rows)
            judged, n_at = _lookup(rows, n_rows)
            n_state = np.where(judged, n_status[n_at] if len(n_rows) else None, None)
            necessary = judged & (n_state == "necessary")
            picked_order = np.where(is_seed, order[seed_at] if len(order) else 0, -1)
            if augmented:
                in_augment, aug_at = _lookup(rows, aug_rows)
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

        return map_shard(Path(task.inputs[0]), tc, pick, writes_dropped=True)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        quality: Counter[str] = Counter()
        for r in records:
            if r.phase == "score":
                quality.update({k: v for k, v in r.extra.items() if isinstance(v, int)})
        necessity = _necessity_totals(records)
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
