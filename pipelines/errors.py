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
