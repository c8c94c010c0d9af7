"""Atomic file writes: readers see either the old file or the whole new one, never a half-written one."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def tmp_path_for(path: Path) -> Path:
    # The pid keeps two processes that race on the same task from clobbering each other's temp file.
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success rename it over `path`, on error remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
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
