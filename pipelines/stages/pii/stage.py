"""PII: find emails, phone numbers, IP addresses and Luhn-valid card numbers; redact, drop or tag.

- redact: each match is replaced in the text by a typed placeholder (<EMAIL>, <PHONE>, <IP_ADDRESS>,
  <CREDIT_CARD>); no row is dropped.
- drop: documents with any match go to `_dropped/` (reason `pii`, detail: matches per kind).
- tag: the text is left as is and no row is dropped; `pii_count` (matches of every kind), `pii_kinds`
  (the kinds found) and, per kind looked for, `pii_<kind>_count` (e.g. `pii_email_count`) say what was
  found, so `thresher filter --where "pii_count == 0"` keeps what drop mode keeps, and
  `--where "pii_credit_card_count == 0"` drops on one kind only. Redact rather than tag when the text
  is to be cleaned: a filter can select rows, not rewrite them.
The manifest counts matches and documents per kind (in tag mode also `would_drop`, by reason).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, MapStage
from thresher.pipelines.engine.stage import PhaseSpec, StageParams
from thresher.pipelines.engine.tagging import WOULD_DROP
from thresher.pipelines.stages.pii.patterns import KINDS, scan

PiiKind = Literal["email", "phone", "ip", "credit_card"]
TAG_COLUMNS = ("pii_count", "pii_kinds")
REASON = "pii"


class PiiParams(StageParams):
    text_column: str = Field("text", description="Column holding the text.")
    mode: Literal["redact", "drop", "tag"] = Field(
        "redact",
        description="redact: replace matches by placeholders; drop: drop documents; tag: drop nothing, "
        "leave the text, add pii_count, pii_kinds and pii_<kind>_count.",
    )
    kinds: list[PiiKind] = Field(list(KINDS), description="Kinds of PII to look for.")


class Pii(MapStage[PiiParams]):
    name = "pii"
    summary = "Find emails, phones, IPs and Luhn-valid card numbers; redact them, drop or tag the documents."
    example = "thresher pii data/02-heuristics data/03-pii --mode redact"
    command = ("pii",)
    phase_name = "redact"
    version = "2"  # 2: tag mode adds a count column per kind

    def writes_dropped(self) -> bool:
        return self.params.mode == "drop"

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        if not self.params.kinds:
            raise UsageError("--kinds: name at least one of email, phone, ip, credit_card")
        if self.params.mode == "tag":
            columns = [*TAG_COLUMNS, *(kind_column(k) for k in self.params.kinds)]
            for shard in self.ctx.input.shards:
                clash = [c for c in columns if shard.schema is not None and c in shard.schema.names]
                if clash:
                    raise UsageError(
                        f"{shard.path}: already has column '{clash[0]}'; --mode tag would overwrite it"
                    )
        return super().phases()

    def map_batch(self, batch: pa.RecordBatch, offset: int) -> BatchOutcome:
        p = self.params
        found = scan(batch.column(p.text_column), p.kinds)
        hit = found.any
        counts = {"documents_with_pii": int(hit.sum())}
        for kind in p.kinds:
            counts[f"matches.{kind}"] = found.totals.get(kind, 0)
            counts[f"documents.{kind}"] = int(np.count_nonzero(found.per_doc[kind]))
        if p.mode == "redact":
            index = batch.schema.get_field_index(p.text_column)
            redacted = batch.set_column(index, batch.schema.field(index), found.redacted)
            return BatchOutcome(redacted, None, counts)
        if p.mode == "tag":
            total = np.sum(list(found.per_doc.values()), axis=0).astype(np.int32)
            kinds = pa.array([found.kinds_of(i) for i in range(batch.num_rows)], pa.list_(pa.string()))
            table = pa.Table.from_batches([batch])
            table = table.append_column("pii_count", pa.array(total, pa.int32()))
            table = table.append_column("pii_kinds", kinds)
            for kind in (k for k in KINDS if k in p.kinds):
                table = table.append_column(kind_column(kind), pa.array(found.per_doc[kind], pa.int32()))
            counts[f"{WOULD_DROP}.{REASON}"] = counts["documents_with_pii"]
            return BatchOutcome(table, None, counts)
        details = [
            ",".join(f"{kind}={int(found.per_doc[kind][i])}" for kind in found.kinds_of(i)) if h else None
            for i, h in enumerate(hit.tolist())
        ]
        return BatchOutcome.drop_rows(batch, hit, REASON, details, counts)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        kinds = [k for k in KINDS if k in self.params.kinds]
        matches, documents = self.counted("matches"), self.counted("documents")
        summary: dict[str, Any] = {
            "mode": self.params.mode,
            "matches_by_kind": {k: matches.get(k, 0) for k in kinds},
            "documents_by_kind": {k: documents.get(k, 0) for k in kinds},
            "documents_with_pii": self.counters.get("documents_with_pii", 0),
        }
        if self.params.mode == "tag":
            summary["would_drop"] = {REASON: self.counted(WOULD_DROP).get(REASON, 0)}
        return summary


def kind_column(kind: str) -> str:
    """Tag mode's column of one kind's matches per document."""
    return f"pii_{kind}_count"
