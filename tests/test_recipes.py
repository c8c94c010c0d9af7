"""Recipes, the run lock, log files, make and the HTML report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from browser import screenshot
from factories import parquet_bytes, run_cli

from thresher.pipelines.engine.lock import output_lock

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "web-pretrain.yaml"


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 600 lines of the sample web set: quick, with duplicates still in it."""
    path = tmp_path_factory.mktemp("raw") / "web.jsonl"
    lines = (REPO / "sample_data" / "web.jsonl").read_text().splitlines(keepends=True)[:600]
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def recipe_run(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "web"
    proc = run_cli("run", str(RECIPE), "-i", str(raw), "-o", str(out), "-w", "2")
    assert "lineage" in proc.stdout and "minhash-dedup" in proc.stdout
    return out


def test_recipe_runs_every_step_into_numbered_folders(recipe_run: Path) -> None:
    steps = sorted(p.name for p in recipe_run.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert steps == [
        "00-ingest",
        "01-exact-dedup",
        "02-minhash-dedup",
        "03-heuristics",
        "04-pii",
        "05-quality-train",
        "06-quality-score",
        "07-top-quality",
        "08-kenlm",
        "09-perplexity-kenlm",
        "10-tokenize",
    ]
    assert all((recipe_run / s / "_manifest.json").exists() for s in steps)
    # The last step counts tokens under the KenLM step's sentencepiece model.
    totals = json.loads((recipe_run / "10-tokenize" / "_manifest.json").read_text())["totals"]
    assert totals["tokens"] > totals["rows_out"] > 0


def test_rerunning_a_finished_recipe_changes_nothing(recipe_run: Path, raw: Path) -> None:
    # Manifests keep their bytes (their mtime is touched: confirmed current) and no shard is rewritten.
    manifests = sorted(recipe_run.glob("*/_manifest.json"))
    shards = sorted(recipe_run.glob("*/*.parquet"))
    before = [m.read_bytes() for m in manifests], [p.stat().st_mtime_ns for p in shards]
    proc = run_cli("run", str(RECIPE), "-i", str(raw), "-o", str(recipe_run), "-w", "1")
    assert ([m.read_bytes() for m in manifests], [p.stat().st_mtime_ns for p in shards]) == before
    assert "up to date" in proc.stderr


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stages:\n  - stage: ingest\n  - stage: exact-dedupe\n", "r.yaml:3: unknown stage 'exact-dedupe'"),
        (
            "stages:\n  - stage: ingest\n  - stage: minhash-dedup\n    params: {threshold: high}\n",
            "r.yaml:3: stage minhash-dedup: threshold: Input should be a valid number",
        ),
        (
            "stages:\n  - stage: ingest\n  - stage: exact-dedup\n    params: {lowercas: true}\n",
            "r.yaml:3: stage exact-dedup has no param(s) lowercas",
        ),
        (
            "stages:\n  - stage: ingest\n  - stage: exact-dedup\n    input: minhash-dedup\n"
            "  - stage: minhash-dedup\n",
            "r.yaml:3: step 'exact-dedup' refers to 'minhash-dedup': a later step or itself (a cycle)",
        ),
        (
            "stages:\n  - stage: ingest\n  - stage: exact-dedup\n    input: exact-dedup\n",
            "a later step or itself (a cycle)",
        ),
        ("stages: []\n", "non-empty `stages:` list"),
        ("stages:\n  - stage: ingest\n  stage: [\n", "not valid YAML"),
    ],
)
def test_bad_recipes_fail_before_anything_runs(tmp_path: Path, raw: Path, text: str, message: str) -> None:
    out = tmp_path / "out"
    proc = run_cli("run", str(_recipe(tmp_path, text)), "-i", str(raw), "-o", str(out), check=False)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert not out.exists()


def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(
        "run", str(RECIPE), "-i", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o"), check=False
    )
    assert proc.returncode == 2 and "nope.jsonl: input does not exist" in proc.stderr


def test_second_run_on_a_locked_output_exits_75(recipe_run: Path, raw: Path) -> None:
    with output_lock(recipe_run):
        proc = run_cli("run", str(RECIPE), "-i", str(raw), "-o", str(recipe_run), check=False)
    assert proc.returncode == 75
    assert "another thresher run is writing here" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    run_cli("run", str(RECIPE), "-i", str(raw), "-o", str(recipe_run), "-q")  # free again afterwards


