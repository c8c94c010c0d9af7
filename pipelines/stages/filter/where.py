"""`--where` row conditions: a small safe expression language compiled to pyarrow compute expressions.

    quality_score >= 0.5 and (lang == 'en' or lang is null) and not domain in ('spam', 'ads')

Comparisons (== = != <> < <= > >=), `and`, `or`, `not`, parentheses, `in (...)`, `is [not] null`, numbers,
quoted strings, true/false, and column names (`backquoted` when they are not plain identifiers). The text
is tokenised and parsed here, never handed to `eval`, so a condition can only read columns.
"""

from __future__ import annotations

import contextlib
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines.engine.errors import UsageError

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<quoted_name>`[^`]+`)
    | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<op>==|!=|<>|<=|>=|=|<|>|\(|\)|,|-)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
# Parentheses and `not`s nested deeper than this are refused: each level is a few Python frames of the
# recursive parser, and no hand-written condition comes near it.
MAX_NESTING = 100
_COMPARE = {
    "==": operator.eq,
    "=": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class WhereSyntaxError(ValueError):
    """A condition that does not parse; the message says where."""


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, name, keyword, op, end
    value: Any
    pos: int
    raw: str = ""


@dataclass(frozen=True)
class Where:
    """A parsed condition: the pyarrow expression and the columns it reads."""

    text: str
    expression: pc.Expression
    columns: tuple[str, ...]

    def check(self, schema: pa.Schema, source: str) -> None:
        """Fail with one line when a column is missing or the types do not fit (e.g. number vs string)."""
        for column in self.columns:
            if column not in schema.names:
                raise UsageError(
                    f"{source}: --where uses column '{column}', which is not there; "
                    f"columns are: {', '.join(schema.names)}"
                )
        try:
            self.mask(schema.empty_table())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            first = str(exc).splitlines()[0]
            raise UsageError(
                f"--where {self.text!r}: does not fit the column types of {source}: {first}"
            ) from None

    def mask(self, data: pa.RecordBatch | pa.Table) -> pa.Array:
        """True where the condition holds; a null result (a comparison with a null) counts as false."""
        from pyarrow import acero

        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        table = table.select(list(self.columns)) if self.columns else pa.table({"_": [0] * table.num_rows})
        plan = acero.Declaration.from_sequence(
            [
                acero.Declaration("table_source", acero.TableSourceNodeOptions(table)),
                acero.Declaration("project", acero.ProjectNodeOptions([self.expression], ["keep"])),
            ]
        )
        # One thread keeps the rows in input order.
        result = plan.to_table(use_threads=False).column("keep")
        if not pa.types.is_boolean(result.type):
            raise pa.ArrowTypeError(f"condition is of type {result.type}, not true/false")
        return pc.fill_null(result.combine_chunks(), False)


def parse_where(text: str) -> Where:
    parser = _Parser(text)
    expression = parser.parse()
    return Where(text, expression, tuple(dict.fromkeys(parser.columns)))


def _tokens(text: str) -> list[_Token]:
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise WhereSyntaxError(f"unexpected {text[pos]!r} at column {pos + 1}")
        kind = m.lastgroup
        raw = m.group()
        if kind == "number":
            number = float(raw) if re.search(r"[.eE]", raw) else int(raw)
            tokens.append(_Token("number", number, pos, raw))
        elif kind == "string":
            tokens.append(_Token("string", re.sub(r"\\(.)", r"\1", raw[1:-1]), pos, raw))
        elif kind == "quoted_name":
            tokens.append(_Token("name", raw[1:-1], pos, raw))
        elif kind == "name":
            low = raw.lower()
            tokens.append(
                _Token("keyword" if low in _KEYWORDS else "name", low if low in _KEYWORDS else raw, pos, raw)
            )
        elif kind == "op":
            tokens.append(_Token("op", raw, pos, raw))
        pos = m.end()
    tokens.append(_Token("end", None, len(text)))
    return tokens


class _Parser:
    """Recursive descent, lowest precedence first: or < and < not < comparison."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0
        self.columns: list[str] = []
        self.depth = 0

    def parse(self) -> pc.Expression:
        if self.tokens[0].kind == "end":
            raise WhereSyntaxError("empty condition")
        expr = self._or()
        if self._peek().kind != "end":
            self._fail("expected 'and', 'or' or the end")
        if not isinstance(expr, pc.Expression):
            raise WhereSyntaxError("a condition needs a column, e.g. quality_score >= 0.5")
        return expr

    # -- token helpers
    def _peek(self) -> _Token:
        return self.tokens[self.i]

    def _next(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def _accept(self, kind: str, value: Any = None) -> bool:
        token = self._peek()
        if token.kind == kind and (value is None or token.value == value):
            self.i += 1
            return True
        return False

    def _expect(self, kind: str, value: Any, what: str) -> None:
        if not self._accept(kind, value):
            self._fail(f"expected {what}")

    def _fail(self, message: str) -> None:
        token = self._peek()
        found = "the end" if token.kind == "end" else repr(token.raw)
        raise WhereSyntaxError(f"{message} at column {token.pos + 1}, found {found}")

    # -- grammar
    def _or(self) -> Any:
        left = self._and()
        while self._accept("keyword", "or"):
            left = _boolean(left) | _boolean(self._and())
        return left

    def _and(self) -> Any:
        left = self._not()
        while self._accept("keyword", "and"):
            left = _boolean(left) & _boolean(self._not())
        return left

    def _not(self) -> Any:
        if self._accept("keyword", "not"):
            with self._nested():
                return ~_boolean(self._not())
        return self._predicate()

    @contextlib.contextmanager
    def _nested(self) -> Iterator[None]:
        """One level deeper (a `(` or `not` just read), failing before the recursion gets too deep."""
        if self.depth >= MAX_NESTING:
            self.i -= 1
            self._fail(f"parentheses and 'not' nested more than {MAX_NESTING} deep")
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def _predicate(self) -> Any:
        left = self._operand()
        token = self._peek()
        if token.kind == "op" and token.value in _COMPARE:
            self.i += 1
            right = self._operand()
            return _COMPARE[token.value](_expr(left), _expr(right))
        negate = False
        if token.kind == "keyword" and token.value == "not" and self.tokens[self.i + 1].value == "in":
            self.i += 1
            negate = True
        if self._accept("keyword", "in"):
            values = self._literal_list()
            result = _expr(left).isin(values)
            # A null is in no list and, as with `!=`, not "not in" one either: both leave it out.
            return _expr(left).is_valid() & ~result if negate else result
        if self._accept("keyword", "is"):
            negate = self._accept("keyword", "not")
            self._expect("keyword", "null", "'null' after 'is'")
            return _expr(left).is_valid() if negate else _expr(left).is_null()
        return left

    def _literal_list(self) -> list[Any]:
        self._expect("op", "(", "'(' after 'in'")
        values = [self._literal()]
        while self._accept("op", ","):
            values.append(self._literal())
        self._expect("op", ")", "')' to close the list")
        return values

    def _literal(self) -> Any:
        value = self._operand()
        if isinstance(value, pc.Expression):
            self.i -= 1
            self._fail("expected a number or a quoted string")
        return value

    def _operand(self) -> Any:
        token = self._next()
        if token.kind in ("number", "string"):
            return token.value
        if token.kind == "keyword" and token.value in ("true", "false"):
            return token.value == "true"
        if token.kind == "op" and token.value == "-" and self._peek().kind == "number":
            return -self._next().value
        if token.kind == "name":
            self.columns.append(token.value)
            return pc.field(token.value)
        if token.kind == "op" and token.value == "(":
            with self._nested():
                inner = self._or()
            self._expect("op", ")", "')'")
            return inner
        self.i -= 1
        self._fail("expected a column, a number or a quoted string")
        raise AssertionError("unreachable")


def _expr(value: Any) -> pc.Expression:
    return value if isinstance(value, pc.Expression) else pc.scalar(value)


def _boolean(value: Any) -> pc.Expression:
    if isinstance(value, bool):
        return pc.scalar(value)
    if not isinstance(value, pc.Expression):
        raise WhereSyntaxError(f"{value!r} is not a condition; compare it with a column")
    return value
