"""Errors meant for the user: reported as one line, never with a traceback."""


class ThresherError(Exception):
    """Bad input or setup the user can fix: the CLI prints the message and exits with `exit_code`."""

    exit_code = 1


class UsageError(ThresherError):
    """The command line itself is wrong (missing path, unknown option value)."""

    exit_code = 2


class IncompleteRun(ThresherError):
    """Some tasks did not finish (killed, failed on a cluster node). Finished work is kept: running the same
    command again runs only what is missing."""


def filesystem_error(exc: OSError, path: object = None) -> ThresherError:
    """A failed read or write as one line naming the path (`path`, else the one the error holds) and the
    system's words for the errno ("No space left on device", "Read-only file system")."""
    import os

    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    where = path if path is not None else exc.filename
    return ThresherError(f"{where}: {reason}" if where is not None else reason)
