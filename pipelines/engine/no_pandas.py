"""Keeping pandas out of a process while a stage that never uses it runs.

pyarrow imports pandas the first time it converts any Python value (`pa.array`, `pa.scalar`), only to ask
whether the value is a pandas object: 54 MB of RSS, a fifth of what a lean process holds. A stage that
declares `uses_pandas = False` runs its tasks with pandas reported missing, unless something in the process
imported it already. The finder goes when the last such task ends, so a later stage (or the user's own
code) imports pandas as usual; pyarrow asks again whenever it truly needs pandas (`to_pandas`).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
import threading
from collections.abc import Iterator


class _NoPandas(importlib.abc.MetaPathFinder):
    """An import finder under which `import pandas` fails as if pandas were not installed."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {fullname!r} (kept out while a stage runs)")
        return None


_finder = _NoPandas()
_lock = threading.Lock()
_running = 0  # tasks inside `pandas_kept_out`, across threads


@contextlib.contextmanager
def pandas_kept_out() -> Iterator[None]:
    global _running
    with _lock:
        if _running == 0 and "pandas" not in sys.modules:
            sys.meta_path.insert(0, _finder)
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _finder in sys.meta_path:
                sys.meta_path.remove(_finder)


def let_pandas_in() -> None:
    """For code inside such a stage that does need pandas after all (the `datasets` library imports it):
    import it now, for the rest of the process."""
    with _lock:
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        import pandas  # noqa: F401
