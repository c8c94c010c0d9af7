"""Writing a shard set out of thresher: JSON lines (plain, gzip, zstd), one Parquet file, a `datasets`
save_to_disk folder, or training-ready tokens (`tokens`: a Megatron indexed dataset, `.bin` + `.idx`,
documents shuffled by a seed; its layout is in `tokens`), with a lineage sidecar saying what was exported
from what."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.pipelines.engine import atomic, storage
from thresher.pipelines.engine.atomic import atomic_path
from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.errors import ThresherError, UsageError, filesystem_error
from thresher.pipelines.engine.manifest import MANIFEST_NAME, library_versions
from thresher.pipelines.engine.shards import Shard, ShardSet, iter_batches
from thresher.pipelines.io.tokens import TokenFiles, TokenSummary, write_tokens
from thresher.pipelines.report.inspect import lineage

FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet", "hf", "tokens")
SIDECAR_SUFFIX = ".lineage.json"


@dataclass
class Exported:
    rows: int
    output: Path
    sidecar: Path
    tokens: TokenSummary | None = None  # for the tokens format


@dataclass(frozen=True)
class TokenOptions:
    """What the tokens format needs: the tokenizer (a tokenizers JSON file or a transformers folder), the
    end-of-document id when not the tokenizer's own, the shuffle seed and the text column."""

    tokenizer: Path
    eos_id: int | None = None
    seed: int = 0
    text_column: str = "text"


