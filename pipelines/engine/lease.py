"""The run lock on an object store: a lease object under `_thresher/`, one holder at a time.

An object store has no flock and no rename, but it has conditional writes: a PUT with `If-None-Match: *`
creates the object only if no one has, so two runs racing for the lease get one winner. The holder
renews the lease's expiry from a background thread while it runs and deletes it at the end. A lease whose
holder stopped renewing (killed, its host gone) is taken over once it has expired, or at once when its
holder was a process on this host that no longer exists (kill -9, then the same cron line again).

A recipe holds its root's lease; a stage command on one of its step folders finds the root's live lease
and stops, and a recipe finds a live lease in any step folder and stops, as the flock locks do on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.lock import LEASE_NAME, BusyError, gone_from_this_host
from thresher.pipelines.engine.shards import STATE_DIR

# Long enough that a run stalled by a slow store keeps its lease; short enough that a run whose host died
# blocks the next one only briefly. Renewed every third of it.
LEASE_SECONDS = float(os.environ.get("THRESHER_LEASE_SECONDS", "60"))

_held: set[str] = set()


def lease_path(output: Path) -> Path:
    return output / STATE_DIR / LEASE_NAME


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def _live(lease: dict[str, Any] | None) -> bool:
    """Whether a lease still holds: not expired, and not left by a dead process of this host."""
    if lease is None:
        return False
    if float(lease.get("expires", 0)) < time.time():
        return False
    return not gone_from_this_host(lease.get("host"), lease.get("pid"))


def _holder(lease: dict[str, Any]) -> str:
    return f"pid {lease.get('pid')} on {lease.get('host')} since {lease.get('since')}"


def _body(token: str, since: str) -> bytes:
    lease = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": since,
        "expires": time.time() + LEASE_SECONDS,
        "token": token,
    }
    return json.dumps(lease).encode()


def _check_neighbours(output: Path) -> None:
    """A recipe root: no step folder may have a live lease of a stage command writing there."""
    if not output.exists():
        return
    busy = sorted(
        child.name for child in output.iterdir() if child.is_dir() and _live(_read(lease_path(child)))
    )
    if busy:
        raise BusyError(
            f"{output}: a thresher stage command is writing into its step folder ({', '.join(busy)}); "
            "wait for it to finish, then run again"
        )


def _check_root(output: Path) -> None:
    root = output.parent
    if str(root) in _held:
        return
    lease = _read(lease_path(root))
    if _live(lease):
        assert lease is not None
        raise BusyError(
            f"{root}: a thresher recipe run is writing here ({_holder(lease)}) and {output} is one of its "
            "step folders; wait for the recipe to finish, then run again"
        )


@contextlib.contextmanager
def remote_lease(output: Path, held_roots: set[Path]) -> Iterator[None]:
    _check_root(output)
    _check_neighbours(output)
    path = lease_path(output)
    token = uuid.uuid4().hex
    since = datetime.now().astimezone().isoformat(timespec="seconds")
    while not storage.create_exclusive(path, _body(token, since)):
        lease = _read(path)
        if _live(lease):
            assert lease is not None
            raise BusyError(
                f"{output}: another thresher run is writing here ({_holder(lease)}); "
                "wait for it to finish, then run again"
            )
        # Expired or its holder is dead. Two runs may both see that; the conditional create still lets
        # only one of them have it.
        storage.remove(path)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_SECONDS / 3):
            current = _read(path)
            if current is None or current.get("token") != token:
                return  # taken over after we stalled past the expiry: do not write over the new holder
            with contextlib.suppress(OSError):
                path.write_bytes(_body(token, since))

    thread = threading.Thread(target=renew, name="thresher-lease", daemon=True)
    thread.start()
    _held.add(str(output))
    held_roots.add(output)
    try:
        yield
    finally:
        _held.discard(str(output))
        held_roots.discard(output)
        stop.set()
        thread.join()
        current = _read(path)
        if current is not None and current.get("token") == token:
            storage.remove(path)
