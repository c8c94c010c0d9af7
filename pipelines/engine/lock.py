"""One writer per output folder: a second run on the same output (cron overlapping a slow run, two
shells) stops at once instead of interleaving with the first.

A recipe run holds its root's lock exclusively; a stage writing a folder directly below a root that has a
lock (a recipe's step folder) holds the root's lock shared. So a stage command cannot write into a running
recipe's step folder, a recipe cannot start while one writes there, and stage commands on sibling folders
(`make -j` over the step folders) still run side by side.

On an object store there is no flock: the lock is a lease object (lease.remote_lease), created with a
conditional write so only one run gets it, renewed while the run lives and removed when it ends."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import ThresherError


class BusyError(ThresherError):
    """Another run holds the output's lock. Exit code 75 (EX_TEMPFAIL): try again later."""

    exit_code = 75


LOCK_NAME = "lock"
LEASE_NAME = "lease.json"
# What a folder may hold and still count as empty, and what `--force` keeps.
LOCK_NAMES = frozenset({LOCK_NAME, LEASE_NAME})

# Roots this process holds exclusively. flock conflicts between two open files of the same process too,
# so a recipe's own steps must know not to ask for the root again.
_held: set[Path] = set()


def gone_from_this_host(host: str | None, pid: object) -> bool:
    """True when a lock's holder was a process of this host that no longer exists; a holder on another
    host can only be judged by its lock's age."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)  # type: ignore[call-overload]
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError):
        return False
    return False


def lock_path(output: Path) -> Path:
    # In the folder's state directory: nothing appears beside the user's folders, and a folder holding
    # only the lock still counts as empty. The file is never deleted: unlinking a lock file lets a third
    # process lock a new file while a second still holds the old one.
    return storage.location(output) / "_thresher" / LOCK_NAME


def holds_only_lock(output: Path) -> bool:
    """True for an empty folder, or one with nothing but the (possibly stale) lock file."""
    output = storage.location(output)
    if storage.is_remote(output) and not output.exists():
        return True  # no objects under the prefix
    entries = list(output.iterdir())
    if not entries:
        return True
    state = output / "_thresher"
    return [e.name for e in entries] == ["_thresher"] and {e.name for e in state.iterdir()} <= LOCK_NAMES


def _holder(f: IO[str]) -> str:
    f.seek(0)
    return f.read().strip() or "another process"


@contextlib.contextmanager
def _shared_root_lock(output: Path, real: Path) -> Iterator[None]:
    root = real.parent
    path = lock_path(root)
    # Only a folder some run has locked is a root; creating a lock in any parent would litter the user's
    # folders with `_thresher/`.
    if root in _held or not path.is_file():
        yield
        return
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"{root}: a thresher recipe run is writing here ({_holder(f)}) and {output} is one of its "
                "step folders; wait for the recipe to finish, then run again"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _busy_message(output: Path, f: IO[str]) -> str:
    try:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return (
            f"{output}: another thresher run is writing here ({_holder(f)}); "
            "wait for it to finish, then run again"
        )
    # Only shared holders: stage commands writing step folders of this root.
    fcntl.flock(f, fcntl.LOCK_UN)
    # A holder writes its pid into its lock and empties it on release, so a non-empty lock names a writer.
    busy = sorted(
        child.name
        for child in output.iterdir()
        if lock_path(child).is_file() and lock_path(child).stat().st_size > 0
    )
    which = f" ({', '.join(busy)})" if busy else ""
    return (
        f"{output}: a thresher stage command is writing into its step folder{which}; wait for it to "
        "finish, then run again"
    )


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    output = storage.location(output)
    if storage.is_remote(output):
        from thresher.pipelines.engine.lease import remote_lease

        with remote_lease(output, _held):
            yield
        return
    real = output.resolve()
    path = lock_path(output)
    with _shared_root_lock(output, real):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BusyError(_busy_message(output, f)) from None
            f.seek(0)
            f.truncate()
            since = datetime.now().astimezone().isoformat(timespec="seconds")
            f.write(f"pid {os.getpid()} since {since}\n")
            f.flush()
            _held.add(real)
            try:
                yield
            finally:
                _held.discard(real)
                f.seek(0)
                f.truncate()
                fcntl.flock(f, fcntl.LOCK_UN)
