"""Stage discovery through the `thresher.stages` entry-point group, so other packages can add stages."""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points

from thresher.pipelines.engine.errors import ThresherError, UsageError
from thresher.pipelines.engine.stage import Stage

GROUP = "thresher.stages"
log = logging.getLogger("thresher")


@functools.cache
def stages() -> dict[str, type[Stage]]:
    """All installed stages by name. A plugin that fails to import is reported and left out, so one broken
    package does not take the whole CLI down."""
    found: dict[str, type[Stage]] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            cls = ep.load()
        except Exception as exc:  # a third-party import error must not break other commands
            log.warning("stage plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            log.warning("stage plugin %s (%s) is not a thresher Stage subclass; ignored", ep.name, ep.value)
            continue
        if cls.name != ep.name:
            raise ThresherError(
                f"stage plugin {ep.value}: entry point '{ep.name}' but class name '{cls.name}'"
            )
        found[ep.name] = cls
    return found


def get_stage(name: str) -> type[Stage]:
    try:
        return stages()[name]
    except KeyError:
        known = ", ".join(stages()) or "none"
        raise UsageError(f"unknown stage '{name}'; installed stages: {known}") from None
