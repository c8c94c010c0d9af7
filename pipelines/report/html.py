"""`thresher report`: one self-contained HTML page about a run (inline SVG plots, no scripts, no network).

It shows the funnel of rows kept and dropped per stage and reason, histograms of every numeric column of
the final shard set and of text length, the dedup cluster-size distributions, and each stage's manifest
(params, fingerprint, timings, versions).
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.pipelines.engine.atomic import atomic_open
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import MANIFEST_NAME, Manifest
from thresher.pipelines.engine.shards import DROPPED_DIR, iter_batches
from thresher.pipelines.report.inspect import LineageStep, lineage

HIST_SAMPLE = 200_000  # values per column kept for a histogram: enough for its shape, bounded memory
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; } pre { background: #f7f7f7;
padding: 8px; overflow-x: auto; font-size: 0.85em; }
"""


def _svg(fig: object) -> str:
    """The figure as inline SVG markup (text, so the page needs no other file)."""
    buffer = io.StringIO()
    # No date in the metadata: the same run gives the same report.
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})  # type: ignore[attr-defined]
    import matplotlib.pyplot as plt

    plt.close(fig)  # type: ignore[arg-type]
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def final_set(output: Path) -> Path:
    """The shard set a report describes: the last finished step of a recipe folder, or the folder itself."""
    if (output / MANIFEST_NAME).exists():
        return output
    steps = []
    if output.is_dir():
        steps = sorted(p for p in output.iterdir() if p.is_dir() and (p / MANIFEST_NAME).exists())
    if not steps:
        raise UsageError(f"{output}: no finished thresher output here (no {MANIFEST_NAME})")
    return steps[-1]


def _funnel(steps: list[LineageStep]) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for s in steps:
        dropped = ", ".join(f"{k}: {v:,}" for k, v in s.counts.dropped.items()) or "-"
        rows.append(
            f"<tr><td>{html.escape(s.stage)}</td><td class=n>{s.counts.rows_in:,}</td>"
            f"<td class=n>{s.counts.rows_out:,}</td><td>{html.escape(dropped)}</td></tr>"
        )
    header = "<tr><th>stage</th><th>rows in</th><th>kept</th><th>dropped, by reason</th></tr>"
    table = f"<table>{header}{''.join(rows)}</table>"
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(steps) + 1.2))
    labels = [s.stage for s in steps]
    ax.barh(labels, [s.counts.rows_out for s in steps], color="#4c8c4a", label="kept")
    left = np.array([s.counts.rows_out for s in steps], dtype=float)
    reasons = sorted({r for s in steps for r in s.counts.dropped})
    for i, reason in enumerate(reasons):
        values = np.array([s.counts.dropped.get(reason, 0) for s in steps], dtype=float)
        ax.barh(labels, values, left=left, color=plt.cm.tab10(i % 10), label=reason)
        left += values
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.legend(loc="lower right", fontsize=8)
    return table, _svg(fig)


def _histograms(shard_set: Path) -> list[str]:
    import matplotlib.pyplot as plt

    files = sorted(shard_set.glob("*.parquet"))
    schema = pq.read_schema(files[0])
    numeric = [
        f.name
        for f in schema
        if f.name != "id" and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
    ]
    samples: dict[str, list[np.ndarray]] = {name: [] for name in numeric}
    lengths: list[np.ndarray] = []
    seen = 0
    columns = [*numeric, *(["text"] if "text" in schema.names else [])]
    for path in files:
        if seen >= HIST_SAMPLE or not columns:
            break
        for batch in iter_batches(path, columns):
            for name in numeric:
                samples[name].append(
                    batch.column(name).drop_null().to_numpy(zero_copy_only=False).astype(float)
                )
            if "text" in columns:
                lengths.append(
                    pc.utf8_length(batch.column("text")).drop_null().to_numpy(zero_copy_only=False)
                )
            seen += batch.num_rows
            if seen >= HIST_SAMPLE:
                break
    figures = []
    series = {f"{name}": samples[name] for name in numeric}
    if lengths:
        series["text length (characters, log scale)"] = [np.log10(np.concatenate(lengths) + 1)]
    for title, parts in series.items():
        values = np.concatenate(parts) if parts else np.zeros(0)
        if not len(values):
            continue
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(values, bins=40, color="#3b6ea8")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("rows")
        figures.append(_svg(fig))
    return figures