def test_log_file_gets_plain_records(raw: Path, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "run.log"
    proc = run_cli(
        "run", str(RECIPE), "-i", str(raw), "-o", str(tmp_path / "o"), "-q", "--log-file", str(log), "-w", "1"
    )
    assert proc.stderr == ""  # --quiet keeps the console silent ...
    text = log.read_text()  # ... while the file gets every record, without terminal escapes
    assert "exact-dedup/filter: task part-" in text and "minhash-dedup: finished" in text
    assert "\x1b[" not in text


def test_recipes_makefile_reruns_only_stale_stages(raw: Path, tmp_path: Path) -> None:
    thresher = str(Path(sys.executable).parent / "thresher")
    args = [
        "make",
        "-f",
        str(REPO / "recipes" / "Makefile"),
        f"RAW={raw}",
        f"OUT={tmp_path / 'out'}",
        f"THRESHER={thresher}",
    ]
    first = subprocess.run([*args, "-j2"], capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(thresher) == 3
    again = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert thresher not in again.stdout and "Nothing to be done" in again.stdout


def test_report_is_self_contained_and_renders_in_a_browser(recipe_run: Path, tmp_path: Path) -> None:
    proc = run_cli("report", str(recipe_run))
    report = recipe_run / "report.html"
    assert str(report) in proc.stdout.replace("\n", "")
    page = report.read_text()
    assert page.count("<svg") >= 4  # funnel, text length, two cluster-size plots
    # Nothing to fetch: no scripts, stylesheets, images or fonts from anywhere (XML namespaces are names).
    assert not any(tag in page for tag in ("<script", "<link", "<img", 'src="http', 'href="http', "@import"))
    assert "exact_duplicate" in page and "near_duplicate" in page

    pixels = screenshot(report, tmp_path / "report.png", 1600)
    not_white = (pixels < 235).any(axis=2)
    assert not_white.mean() > 0.05, "the screenshot is (nearly) blank"
    # The funnel's green "kept" bars were drawn: plots rendered, not just text.
    green = (pixels[..., 1] > pixels[..., 0] + 40) & (pixels[..., 1] > pixels[..., 2] + 40)
    assert green.sum() > 2000


def test_recipe_output_equals_running_the_stages_by_hand(recipe_run: Path, raw: Path, tmp_path: Path) -> None:
    run_cli("ingest", str(raw), str(tmp_path / "a"), "--rows-per-shard", "1000", "--empty", "drop", "-q")
    run_cli("dedup", "exact", str(tmp_path / "a"), str(tmp_path / "b"), "-q")
    assert parquet_bytes(tmp_path / "b") == parquet_bytes(recipe_run / "01-exact-dedup")


def test_step_resources_are_checked_by_executor(tmp_path: Path) -> None:
    from thresher.pipelines.engine.errors import ThresherError
    from thresher.pipelines.engine.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "stages:\n  - stage: exact-dedup\n    slurm: {gres: 'gpu:1', mem: 8G}\n    ray: {num_gpus: 1}\n"
    )
    step = load_recipe(recipe).steps[0]
    assert step.resources == {"slurm": {"gres": "gpu:1", "mem": "8G"}, "ray": {"num_gpus": 1}}
    recipe.write_text("stages:\n  - stage: exact-dedup\n    slurm: {gpus: 1}\n")
    with pytest.raises(ThresherError, match=r"r.yaml:2: unknown `slurm:` key\(s\) gpus; allowed: args, cpus"):
        load_recipe(recipe)
    recipe.write_text("stages:\n  - stage: exact-dedup\n    ray: 4\n")
    with pytest.raises(ThresherError, match="`ray:` must be a mapping"):
        load_recipe(recipe)


def test_every_step_resource_key_reaches_an_executor_option() -> None:
    from thresher.cli.executor_options import EXECUTOR_KEYS, RAY_STEP_KEYS, SLURM_STEP_KEYS
    from thresher.pipelines.engine.recipe import RESOURCE_KEYS

    assert set(SLURM_STEP_KEYS) == RESOURCE_KEYS["slurm"] and set(RAY_STEP_KEYS) == RESOURCE_KEYS["ray"]
    assert set(SLURM_STEP_KEYS.values()) | set(RAY_STEP_KEYS.values()) <= set(EXECUTOR_KEYS)
