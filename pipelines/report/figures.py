"""The report's plots, each one matplotlib figure returned as inline SVG markup.

Figures are built with `matplotlib.figure.Figure`, not pyplot: no global backend or figure registry, so
the report can be written from any process. Legends sit outside the axes, right of the plot, where they
cannot cover a bar.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from thresher.pipelines.report.palette import BEFORE, CUTOFF, KEPT

# Counts whose largest is this many times the smallest get a log axis: on a linear one the small are gone.
LOG_SPAN = 50
CLIP_PERCENT = 0.5  # a before/after histogram's x axis leaves out this share of values at each end
_RC = {
    # matplotlib salts the SVG's element ids with a random value unless told one: fixed, the same run
    # gives the same bytes.
    "svg.hashsalt": "thresher-report",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def svg(fig: Figure) -> str:
    """The figure as inline SVG markup (text, so the page needs no other file)."""
    buffer = io.StringIO()
    with mpl.rc_context(_RC):
        # No date in the metadata: the same run gives the same report.
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(width, height))
        return fig, fig.add_subplot()


def spans_magnitudes(values: Sequence[float] | np.ndarray) -> bool:
    positive = np.asarray(values, dtype=float)
    positive = positive[positive > 0]
    return len(positive) > 1 and positive.max() / positive.min() >= LOG_SPAN


def _log_axis(ax: Axes, which: str, label: str) -> None:
    """A log axis labelled 1, 10, 100, 1,000 (not 10^0 and 6x10^0), its minor ticks unlabelled."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    (ax.set_ylabel if which == "y" else ax.set_xlabel)(f"{label} (log scale)")


def _count_axis(ax: Axes, counts: Sequence[float] | np.ndarray, label: str) -> None:
    """Counts on the y axis: log where they span orders of magnitude, else linear."""
    if spans_magnitudes(counts):
        _log_axis(ax, "y", label)
    else:
        ax.set_ylabel(label)


def _legend_outside(ax: Axes, **kwargs: object) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, **kwargs)


def funnel(stages: list[str], kept: list[int], dropped: dict[str, list[int]], colours: dict[str, str]) -> str:
    """Rows kept per stage and, stacked after them, rows dropped per reason (linear: the bars add up)."""
    with mpl.rc_context(_RC):
        fig, ax = _figure(7.5, 0.45 * len(stages) + 1.2)
        ax.barh(stages, kept, color=KEPT, label="kept")
        left = np.array(kept, dtype=float)
        for reason, values in dropped.items():
            ax.barh(stages, values, left=left, color=colours[reason], label=reason)
            left += np.array(values, dtype=float)
        ax.invert_yaxis()
        ax.set_xlabel("rows")
        _legend_outside(ax, fontsize=8)
        return svg(fig)