def _cluster_sizes(stage_dir: Path) -> Counter[int] | None:
    """Documents per duplicate group of a dedup stage: its keeper plus the rows dropped as its repeats."""
    dropped_dir = stage_dir / DROPPED_DIR
    if not dropped_dir.is_dir():
        return None
    dropped = pq.read_table(dropped_dir, columns=["reason", "detail"])
    mask = pc.is_in(dropped["reason"], value_set=pa.array(["exact_duplicate", "near_duplicate"]))
    details = dropped["detail"].filter(mask).drop_null().to_pylist()
    if not details:
        return None
    return Counter(n + 1 for n in Counter(details).values())


def _cluster_plots(stage_dirs: list[tuple[str, Path]]) -> list[str]:
    import matplotlib.pyplot as plt

    figures = []
    for stage, folder in stage_dirs:
        sizes = _cluster_sizes(folder)
        if not sizes:
            continue
        fig, ax = plt.subplots(figsize=(5, 3))
        xs = sorted(sizes)
        ax.bar([str(x) for x in xs], [sizes[x] for x in xs], color="#a8553b")
        ax.set_yscale("log")
        ax.set_title(f"{stage}: documents per duplicate group", fontsize=10)
        ax.set_xlabel("group size")
        ax.set_ylabel("groups")
        figures.append(_svg(fig))
    return figures


def write_report(output: Path, destination: Path | None = None) -> Path:
    """Write the report (default: OUTPUT/report.html) and return its path."""
    output = Path(output)
    last = final_set(output)
    steps = lineage(last)
    chain = list(reversed(steps))
    table, funnel_svg = _funnel(chain)
    stage_dirs = [(s.stage, Path(s.path)) for s in chain]
    hists = _histograms(last) if list(last.glob("*.parquet")) else []
    clusters = _cluster_plots(stage_dirs)
    manifests = []
    for stage, folder in stage_dirs:
        m = Manifest.read(folder)
        detail = {
            "params": m.params,
            "seed": m.seed,
            "fingerprint": m.fingerprint,
            "seconds": m.seconds,
            "summary": {k: v for k, v in m.summary.items() if k != "s_curve"},
            "versions": m.versions,
        }
        manifests.append(
            f"<h3>{html.escape(stage)} <small>{html.escape(str(folder))}</small></h3>"
            f"<pre>{html.escape(json.dumps(detail, indent=2, default=str))}</pre>"
        )
    sources = sorted({f for s in steps for f in s.raw_files})
    hist_html = "".join(f"<figure>{h}</figure>" for h in hists) or "<p>No numeric columns.</p>"
    cluster_html = "".join(f"<figure>{c}</figure>" for c in clusters) or "<p>No dedup stage.</p>"
    raw = html.escape(", ".join(sources) or "-")
    body = [
        f"<h1>thresher report: {html.escape(str(output))}</h1>",
        f"<p>Final shard set: {html.escape(str(last))}. Raw input: {raw}.</p>",
        "<h2>Funnel: rows kept and dropped per stage</h2>",
        table,
        f"<figure>{funnel_svg}</figure>",
        "<h2>Score and length distributions of the final set</h2>",
        f"<div class=plots>{hist_html}</div>",
        "<h2>Dedup cluster sizes</h2>",
        f"<div class=plots>{cluster_html}</div>",
        "<h2>Lineage: manifests, oldest first</h2>",
        *manifests,
    ]
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>thresher report</title><style>{STYLE}</style>"
        f"</head><body>{''.join(body)}</body></html>\n"
    )
    destination = Path(destination) if destination else output / "report.html"
    with atomic_open(destination, "w", encoding="utf-8") as f:
        f.write(page)
    return destination
