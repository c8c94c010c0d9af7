"""Stage discovery through the `thresher.stages` entry-point group, so other packages can add stages."""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points

from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.stage import Stage

GROUP = "thresher.stages"
log = logging.getLogger("thresher")


@functools.cache
def _discover() -> tuple[dict[str, type[Stage]], tuple[str, ...]]:
    found: dict[str, type[Stage]] = {}
    problems: list[str] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            cls = ep.load()
        except Exception as exc:  # a third-party import error must not break other commands
            problems.append(f"stage plugin {ep.name} ({ep.value}) failed to load: {exc}")
            continue
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            problems.append(f"stage plugin {ep.name} ({ep.value}) is not a thresher Stage subclass; left out")
            continue
        if getattr(cls, "name", None) != ep.name:
            # The name picks the stage on the command line, in plans and recipes: two names for one
            # stage would let a plan name a stage the registry cannot find again.
            problems.append(
                f"stage plugin {ep.value}: entry point '{ep.name}' but class name "
                f"'{getattr(cls, 'name', None)}'; left out until the two match"
            )
            continue
        found[ep.name] = cls
    for line in problems:
        log.warning("%s", line)
    return found, tuple(problems)


def stages() -> dict[str, type[Stage]]:
    """All installed stages by name. A plugin that fails to import or is declared wrongly is reported
    (`plugin_problems`) and left out, so one broken package does not take the whole CLI down."""
    return _discover()[0]


def plugin_problems() -> tuple[str, ...]:
    """One line per installed stage plugin that was left out, and why."""
    return _discover()[1]


def clear_cache() -> None:
    """Forget what was found, so the next call looks at the installed entry points again."""
    _discover.cache_clear()


def get_stage(name: str) -> type[Stage]:
    try:
        return stages()[name]
    except KeyError:
        known = ", ".join(stages()) or "none"
        raise UsageError(f"unknown stage '{name}'; installed stages: {known}") from None
