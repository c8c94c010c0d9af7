"""PII: find emails, phone numbers, IP addresses and Luhn-valid card numbers; redact, drop or tag.

- redact: each match is replaced in the text by a typed placeholder (<EMAIL>, <PHONE>, <IP_ADDRESS>,
  <CREDIT_CARD>); no row is dropped.
- drop: documents with any match go to `_dropped/` (reason `pii`, detail: matches per kind).
- tag: the text is left as is; `pii_count` and `pii_kinds` columns say what was found.
The manifest counts matches and documents per kind.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_shard
from thresher.pipelines.engine.shards import ID_COLUMN, dropped_table
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.pii.patterns import KINDS, scan

PiiKind = Literal["email", "phone", "ip", "credit_card"]
TAG_COLUMNS = ("pii_count", "pii_kinds")
REASON = "pii"


class PiiParams(StageParams):
    text_column: str = Field("text", description="Column holding the text.")
    mode: Literal["redact", "drop", "tag"] = Field(
        "redact",
        description="redact: replace matches by placeholders; drop: drop documents; tag: add columns.",
    )
    kinds: list[PiiKind] = Field(list(KINDS), description="Kinds of PII to look for.")


class Pii(Stage):
    name = "pii"
    version = "1"
    Params = PiiParams
    summary = "Find emails, phones, IPs and Luhn-valid card numbers; redact them, drop or tag the documents."
    example = "thresher pii data/02-heuristics data/03-pii --mode redact"
    command = ("pii",)
    params: PiiParams

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        if not self.params.kinds:
            raise UsageError("--kinds: name at least one of email, phone, ip, credit_card")
        if self.params.mode == "tag":
            for shard in self.ctx.input.shards:
                clash = [c for c in TAG_COLUMNS if shard.schema is not None and c in shard.schema.names]
                if clash:
                    raise UsageError(
                        f"{shard.path}: already has column '{clash[0]}'; --mode tag would overwrite it"
                    )
        return [
            PhaseSpec(
                "redact", [TaskSpec(s.name, (str(s.path),), {}, s.num_rows) for s in self.ctx.input.shards]
            )
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        matches: Counter[str] = Counter({kind: 0 for kind in p.kinds})
        documents: Counter[str] = Counter({kind: 0 for kind in p.kinds})
        with_pii = 0

        def handle(batch: pa.RecordBatch) -> BatchOutcome:
            nonlocal with_pii
            found = scan(batch.column(p.text_column), p.kinds)
            matches.update(found.totals)
            for kind, counts in found.per_doc.items():
                documents[kind] += int(np.count_nonzero(counts))
            hit = found.any
            with_pii += int(hit.sum())
            if p.mode == "redact":
                index = batch.schema.get_field_index(p.text_column)
                return BatchOutcome(batch.set_column(index, batch.schema.field(index), found.redacted))
            if p.mode == "tag":
                total = np.sum(list(found.per_doc.values()), axis=0).astype(np.int32)
                kinds = pa.array([found.kinds_of(i) for i in range(batch.num_rows)], pa.list_(pa.string()))
                table = pa.Table.from_batches([batch])
                table = table.append_column("pii_count", pa.array(total, pa.int32()))
                return BatchOutcome(table.append_column("pii_kinds", kinds))
            if not hit.any():
                return BatchOutcome(batch)
            rows = np.nonzero(hit)[0]
            details = [
                ",".join(f"{kind}={int(found.per_doc[kind][i])}" for kind in found.kinds_of(int(i)))
                for i in rows
            ]
            dropped = dropped_table(batch.column(ID_COLUMN).take(pa.array(rows)), self.name, REASON, details)
            return BatchOutcome(batch.filter(pa.array(~hit)), dropped)

        result = map_shard(Path(task.inputs[0]), tc, handle, writes_dropped=p.mode == "drop")
        result.extra.update(
            {"matches": dict(matches), "documents": dict(documents), "documents_with_pii": with_pii}
        )
        return result

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        matches: Counter[str] = Counter()
        documents: Counter[str] = Counter()
        with_pii = 0
        for r in records:
            matches.update(r.extra.get("matches", {}))
            documents.update(r.extra.get("documents", {}))
            with_pii += r.extra.get("documents_with_pii", 0)
        kinds = [k for k in KINDS if k in self.params.kinds]
        return {
            "mode": self.params.mode,
            "matches_by_kind": {k: matches.get(k, 0) for k in kinds},
            "documents_by_kind": {k: documents.get(k, 0) for k in kinds},
            "documents_with_pii": with_pii,
        }
