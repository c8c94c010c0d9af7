"""`thresher select dsir` end to end: rows like the target set are the ones kept (top and resampled), the
same rows for 1 and 2 workers, every other row in _dropped with its weight."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import parquet_bytes, random_corpus, run_cli, write_shards
from test_ablate import sentences


@pytest.mark.parametrize("sample", ["top", "resample"])
def test_dsir_keeps_target_like_rows(tmp_path: Path, sample: str) -> None:
    like, unlike = sentences(200, 7), random_corpus(200, seed=8, dup_rate=0.0)
    mixed = pa.concat_tables([like, unlike.select(["id", "text"])])
    write_shards(
        mixed.take(list(range(0, 400, 2)) + list(range(1, 400, 2))), tmp_path / "in", rows_per_shard=100
    )
    write_shards(sentences(150, 9), tmp_path / "target", rows_per_shard=150)
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"out-{workers}"
        run_cli(
            "select",
            "dsir",
            str(tmp_path / "in"),
            str(out),
            "--target",
            str(tmp_path / "target"),
            "--fraction",
            "0.4",
            "--sample",
            sample,
            "-w",
            workers,
            "-q",
        )
        outs.append(out)
    assert parquet_bytes(outs[0]) == parquet_bytes(outs[1])
    kept = pq.read_table(outs[0])
    assert kept.num_rows == 160
    like_ids = set(like["id"].to_pylist())
    assert sum(i in like_ids for i in kept["id"].to_pylist()) >= 0.95 * 160
    assert "dsir_log_weight" in kept.column_names
    dropped = pq.read_table(outs[0] / "_dropped")
    assert dropped.num_rows == 240 and set(dropped["reason"].to_pylist()) == {"dsir_not_selected"}
    manifest = json.loads((outs[0] / "_manifest.json").read_text())
    assert manifest["totals"]["rows_in"] == 400 and manifest["summary"]["selected"] == 160
