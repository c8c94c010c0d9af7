"""`thresher report`: one self-contained HTML page about a run (inline SVG plots, no scripts, no network).

Sections: the funnel of rows kept and dropped per stage and reason (each reason in its own colour, the
same in every report), the lineage as a table, histograms of each score a step cut at with its cutoff,
example documents per drop reason, the quality classifier's held-out metrics and reliability, ablation
results and learning curves, the distributions of the final set, dedup cluster sizes, and each step's
manifest (folded). The same run gives the same bytes.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import atomic_open
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import MANIFEST_NAME
from thresher.pipelines.engine.shards import DROPPED_DIR, iter_batches
from thresher.pipelines.report import facts, figures
from thresher.pipelines.report.facts import HIST_SAMPLE, Step
from thresher.pipelines.report.inspect import lineage
from thresher.pipelines.report.palette import PALETTE, reason_colors

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 0.85em; }
.chip { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.3em; vertical-align: -0.05em; }
.reason { white-space: nowrap; } .doc { white-space: pre-wrap; font-family: ui-monospace, monospace;
font-size: 0.8em; max-width: 640px; max-height: 11em; overflow: hidden; overflow-wrap: anywhere; }
.muted { color: #666; } table.examples code { white-space: nowrap; }
"""


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


def _e(value: object) -> str:
    return html.escape(str(value))


