"""Tokenize: count each document's tokens under a local tokenizer and add them as an `n_tokens` column.

The tokenizer (a tokenizers JSON file or a transformers folder, see `tokenizer`) loads once per worker
process. No row is dropped. The manifest's summary holds the total (`tokens`), so `inspect`, `mix` or a
training budget can read it without opening the shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, MapStage
from thresher.pipelines.engine.shards import TOKENS_COLUMN
from thresher.pipelines.engine.stage import PhaseSpec, StageParams
from thresher.pipelines.stages.tokenize.tokenizer import LocalTokenizer, check_path, load_tokenizer

TOKENS_COUNTER = "tokens"


class TokenizeParams(StageParams):
    text_column: str = Field("text", description="Column holding the text.")
    tokenizer: str = Field(
        ...,
        description="A tokenizers JSON file (tokenizer.json) or a transformers tokenizer folder; "
        "loaded offline, never with remote code.",
    )


class Tokenize(MapStage[TokenizeParams]):
    name = "tokenize"
    summary = "Count each document's tokens under a local tokenizer: adds an int n_tokens column."
    example = "thresher tokenize data/05-quality data/06-tokens --tokenizer models/tokenizer.json"
    command = ("tokenize",)
    phase_name = "count"
    # Encoding is the work here, and tokenizers spreads a batch over its Rust threads: a smaller batch
    # than the engine's default keeps the list of Python ids per batch small.
    batch_rows = 2048

    tokens: LocalTokenizer

    def writes_dropped(self) -> bool:
        return False

    def _tokenizer_path(self) -> Path:
        return check_path(storage.location(self.params.tokenizer))

    def side_inputs(self) -> list[Path]:
        # Its digest joins the fingerprint: replacing the tokenizer reruns every task.
        return [self._tokenizer_path()]

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        for shard in self.ctx.input.shards:
            if shard.schema is not None and TOKENS_COLUMN in shard.schema.names:
                raise UsageError(
                    f"{shard.path}: already has a '{TOKENS_COLUMN}' column (tokenized before?); "
                    "tokenize the set it came from instead"
                )
        # Loaded here too, once in the planning process, so a bad tokenizer is one line before any task.
        load_tokenizer(self._tokenizer_path())
        return super().phases()

    def setup(self) -> None:
        self.tokens = load_tokenizer(self._tokenizer_path())

    def map_batch(self, batch: pa.RecordBatch, offset: int) -> BatchOutcome:
        counts = self.tokens.count(batch.column(self.params.text_column))
        table = pa.Table.from_batches([batch]).append_column(TOKENS_COLUMN, pa.array(counts, pa.int64()))
        return BatchOutcome(table, None, {TOKENS_COUNTER: int(counts.sum())})

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        tokens = self.counters.get(TOKENS_COUNTER, 0)
        rows = self.totals.rows_out
        return {
            "tokens": tokens,
            "tokens_per_document": round(tokens / rows, 3) if rows else 0.0,
            "tokenizer": str(storage.location(self.params.tokenizer).resolve()),
        }
