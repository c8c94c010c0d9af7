"""A third-party package adds stages through the `thresher.stages` entry points, installed for real."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import random_corpus, run_cli, write_shards

PLUGIN = Path(__file__).parent / "plugin_pkg"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Build from a copy: setuptools writes build/ and egg-info next to the sources.
    src = tmp_path_factory.mktemp("plugin_src")
    for f in PLUGIN.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", str(src)], check=True, capture_output=True
    )
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "thresher-wordstats"], check=True, capture_output=True)


def test_plugin_stages_are_listed_with_params(installed_plugin: None) -> None:
    out = run_cli("stages").stdout
    assert "word-count" in out and "vocab-fit" in out and "min_words=0" in out
    assert "exact-dedup" in out and "left out" not in out


def test_the_map_stage_example_is_short_and_imports_only_the_public_api() -> None:
    source = (PLUGIN / "thresher_wordstats.py").read_text()
    assert len(source.splitlines()) <= 15
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports and all(line.startswith("from thresher.api import ") for line in imports)


def test_plugin_map_stage_runs_and_reruns_only_changed_shards(installed_plugin: None, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    table = random_corpus(600, seed=11, dup_rate=0.0)
    texts = [t if i % 4 else "too short" for i, t in enumerate(table["text"].to_pylist())]
    table = table.set_column(1, "text", pa.array(texts))
    write_shards(table, corpus, rows_per_shard=200)
    out = tmp_path / "out"
    run_cli("apply", "word-count", str(corpus), str(out), "-p", "min_words=5", "-w", "2", "-q")
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["totals"] == {
        "rows_in": 600,
        "rows_out": 450,
        "dropped": {"too_few_words": 150},
        "tokens": None,
    }
    kept = pq.read_table(out)
    assert kept["n_words"].to_pylist() == [30] * 450
    assert set(pq.read_table(out / "_dropped")["reason"].to_pylist()) == {"too_few_words"}

    records = sorted((out / "_thresher" / "tasks" / "00-map").glob("*.json"))
    before = [p.stat().st_mtime_ns for p in records]
    pq.write_table(table.slice(400, 100), corpus / "part-00002.parquet")
    run_cli("apply", "word-count", str(corpus), str(out), "-p", "min_words=5", "-w", "1", "-q")
    after = [p.stat().st_mtime_ns for p in records]
    assert after[:2] == before[:2] and after[2] != before[2]
    assert json.loads((out / "_manifest.json").read_text())["totals"]["rows_in"] == 500


def test_plugin_fit_stage_writes_a_recorded_artifact(installed_plugin: None, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(300, seed=12), corpus, rows_per_shard=100)
    out = tmp_path / "model"
    run_cli("apply", "vocab-fit", str(corpus), str(out), "-p", "top=5", "-q")
    vocab = json.loads((out / "vocab.json").read_text())
    assert len(vocab) == 5 and all(isinstance(v, int) for v in vocab.values())
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [a["path"] for a in manifest["artifacts"]] == ["vocab.json"]
    assert manifest["outputs"] == [] and manifest["tasks"][0]["extra"]["counters"]["distinct_words"] > 5
    # The engine sums the tasks' counters into the summary; the stage writes no summarize for it.
    assert manifest["summary"]["counters"] == manifest["tasks"][0]["extra"]["counters"]


def test_unknown_plugin_param_is_a_usage_error(installed_plugin: None, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(10, seed=13), corpus, rows_per_shard=10)
    proc = run_cli("apply", "word-count", str(corpus), str(tmp_path / "o"), "-p", "min_wrds=3", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "min-wrds" in proc.stderr
