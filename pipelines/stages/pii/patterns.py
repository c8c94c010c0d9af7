"""Finding and redacting personal data in a batch of texts: emails, phones, IP addresses (v4, v6), cards.

Emails, IPs and phones are matched and replaced by Arrow's RE2 kernels over the whole batch. Card-like
digit runs are only candidates: the few texts holding one are rewritten in Python, where each run is
replaced only if its digits pass the Luhn checksum (so order numbers and ISBNs stay).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("email", "credit_card", "ip", "phone")  # the order they are redacted in
PLACEHOLDERS = {
    "email": "<EMAIL>",
    "credit_card": "<CREDIT_CARD>",
    "ip": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
_HEXTET = r"[0-9A-Fa-f]{1,4}"
# IPv6 written in full (eight groups) or with one '::' that has a group on both sides. Forms that start or
# end with '::' (::1, fe80::) are left alone: they are loopback/link-local, never a person's address, and
# would match code such as `x[::2]`.
_IPV6 = rf"(?:{_HEXTET}:){{7}}{_HEXTET}|(?:{_HEXTET}:){{1,6}}(?::{_HEXTET}){{1,6}}"
# Each pattern is written for RE2 (Arrow) and Python's re alike.
PATTERNS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    # 13 to 19 digits, optionally grouped by single spaces or dashes; the Luhn check decides.
    "credit_card": r"\b(?:[0-9][ -]?){12,18}[0-9]\b",
    "ip": rf"\b(?:{_IPV4}|{_IPV6})\b",
    # North American style (555-0123, (201) 555-0123, 201-555-0123) with an optional +country prefix.
    "phone": r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{3}\)[ .-]?|\b[0-9]{3}[ .-])?\b[0-9]{3}[ .-][0-9]{4}\b",
}
_CARD = re.compile(PATTERNS["credit_card"])


def luhn_valid(number: str) -> bool:
    """The Luhn checksum over the digits of `number` (separators ignored)."""
    digits = [int(c) for c in number if c.isdigit()]
    if not digits:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass
class PiiScan:
    """The outcome for one batch: the redacted texts, matches per document and kind, and totals."""

    redacted: pa.Array
    per_doc: dict[str, np.ndarray]  # kind -> matches in each document
    totals: Counter[str] = field(default_factory=Counter)

    @property
    def any(self) -> np.ndarray:
        counts = list(self.per_doc.values())
        return np.sum(counts, axis=0) > 0 if counts else np.zeros(len(self.redacted), dtype=bool)

    def kinds_of(self, row: int) -> list[str]:
        return [kind for kind, counts in self.per_doc.items() if counts[row]]


def scan(texts: pa.Array | pa.ChunkedArray, kinds: tuple[str, ...] | list[str]) -> PiiScan:
    """Count and replace each kind in turn; a placeholder holds no digits or '@', so later kinds never
    match inside an earlier kind's placeholder."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    current = pc.fill_null(texts, "")
    per_doc: dict[str, np.ndarray] = {}
    for kind in KINDS:
        if kind not in kinds:
            continue
        if kind == "credit_card":
            current, counts = _redact_cards(current)
        else:
            counts = pc.count_substring_regex(current, PATTERNS[kind]).to_numpy(zero_copy_only=False)
            if counts.any():
                current = pc.replace_substring_regex(current, PATTERNS[kind], PLACEHOLDERS[kind])
        per_doc[kind] = counts.astype(np.int64)
    if texts.null_count:
        current = pc.if_else(pc.is_null(texts), texts, current)
    totals = Counter({kind: int(c.sum()) for kind, c in per_doc.items()})
    return PiiScan(current, per_doc, totals)


def _redact_cards(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    counts = np.zeros(len(texts), dtype=np.int64)
    candidates = np.nonzero(
        pc.match_substring_regex(texts, PATTERNS["credit_card"]).to_numpy(zero_copy_only=False)
    )[0]
    if len(candidates) == 0:
        return texts, counts
    rewritten = []
    for row in candidates:
        found = 0

        def replace(m: re.Match[str]) -> str:
            nonlocal found
            if luhn_valid(m.group()):
                found += 1
                return PLACEHOLDERS["credit_card"]
            return m.group()

        rewritten.append(_CARD.sub(replace, texts[int(row)].as_py()))
        counts[row] = found
    mask = np.zeros(len(texts), dtype=bool)
    mask[candidates] = True
    return pc.replace_with_mask(texts, pa.array(mask), pa.array(rewritten, texts.type)), counts
