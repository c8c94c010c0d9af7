"""Readers for raw inputs: JSON lines (plain, gzip, zstd), Parquet, CSV and `datasets` folders.

Each reader streams Arrow tables of at most `batch_rows` rows and turns format errors into one line that
names the file and, where the format allows, the line.
"""

from __future__ import annotations

import collections
import errno
import gzip
import io
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import ThresherError, UsageError, filesystem_error
from thresher.pipelines.engine.no_pandas import let_pandas_in
from thresher.pipelines.engine.shards import iter_batches
from thresher.pipelines.engine.stage import arrow_threads

JSONL_SUFFIXES = (
    ".jsonl",
    ".ndjson",
    ".json",
    ".jsonl.gz",
    ".ndjson.gz",
    ".json.gz",
    ".jsonl.zst",
    ".ndjson.zst",
    ".json.zst",
)
SUFFIXES = (*JSONL_SUFFIXES, ".parquet", ".csv", ".csv.gz")


def is_hf_dataset(path: Path) -> bool:
    """A folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def expand_inputs(inputs: Sequence[str | Path], output: Path | None = None) -> list[Path]:
    """Files and dataset folders to read, in a stable order: folders are searched for supported files,
    leaving out `output` (an output folder inside an input folder would have a rerun read its own shards).
    An input may be a local path or a URL, and a glob pattern of either (`'s3://b/dump/*.jsonl.zst'`).

    Each real file or folder is read once, however many links or arguments lead to it: a link back up
    the tree (`d/self -> d`) would otherwise be followed until the path grew too long, reading every file
    dozens of times.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    exclude = storage.resolved(output) if output else None
    if exclude is not None and not storage.is_remote(exclude):
        exclude = Path(os.path.realpath(exclude))
    for given in _globbed(inputs):
        path = storage.location(given)
        if not path.exists() and not (not storage.is_remote(path) and path.is_symlink()):
            raise UsageError(f"{path}: input does not exist")
        real = _real_path(path, UsageError)
        if real in seen:
            continue
        if path.is_file() or is_hf_dataset(path):
            seen.add(real)
            found.append(path)
            continue
        files = _inputs_under(path, real, exclude, seen)
        if not files:
            raise ThresherError(f"{path}: no input files here (looked for {', '.join(SUFFIXES)})")
        found.extend(files)
    return found


def _globbed(inputs: Sequence[str | Path]) -> list[str | Path]:
    """Inputs with glob patterns replaced by the files they match (a pattern the shell did not expand:
    quoted, or a URL); a path that exists as written is taken as it is, brackets and all."""
    out: list[str | Path] = []
    for given in inputs:
        text = str(given)
        if not storage.has_magic(text) or storage.location(text).exists():
            out.append(given)
            continue
        matches = storage.glob(text)
        if not matches:
            raise UsageError(f"{text}: no input matches this pattern")
        out.extend(matches)
    return out


def _real_path(path: Path, error: type[ThresherError] = ThresherError) -> Path:
    """The path with every link resolved; a link loop or a link to nothing is an error naming it."""
    if storage.is_remote(path):
        return path  # object stores have no links
    try:
        return Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{path}: symbolic link loop ({os.strerror(exc.errno)})") from None
        if path.is_symlink():
            raise error(f"{path}: symbolic link to {os.readlink(path)}, which does not exist") from None
        raise filesystem_error(exc, path) from None


def _inputs_under(folder: Path, real: Path, output: Path | None, seen: set[Path]) -> list[Path]:
    # Depth first in name order, which is sorted path order. A saved dataset is one input, not its
    # .json metadata; names starting with "." or "_" (a shard set's _dropped/, _thresher/, _manifest.json)
    # are not data, so a shard set folder can be ingested again.
    seen.add(real)
    found: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith((".", "_")):
            continue
        is_dir = p.is_dir()
        if not (is_dir or p.name.endswith(SUFFIXES)):
            continue
        real_p = _real_path(p)
        if real_p in seen or real_p == output:
            continue
        if is_hf_dataset(p):
            seen.add(real_p)
            found.append(p)
        elif is_dir:
            found.extend(_inputs_under(p, real_p, output, seen))
        elif p.is_file():
            seen.add(real_p)
            found.append(p)
    return found


