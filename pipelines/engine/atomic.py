"""Atomic file writes: readers see either the old file or the whole new one, never a half-written one.

On disk a temp file is renamed over the target; on an object store the finished local file is uploaded
to its final key in one request (see storage.commit), so a killed writer leaves no object behind."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from thresher.pipelines.engine import storage


def tmp_path_for(path: Path) -> Path:
    return storage.local_tmp_for(path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a local temp path for `path`; on success it becomes `path`, on error it is removed."""
    storage.make_dirs(path.parent)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        storage.commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_json(path: Path, value: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=False, ensure_ascii=False)
        f.write("\n")
