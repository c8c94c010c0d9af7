"""Where data lives: a local path or a URL (`s3://`, `gs://`, `memory://`, any fsspec protocol).

Engine and stage code handle locations as path objects: `location()` gives a plain `pathlib.Path` for a
local path (so local runs take exactly the code paths they always did) and a `UPath` for a URL, which
answers the same calls (`/`, `exists`, `open`, `glob`, `stat` ...) against the object store. What a path
object cannot do on an object store (a rename, a local file for a library, a lock) is here:

- `commit(tmp, dest)`: a local file becomes `dest` whole: a rename on disk, one upload (a single PUT or a
  multipart upload completed at the end) on an object store, so readers never see a partial object.
- `local_tmp_for(dest)`: where to write the file `commit` takes; next to `dest` on disk, under the local
  temporary folder for a remote `dest`.
- `local_file(path)`: a local copy of a remote input a library can only open by name (a fastText or KenLM
  model), cached by the object's identity so each process downloads it once.

Credentials and endpoints come the way the filesystem library finds them (environment, `~/.aws`, ...),
plus `--storage-option key=value` options, which `configure` records in the environment so worker
processes, Slurm jobs and Ray tasks open the same stores the same way. Options are never printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from thresher.pipelines.engine.errors import ThresherError, UsageError, filesystem_error

if TYPE_CHECKING:
    from upath import UPath

OPTIONS_ENV = "THRESHER_STORAGE_OPTIONS"
TMP_ENV = "THRESHER_TMP_DIR"
_LOCAL_PROTOCOLS = {"", "file", "local"}


# Listings are not cached by default: another process (a pool worker, a Slurm task) writes objects this
# one then looks for, and a cached listing would say they are not there.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "s3": {"use_listings_cache": False},
    "gs": {"use_listings_cache": False},
    "gcs": {"use_listings_cache": False},
}


def _options_for(protocol: str) -> dict[str, Any]:
    """`--storage-option` values for one protocol: plain keys apply to every remote protocol,
    `s3.key=value` to that protocol only."""
    options: dict[str, Any] = dict(_DEFAULTS.get(protocol, {}))
    raw = os.environ.get(OPTIONS_ENV)
    if not raw:
        return options
    for key, value in json.loads(raw).items():
        scope, dot, name = key.partition(".")
        if not dot:
            options[key] = value
        elif scope == protocol:
            options[name] = value
    return options


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings into options; a value that reads as JSON (true, 3, {"a": 1}) is taken as
    that value, anything else as a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"--storage-option {pair!r}: expected key=value (e.g. endpoint_url=http://...)")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def configure(options: Mapping[str, Any] | None = None, tmp_dir: Path | None = None) -> None:
    """Record storage options and the local temporary folder for this process and its children."""
    if options:
        merged = {**json.loads(os.environ.get(OPTIONS_ENV) or "{}"), **options}
        os.environ[OPTIONS_ENV] = json.dumps(merged, sort_keys=True)
    if tmp_dir is not None:
        os.environ[TMP_ENV] = str(Path(tmp_dir).resolve())


# What a worker on another node needs to open the same stores the same way: thresher's options and the
# environment the filesystem libraries read (credentials, endpoint, region, profile).
_FORWARDED_PREFIXES = ("THRESHER_STORAGE_OPTIONS", "THRESHER_TMP_DIR", "AWS_", "GOOGLE_", "FSSPEC_")


def environment() -> dict[str, str]:
    """The storage settings of this process, for workers started elsewhere (Ray tasks)."""
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIXES)}


def _is_upath(value: object) -> bool:
    # upath (with fsspec) is imported on the first URL: a tenth of a second of every local command's start.
    module = sys.modules.get("upath")
    return module is not None and isinstance(value, module.UPath)


def _upath(text: str, **options: Any) -> UPath:
    from upath import UPath

    return UPath(text, **options)


def is_url(value: str | os.PathLike[str]) -> bool:
    text = value if isinstance(value, str) else os.fspath(value) if not _is_upath(value) else str(value)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and len(scheme) > 1


def location(value: str | os.PathLike[str]) -> Path:
    """The path object for a local path or a URL. `file://` URLs are local paths."""
    if _is_upath(value):
        return value if is_remote(value) else Path(value.path)  # type: ignore[attr-defined]
    if isinstance(value, Path):
        return value
    text = str(value)
    if not is_url(text):
        return Path(text)
    protocol = text.partition("://")[0].lower()
    if protocol in _LOCAL_PROTOCOLS:
        return Path(_upath(text).path)
    return _upath(text, **_options_for(protocol))  # type: ignore[return-value]


def is_path(value: object) -> bool:
    """A single location (a string, a local path or a URL path), as opposed to a list of them."""
    return isinstance(value, str | Path) or _is_upath(value)


def is_remote(path: object) -> bool:
    return _is_upath(path) and path.protocol not in _LOCAL_PROTOCOLS  # type: ignore[attr-defined]


def resolved(path: str | os.PathLike[str]) -> Path:
    """An absolute location: local paths resolved against the working folder, URLs as they are."""
    where = location(path)
    return where if is_remote(where) else where.resolve()


def local_tmp_dir() -> Path:
    folder = Path(os.environ.get(TMP_ENV) or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_tmp_for(dest: Path) -> Path:
    # The pid keeps two processes that race on the same task from clobbering each other's temp file.
    if not is_remote(dest):
        return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    return local_tmp_dir() / f".{_local_name('file', dest)}-{dest.name}.{os.getpid()}.tmp"


def _local_name(kind: str, remote: Path) -> str:
    """The name of the local stand-in of a remote file or folder, the same in every process."""
    return f"thresher-{kind}-{hashlib.sha256(str(remote).encode()).hexdigest()[:16]}"


def scratch(work: Path, name: str = "") -> Path:
    """A local folder for one task's own scratch files under a stage's work folder `work` (shuffle
    buckets, a library's training file): `work/name` itself on disk; for a remote `work`, a local folder
    (nothing else reads those files and a library wants them by name), removed with `scratch_root`."""
    if not is_remote(work):
        return work / name if name else work
    return scratch_root(work) / name if name else scratch_root(work)


def scratch_root(work: Path) -> Path:
    """Where `scratch` puts a remote work folder's local files; the stage removes it when it finishes."""
    return local_tmp_dir() / _local_name("scratch", work)


def local_mirror(folder: Path) -> Path:
    """A local folder standing for `folder` where a program needs local files that are kept (Slurm's
    batch scripts and logs): `folder` itself on disk, a folder under the temporary folder (`--tmp-dir`;
    put it on a shared filesystem for a multi-node cluster) for a remote `folder`."""
    if not is_remote(folder):
        return folder
    return local_tmp_dir() / _local_name("local", folder) / folder.name


def commit(tmp: Path, dest: Path) -> None:
    """Make the finished local file `tmp` the file `dest`, all at once, and remove `tmp`."""
    if not is_remote(dest):
        os.replace(tmp, dest)
        return
    try:
        dest.fs.put_file(str(tmp), dest.path)  # type: ignore[attr-defined]
    finally:
        tmp.unlink(missing_ok=True)


def make_dirs(folder: Path) -> None:
    """Create a folder and its parents; object stores have no folders, only key prefixes."""
    if not is_remote(folder):
        folder.mkdir(parents=True, exist_ok=True)


def remove_tree(folder: Path) -> None:
    if is_remote(folder):
        with contextlib.suppress(FileNotFoundError):
            folder.fs.rm(folder.path, recursive=True)  # type: ignore[attr-defined]
    else:
        shutil.rmtree(folder, ignore_errors=True)


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def create_exclusive(path: Path, body: bytes) -> bool:
    """Create a small file unless it exists (O_EXCL on disk, a conditional PUT on an object store)."""
    try:
        if is_remote(path):
            with path.fs.open(path.path, "xb") as f:  # type: ignore[attr-defined]
                f.write(body)
        else:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            with os.fdopen(fd, "wb") as f:
                f.write(body)
    except FileExistsError:
        return False
    return True


def open_input(path: Path, mode: str = "rb", **kwargs: Any) -> IO[Any]:
    """Open a file for streaming reads: local files as usual, objects through ranged reads."""
    if is_remote(path):
        f = path.open(mode, **kwargs)
        if mode == "rb":
            # fsspec's own readline copies a whole block per line; a BufferedReader splits lines in C.
            return io.BufferedReader(f, buffer_size=1 << 20)  # type: ignore[arg-type]
        return f
    return open(path, mode, **kwargs)


def readable(path: str | Path) -> Any:
    """What to hand a reader that takes a file name or a file object (pyarrow, numpy): the path itself
    on disk; for an object, a file object that fetches byte ranges as the reader seeks (a Parquet footer,
    then the column chunks it needs), never the whole object at once."""
    path = location(path)
    if not is_remote(path):
        return path
    return path.open("rb", block_size=8 << 20)


def local_file(path: str | Path) -> Path:
    """A local file holding `path`'s bytes, for libraries that open files by name. A remote object is
    downloaded once into the temporary folder, named by its key and version (ETag), and reused."""
    path = location(path)
    if not is_remote(path):
        return path
    info = path.fs.info(path.path)  # type: ignore[attr-defined]
    identity = f"{path}|{info.get('ETag') or info.get('etag') or ''}|{info.get('size')}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    cached = local_tmp_dir() / "thresher-cache" / digest / path.name
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        path.fs.get_file(path.path, str(tmp))  # type: ignore[attr-defined]
        os.replace(tmp, cached)
    return cached


@contextlib.contextmanager
def local_folder(path: Path) -> Iterator[Path]:
    """A local copy of a remote folder (a saved model), or the folder itself when it is local."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(dir=local_tmp_dir()) as tmp:
        path.fs.get(path.path.rstrip("/") + "/", tmp, recursive=True)  # type: ignore[attr-defined]
        yield Path(tmp)


def glob(pattern: str) -> list[Path]:
    """Files matching a local or remote glob pattern, sorted."""
    where = location(pattern)
    if not is_remote(where):
        import glob as globbing

        return sorted(Path(p) for p in globbing.glob(pattern, recursive=True) if Path(p).is_file())
    fs = where.fs  # type: ignore[attr-defined]
    protocol = where.protocol  # type: ignore[attr-defined]
    return sorted(location(f"{protocol}://{key}") for key in fs.glob(where.path) if fs.isfile(key))


def common_folder(paths: Sequence[Path]) -> Path:
    """The deepest folder holding every one of `paths` (files), local or all on one store."""
    if not paths:
        raise ValueError("no paths")
    if not is_remote(paths[0]):
        return Path(os.path.commonpath([str(p.parent) for p in paths]))
    first = paths[0]
    keys = [p.parent.path.rstrip("/") for p in paths]  # type: ignore[attr-defined]
    common = os.path.commonpath(keys)
    return location(f"{first.protocol}://{common}")  # type: ignore[attr-defined]


def input_root(inputs: Sequence[Path]) -> Path:
    """The folder a set of raw inputs (files, folders, glob patterns) lies under: recorded as a run's
    input, and checked not to overlap its output."""
    folders = []
    for given in inputs:
        text = str(given)
        if has_magic(text):
            text = text[: min(text.index(c) for c in "*?[" if c in text)].rpartition("/")[0] or "."
            folders.append(location(text))
        else:
            where = location(text)
            folders.append(where if where.is_dir() else where.parent)
    if is_remote(folders[0]):
        return common_folder([f / "x" for f in folders])
    return Path(os.path.commonpath([str(f) for f in folders]))


@contextlib.contextmanager
def named_errors(*paths: str | Path | None) -> Iterator[None]:
    """An object store's refusal (bad credentials, no such bucket) as one line naming the command's
    first remote input or output: the store's error names neither."""
    try:
        yield
    except ThresherError:
        raise
    except OSError as exc:
        where = next((str(p) for p in paths if p is not None and is_url(str(p))), None)
        if where is None or exc.filename is not None:
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, PermissionError):
            raise ThresherError(
                f"{where}: access denied ({reason}); check the credentials (environment, ~/.aws, "
                "--storage-option)"
            ) from None
        raise filesystem_error(exc, where) from None


def has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")
