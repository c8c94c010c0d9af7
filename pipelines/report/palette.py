"""Colours of the report: one per drop reason, the same in every report, never two alike in one.

A reason's colour comes from a hash of its name into a fixed palette, so `gopher_word_count` is the same
orange in this week's report and last week's. Two reasons of one report may hash to the same slot; the
one whose name sorts first keeps it and the other takes the next free slot, so only a reason that collides
with another of the same report moves. Past the palette's size, colours are made from the hash (distinct
from each other and from the palette).
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable

import xxhash

KEPT = "#4c8c4a"  # rows kept, in every plot (the funnel's bars, the "after" histograms)
BEFORE = "#b4b4b4"  # a filter's input, behind the kept rows
CUTOFF = "#111111"  # a filter's threshold line
# Hand-picked to be told apart on screen and from KEPT, BEFORE and the text's greys (no greys here).
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#469990",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
    "#393b79",
    "#ffe119",
    "#7b4173",
    "#e7ba52",
    "#6b6ecf",
    "#f032e6",
    "#800000",
    "#00a087",
)
_SEED = 0x7468  # fixed forever: changing it would recolour every reason of every report


def _slot(name: str, size: int) -> int:
    return xxhash.xxh64_intdigest(name.encode("utf-8"), seed=_SEED) % size


def _made(name: str, attempt: int) -> str:
    """A colour from the name's hash, for reports with more reasons than the palette has colours."""
    h = xxhash.xxh64_intdigest(f"{name}#{attempt}".encode(), seed=_SEED)
    hue = (h % 3600) / 3600
    lightness = 0.35 + ((h >> 12) % 30) / 100
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def reason_colors(reasons: Iterable[str]) -> dict[str, str]:
    """Reason name -> colour (#rrggbb), distinct within `reasons`."""
    names = sorted(set(reasons))
    colours: dict[str, str] = {}
    taken: dict[int, str] = {}
    losers = []
    # First every reason that is alone on its slot, or sorts first of those sharing it, takes its slot;
    # only then do the others look for a free one, so no reason is pushed off its own colour by a loser.
    for name in names:
        slot = _slot(name, len(PALETTE))
        if slot in taken:
            losers.append(name)
        else:
            taken[slot] = name
            colours[name] = PALETTE[slot]
    used = {*PALETTE, KEPT, BEFORE, CUTOFF}
    for name in losers:
        if len(taken) < len(PALETTE):
            slot = _slot(name, len(PALETTE))
            while slot in taken:
                slot = (slot + 1) % len(PALETTE)
            taken[slot] = name
            colours[name] = PALETTE[slot]
            continue
        attempt = 0
        while (colour := _made(name, attempt)) in used:
            attempt += 1
        used.add(colour)
        colours[name] = colour
    return dict(sorted(colours.items()))