def _open_text(path: Path) -> IO[bytes]:
    raw = storage.open_input(path, "rb")
    if path.name.endswith(".gz"):
        return gzip.open(raw, "rb")  # type: ignore[return-value]
    if path.name.endswith(".zst"):
        # pyarrow's stream, not zstandard's stream_reader: that one ends quietly at a cut-short file, so a
        # truncated download would be ingested in part without a word.
        return io.BufferedReader(pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd"))
    return raw


def _jsonl_lines(path: Path, batch_rows: int) -> Iterator[pa.Table]:
    """JSON lines parsed one line at a time: slow, but it can name the line at fault."""
    rows: list[dict[str, object]] = []
    linenos: list[int] = []  # line of each row in `rows`: blank lines hold no row
    schema: pa.Schema | None = None
    with _open_text(path) as f:
        try:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ThresherError(f"{path}:{lineno}: invalid UTF-8 at byte {exc.start}") from None
                try:
                    # Without its newline, a line cut short fails on this line, not at column 1 of the next.
                    obj = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    raise ThresherError(
                        f"{path}:{lineno}: malformed JSON ({exc.msg}, column {exc.colno})"
                    ) from None
                if not isinstance(obj, dict):
                    raise ThresherError(
                        f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}"
                    )
                rows.append(obj)
                linenos.append(lineno)
                if len(rows) >= batch_rows:
                    table, schema = _jsonl_table(rows, schema, path, linenos)
                    yield table
                    rows, linenos = [], []
        except (OSError, EOFError, ValueError) as exc:
            if isinstance(exc, ThresherError):
                raise
            raise ThresherError(f"{path}: cannot decompress or read ({exc})") from None
    if rows:
        yield _jsonl_table(rows, schema, path, linenos)[0]


# Bytes of JSON lines each Arrow thread parses at a time.
JSON_BLOCK_BYTES = 1 << 20


def _jsonl(path: Path, batch_rows: int) -> Iterator[pa.Table]:
    """JSON lines parsed by Arrow, `batch_rows` rows at a time, with the column types and checks of the
    line parser (`_jsonl_lines`), so the shards come out the same.

    Arrow stops at a bad line without naming it, and at a batch whose types do not join (a key holding
    other types than before). The line parser then reads the file from the start, passing over the rows
    already handed on: it names the bad line, or raises the error it always raised."""
    handed = 0
    try:
        for table in _jsonl_arrow(path, batch_rows):
            yield table
            handed += table.num_rows
        return
    except (pa.ArrowException, OSError, EOFError, ValueError):
        pass
    for table in _jsonl_lines(path, batch_rows):
        if handed >= table.num_rows:
            handed -= table.num_rows
            continue
        yield table.slice(handed)
        handed = 0


def _jsonl_arrow(path: Path, batch_rows: int) -> Iterator[pa.Table]:
    """Arrow's streaming reader while it can be sure its tables are the batch reader's
    (`_jsonl_batches`); from the first doubt on, the batch reader itself, from the first row not yet
    handed on and with the schema handed on so far."""
    handed = 0
    schema: pa.Schema | None = None
    try:
        for table in _jsonl_stream(path, batch_rows):
            yield table
            handed += table.num_rows
            schema = table.schema
        return
    except (pa.ArrowException, OSError, EOFError, ValueError):
        pass
    yield from _jsonl_batches(path, batch_rows, skip=handed, schema=schema)


