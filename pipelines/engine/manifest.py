"""The `_manifest.json` of a shard set and the per-task records it is assembled from.

The pydantic models here are the schema: `docs/manifest.schema.json` is generated from `Manifest` and a
test keeps the two in step.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from thresher.pipelines.engine.atomic import write_json
from thresher.pipelines.engine.errors import ThresherError

SCHEMA_VERSION = 1
MANIFEST_NAME = "_manifest.json"

# Libraries whose versions change results; recorded so a run can be reproduced.
KEY_LIBRARIES = (
    "thresher",
    "pyarrow",
    "numpy",
    "xxhash",
    "datasketch",
    "datasketches",
    "fasttext-wheel",
    "kenlm",
    "sentencepiece",
    "tokenizers",
    "torch",
    "transformers",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRecord(_Model):
    """One file read or written by a task."""

    path: str = Field(
        description="Path relative to the shard set's directory for outputs; absolute for inputs."
    )
    size: int = Field(description="Size in bytes.")
    digest: str = Field(description="Content digest, 'xxh3-128:<hex>'.")
    rows: int | None = Field(default=None, description="Row count, for Parquet files.")


class RowCounts(_Model):
    """Row accounting of one task or a whole stage: rows_in == rows_out + sum(dropped.values())."""

    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = Field(default_factory=dict, description="Dropped rows by reason.")
    tokens: int | None = Field(
        default=None,
        description="Tokens of the rows out (the sum of their n_tokens), once a tokenize stage has counted "
        "them; null before.",
    )

    def add(self, other: RowCounts) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        if other.tokens is not None:
            self.tokens = (self.tokens or 0) + other.tokens
        for reason, n in other.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_out + sum(self.dropped.values())


class TaskRecord(_Model):
    """Written when a task finishes; its existence (with a matching fingerprint) marks the task done."""

    phase: str
    index: int
    key: str = Field(description="Stable task name, e.g. the shard or bucket it works on.")
    fingerprint: str = Field(description="Digest of (stage, params, seed, task args, input digests).")
    inputs: list[FileRecord]
    outputs: list[FileRecord]
    counts: RowCounts | None = Field(default=None, description="Row accounting, for tasks that map shards.")
    seconds: float
    extra: dict[str, Any] = Field(default_factory=dict, description="Stage-specific results of the task.")


class InputLineage(_Model):
    """Where a stage's input came from; follow `path` to walk the lineage back to the raw files."""

    path: str
    stage: str | None = Field(default=None, description="Stage that produced the input; null for raw data.")
    manifest_digest: str | None = Field(default=None, description="Digest of the input's _manifest.json.")
    files: list[FileRecord] = Field(default_factory=list, description="Raw input files (ingest only).")
    limit: int | None = Field(
        default=None,
        description="A trial run (--limit N): only the first N rows of each input were read; null for a "
        "full run.",
    )


class Manifest(_Model):
    """Everything needed to trust, reproduce and build on a shard set."""

    schema_version: int = SCHEMA_VERSION
    stage: str
    stage_version: str
    params: dict[str, Any] = Field(description="Resolved stage parameters, defaults included.")
    seed: int
    fingerprint: str = Field(description="Digest of (stage, version, params, seed, input digests).")
    input: InputLineage
    tasks: list[TaskRecord]
    totals: RowCounts
    outputs: list[FileRecord] = Field(description="Output shards, in order.")
    artifacts: list[FileRecord] = Field(default_factory=list, description="Model files and other artifacts.")
    seconds: float = Field(description="Sum of task seconds (CPU-side work, not wall time).")
    summary: dict[str, Any] = Field(
        default_factory=dict,
        description="Stage-specific figures later stages or reports read without the data.",
    )
    versions: dict[str, str] = Field(description="thresher and key library versions.")
    _outputs_by_name: dict[str, FileRecord] | None = PrivateAttr(default=None)

    def write(self, directory: Path) -> None:
        write_json(directory / MANIFEST_NAME, self.model_dump(mode="json"))

    def output(self, name: str) -> FileRecord | None:
        """The listed output shard of that file name, if any."""
        if self._outputs_by_name is None:
            self._outputs_by_name = {f.path: f for f in self.outputs}
        return self._outputs_by_name.get(name)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        try:
            return cls.model_validate_json(path.read_bytes())
        except (ValueError, OSError) as exc:
            first = str(exc).splitlines()[0]
            raise ThresherError(f"{path}: not a valid thresher manifest ({first})") from None


def library_versions() -> dict[str, str]:
    versions = {}
    for name in KEY_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def manifest_json_schema() -> str:
    return json.dumps(Manifest.model_json_schema(), indent=2, sort_keys=True) + "\n"