def _n(value: float | int | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]], numeric: set[int], css: str = "") -> str:
    """Cells are HTML already (escaped by the caller); columns in `numeric` are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td class=n>{c}</td>" if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    attr = f" class={css}" if css else ""
    return f"<table{attr}><tr>{head}</tr>{body}</table>"


def _chip(colour: str) -> str:
    return f'<span class=chip style="background:{colour}"></span>'


def _reason(reason: str, colours: dict[str, str]) -> str:
    return (
        f"<span class=reason>{_chip(colours[reason])}{_e(reason)}</span>" if reason in colours else _e(reason)
    )


# ---------------------------------------------------------------------------------------------------------
# sections


def _funnel(chain: list[Step], steps: list[Step], colours: dict[str, str]) -> str:
    if not any(s.manifest.totals.rows_in for s in chain):
        return ""
    # Stacked, and listed in the legend, in the order the steps drop them: the legend reads as the bars.
    reasons = list(dict.fromkeys(r for s in chain for r, n in sorted(s.manifest.totals.dropped.items()) if n))
    labels = [s.name for s in chain]
    kept = [s.manifest.totals.rows_out for s in chain]
    dropped = {r: [s.manifest.totals.dropped.get(r, 0) for s in chain] for r in reasons}
    parts = [
        "<h2>Funnel: rows kept and dropped per step</h2>",
        f"<figure>{figures.funnel(labels, kept, dropped, colours)}</figure>",
    ]
    bars = [(s.name, r, n) for s in steps for r, n in sorted(s.manifest.totals.dropped.items()) if n]
    if bars:
        parts += [
            "<h3>Rows dropped per step and reason</h3>",
            "<figure>"
            + figures.drops(
                [f"{s}: {r}" for s, r, _ in bars], [n for *_, n in bars], [colours[r] for _, r, _ in bars]
            )
            + "</figure>",
        ]
    return "".join(parts)


def _lineage_table(steps: list[Step], colours: dict[str, str]) -> str:
    rows = []
    for step in steps:
        m = step.manifest
        source = step.input_folder.name if step.input_folder else "raw"
        if m.input.files:
            source = ", ".join(storage.location(f.path).name for f in m.input.files)
        dropped = "<br>".join(
            f"{_reason(r, colours)}: {n:,}" for r, n in sorted(m.totals.dropped.items()) if n
        )
        tokens = facts.token_total(step)
        rows.append(
            [
                _e(step.name),
                _e(m.stage),
                _e(source),
                _n(m.totals.rows_in),
                _n(m.totals.rows_out),
                dropped or "-",
                _n(tokens),
                _n(m.seconds, 2),
                f"<code>{_e(facts.fingerprint_short(m.fingerprint))}</code>",
            ]
        )
    header = ["step", "stage", "input", "rows in", "rows out", "dropped, by reason", "tokens", "seconds"]
    return (
        "<h2>Lineage</h2><p class=muted>Every finished step, oldest first. Tokens: the sum of "
        "<code>n_tokens</code> (added by <code>thresher tokenize</code>) where a step's shards have it; "
        "seconds: the sum over its tasks.</p>"
        + _table([*header, "fingerprint"], rows, {3, 4, 6, 7}, "lineage")
    )


def _score_cuts(steps: list[Step]) -> str:
    cuts = facts.score_cuts(steps)
    if not cuts:
        return ""
    plots = []
    for cut in cuts:
        lines = [figures.Cutoff(value, label) for value, label in cut.cutoffs]
        title = f"{cut.step.name}: {cut.column}"
        figure = figures.before_after(title, cut.before, cut.after, lines)
        values = ", ".join(f"{_e(label)}" for _, label in cut.cutoffs) or _e(cut.note)
        data = " ".join(repr(value) for value, _ in cut.cutoffs)
        plots.append(
            f'<figure class=cut data-step="{_e(cut.step.name)}" data-column="{_e(cut.column)}" '
            f'data-cutoffs="{data}">{figure}<figcaption>{values}</figcaption></figure>'
        )
    return (
        "<h2>Score cutoffs</h2><p class=muted>Each score a step cut at: grey is the step's input, green what "
        f"it kept (samples of up to {HIST_SAMPLE:,} values), lines the cutoffs. The x axis spans the "
        f"{figures.CLIP_PERCENT}th to {100 - figures.CLIP_PERCENT}th percentile of the input; values "
        "beyond are counted in the end bins.</p>"
        f"<div class=plots>{''.join(plots)}</div>"
    )


def _examples(steps: list[Step], colours: dict[str, str]) -> str:
    found = facts.dropped_examples(steps)
    if not found:
        return ""
    parts = [
        "<h2>Examples of dropped documents</h2>",
        f"<p class=muted>The first {facts.EXAMPLES_PER_REASON} rows each step dropped for each reason, "
        f"the text cut at {facts.EXAMPLE_CHARS} characters.</p>",
    ]
    rows = []
    for group in found:
        for i, ex in enumerate(group.examples):
            if ex.text is None:
                text = "<span class=muted>(text not found in the step's input)</span>"
            else:
                more = ""
                if ex.characters > len(ex.text):
                    more = f" <span class=muted>({ex.characters:,} characters)</span>"
                text = f"<div class=doc>{_e(ex.text)}</div>{more}"
            lead = ""
            if i == 0:
                span = len(group.examples)
                lead = (
                    f"<td rowspan={span}>{_e(group.step.name)}</td>"
                    f"<td rowspan={span}>{_reason(group.reason, colours)} ({group.rows:,})</td>"
                )
            rows.append(
                f"<tr>{lead}<td><code>{_e(ex.id)}</code></td><td>{_e(ex.detail or '')}</td>"
                f"<td>{text}</td></tr>"
            )
    head = "".join(f"<th>{h}</th>" for h in ("step", "reason (rows)", "id", "detail", "text"))
    parts.append(f"<table class=examples><tr>{head}</tr>{''.join(rows)}</table>")
    return "".join(parts)


def _rows_by_label(value: object) -> str:
    """fastText's trainer counts rows per label; the DeBERTa one records a single number."""
    if isinstance(value, dict) and value:
        return _e(", ".join(f"{k}: {v:,}" for k, v in value.items()))
    return _n(value) if isinstance(value, int) else "-"


def _classifiers(steps: list[Step]) -> str:
    found = facts.classifiers(steps)
    if not found:
        return ""
    parts = ["<h2>Quality classifier</h2>"]
    for c in found:
        held = c.metrics.get("heldout") if isinstance(c.metrics.get("heldout"), dict) else {}
        parts.append(f"<h3>{_e(c.step.name)} <small class=muted>{_e(c.step.folder)}</small></h3>")
        if not held:
            parts.append("<p>No held-out metrics recorded.</p>")
            continue
        confusion = held.get("confusion") or {}
        rows = [
            ["positive label", _e(c.metrics.get("positive_label", "-"))],
            ["training rows", _rows_by_label(c.metrics.get("train_rows"))],
            ["held-out rows", _rows_by_label(c.metrics.get("heldout_rows"))],
            ["threshold", _n(held.get("threshold"), 2)],
            *(
                [name, _n(held.get(key))]
                for name, key in (
                    ("precision", "precision"),
                    ("recall", "recall"),
                    ("F1", "f1"),
                    ("accuracy", "accuracy"),
                    ("ROC AUC", "roc_auc"),
                )
            ),
            ["confusion", _e(", ".join(f"{k} {v:,}" for k, v in confusion.items()) or "-")],
        ]
        if c.calibration is not None:
            cal = c.calibration
            rows.append(["expected calibration error", _n(cal.expected_error)])
            title = f"reliability: {cal.saved:,} held-out rows, {facts.CALIBRATION_BINS} bins"
            svg = figures.reliability(cal.predicted, cal.observed, cal.counts, title)
            plot = f"<figure class=reliability>{svg}</figure>"
        else:
            plot = (
                "<p class=muted>No held-out predictions saved (a run from before quality-train kept "
                "them): no reliability plot.</p>"
            )
        parts.append(
            "<div class=plots>"
            + _table(["held-out metric", "value"], rows, {1}, "classifier")
            + plot
            + "</div>"
        )
    return "".join(parts)