def _jsonl_stream(path: Path, batch_rows: int) -> Iterator[pa.Table]:
    """The whole file through one streaming reader, cut again into tables of `batch_rows` rows.

    The batch reader infers each batch's types from that batch alone. The streaming reader fixes them
    from its first block and then refuses what does not fit: a new key, a value where the first block
    had only nulls, a float where it had integers. So the first block is made the first batch exactly
    (or all of the first batch it can hold), and whatever the streaming reader refuses goes back to the
    batch reader. What it accepts (an integer in a float column, a key missing) the batch reader would
    have cast to the same values."""
    options = pajson.ReadOptions(block_size=JSON_BLOCK_BYTES, use_threads=arrow_threads())
    with _open_text(path) as f:
        blocks = _LineBlocks(f, JSON_BLOCK_BYTES, first_lines=batch_rows)
        first = blocks.peek()
        # Arrow reads strings that look like ISO 8601 dates as timestamps; the line parser keeps them as
        # the strings they are. A failure here (blank or empty first block) goes to the batch reader.
        inferred = pajson.read_json(io.BytesIO(first), read_options=options).schema
        schema = pa.schema([_timestamps_as_strings(f) for f in inferred])
        parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
        reader = pajson.open_json(blocks, read_options=options, parse_options=parse)
        try:
            held: list[pa.RecordBatch] = []
            held_rows = 0
            for batch in reader:
                # A line holding two objects, a blank line or an object over two lines makes rows and
                # lines differ: the batch reader skips blank lines, the line parser names the others.
                if batch.num_rows != blocks.lines.popleft():
                    raise ValueError("rows and lines differ")
                # Arrow does not check that strings are UTF-8; full validation does, quickly.
                batch.validate(full=True)
                held.append(batch)
                held_rows += batch.num_rows
                while held_rows >= batch_rows:
                    table = pa.Table.from_batches(held, schema=schema)
                    # One chunk per column, as the line parser builds it: the Parquet writer's pages (and
                    # so the shards' bytes) follow the chunks it is handed.
                    yield table.slice(0, batch_rows).combine_chunks()
                    held = table.slice(batch_rows).to_batches()
                    held_rows -= batch_rows
            if blocks.lines:
                raise ValueError("blocks and batches differ")
            if held_rows:
                yield pa.Table.from_batches(held, schema=schema).combine_chunks()
        finally:
            # Before the file closes under its read-ahead.
            reader.close()


class _LineBlocks:
    """A file handed to Arrow in blocks that each end at a line's end, so that each block is one batch
    of Arrow's streaming reader and its rows can be checked against its lines (`lines`, one count per
    block handed out, oldest first). The first block holds at most `first_lines` lines."""

    def __init__(self, f: IO[bytes], size: int, first_lines: int) -> None:
        self._f = f
        self._rest = b""
        self._eof = False
        self._first: bytes | None = self._next(size, first_lines)
        self.lines: collections.deque[int] = collections.deque()
        self.closed = False

    def peek(self) -> bytes:
        assert self._first is not None
        return self._first

    def _next(self, size: int, max_lines: int | None = None) -> bytes:
        data = self._rest
        while len(data) < size and not self._eof:
            more = self._f.read(size - len(data))
            if not more:
                self._eof = True
            data += more
        end = len(data) if self._eof else data.rfind(b"\n") + 1
        if max_lines is not None and data.count(b"\n", 0, end) >= max_lines:
            end = 0
            for _ in range(max_lines):
                end = data.index(b"\n", end) + 1
        if end == 0 and data:
            # A line longer than a block: Arrow cannot read it whole either, and the batch reader takes
            # over; handed on as it is, its block's count can match no batch.
            end = len(data)
        self._rest = data[end:]
        return data[:end]

    def read(self, size: int = -1) -> bytes:
        if self._first is not None:
            block, self._first = self._first, None
        else:
            block = self._next(size if size > 0 else JSON_BLOCK_BYTES)
        if block:
            lines = block.count(b"\n")
            last = block.rfind(b"\n") + 1
            if last < len(block):
                # The last line without its newline: a row unless it is blank, as in the line parser.
                lines += 1 if block[last:].strip() else 0
                if not self._eof or self._rest:
                    lines = -1  # cut inside a line (longer than a block): no batch matches
            self.lines.append(lines)
        return block

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _jsonl_batches(
    path: Path, batch_rows: int, skip: int = 0, schema: pa.Schema | None = None
) -> Iterator[pa.Table]:
    """JSON lines cut into batches of `batch_rows` lines in Python, each read by Arrow on its own: each
    batch's types are inferred from that batch alone and then joined to the earlier batches' schema the
    way the line parser joins them. `skip` rows already handed on, in `schema`, are passed over."""
    options = pajson.ReadOptions(block_size=JSON_BLOCK_BYTES)
    with _open_text(path) as f:
        while skip:
            read = list(itertools.islice(f, skip))
            if not read:
                return
            skip -= sum(1 for raw in read if not raw.isspace())
        while True:
            # Blank lines hold no row and do not count, as in the line parser.
            lines: list[bytes] = []
            while len(lines) < batch_rows:
                read = list(itertools.islice(f, batch_rows - len(lines)))
                if not read:
                    break
                lines.extend(raw for raw in read if not raw.isspace())
            if not lines:
                return
            data = b"".join(lines)
            table = pajson.read_json(io.BytesIO(data), read_options=options)
            if _has_timestamps(table.schema):
                # Arrow reads strings that look like ISO 8601 dates as timestamps; the line parser keeps
                # them as the strings they are. Read again with those columns as strings.
                as_read = pa.schema([_timestamps_as_strings(f) for f in table.schema])
                parse = pajson.ParseOptions(explicit_schema=as_read)
                table = pajson.read_json(io.BytesIO(data), read_options=options, parse_options=parse)
            # Arrow does not check that strings are UTF-8; full validation does, quickly.
            table.validate(full=True)
            if table.num_rows != len(lines):
                raise ValueError("rows and lines differ")  # a line holding two objects: let the parser say
            table, schema = _join_schema(table, schema)
            # One chunk per column, as the line parser builds it: the Parquet writer's pages (and so the
            # shards' bytes) follow the chunks it is handed.
            yield table.combine_chunks()


