"""`thresher report` on a real run: the web recipe on sample data, a tokenize step on its output and a tiny
ablation, each reported and rendered in headless Chromium; the assertions read the HTML and the
screenshots' pixels (reason colours present, the funnel's legend beside its bars, not over them)."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from browser import screenshot
from conftest import read_rows
from factories import run_cli, write_shards
from scipy import ndimage
from test_ablate import TINY, noise, sentences
from test_tokenize import build_tokenizer
from typer.testing import CliRunner

from thresher.cli.app import app
from thresher.pipelines.report.palette import KEPT, PALETTE, reason_colors

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "web-pretrain.yaml"
CHIP = re.compile(r'<span class=chip style="background:(#[0-9a-f]{6})"></span>([^<]+)</span>')


# ---------------------------------------------------------------------------------------------------------
# helpers


class _Tables(HTMLParser):
    """The text of every cell of every `<table class=NAME>`, by NAME (the report's own markup)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("class") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def colour_mask(pixels: np.ndarray, colour: str, tolerance: int = 4) -> np.ndarray:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return (np.abs(pixels - rgb) <= tolerance).all(axis=2)


def blobs(mask: np.ndarray, min_pixels: int = 12) -> list[tuple[int, int, int, int]]:
    """(x0, x1, y0, y1) of each connected patch of at least `min_pixels` (antialiased slivers are not)."""
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    found = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None and sizes[i] >= min_pixels:
            found.append((box[1].start, box[1].stop, box[0].start, box[0].stop))
    return found


def report(*args: str | Path) -> str:
    """`thresher report ...` in-process (matplotlib loads once for every report of the module)."""
    result = CliRunner().invoke(app, ["report", *(str(a) for a in args)])
    assert result.exit_code == 0, result.output
    return result.output


def manifest(folder: Path) -> dict:
    return json.loads((folder / "_manifest.json").read_text(encoding="utf-8"))


def chips(page: str) -> dict[str, str]:
    """Reason -> the colour of its chip in the report's tables."""
    found: dict[str, str] = {}
    for colour, name in CHIP.findall(page):
        assert found.setdefault(html.unescape(name), colour) == colour, f"{name}: two colours in one report"
    return found


# ---------------------------------------------------------------------------------------------------------
# fixtures: one recipe run, one tokenize step on it, one tiny ablation


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The web recipe on the first 600 sample documents (duplicates, rule drops, a classifier, buckets)."""
    raw = tmp_path_factory.mktemp("raw") / "web.jsonl"
    lines = (REPO / "sample_data" / "web.jsonl").read_text().splitlines(keepends=True)[:600]
    raw.write_text("".join(lines))
    out = tmp_path_factory.mktemp("run") / "web"
    run_cli("run", str(RECIPE), "-i", str(raw), "-o", str(out), "-w", "2", "-q")
    assert str(out / "report.html") in report(out).replace("\n", "")
    return out


@pytest.fixture(scope="module")
def page(run: Path) -> str:
    return (run / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenized(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    tokenizer = build_tokenizer(folder / "tokenizer.json")
    low = folder / "10-low-ppl"
    run_cli("filter", str(run / "09-perplexity-kenlm"), str(low), "--where", "kenlm_ppl < 2.2", "-q")
    out = folder / "11-tokens"
    run_cli("tokenize", str(low), str(out), "--tokenizer", str(tokenizer), "-q")
    report(out)
    return out


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ablation")
    write_shards(noise(200, 1), root / "noise", rows_per_shard=200)
    write_shards(sentences(200, 2), root / "clean", rows_per_shard=200)
    write_shards(sentences(60, 3), root / "heldout", rows_per_shard=60)
    out = root / "out"
    run_cli(
        *("ablate", str(out), "--train", f"noise={root / 'noise'}", "--train", f"clean={root / 'clean'}"),
        *("--eval", f"clean={root / 'heldout'}", "--tokens", "2000", "--seeds", "2", "--vocab-size", "300"),
        *TINY,
        *("--device", "cpu", "--threads", "1", "-w", "2", "-q"),
    )
    report(out)
    return out


# ---------------------------------------------------------------------------------------------------------
# colours


def test_reason_colours_depend_on_the_name_and_differ_within_a_report() -> None:
    builtin = ["exact_duplicate", "near_duplicate", "gopher_word_count", "c4_curly_bracket", "unlabelled"]
    crowd = [*builtin, *(f"plugin_reason_{i}" for i in range(40))]
    colours = reason_colors(crowd)
    assert len(set(colours.values())) == len(crowd)  # past the palette's 24 too
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) and c != KEPT for c in colours.values())
    assert reason_colors(reversed(crowd + crowd)) == colours  # order and repeats do not matter
    # A reason keeps its own colour (the one it has alone) in any report, unless a name sorting before
    # it in that report wants the same palette slot.
    alone = {name: reason_colors([name])[name] for name in crowd}
    assert set(alone.values()) <= set(PALETTE)
    keepers = [n for n in crowd if not any(m < n and alone[m] == alone[n] for m in crowd)]
    assert {n: colours[n] for n in keepers} == {n: alone[n] for n in keepers}
    assert 5 < len(keepers) < len(crowd)  # some collide in a crowd of 45: the rule above was exercised
    few = reason_colors(builtin)
    assert few == {n: alone[n] for n in builtin}  # the built-in five are all on their own slots


def test_counts_spanning_orders_of_magnitude_get_a_log_axis() -> None:
    from thresher.pipelines.report import figures

    colours = ["#1f77b4", "#ff7f0e"]
    wide = figures.drops(["a: x", "b: y"], [3, 3000], colours)
    assert "<!-- rows dropped (log scale) -->" in wide and "<!-- 1,000 -->" in wide
    narrow = figures.drops(["a: x", "b: y"], [3, 30], colours)
    assert "<!-- rows dropped -->" in narrow and "log scale" not in narrow
    assert figures.drops(["a: x"], [7], colours[:1]) == figures.drops(["a: x"], [7], colours[:1])


def test_screenshot_shows_each_reason_in_its_colour_and_the_legend_beside_the_bars(
    run: Path, page: str, tokenized: Path, tmp_path: Path
) -> None:
    colours = chips(page)
    drops = {r for d in sorted(run.glob("[0-9]*")) for r, n in manifest(d)["totals"]["dropped"].items() if n}
    assert set(colours) == drops and len(set(colours.values())) == len(colours)
    assert colours == reason_colors(drops)
    # Another report (a single shard set; some reasons the same, one new) gives the shared reasons the
    # same colours, and its new one a colour of its own.
    other = chips((tokenized / "report.html").read_text(encoding="utf-8"))
    assert set(other) - set(colours) == {"where"} and len(set(other.values())) == len(other)
    assert all(colours[r] == c for r, c in other.items() if r in colours)

    pixels = screenshot(run / "report.html", tmp_path / "report.png", 1800)
    for reason, colour in colours.items():
        # Bars in the funnel and the per-reason chart, a legend swatch, the lineage table's chip.
        assert colour_mask(pixels, colour).sum() >= 150, f"{reason} ({colour}) not drawn"
    assert colour_mask(pixels, KEPT).sum() > 20_000

    # The funnel alone, exactly the SVG the report holds, so the analysis sees only its bars and legend.
    funnel = re.search(r"<h2>Funnel[^<]*</h2><figure>(<svg.*?</svg>)\s*</figure>", page, re.S)
    assert funnel
    alone = tmp_path / "funnel.html"
    alone.write_text(f"<!doctype html><html><body style='margin:0'>{funnel.group(1)}</body></html>")
    pixels = screenshot(alone, tmp_path / "funnel.png", 900)
    chain = [d for d in sorted(run.glob("[0-9]*")) if d.name not in ("05-quality-train", "08-kenlm")]
    in_funnel = list(
        dict.fromkeys(r for d in chain for r, n in sorted(manifest(d)["totals"]["dropped"].items()) if n)
    )
    entries = {"kept": KEPT, **{r: colours[r] for r in in_funnel}}
    swatches: dict[str, tuple[int, int, int, int]] = {}
    bars: list[tuple[int, int, int, int]] = []
    for name, colour in entries.items():
        found = blobs(colour_mask(pixels, colour))
        assert found, f"{name}: no legend entry or bar in the funnel"
        swatch = max(found, key=lambda b: b[0])  # the legend is the rightmost patch of each colour
        swatches[name] = swatch
        bars += [b for b in found if b is not swatch]
    assert len(blobs(colour_mask(pixels, KEPT))) == len(chain) + 1  # a kept bar per step, and the swatch
    # The swatches are one column, in the order the bars stack (kept, then reasons as steps drop them) ...
    assert max(s[0] for s in swatches.values()) - min(s[0] for s in swatches.values()) <= 2
    assert sorted(swatches, key=lambda n: swatches[n][2]) == list(entries)
    # ... right of every bar: the legend covers none.
    assert min(s[0] for s in swatches.values()) > max(b[1] for b in bars)


# ---------------------------------------------------------------------------------------------------------
# the HTML


def test_lineage_is_a_table_of_every_step(run: Path, page: str) -> None:
    rows = tables(page)["lineage"]
    assert rows[0] == [
        "step",
        "stage",
        "input",
        "rows in",
        "rows out",
        "dropped, by reason",
        "tokens",
        "seconds",
        "fingerprint",
    ]
    folders = sorted(d for d in run.iterdir() if (d / "_manifest.json").exists())
    assert [r[0] for r in rows[1:]] == [d.name for d in folders]
    for row, folder in zip(rows[1:], folders, strict=True):
        m = manifest(folder)
        dropped = {r: n for r, n in m["totals"]["dropped"].items() if n}
        assert row[1] == m["stage"]
        assert row[3:5] == [f"{m['totals']['rows_in']:,}", f"{m['totals']['rows_out']:,}"]
        shown = dict(line.rsplit(": ", 1) for line in row[5].splitlines()) if dropped else {}
        assert shown == {r: f"{n:,}" for r, n in dropped.items()}
        assert m["fingerprint"].split(":")[1].startswith(row[8]) and len(row[8]) == 12
        # Tokens are known from the recipe's last step (tokenize) on, not before.
        tokens = m["totals"].get("tokens")
        assert row[6] == (f"{tokens:,}" if tokens is not None else "-")
        assert (tokens is not None) == (m["stage"] == "tokenize")
    assert rows[1][2] == "web.jsonl" and rows[2][2] == "00-ingest" and rows[6][2] == "02-minhash-dedup"
    # The raw JSON is still there for whoever wants it, folded away.
    assert page.count("<details>") == len(folders)


def test_tokens_per_step_come_from_n_tokens(tokenized: Path) -> None:
    page = (tokenized / "report.html").read_text(encoding="utf-8")
    rows = tables(page)["lineage"]
    tokens = sum(row["n_tokens"] for row in read_rows(tokenized))
    assert tokens == manifest(tokenized)["summary"]["tokens"] > 0
    assert rows[-1][0] == "11-tokens" and rows[-1][1] == "tokenize" and rows[-1][6] == f"{tokens:,}"
    assert rows[-2][6] == "-"  # before the tokenize step nothing counted tokens
    # A single shard set's report: its lineage back to ingest, without the recipe's side steps ...
    assert [r[0] for r in rows[1:]] == [
        "00-ingest",
        "01-exact-dedup",
        "02-minhash-dedup",
        "03-heuristics",
        "04-pii",
        "06-quality-score",
        "07-top-quality",
        "09-perplexity-kenlm",
        "10-low-ppl",
        "11-tokens",
    ]
    # ... but the classifier the scoring step used is still found through its params.
    assert "classifier" in tables(page)
    # A `--where` threshold is a cutoff too: kept rows all left of it, some of the input right of it.
    kept, before, cut_x, svg = _cut_figure(page, "10-low-ppl", "kenlm_ppl", [2.2])
    assert "kenlm_ppl &lt; 2.2" in svg or "kenlm_ppl < 2.2" in svg
    width = min(x1 - x0 for x0, x1 in kept)
    assert all(x0 <= cut_x + width / 2 for x0, _ in kept) and any(x0 > cut_x for x0, _ in before)


def _cut_figure(
    page: str, step: str, column: str, cutoffs: list[float]
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], float, str]:
    """The (x0, x1) of the kept and the input bars of a step's cutoff histogram, its first cutoff line's
    x, and its SVG; asserting the figure records `cutoffs` and draws the line vertically."""
    figure = re.search(
        rf'<figure class=cut data-step="{step}" data-column="{column}" data-cutoffs="([^"]*)">(.*?)</figure>',
        page,
        re.S,
    )
    assert figure and [float(v) for v in figure.group(1).split()] == cutoffs
    svg = figure.group(2)
    line = re.search(r'<g id="cutoff-0">\s*<path d="M ([\d.]+) ([\d.]+)\s*L ([\d.]+) ([\d.]+)', svg)
    assert line and line.group(1) == line.group(3) and line.group(2) != line.group(4)  # a vertical line
    kept, before = [], []
    axes = svg.split('<g id="legend_')[0]  # the legend's swatches are not bars
    for d, fill in re.findall(r'<path d="([^"]+)"[^>]*style="fill: (#[0-9a-f]{6})"', axes):
        xs = [float(x) for x in re.findall(r"[ML] ([\d.]+) [\d.]+", d)]
        ys = {float(y) for y in re.findall(r"[ML] [\d.]+ ([\d.]+)", d)}
        if len(ys) > 1 and len(xs) == 4:  # a bar: four corners (an empty bin's are on one line)
            (kept if fill == KEPT else before).append((min(xs), max(xs)))
    assert kept and before
    return kept, before, float(line.group(1)), svg


def test_filter_histograms_draw_the_cutoffs(run: Path, page: str) -> None:
    top = manifest(run / "07-top-quality")["summary"]
    # Before (grey, the input) and after (green, what was kept): every kept bar lies at or right of the
    # top-fraction cutoff, and some input bars lie left of it.
    kept, before, cut_x, svg = _cut_figure(page, "07-top-quality", "quality_score", [top["cutoff_score"]])
    assert "<!-- rows (log scale) -->" in svg  # 1 to 100+ rows a bin: a log axis, labelled so
    width = min(x1 - x0 for x0, x1 in kept)
    assert all(x1 >= cut_x - width / 2 for _, x1 in kept)
    assert any(x1 < cut_x for _, x1 in before)
    # The perplexity buckets: one histogram of the added score with both bucket cutoffs.
    buckets = manifest(run / "09-perplexity-kenlm")["summary"]["cutoffs"]
    figure = re.search(
        r'data-step="09-perplexity-kenlm" data-column="kenlm_ppl" data-cutoffs="([^"]*)">(.*?)</figure>',
        page,
        re.S,
    )
    assert figure and [float(v) for v in figure.group(1).split()] == buckets
    assert 'id="cutoff-0"' in figure.group(2) and 'id="cutoff-1"' in figure.group(2)
    assert "head | middle" in figure.group(0) and "middle | tail" in figure.group(0)


def test_examples_show_dropped_documents_escaped_and_cut(run: Path, page: str) -> None:
    rows = tables(page)["examples"][1:]
    texts = {row["id"]: row["text"] for row in read_rows(run / "00-ingest")}
    dropped = {}
    for d in sorted(run.glob("[0-9]*/_dropped")):
        for row in pq.read_table(d).to_pylist():
            dropped[row["id"]] = row
    per_reason: dict[str, int] = {}
    escaped = 0
    for row in rows:
        *_, id_, detail, text = row
        assert dropped[id_]["detail"] == detail
        per_reason[dropped[id_]["reason"]] = per_reason.get(dropped[id_]["reason"], 0) + 1
        original = texts[id_]
        if len(original) > 300:
            cut = re.fullmatch(r"(.*) \(([\d,]+) characters\)", text, re.S)
            assert cut and cut.group(2) == f"{len(original):,}"
            shown, expected = cut.group(1), original[:300].rstrip() + " …"
        else:
            shown, expected = text, original
        assert shown == expected.strip()  # the cell's text, as the browser reads it: unescaped
        special = [line for line in shown.splitlines() if any(c in line for c in "<>&")]
        if special:
            escaped += 1
            assert html.escape(special[0]) in page and special[0] not in page
    assert escaped  # the sample's spam has '<=' and '&&&': the escaping was exercised
    reasons = {
        r: n for d in sorted(run.glob("[0-9]*")) for r, n in manifest(d)["totals"]["dropped"].items() if n
    }
    reasons.pop("unlabelled")  # quality-train reads labels; it writes no _dropped/ rows
    assert per_reason == {r: min(n, 3) for r, n in reasons.items()}


def test_classifier_metrics_and_reliability(run: Path, page: str) -> None:
    summary = manifest(run / "05-quality-train")["summary"]
    held = summary["heldout"]
    rows = dict(tables(page)["classifier"][1:])
    for name, key in (("precision", "precision"), ("recall", "recall"), ("F1", "f1"), ("ROC AUC", "roc_auc")):
        assert rows[name] == f"{held[key]:.4f}"
    assert rows["held-out rows"] == ", ".join(f"{k}: {v:,}" for k, v in summary["heldout_rows"].items())
    saved = json.loads((run / "05-quality-train" / "metrics.json").read_text())["heldout_predictions"]
    assert saved["rows"] == saved["saved"] == len(saved["label"]) == held["heldout_rows"]
    assert sum(saved["label"]) == held["positives"] and all(0 <= p <= 1 for p in saved["probability"])
    assert "heldout_predictions" not in summary  # the manifest stays small
    # Calibration error from the saved predictions, recomputed here with its definition.
    y, p = np.array(saved["label"], bool), np.array(saved["probability"])
    which = np.minimum((p * 10).astype(int), 9)
    error = sum(
        abs(y[which == b].mean() - p[which == b].mean()) * (which == b).sum() for b in set(which)
    ) / len(y)
    assert rows["expected calibration error"] == f"{error:.4f}"
    assert re.search(r"<figure class=reliability><svg", page)


def test_report_is_offline_and_the_same_bytes_every_time(run: Path, page: str, tmp_path: Path) -> None:
    assert not any(tag in page for tag in ("<script", "<link", "<img", 'src="http', 'href="http', "@import"))
    again = tmp_path / "again.html"
    run_cli("report", str(run), "--to", str(again))  # another process: nothing random in the SVG ids
    assert again.read_bytes() == (run / "report.html").read_bytes()


def test_ablation_report_has_the_table_and_learning_curves(ablation: Path, tmp_path: Path) -> None:
    page = (ablation / "report.html").read_text(encoding="utf-8")
    results = json.loads((ablation / "ablation.json").read_text())
    training = manifest(ablation)["summary"]["training"]
    assert all(t["tokens_per_step"] == 8 * 32 for t in training)  # --batch-size 8, --context-length 32
    rows = tables(page)["ablation"]
    assert rows[0] == [
        "train",
        "eval",
        "loss ± std (nats/token)",
        "perplexity",
        "vs noise [95% interval]",
        "seeds",
        "tokens/s",
    ]
    by_train = {r[0].removesuffix(" (baseline)"): r for r in rows[1:]}
    assert by_train["noise"][0] == "noise (baseline)" and by_train["noise"][4] == "-"
    for cell in results["results"]:
        row = by_train[cell["train"]]
        assert row[1] == cell["eval"] and row[2] == f"{cell['loss_mean']:.4f} ± {cell['loss_std']:.4f}"
        rate = np.mean([t["tokens_per_second"] for t in training if t["train"] == cell["train"]])
        assert row[6] == f"{rate:,.0f}"
    clean = by_train["clean"]
    cell = next(c for c in results["results"] if c["train"] == "clean")
    assert clean[4] == f"{cell['diff']:+.4f} [{cell['diff_low']:+.4f}, {cell['diff_high']:+.4f}]"
    # Learning curves: per model a training-loss line against tokens; the last point is the budget.
    curves = re.search(r"<figure class=curves>(<svg.*?</svg>)\s*</figure>", page, re.S)
    assert curves and "training tokens" in curves.group(1)
    assert max(h["step"] for t in training for h in t["history"]) * 256 >= results["tokens_per_model"]
    alone = tmp_path / "curves.html"
    alone.write_text(f"<!doctype html><html><body style='margin:0'>{curves.group(1)}</body></html>")
    pixels = screenshot(alone, tmp_path / "curves.png", 600)
    for colour in PALETTE[:2]:  # one colour per train set, baseline first
        assert colour_mask(pixels, colour, tolerance=10).sum() > 100