def _ablations(steps: list[Step]) -> str:
    found = facts.ablations(steps)
    if not found:
        return ""
    parts = ["<h2>Ablation: did the curation help?</h2>"]
    for a in found:
        results = a.results
        baseline = results.get("baseline", "")
        speed: dict[str, list[float]] = {}
        for t in a.training:
            speed.setdefault(str(t.get("train")), []).append(float(t.get("tokens_per_second", math.nan)))
        rows = []
        for cell in results.get("results", []):
            diff = "-"
            if cell.get("diff") is not None:
                diff = f"{cell['diff']:+.4f} [{cell['diff_low']:+.4f}, {cell['diff_high']:+.4f}]"
            rates = speed.get(str(cell["train"]), [])
            rows.append(
                [
                    _e(cell["train"])
                    + (" <span class=muted>(baseline)</span>" if cell["train"] == baseline else ""),
                    _e(cell["eval"]),
                    f"{cell['loss_mean']:.4f} ± {cell['loss_std']:.4f}",
                    _n(cell.get("perplexity"), 2),
                    _e(diff),
                    _n(cell.get("seeds")),
                    _n(float(np.mean(rates)), 0) if rates else "-",
                ]
            )
        header = ["train", "eval", "loss ± std (nats/token)", "perplexity", f"vs {baseline} [95% interval]"]
        params = a.step.manifest.params
        sets = "; ".join(
            f"{kind}: " + ", ".join(f"{_e(k)} = {_e(v)}" for k, v in (params.get(kind) or {}).items())
            for kind in ("train", "eval")
        )
        parts += [
            f"<h3>{_e(a.step.name)} <small class=muted>{_e(a.step.folder)}</small></h3>",
            f"<p class=muted>{sets}</p>",
            f"<p>{results.get('tokens_per_model', 0):,} training tokens per model, seeds "
            f"{_e(', '.join(map(str, results.get('seeds', []))))}; the interval is a paired bootstrap over "
            "the eval documents.</p>",
            _table([*header, "seeds", "tokens/s"], rows, {2, 3, 4, 5, 6}, "ablation"),
        ]
        curves = _curves(a)
        if curves is not None:
            parts.append(f"<figure class=curves>{curves}</figure>")
    return "".join(parts)


def _curves(a: facts.Ablation) -> str | None:
    # In the order of the table (baseline first), one palette colour each: a handful of sets, none alike.
    named = [
        *(str(k) for k in a.step.manifest.params.get("train", {})),
        *(str(t.get("train")) for t in a.training),
    ]
    names = list(dict.fromkeys(named))
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    curves = []
    per_token = all(t.get("tokens_per_step") for t in a.training)
    for t in sorted(a.training, key=lambda t: (names.index(str(t.get("train"))), t.get("seed", 0))):
        history = t.get("history") or []
        if not history:
            continue
        step = np.array([h["step"] for h in history], dtype=np.float64)
        curves.append(
            figures.Curve(
                str(t["train"]),
                colours[str(t["train"])],
                step * (t["tokens_per_step"] if per_token else 1),
                np.array([h.get("train_loss", math.nan) for h in history], dtype=np.float64),
                np.array([h.get("val_loss", math.nan) for h in history], dtype=np.float64),
            )
        )
    if not curves:
        return None
    return figures.learning_curves(curves, "training tokens" if per_token else "optimiser steps")