def _join_schema(table: pa.Table, schema: pa.Schema | None) -> tuple[pa.Table, pa.Schema]:
    """A batch in the schema of the batches before it, as `_rows_to_table` builds it: the earlier
    columns in their order and types (a null-typed one takes this batch's type), then keys new here."""
    if schema is None:
        return table, table.schema
    names = set(table.schema.names)
    joined = pa.schema(
        [table.schema.field(f.name) if pa.types.is_null(f.type) and f.name in names else f for f in schema]
        + [f for f in table.schema if f.name not in schema.names]
    )
    columns = [
        table[f.name].cast(f.type) if f.name in names else pa.nulls(table.num_rows, f.type) for f in joined
    ]
    return pa.Table.from_arrays(columns, schema=joined), joined


def _has_timestamps(schema: pa.Schema | pa.DataType) -> bool:
    types = [f.type for f in schema] if isinstance(schema, pa.Schema) else [schema]
    for kind in types:
        if pa.types.is_timestamp(kind):
            return True
        if pa.types.is_struct(kind) and _has_timestamps(pa.schema(list(kind))):
            return True
        if pa.types.is_list(kind) and _has_timestamps(kind.value_type):
            return True
    return False


def _timestamps_as_strings(f: pa.Field) -> pa.Field:
    kind = f.type
    if pa.types.is_timestamp(kind):
        return f.with_type(pa.string())
    if pa.types.is_struct(kind):
        return f.with_type(pa.struct([_timestamps_as_strings(c) for c in kind]))
    if pa.types.is_list(kind):
        return f.with_type(pa.list_(_timestamps_as_strings(kind.value_field)))
    return f


def _lines(path: Path, first: int, last: int) -> str:
    return f"{path}:{first}" if first == last else f"{path}:{first}-{last}"


def _jsonl_table(
    rows: list[dict[str, object]], schema: pa.Schema | None, path: Path, linenos: list[int]
) -> tuple[pa.Table, pa.Schema]:
    try:
        return _rows_to_table(rows, schema, _lines(path, linenos[0], linenos[-1]))
    except UnicodeEncodeError:
        # json.loads accepts an unpaired surrogate escape ("\ud800"), which no UTF-8 text can hold; the
        # rows are searched only now, so well-formed input pays nothing for the check.
        bad = next((n for n, row in zip(linenos, rows, strict=True) if not _encodable(row)), None)
        where = f"{path}:{bad}" if bad is not None else _lines(path, linenos[0], linenos[-1])
        raise ThresherError(
            f"{where}: lone surrogate (a \\ud800-\\udfff escape without its pair): not valid Unicode text"
        ) from None


