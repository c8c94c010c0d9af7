"""The engine may change; its output may not. The model-free stages of the web-pretrain recipe, run on the
bundled sample data, must write the same Parquet bytes as the engine that recorded tests/golden/web.json.

A change that alters outputs on purpose (a rule fixed, a default changed) records new digests with
`python tests/test_golden_outputs.py` and says why in its commit.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import xxhash

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "web.json"

# The chain of recipes/web-pretrain.yaml up to its first model, each step as its own command.
STEPS: list[tuple[str, list[str]]] = [
    ("00-ingest", ["ingest", str(REPO / "sample_data" / "web.jsonl")]),
    ("01-exact", ["dedup", "exact", "{prev}"]),
    ("02-minhash", ["dedup", "minhash", "{prev}"]),
    (
        "03-heuristics",
        ["heuristics", "{prev}", "--word-blocklist", str(REPO / "recipes" / "blocklists" / "spam-words.txt")],
    ),
    ("04-pii", ["pii", "{prev}"]),
    ("05-filter", ["filter", "{prev}", "--where", "domain != 'forum'"]),
]


def folder_digest(folder: Path) -> str:
    """One digest of every Parquet file a stage wrote (kept and dropped), by relative path and bytes."""
    h = xxhash.xxh3_128()
    for path in sorted(folder.rglob("*.parquet")):
        rel = path.relative_to(folder)
        if rel.parts[0] == "_thresher":
            continue
        h.update(rel.as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def run_steps(invoke: Callable[[list[str]], int], root: Path) -> dict[str, str]:
    digests: dict[str, str] = {}
    prev = ""
    for name, args in STEPS:
        out = root / name
        argv = [a.replace("{prev}", prev) for a in args]
        code = invoke([*argv, str(out), "--workers", "2", "--seed", "0", "-q"])
        assert code == 0, (name, argv)
        digests[name] = folder_digest(out)
        prev = str(out)
    return digests


def test_sample_outputs_are_byte_identical_to_the_recorded_ones(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from thresher.cli.app import app

    runner = CliRunner()

    def invoke(argv: list[str]) -> int:
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.output
        return result.exit_code

    recorded = json.loads(GOLDEN.read_text())
    assert run_steps(invoke, tmp_path) == recorded


if __name__ == "__main__":
    import tempfile

    from typer.testing import CliRunner

    from thresher.cli.app import app

    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        digests = run_steps(lambda argv: runner.invoke(app, argv).exit_code, Path(tmp))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(digests, indent=2) + "\n")
    sys.stdout.write(f"wrote {GOLDEN}\n")
