"""Instruction embeddings for MoDS's coverage criterion: the encoder params, the text each row is
embedded by, and the per-shard embedding work files that the one k-center task reads memory-mapped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.shards import ShardWriter
from thresher.pipelines.engine.stage import StageParams, TaskContext
from thresher.pipelines.stages.select.instruction import record_file


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


def embedding_texts(params: Any, instructions: list[str | None], inputs: list[str], rows: Any) -> list[str]:
    """The text each chosen row is embedded by (--embed-text)."""
    from thresher.scorers.deberta import question_text

    if params.embed_text == "instruction":
        return [instructions[i] or "" for i in rows]
    return [question_text(instructions[i], inputs[i]) for i in rows]


def text_encoder(params: Any) -> Any:
    from thresher.scorers.encoder import TextEncoder

    return TextEncoder(
        params.encoder,
        device=params.device,
        batch_size=params.batch_size,
        max_length=params.embed_max_length or params.max_length,
        pooling=params.pooling,
    )


class EmbeddingFiles:
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
        return np.memmap(storage.local_file(path), dtype=np.float32, mode="r", shape=(n, dim))


class EmbeddingWriter:
    def __init__(self, files: EmbeddingFiles) -> None:
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
        record_file(tc, self.files.vectors)
        tc.record(self._rows.close())

    def abort(self) -> None:
        self._out.close()
        self._tmp.unlink(missing_ok=True)
        self._rows.abort()
