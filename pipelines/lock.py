"""One writer per output folder: a second run on the same output (cron overlapping a slow run, two
shells) stops at once instead of interleaving with the first."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from thresher.pipelines.errors import ThresherError


class BusyError(ThresherError):
    """Another run holds the output's lock. Exit code 75 (EX_TEMPFAIL): try again later."""

    exit_code = 75


LOCK_NAME = "lock"


def lock_path(output: Path) -> Path:
    # In the folder's state directory: nothing appears beside the user's folders, and a folder holding
    # only the lock still counts as empty. The file is never deleted: unlinking a lock file lets a third
    # process lock a new file while a second still holds the old one.
    return Path(output) / "_thresher" / LOCK_NAME


def holds_only_lock(output: Path) -> bool:
    """True for an empty folder, or one with nothing but the (possibly stale) lock file."""
    entries = list(Path(output).iterdir())
    if not entries:
        return True
    state = Path(output) / "_thresher"
    return [e.name for e in entries] == ["_thresher"] and [e.name for e in state.iterdir()] == [LOCK_NAME]


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise BusyError(
                f"{output}: another thresher run is writing here ({holder}); "
                "wait for it to finish, then run again"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