def _distributions(last: Path) -> str:
    files = sorted(last.glob("*.parquet"))
    if not files:
        return ""
    schema = pq.read_schema(storage.readable(files[0]))
    numeric = [
        f.name
        for f in schema
        if f.name != "id" and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
    ]
    plots = []
    for name in numeric:
        values = facts.sample_column(last, name)
        if values is not None and len(values):
            plots.append(figures.histogram(name, values))
    if "text" in schema.names:
        lengths: list[np.ndarray] = []
        seen = 0
        for path in files:
            for batch in iter_batches(path, ["text"]):
                lengths.append(pc.utf8_length(batch.column(0)).drop_null().to_numpy(zero_copy_only=False))
                seen += batch.num_rows
                if seen >= HIST_SAMPLE:
                    break
            if seen >= HIST_SAMPLE:
                break
        if lengths:
            values = np.log10(np.concatenate(lengths)[:HIST_SAMPLE] + 1)
            plots.append(figures.histogram("text length", values, "log10(characters + 1)"))
    inner = "".join(f"<figure>{p}</figure>" for p in plots) or "<p>No numeric columns.</p>"
    return f"<h2>Score and length distributions of the final set</h2><div class=plots>{inner}</div>"


def _cluster_sizes(folder: Path) -> Counter[int] | None:
    """Documents per duplicate group of a dedup stage: its keeper plus the rows dropped as its repeats."""
    dropped_dir = folder / DROPPED_DIR
    files = sorted(dropped_dir.glob("*.parquet")) if dropped_dir.is_dir() else []
    if not files:
        return None
    columns = ["reason", "detail"]
    dropped = pa.concat_tables(pq.read_table(storage.readable(f), columns=columns) for f in files)
    mask = pc.is_in(dropped["reason"], value_set=pa.array(["exact_duplicate", "near_duplicate"]))
    details = dropped["detail"].filter(mask).drop_null().to_pylist()
    if not details:
        return None
    return Counter(n + 1 for n in Counter(details).values())


def _clusters(steps: list[Step]) -> str:
    plots = []
    for step in steps:
        sizes = _cluster_sizes(step.folder)
        if sizes:
            plots.append(figures.cluster_sizes(f"{step.name}: documents per duplicate group", dict(sizes)))
    if not plots:
        return ""
    inner = "".join(f"<figure>{p}</figure>" for p in plots)
    return f"<h2>Dedup cluster sizes</h2><div class=plots>{inner}</div>"


def _manifests(steps: list[Step]) -> str:
    parts = ["<h2>Manifests</h2><p class=muted>Params, seed, timings and versions of each step.</p>"]
    for step in steps:
        m = step.manifest
        detail: dict[str, Any] = {
            "params": m.params,
            "seed": m.seed,
            "fingerprint": m.fingerprint,
            "seconds": m.seconds,
            "summary": {k: v for k, v in m.summary.items() if k not in ("s_curve", "training")},
            "versions": m.versions,
        }
        parts.append(
            f"<details><summary>{_e(step.name)} <span class=muted>({_e(m.stage)}, {_e(step.folder)})</span>"
            f"</summary><pre>{_e(json.dumps(detail, indent=2, default=str))}</pre></details>"
        )
    return "".join(parts)


def write_report(output: Path, destination: Path | None = None) -> Path:
    """Write the report (default: OUTPUT/report.html) and return its path."""
    output = storage.location(output)
    last = final_set(output)
    chain_steps = list(reversed(lineage(last)))
    chain = facts.run_steps(last, [storage.location(s.path) for s in chain_steps])
    steps = facts.run_steps(output, [storage.location(s.path) for s in chain_steps])
    colours = reason_colors(r for s in steps for r, n in s.manifest.totals.dropped.items() if n)
    sources = sorted({f for s in chain_steps for f in s.raw_files})
    first, final = chain[0].manifest.totals.rows_in, chain[-1].manifest.totals.rows_out
    about = f"Final shard set: {_e(last)}"
    if first:
        raw = _e(", ".join(sources) or "-")
        about += f": {final:,} of {first:,} rows kept ({final / first:.1%}). Raw input: {raw}"
    body = [
        f"<h1>thresher report: {_e(output)}</h1>",
        f"<p>{about}.</p>",
        _funnel(chain, steps, colours),
        _lineage_table(steps, colours),
        _score_cuts(steps),
        _examples(steps, colours),
        _classifiers(steps),
        _ablations(steps),
        _distributions(last),
        _clusters(steps),
        _manifests(steps),
    ]
    page = (
        "<!doctype html><html><head><meta charset=utf-8><title>thresher report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
    destination = storage.location(destination) if destination else output / "report.html"
    with atomic_open(destination, "w", encoding="utf-8") as f:
        f.write(page)
    return destination
