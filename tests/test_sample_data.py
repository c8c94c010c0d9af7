"""Synthetic sample data: determinism, planted shares, and that the truth table tells the truth."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from thresher.pipelines.testing.sample_data import (
    INSTRUCTION_SCHEMA,
    SEO_SHARE,
    THIN_SHARE,
    TRUTH_SCHEMA,
    WEB_SCHEMA,
    WebSample,
    generate_instructions,
    generate_web,
    write_sample_data,
)

KINDS = ("clean", "long", "exact_dup", "near_dup", "boilerplate", "spam", "short", "pii", "non_latin")
INTENDED = {
    "exact_dup": 0.05,
    "near_dup": 0.08,
    "boilerplate": 0.03,
    "spam": 0.03,
    "short": 0.04,
    "pii": 0.03,
    "non_latin": 0.01,
    "long": 0.02,
    "clean": 0.71,
}
# `hard_quality`: more negatives, so fewer clean pages.
HARD_INTENDED = {**INTENDED, "boilerplate": 0.08, "spam": 0.08, "clean": 0.61}
SMALL = {"web_docs": 300, "instruction_rows": 150, "rows_per_shard": 120}
BLOCKLIST = Path(__file__).resolve().parents[1] / "recipes" / "blocklists" / "spam-words.txt"


@pytest.fixture(scope="module")
def web() -> WebSample:
    return generate_web()


@pytest.fixture(scope="module")
def rows(web: WebSample) -> list[dict]:
    """Web rows joined with their truth rows."""
    return [{**r, **t} for r, t in zip(web.table.to_pylist(), web.truth.to_pylist(), strict=True)]


@pytest.fixture(scope="module")
def hard_rows() -> list[dict]:
    """The corpus `make demo` runs on (what write_sample_data writes), joined with its truth."""
    hard = generate_web(hard_quality=True)
    return [{**r, **t} for r, t in zip(hard.table.to_pylist(), hard.truth.to_pylist(), strict=True)]


@pytest.fixture(scope="module")
def instructions() -> list[dict]:
    return generate_instructions().to_pylist()


# Deliberately not the module's helpers: the truth table is checked against a second implementation.
def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def _jaccard(a: str, b: str) -> float:
    def grams(text: str) -> set[tuple[str, ...]]:
        words = _norm(text).split(" ")
        return set(zip(*(words[i:] for i in range(5)), strict=False))

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(digits[::-1]):
        d = int(ch) * (2 if i % 2 else 1)
        total += d // 10 + d % 10
    return total % 10 == 0


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = write_sample_data(tmp_path / "a", seed=0, **SMALL)
    b = write_sample_data(tmp_path / "b", seed=0, **SMALL)
    write_sample_data(tmp_path / "c", seed=1, **SMALL)
    rel = [str(p.relative_to(tmp_path / "a")) for p in a]
    assert rel == [str(p.relative_to(tmp_path / "b")) for p in b]
    assert rel == [
        "web/part-00000.parquet",
        "web/part-00001.parquet",
        "web/part-00002.parquet",
        "web_truth.parquet",
        "instructions/part-00000.parquet",
        "instructions/part-00001.parquet",
        "web.jsonl",
        "README.md",
    ]
    # Nothing but the returned files (no leftover temp files).
    tree_a, tree_b, tree_c = (_read_tree(tmp_path / d) for d in "abc")
    assert sorted(tree_a) == sorted(rel)
    assert tree_a == tree_b
    assert tree_a.keys() == tree_c.keys()
    for name in rel:
        if name != "README.md":  # the README of a different seed may legitimately match in counts only
            assert tree_a[name] != tree_c[name], name


def test_written_files_round_trip(tmp_path: Path) -> None:
    paths = write_sample_data(tmp_path, seed=3, **SMALL)
    web = pq.read_table(tmp_path / "web")
    assert web.schema.remove_metadata() == WEB_SCHEMA
    assert not (web.schema.metadata or {}).get(b"pandas")
    assert pq.ParquetFile(paths[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    truth = pq.read_table(tmp_path / "web_truth.parquet")
    assert truth.schema.remove_metadata() == TRUTH_SCHEMA
    inst = pq.read_table(tmp_path / "instructions")
    assert inst.schema.remove_metadata() == INSTRUCTION_SCHEMA
    assert (web.num_rows, truth.num_rows, inst.num_rows) == (300, 300, 150)
    assert max(pq.ParquetFile(p).metadata.num_rows for p in (tmp_path / "web").glob("*.parquet")) == 120
    lines = (tmp_path / "web.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == web.to_pylist()
    assert all(list(json.loads(line)) == ["domain", "id", "text", "url"] for line in lines)
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "near_dup" in readme and "seed 3" in readme

    # A rerun with a larger shard size must not leave the old third shard behind.
    write_sample_data(tmp_path, seed=3, web_docs=300, instruction_rows=150, rows_per_shard=1000)
    assert sorted(p.name for p in (tmp_path / "web").iterdir()) == ["part-00000.parquet"]


def test_ids_urls_and_domains(web: WebSample, rows: list[dict]) -> None:
    ids = web.table.column("id").to_pylist()
    assert ids == web.truth.column("id").to_pylist()
    assert ids == [f"web-{i:06d}" for i in range(3000)]
    urls = web.table.column("url").to_pylist()
    assert len(set(urls)) == len(urls)
    for r in rows:
        assert r["url"].startswith(f"https://{r['domain']}.example/")
    domains = Counter(r["domain"] for r in rows)
    assert set(domains) == {"news", "science", "recipes", "forum", "code"}
    assert domains["news"] > domains["forum"] > domains["code"]
    assert domains["code"] >= 200


@pytest.mark.parametrize(("corpus", "intended"), [("rows", INTENDED), ("hard_rows", HARD_INTENDED)])
def test_planted_kinds_have_intended_shares(
    corpus: str, intended: dict[str, float], request: pytest.FixtureRequest
) -> None:
    rows = request.getfixturevalue(corpus)
    kinds = Counter(r["kind"] for r in rows)
    assert set(kinds) == set(KINDS)
    for kind, share in intended.items():
        assert abs(kinds[kind] / len(rows) - share) <= 0.01, (kind, kinds[kind])
    # Planted items are spread over the whole corpus, not bunched at the end.
    for kind in ("exact_dup", "near_dup", "spam", "short"):
        positions = [i for i, r in enumerate(rows) if r["kind"] == kind]
        assert positions[0] < len(rows) * 0.2 and positions[-1] > len(rows) * 0.8, kind


@pytest.mark.parametrize("corpus", ["rows", "hard_rows"])
def test_document_shapes(corpus: str, request: pytest.FixtureRequest) -> None:
    rows = request.getfixturevalue(corpus)
    for r in rows:
        n_words = len(r["text"].split())
        if r["kind"] == "clean":
            assert 80 <= n_words <= 600, r["id"]
            assert "\n\n" in r["text"], r["id"]
            assert r["text"].isascii()
        elif r["kind"] == "long":
            assert 3000 <= n_words <= 8000, r["id"]
        elif r["kind"] == "short":
            assert 1 <= n_words <= 10, r["id"]
        elif r["kind"] == "non_latin":
            assert r["domain"] == "forum"
            assert sum(not c.isascii() for c in r["text"]) > len(r["text"]) / 2
        if r["kind"] not in ("exact_dup", "near_dup"):
            assert r["source_id"] is None and r["jaccard_5gram"] is None and r["edit_rate"] is None
    prose = [r["text"] for r in rows if r["kind"] == "clean" and r["domain"] != "code"]
    assert all(re.search(r"[.!?]$", p) for t in prose for p in t.split("\n\n"))
    junk = " ".join(r["text"].lower() for r in rows if r["kind"] in ("boilerplate", "spam"))
    for marker in ("cookies", "javascript", "lorem ipsum", "...", "$$$"):
        assert marker in junk, marker


def _is_prose(text: str) -> bool:
    return all(re.search(r"[.!?]$", p) for p in text.split("\n\n"))


def test_hard_quality_negatives_read_like_articles(rows: list[dict], hard_rows: list[dict]) -> None:
    """Thin pages and SEO copy: article-length prose in the domain's words, free of blocklisted terms,
    so the rule filters pass them and only a learned classifier can rank them."""
    blocked = [
        w for w in BLOCKLIST.read_text(encoding="utf-8").splitlines() if w.strip() and not w.startswith("#")
    ]

    def plausible(r: dict) -> bool:
        text = r["text"]
        return (
            len(text.split()) >= 80
            and text.isascii()
            and not any(re.search(rf"\b{re.escape(w)}\b", text, re.I) for w in blocked)
            and "lorem ipsum" not in text.lower()
            and "$$$" not in text
        )

    for kind, share in (("boilerplate", THIN_SHARE), ("spam", SEO_SHARE)):
        hard = [r for r in hard_rows if r["kind"] == kind]
        mostly_prose = [r for r in hard if plausible(r)]
        # Thin pages may open with a cookie line or close with a navigation line; SEO copy never does.
        assert len(mostly_prose) >= (share - 0.1) * len(hard), kind
        assert sum(_is_prose(r["text"]) for r in hard) >= (share - 0.3) * len(hard), kind
        # The easy corpus keeps its negatives blatant.
        easy = [r for r in rows if r["kind"] == kind]
        assert sum(plausible(r) and _is_prose(r["text"]) for r in easy) <= 0.2 * len(easy), kind
    # Clean pages share the site's voice in part: some carry phrases the thin pages are made of.
    clean = [r["text"] for r in hard_rows if r["kind"] == "clean"]
    voiced = sum("in the comments below" in t or "was last updated on" in t for t in clean)
    assert 0.1 * len(clean) <= voiced <= 0.9 * len(clean)
    assert not any("in the comments below" in r["text"] for r in rows if r["kind"] == "clean")


def test_near_dup_jaccard_matches_independent_computation(rows: list[dict]) -> None:
    by_id = {r["id"]: r for r in rows}
    near = [r for r in rows if r["kind"] == "near_dup"]
    for r in near:
        src = by_id[r["source_id"]]
        assert src["kind"] == "clean" and src["id"] < r["id"]
        assert r["edit_rate"] in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
        assert r["jaccard_5gram"] == pytest.approx(_jaccard(r["text"], src["text"]), abs=1e-12)
        assert r["text"] != src["text"]
    sims = [r["jaccard_5gram"] for r in near]
    assert sum(s >= 0.8 for s in sims) >= 20
    assert sum(s < 0.8 for s in sims) >= 20


def test_exact_dups_match_source_after_normalisation(rows: list[dict]) -> None:
    by_id = {r["id"]: r for r in rows}
    exact = [r for r in rows if r["kind"] == "exact_dup"]
    raw_differs = 0
    for r in exact:
        src = by_id[r["source_id"]]
        assert src["id"] < r["id"]
        assert _norm(r["text"]) == _norm(src["text"])
        assert r["jaccard_5gram"] == 1.0 and r["edit_rate"] is None
        raw_differs += r["text"] != src["text"]
    assert 0 < raw_differs < len(exact)


_ARITH = [
    (r"What is (\d+) \+ (\d+)\?", lambda a, b: a + b),
    (r"Add (\d+) and (\d+)\.", lambda a, b: a + b),
    (r"Compute the sum of (\d+) and (\d+)\.", lambda a, b: a + b),
    (r"What is (\d+) - (\d+)\?", lambda a, b: a - b),
    (r"Subtract (\d+) from (\d+)\.", lambda a, b: b - a),
    (r"Compute (\d+) minus (\d+)\.", lambda a, b: a - b),
    (r"What is (\d+) \* (\d+)\?", lambda a, b: a * b),
    (r"What is (\d+) times (\d+)\?", lambda a, b: a * b),
    (r"Multiply (\d+) by (\d+)\.", lambda a, b: a * b),
    (r"Compute the product of (\d+) and (\d+)\.", lambda a, b: a * b),
]
_EXPR = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _expected(instruction: str, inp: str) -> int:
    if instruction == "Evaluate the expression.":
        a, op, b = re.fullmatch(r"(\d+) ([-+*]) (\d+)", inp).groups()  # type: ignore[union-attr]
        return _EXPR[op](int(a), int(b))
    assert inp == ""
    for pattern, fn in _ARITH:
        m = re.fullmatch(pattern, instruction)
        if m:
            return fn(int(m.group(1)), int(m.group(2)))
    raise AssertionError(f"unparsed arithmetic instruction: {instruction!r}")


def test_arithmetic_correctness_is_checkable(instructions: list[dict]) -> None:
    arith = [r for r in instructions if r["task"] == "arithmetic"]
    for r in arith:
        answer = int(re.findall(r"-?\d+", r["output"])[-1])
        assert r["is_correct"] == (answer == _expected(r["instruction"], r["input"])), r
    wrong = sum(not r["is_correct"] for r in arith) / len(arith)
    assert 0.15 <= wrong <= 0.25


def test_instruction_tasks_and_poor_outputs(instructions: list[dict]) -> None:
    assert [r["id"] for r in instructions] == [f"inst-{i:06d}" for i in range(len(instructions))]
    tasks = Counter(r["task"] for r in instructions)
    assert set(tasks) == {"arithmetic", "rewrite", "classify", "qa", "list"}
    other = [r for r in instructions if r["task"] != "arithmetic"]
    poor = sum(not r["is_correct"] for r in other) / len(other)
    assert 0.07 <= poor <= 0.13
    assert all(isinstance(r["input"], str) for r in instructions)
    # Template reuse gives many rows sharing an instruction once numbers are masked.
    masked = Counter(re.sub(r"\d+", "#", r["instruction"]) for r in instructions)
    assert masked.most_common(1)[0][1] >= 20


def test_planted_card_numbers_both_pass_and_fail_luhn(rows: list[dict]) -> None:
    pii = " ".join(r["text"] for r in rows if r["kind"] == "pii")
    cards = [re.sub(r"\D", "", c) for c in re.findall(r"\b\d{4}(?:[ -]\d{4}){3}\b", pii)]
    checks = [_luhn(c) for c in cards]
    assert any(checks) and not all(checks)
    assert re.search(r"[\w.]+@example\.(com|org|net)", pii)
    assert re.search(r"\b555-01\d\d\b", pii)
    assert re.search(r"\b(192\.0\.2|198\.51\.100|203\.0\.113)\.\d{1,3}\b", pii)
    clean = " ".join(r["text"] for r in rows if r["kind"] == "clean")
    assert "@example." not in clean and not re.search(r"\b\d{4}(?:[ -]\d{4}){3}\b", clean)


def test_small_and_empty_corpora() -> None:
    small = generate_web(60, seed=7)
    assert set(small.truth.column("kind").to_pylist()) == set(KINDS)
    empty = generate_web(0)
    assert empty.table.num_rows == 0 and empty.table.schema == WEB_SCHEMA
    assert empty.truth.schema == TRUTH_SCHEMA
    assert generate_instructions(0).num_rows == 0
    assert generate_web(1).truth.column("kind").to_pylist() == ["clean"]


def test_committed_sample_data_is_the_generators_output(tmp_path: Path) -> None:
    """sample_data/ is exactly what `thresher sample-data` makes with seed 0, so anyone can rebuild it."""
    committed = Path(__file__).resolve().parents[1] / "sample_data"
    write_sample_data(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (committed / rel).read_bytes(), rel
