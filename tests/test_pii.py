"""PII: each kind found where it is and not where it is not (Luhn included); the stage in its three modes."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_manifest, read_rows
from factories import write_shards
from test_bad_input import assert_user_error

from thresher.pipelines.stages.pii.patterns import KINDS, luhn_valid, scan
from thresher.pipelines.testing import sample_data
from thresher.pipelines.testing.sample_data import generate_web

CASES = {
    "email": (
        ["Write to mara.velt@example.com today.", "x <ilse+news@mail.example.org>", "a_b-c@sub.domain.co"],
        ["an @ sign alone", "user at example dot com", "name@localhost", "@handle on social media"],
    ),
    "phone": (
        ["Call 555-0142 now.", "Desk: (201) 555-0123.", "Or 201-555-0199", "+1 201.555.0100 any time"],
        ["In 2019-2020 it grew.", "Room 12-34.", "ISBN 978-3-16", "about 1234 5678 things"],
    ),
    "ip": (
        [
            "The server at 192.0.2.17 failed.",
            "from 10.0.0.1:8080",
            "255.255.255.255",
            "Reach it on 2001:db8::8a2e:370:7334 today.",
            "full form 2001:0DB8:85a3:0000:0000:8a2e:0370:7334.",
            "link fe80::1ff:fe23:4567:890a%eth0",
        ],
        [
            "Version 1.2.3 shipped.",
            "256.1.1.1 is not an address",
            "the 3.5 release",
            "10.0.0",
            "std::vector<int> in C++",
            "at 12:30:45 sharp",
            "mac 00:1a:2b:3c:4d:5e",
            "slice x[::2] and ::1",
        ],
    ),
    "credit_card": (
        ["Card 4111 1111 1111 1111 was charged.", "use 5500-0000-0000-0004", "pay 4012888888881881"],
        ["Card 4111 1111 1111 1112 failed Luhn.", "order 12345678", "tel 0049 30 1234567 89 1"],
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_found_and_redacted(kind: str) -> None:
    positives, negatives = CASES[kind]
    found = scan(pa.array(positives + negatives), [kind])
    counts = found.per_doc[kind].tolist()
    assert counts == [1] * len(positives) + [0] * len(negatives), list(
        zip(positives + negatives, counts, strict=True)
    )
    placeholder = {
        "email": "<EMAIL>",
        "phone": "<PHONE>",
        "ip": "<IP_ADDRESS>",
        "credit_card": "<CREDIT_CARD>",
    }
    redacted = found.redacted.to_pylist()
    assert all(placeholder[kind] in t for t in redacted[: len(positives)])
    assert redacted[len(positives) :] == negatives


def test_luhn_matches_known_numbers_and_the_generators_check() -> None:
    assert luhn_valid("4111 1111 1111 1111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("")
    rng = random.Random(0)
    for _ in range(2000):
        number = "".join(str(rng.randrange(10)) for _ in range(rng.randint(12, 19)))
        assert luhn_valid(number) == sample_data.luhn_valid(number), number


def test_all_kinds_together_and_nulls_stay_null() -> None:
    text = "Mail bob@example.com, call (201) 555-0123, card 4111-1111-1111-1111, host 198.51.100.4."
    found = scan(pa.array([text, None], pa.string()), KINDS)
    assert found.redacted.to_pylist() == [
        "Mail <EMAIL>, call <PHONE>, card <CREDIT_CARD>, host <IP_ADDRESS>.",
        None,
    ]
    assert dict(found.totals) == {"email": 1, "credit_card": 1, "ip": 1, "phone": 1}
    assert found.kinds_of(0) == ["email", "credit_card", "ip", "phone"]


@pytest.fixture
def web(tmp_path: Path) -> tuple[Path, pa.Table]:
    sample = generate_web(600, seed=1)
    write_shards(sample.table, tmp_path / "web", rows_per_shard=200)
    return tmp_path / "web", sample.truth


def test_redact_mode_replaces_planted_pii_and_counts_kinds(
    cli: Cli, tmp_path: Path, web: tuple[Path, pa.Table]
) -> None:
    src, truth = web
    out = tmp_path / "out"
    result = cli("pii", src, out, "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert len(rows) == 600
    assert not (out / "_dropped").exists()
    planted = {
        i for i, k in zip(truth["id"].to_pylist(), truth["kind"].to_pylist(), strict=True) if k == "pii"
    }
    redacted = {
        r["id"]
        for r in rows
        if "<" in r["text"]
        and any(p in r["text"] for p in ("<EMAIL>", "<PHONE>", "<IP_ADDRESS>", "<CREDIT_CARD>"))
    }
    # Every planted document but those whose only PII is a Luhn-failing card number.
    assert redacted <= planted and len(redacted) >= 0.9 * len(planted)
    assert not any("@example." in r["text"] for r in rows)
    summary = read_manifest(out)["summary"]
    assert summary["mode"] == "redact"
    assert set(summary["matches_by_kind"]) == set(KINDS)
    assert all(n > 0 for n in summary["matches_by_kind"].values())
    assert summary["documents_with_pii"] == len(redacted)


def test_drop_and_tag_modes(cli: Cli, tmp_path: Path, web: tuple[Path, pa.Table]) -> None:
    src, _ = web
    tagged = tmp_path / "tagged"
    assert cli("pii", src, tagged, "-w", "1", "-q", "--mode", "tag", "--kinds", "email,ip").exit_code == 0
    rows = read_rows(tagged)
    with_pii = {r["id"] for r in rows if r["pii_count"]}
    assert with_pii and all(set(r["pii_kinds"]) <= {"email", "ip"} for r in rows)
    assert all(("@" in r["text"]) or "ip" in r["pii_kinds"] for r in rows if r["id"] in with_pii)
    assert pq.read_schema(tagged / "part-00000.parquet").field("pii_count").type == pa.int32()

    dropped_out = tmp_path / "dropped"
    assert (
        cli("pii", src, dropped_out, "-w", "1", "-q", "--mode", "drop", "--kinds", "email,ip").exit_code == 0
    )
    dropped = pq.read_table(dropped_out / "_dropped").to_pylist()
    assert {r["id"] for r in dropped} == with_pii
    assert {r["reason"] for r in dropped} == {"pii"}
    assert all(r["detail"].startswith(("email=", "ip=")) for r in dropped)
    assert read_manifest(dropped_out)["totals"]["dropped"] == {"pii": len(with_pii)}


def test_bad_pii_options_are_one_line_errors(cli: Cli, tmp_path: Path, web: tuple[Path, pa.Table]) -> None:
    src, _ = web
    assert_user_error(cli("pii", src, tmp_path / "o1", "--mode", "scrub"), 2, "--mode")
    assert_user_error(cli("pii", src, tmp_path / "o2", "--kinds", "email,ssn"), 2, "--kinds")
    write_shards(pa.table({"id": ["a"], "text": ["x"], "pii_count": [1]}), tmp_path / "tagged", 10)
    assert_user_error(cli("pii", tmp_path / "tagged", tmp_path / "o3", "--mode", "tag"), 2, "'pii_count'")