def drops(labels: list[str], counts: list[int], colours: list[str]) -> str:
    """Rows dropped per (stage, reason); a log axis when the counts span orders of magnitude."""
    with mpl.rc_context(_RC):
        fig, ax = _figure(7.5, 0.28 * len(labels) + 1.0)
        log = spans_magnitudes(counts)
        # On a log axis a bar starts at 1 row, not 0, so the smallest counts still show as bars.
        base = 0.7 if log else 0.0
        ax.barh(labels, np.asarray(counts, dtype=float) - base, left=base, color=colours)
        for y, n in enumerate(counts):
            ax.annotate(f"{n:,}", (n, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.invert_yaxis()
        if log:
            _log_axis(ax, "x", "rows dropped")
            ax.set_xlim(left=0.7)
        else:
            ax.set_xlabel("rows dropped")
        ax.tick_params(axis="y", labelsize=8)
        return svg(fig)


@dataclass
class Cutoff:
    value: float
    label: str


def before_after(
    title: str, before: np.ndarray | None, after: np.ndarray, cutoffs: list[Cutoff], bins: int = 40
) -> str:
    """A score's histogram over a step's input (grey) and its kept output (green), with the cutoffs as
    vertical lines. `before` is None when the step added the score (nothing to compare).

    The x axis spans the input's 0.5th to 99.5th percentile (and every cutoff); values past it are
    counted in the end bins, so a few outliers do not squeeze the rows near the cutoff into one bar."""
    with mpl.rc_context(_RC):
        fig, ax = _figure(6.0, 3.0)
        everything = after if before is None else before
        ends = [c.value for c in cutoffs]
        if len(everything):
            ends += [float(v) for v in np.percentile(everything, [CLIP_PERCENT, 100 - CLIP_PERCENT])]
        low, high = (float(min(ends)), float(max(ends))) if ends else (0.0, 1.0)
        if high <= low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, bins + 1)

        def clipped(values: np.ndarray) -> np.ndarray:
            return np.clip(values, low, high)

        counts = np.histogram(clipped(everything), edges)[0]
        if before is not None:
            ax.hist(clipped(before), edges, color=BEFORE, label=f"before ({len(before):,})")
        kept_label = f"{'kept' if before is not None else 'rows'} ({len(after):,})"
        ax.hist(clipped(after), edges, color=KEPT, label=kept_label)
        _count_axis(ax, counts, "rows")
        ax.xaxis.set_major_locator(MaxNLocator(6))
        for i, cut in enumerate(cutoffs):
            ax.axvline(
                cut.value,
                color=CUTOFF,
                linestyle=("--", ":", "-.")[i % 3],
                linewidth=1.4,
                label=cut.label,
                gid=f"cutoff-{i}",  # the SVG group's id: a reader (or a test) finds the line by it
            )
        ax.set_title(title, fontsize=10)
        _legend_outside(ax, fontsize=8)
        return svg(fig)


def histogram(title: str, values: np.ndarray, xlabel: str | None = None) -> str:
    with mpl.rc_context(_RC):
        fig, ax = _figure(5.0, 3.0)
        counts, _, _ = ax.hist(values, bins=40, color="#3b6ea8")
        _count_axis(ax, counts, "rows")
        ax.xaxis.set_major_locator(MaxNLocator(6))
        if xlabel:
            ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        return svg(fig)


def cluster_sizes(title: str, sizes: dict[int, int]) -> str:
    with mpl.rc_context(_RC):
        fig, ax = _figure(5.0, 3.0)
        xs = sorted(sizes)
        counts = [sizes[x] for x in xs]
        log = spans_magnitudes(counts)
        base = 0.7 if log else 0.0
        ax.bar([str(x) for x in xs], np.asarray(counts, dtype=float) - base, bottom=base, color="#a8553b")
        _count_axis(ax, counts, "groups")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("group size")
        return svg(fig)


def reliability(predicted: np.ndarray, observed: np.ndarray, counts: np.ndarray, title: str) -> str:
    """Binned mean predicted probability against the observed share of positives; the diagonal is a
    perfectly calibrated classifier. Marker area follows the rows in each bin."""
    with mpl.rc_context(_RC):
        fig, ax = _figure(4.5, 4.0)
        ax.plot([0, 1], [0, 1], color=BEFORE, linestyle="--", linewidth=1, label="perfectly calibrated")
        area = 20 + 180 * counts / max(int(counts.max()), 1) if len(counts) else 20
        ax.plot(predicted, observed, color="#1f4e8c", linewidth=1.2)
        ax.scatter(predicted, observed, s=area, color="#1f4e8c", zorder=3, label="held-out bins")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed share of positives")
        ax.set_title(title, fontsize=10)
        _legend_outside(ax, fontsize=8)
        return svg(fig)


@dataclass
class Curve:
    name: str
    colour: str
    tokens: np.ndarray
    train_loss: np.ndarray
    val_loss: np.ndarray


def learning_curves(curves: list[Curve], xlabel: str) -> str:
    """Training loss (solid) and validation loss (dotted) against what the model has seen, one colour per
    train set; several seeds of one set are several lines of its colour."""
    with mpl.rc_context(_RC):
        fig, ax = _figure(6.5, 3.5)
        labelled: set[str] = set()
        for c in curves:
            first = c.name not in labelled
            labelled.add(c.name)
            train = ~np.isnan(c.train_loss)
            ax.plot(
                c.tokens[train],
                c.train_loss[train],
                color=c.colour,
                linewidth=1.3,
                label=f"{c.name}: train" if first else None,
            )
            ax.plot(
                c.tokens,
                c.val_loss,
                color=c.colour,
                linewidth=1.0,
                linestyle=":",
                label=f"{c.name}: validation" if first else None,
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (nats/token)")
        _legend_outside(ax, fontsize=8)
        return svg(fig)