def sidecar_for(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


def format_for(output: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise UsageError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
        return fmt
    for suffix in ("jsonl.gz", "jsonl.zst", "jsonl", "parquet"):
        if output.name.endswith("." + suffix):
            return suffix
    raise UsageError(
        f"{output}: cannot tell the format from the name; end it in .jsonl, .jsonl.gz, .jsonl.zst or "
        ".parquet, or pass --format hf for a `datasets` folder (--format tokens for token ids)"
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


def _check_columns(shard_set: ShardSet, columns: Sequence[str], flag: str = "--columns") -> None:
    for shard in shard_set.shards:
        names = shard.schema.names if shard.schema is not None else []
        missing = [c for c in columns if c not in names]
        if missing:
            raise UsageError(
                f"{shard.path}: no column {', '.join(repr(c) for c in missing)} for {flag}; "
                f"columns are: {', '.join(names)}"
            )


def _one_schema(shard_set: ShardSet, fmt: str) -> None:
    first = shard_set.shards[0]
    for shard in shard_set.shards[1:]:
        if not shard.schema.equals(first.schema):  # type: ignore[union-attr]
            raise ThresherError(
                f"{shard.path}: columns differ from {first.name}'s ({_columns(shard)} vs "
                f"{_columns(first)}); {fmt} output needs one schema: export to JSON lines instead"
            )


def _batches(shard_set: ShardSet, columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
    for shard in shard_set.shards:
        yield from iter_batches(shard.path, columns=columns)


def export(
    input_dir: Path,
    output: Path,
    fmt: str | None = None,
    *,
    columns: Sequence[str] | None = None,
    force: bool = False,
    tokens: TokenOptions | None = None,
) -> Exported:
    """Export every row in shard order (only `columns`, in that order, when given); for the tokens
    format, every row's tokens in a seeded shuffled order (`tokens` says how)."""
    fmt = format_for(output, fmt)
    if (fmt == "tokens") != (tokens is not None):
        raise UsageError(
            "--format tokens needs --tokenizer"
            if tokens is None
            else f"--tokenizer, --eos-id and --seed go with --format tokens, not {fmt}"
        )
    if tokens is not None and columns:
        raise UsageError("--columns does not go with --format tokens; name the text with --text-column")
    shard_set = ShardSet.open(input_dir, required_columns=())
    columns = list(columns) if columns else None
    if columns:
        _check_columns(shard_set, columns)
    if fmt in ("hf", "parquet") and not columns:
        _one_schema(shard_set, fmt)
    files: TokenFiles | None = None
    if tokens is not None:
        _check_columns(shard_set, [tokens.text_column], flag="--text-column")
        files = TokenFiles.for_output(output)
        output = files.bin
    sidecar = sidecar_for(output)
    existing = [output, sidecar, *([files.idx] if files else [])]
    if any(p.exists() for p in existing) and not force:
        raise UsageError(f"{output}: already exists; pass --force to replace it, or choose another path")
    landed = False
    summary: TokenSummary | None = None
    try:
        if files is not None and tokens is not None:
            summary = _export_tokens(shard_set, files, tokens)
            rows = summary.documents
        elif fmt == "hf":
            rows = _export_hf(shard_set, output, columns, force)
        else:
            with atomic_path(output) as tmp:
                rows = (_write_parquet if fmt == "parquet" else _write_jsonl)(shard_set, tmp, fmt, columns)
        landed = True
        extra = _token_lineage(files, tokens, summary) if files and tokens and summary else None
        exported_columns = [tokens.text_column] if tokens is not None else columns
        _write_sidecar(shard_set, output, sidecar, fmt, exported_columns, rows, extra)
    except OSError as exc:
        if landed:  # an export without its sidecar is a partial output: take it away too
            storage.remove_tree(output) if output.is_dir() else storage.remove(output)
            if files is not None:
                storage.remove(files.idx)
        raise filesystem_error(exc, output) from None
    return Exported(rows, output, sidecar, summary)


def _export_tokens(shard_set: ShardSet, files: TokenFiles, options: TokenOptions) -> TokenSummary:
    from thresher.pipelines.stages.tokenize.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(options.tokenizer)
    eos_id = options.eos_id if options.eos_id is not None else tokenizer.eos_id
    if eos_id is None:
        raise UsageError(f"--tokenizer {options.tokenizer}: names no end-of-document token; pass --eos-id ID")
    if not 0 <= eos_id < tokenizer.vocab_size:
        raise UsageError(f"--eos-id {eos_id}: outside the tokenizer's {tokenizer.vocab_size:,} ids")
    return write_tokens(
        shard_set, files, tokenizer, eos_id=eos_id, seed=options.seed, text_column=options.text_column
    )


def _token_lineage(files: TokenFiles, options: TokenOptions, summary: TokenSummary) -> dict[str, object]:
    from thresher.pipelines.engine.plan import path_digest

    return {
        "tokens": {
            "index": files.idx.name,
            "index_digest": file_digest(files.idx),
            "layout": "megatron-mmap-indexed-dataset",
            "dtype": summary.dtype,
            "documents": summary.documents,
            "tokens": summary.tokens,
            "eos_id": summary.eos_id,
            "seed": options.seed,
            "order": "numpy.random.default_rng(seed).permutation(rows), rows in shard order",
            "text_column": options.text_column,
            "tokenizer": str(options.tokenizer.resolve()),
            "tokenizer_digest": path_digest(options.tokenizer),
        }
    }


def _write_jsonl(shard_set: ShardSet, tmp: Path, fmt: str, columns: list[str] | None) -> int:
    rows = 0
    with open(tmp, "wb") as raw, _compressed(raw, fmt) as f:
        for batch in _batches(shard_set, columns):
            for row in batch.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False, default=str).encode() + b"\n")
            rows += batch.num_rows
    return rows


def _write_parquet(shard_set: ShardSet, tmp: Path, fmt: str, columns: list[str] | None) -> int:
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for batch in _batches(shard_set, columns):
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema, compression="zstd")
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is None:  # every shard empty: still a valid file with the set's columns
            schema = shard_set.shards[0].schema
            assert schema is not None
            pq.write_table(schema.empty_table().select(columns or schema.names), tmp)
    finally:
        if writer is not None:
            writer.close()
    return rows


def _export_hf(shard_set: ShardSet, output: Path, columns: list[str] | None, force: bool) -> int:
    if not storage.is_remote(output):
        return _export_hf_local(shard_set, output, columns, force)
    # Saved locally, then uploaded: the folder appears on the store only once it is whole.
    with tempfile.TemporaryDirectory(dir=storage.local_tmp_dir()) as folder:
        local = Path(folder) / output.name
        rows = _export_hf_local(shard_set, local, columns, force=True)
        if force and output.exists():
            storage.remove_tree(output)
        output.fs.put(str(local), output.path, recursive=True)  # type: ignore[attr-defined]
    return rows


def _export_hf_local(shard_set: ShardSet, output: Path, columns: list[str] | None, force: bool) -> int:
    import datasets

    # thresher reports progress itself; the library's bars would interleave with log lines under cron.
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    files = [str(s.path) for s in shard_set.shards]
    tmp = output.with_name(f".{output.name}.tmp")
    cache = output.parent / f".{output.name}.cache"
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            ds = datasets.Dataset.from_parquet(files, columns=columns, cache_dir=str(cache))
            ds.save_to_disk(str(tmp))
        except datasets.exceptions.DatasetGenerationError as exc:
            # The library wraps a full disk or a read-only folder in its own error; unwrap it.
            if isinstance(exc.__cause__, OSError):
                raise exc.__cause__ from None
            raise
        if force and output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return len(ds)


def _write_sidecar(
    shard_set: ShardSet,
    output: Path,
    sidecar: Path,
    fmt: str,
    columns: list[str] | None,
    rows: int,
    extra: dict[str, object] | None = None,
) -> None:
    """What this file is: the shard set it came from (and that set's manifest digest), the stages back to
    the raw input with what each kept and dropped, and the exported file's own digest."""
    manifest = shard_set.root / MANIFEST_NAME
    atomic.write_json(
        sidecar,
        {
            "exported": output.name,
            "format": fmt,
            "rows": rows,
            "columns": columns or (shard_set.shards[0].schema.names if shard_set.shards[0].schema else []),
            "digest": None if output.is_dir() else file_digest(output),
            "source": {
                "path": str(shard_set.root.resolve()),
                "manifest_digest": file_digest(manifest) if manifest.exists() else None,
                "stage": shard_set.manifest.stage if shard_set.manifest else None,
            },
            "lineage": [
                {"path": step.path, "stage": step.stage, "counts": step.counts.model_dump()}
                for step in lineage(shard_set.root)
            ],
            "versions": library_versions(),
            **(extra or {}),
        },
    )


def _columns(shard: Shard) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in shard.schema or [])
