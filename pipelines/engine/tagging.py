"""What the filtering stages' `--mode tag` shares: tag, then filter.

In drop mode a filtering stage removes rows; in tag mode it keeps every row and writes what it measured
and decided as columns, so `thresher filter --where ...` selects afterwards and a threshold can be tuned
without computing the figures again (dolma's tag/mix, data-juicer's analyser). Each stage counts, under
`would_drop.<reason>`, the rows drop mode would have removed; its summary reports them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field

FilterMode = Literal["drop", "tag"]
WOULD_DROP = "would_drop"


def mode_field(tagged: str) -> Any:
    """The `mode` param of a filtering stage; `tagged` says which columns tag mode adds."""
    return Field(
        "drop",
        description=f"drop: remove the rows that fail; tag: remove none and add {tagged}, for "
        "`thresher filter --where` to select on.",
    )


def would_drop_counts(reasons: Iterable[str | None]) -> dict[str, int]:
    """Task counters for the rows drop mode would remove, one per row by its reason (None: kept)."""
    return {f"{WOULD_DROP}.{reason}": n for reason, n in Counter(r for r in reasons if r is not None).items()}
