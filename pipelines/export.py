"""Writing a shard set out of thresher: JSON lines (plain, gzip, zstd) or a `datasets` save_to_disk folder."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import IO

from thresher.pipelines.atomic import atomic_path
from thresher.pipelines.errors import ThresherError, UsageError
from thresher.pipelines.shards import Shard, ShardSet, iter_batches

FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "hf")


def format_for(output: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise UsageError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
        return fmt
    for suffix in ("jsonl.gz", "jsonl.zst", "jsonl"):
        if output.name.endswith("." + suffix):
            return suffix
    raise UsageError(
        f"{output}: cannot tell the format from the name; end it in .jsonl, .jsonl.gz or "
        ".jsonl.zst, or pass --format hf for a `datasets` folder"
    )


def _compressed(raw: IO[bytes], fmt: str) -> IO[bytes]:
    if fmt == "jsonl.gz":
        # mtime=0 and no file name keep the gzip header, and so the file, identical across runs; the
        # default name would be the temp file's, which holds the process id.
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)  # type: ignore[return-value]
    if fmt == "jsonl.zst":
        import zstandard

        return zstandard.ZstdCompressor().stream_writer(raw, closefd=False)  # type: ignore[return-value]
    return raw


def export(input_dir: Path, output: Path, fmt: str | None = None) -> int:
    """Export every row in shard order. Returns the number of rows written."""
    shard_set = ShardSet.open(input_dir, required_columns=())
    fmt = format_for(output, fmt)
    if output.exists():
        raise UsageError(f"{output}: already exists; remove it or choose another path")
    if fmt == "hf":
        return _export_hf(shard_set, output)
    rows = 0
    with atomic_path(output) as tmp, open(tmp, "wb") as raw, _compressed(raw, fmt) as f:
        for shard in shard_set.shards:
            for batch in iter_batches(shard.path):
                for row in batch.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False, default=str).encode() + b"\n")
                rows += batch.num_rows
    return rows


def _export_hf(shard_set: ShardSet, output: Path) -> int:
    import datasets

    first = shard_set.shards[0]
    for shard in shard_set.shards[1:]:
        if not shard.schema.equals(first.schema):  # type: ignore[union-attr]
            raise ThresherError(
                f"{shard.path}: columns differ from {first.name}'s ({_columns(shard)} vs "
                f"{_columns(first)}); a `datasets` folder needs one schema: export to JSON lines instead"
            )
    files = [str(s.path) for s in shard_set.shards]
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        ds = datasets.Dataset.from_parquet(files, cache_dir=str(output.parent / f".{output.name}.cache"))
        ds.save_to_disk(str(tmp))
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(output.parent / f".{output.name}.cache", ignore_errors=True)
    return len(ds)


def _columns(shard: Shard) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in shard.schema or [])