def _encodable(row: dict[str, object]) -> bool:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _rows_to_table(
    rows: list[dict[str, object]], schema: pa.Schema | None, where: str
) -> tuple[pa.Table, pa.Schema]:
    try:
        if schema is None:
            # Columns from every row of the batch: from_pylist would keep the first row's keys alone.
            table = pa.Table.from_struct_array(pa.array(rows))
        else:
            new_keys = {k for r in rows for k in r} - set(schema.names)
            if new_keys or any(pa.types.is_null(f.type) for f in schema):
                # A key null in every earlier row takes its type from the first values seen, and a new key
                # joins the schema: the caller, who knows which columns are wanted, decides if that is
                # an error.
                seen = pa.array(rows).type
                schema = pa.schema(
                    [
                        seen.field(f.name)
                        if pa.types.is_null(f.type) and seen.get_field_index(f.name) >= 0
                        else f
                        for f in schema
                    ]
                    + [f for f in seen if f.name in new_keys]
                )
            table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowException, TypeError) as exc:
        raise ThresherError(f"{where}: a key holds values of different types ({exc})") from None
    return table, table.schema


def _csv(path: Path, batch_rows: int, string_columns: list[str]) -> Iterator[pa.Table]:
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in string_columns})
    try:
        source = storage.readable(path)
        if storage.is_remote(path) and path.name.endswith(".gz"):
            source = pa.CompressedInputStream(pa.PythonFile(source, mode="r"), "gzip")
        reader = pacsv.open_csv(
            source, convert_options=convert, read_options=pacsv.ReadOptions(block_size=8 << 20)
        )
        for batch in reader:
            for start in range(0, batch.num_rows, batch_rows):
                yield pa.Table.from_batches([batch.slice(start, batch_rows)])
    except (pa.ArrowException, OSError) as exc:
        raise ThresherError(f"{path}: cannot read CSV ({str(exc).splitlines()[0]})") from None


def _hf(path: Path, batch_rows: int, split: str | None) -> Iterator[pa.Table]:
    with storage.local_folder(path) as folder:
        yield from _hf_local(path, folder, batch_rows, split)


def _hf_local(path: Path, folder: Path, batch_rows: int, split: str | None) -> Iterator[pa.Table]:
    let_pandas_in()  # ingest keeps it out, but `datasets` imports it
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise ThresherError(f"{path}: cannot load the saved dataset ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        chosen = split or ("train" if "train" in ds else (names[0] if len(names) == 1 else None))
        if chosen not in ds:
            hint = f"no split '{split}'" if split else "no 'train' split"
            raise UsageError(f"{path}: {hint}; pass --split with one of: {', '.join(names)}")
        ds = ds[chosen]
    yield from ds.with_format("arrow").iter(batch_size=batch_rows)


def read_source(
    path: Path, batch_rows: int, *, split: str | None = None, string_columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """Stream one raw input as Arrow tables. A zero-byte file holds no rows, whatever its format, so it
    reads as empty (not as a broken Parquet or CSV file): the caller decides whether empty is allowed."""
    name = path.name
    if not path.exists():
        raise ThresherError(f"{path}: input is gone (deleted or moved after the run started)")
    if path.is_file() and path.stat().st_size == 0:
        return
    if is_hf_dataset(path):
        yield from _hf(path, batch_rows, split)
    elif name.endswith(JSONL_SUFFIXES):
        yield from _jsonl(path, batch_rows)
    elif name.endswith(".parquet"):
        for batch in iter_batches(path, batch_rows=batch_rows):
            yield pa.Table.from_batches([batch])
    elif name.endswith((".csv", ".csv.gz")):
        yield from _csv(path, batch_rows, string_columns or [])
    else:
        raise UsageError(
            f"{path}: unknown input format; supported: {', '.join(SUFFIXES)} or a `datasets` folder"
        )


def parquet_rows(path: Path) -> int | None:
    """Row count when the format stores it, for progress bars."""
    if path.name.endswith(".parquet"):
        try:
            return pq.ParquetFile(storage.readable(path)).metadata.num_rows
        except (pa.ArrowException, OSError):
            return None
    return None
