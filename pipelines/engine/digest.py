"""Content digests for files: the identity used by manifests and task fingerprints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import xxhash

_CHUNK = 8 << 20


def file_digest(path: Path) -> str:
    # xxh3-128 reads at memory speed, so digesting every shard costs little next to decoding it.
    from thresher.pipelines.engine.storage import open_input

    h = xxhash.xxh3_128()
    with open_input(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "xxh3-128:" + h.hexdigest()


def value_digest(value: Any) -> str:
    """Digest of a JSON-serialisable value, independent of dict ordering."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "xxh3-128:" + xxhash.xxh3_128_hexdigest(blob)
