"""The reward expression: a small arithmetic grammar over score columns, compiled to SQL.

    expression := term (("+" | "-") term)*
    term       := unary (("*" | "/") unary)*
    unary      := ("-" | "+") unary | atom
    atom       := NUMBER | COLUMN | ("min" | "max") "(" expression ("," expression)* ")" | "(" expression ")"

e.g. ``0.6*quality + 0.4*alignment``, ``min(quality, alignment)``, ``quality - 0.5*quality_std``.
NUMBER is a decimal literal (``3``, ``0.25``, ``.5``, ``1e-3``); COLUMN a numeric column of the
scores (or one the curation derives, such as ``quality_std``). Nothing else exists: no attribute
access, no strings, no other calls. The text is tokenized and parsed here by recursive descent,
never handed to ``eval``; what comes out is a SQL expression in which every column is a quoted
identifier and every number a literal this module printed itself.

A mistake is refused before any work with one line naming its position (1-based, in characters):
``--reward: unknown column 'qualty' at position 5 (did you mean 'quality'?)``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

from qeval_ray.options import did_you_mean

FUNCTIONS = {"min": "least", "max": "greatest"}  # the grammar's functions -> SQL's


class ExpressionError(ValueError):
    """The expression cannot be used; the message says what and where."""


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "op", "end", "error" (a character outside the grammar)
    text: str
    position: int  # 0-based offset in the source


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>[-+*/(),])
""", re.VERBOSE)

_HINTS = {
    ".": "attribute access is not part of the grammar",
    "*": "powers are not part of the grammar",
    "'": "strings are not part of the grammar",
    '"': "strings are not part of the grammar",
    "[": "indexing is not part of the grammar",
    "=": "comparisons and assignments are not part of the grammar",
    "<": "comparisons are not part of the grammar",
    ">": "comparisons are not part of the grammar",
}


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``. A character outside the grammar becomes an ``error`` token that ends
    the list: the parser refuses it when it gets there, so the first mistake is the one reported
    (``__import__('os')`` is refused as a call, before its string)."""
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            tokens.append(Token("error", text[at], at))
            return tokens
        kind = match.lastgroup
        if kind != "space":
            tokens.append(Token(kind, match.group(), at))
        at = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# --- the tree -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    value: float

    def sql(self) -> str:
        return f"CAST({self.value!r} AS DOUBLE)"

    def text(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Column:
    name: str

    def sql(self) -> str:
        return f'CAST({quote(self.name)} AS DOUBLE)'

    def text(self) -> str:
        return self.name


@dataclass(frozen=True)
class Negate:
    operand: object

    def sql(self) -> str:
        return f"(-{self.operand.sql()})"

    def text(self) -> str:
        return f"-{_wrapped(self.operand)}"


@dataclass(frozen=True)
class Binary:
    op: str
    left: object
    right: object

    def sql(self) -> str:
        return f"({self.left.sql()} {self.op} {self.right.sql()})"

    def text(self) -> str:
        return f"{_wrapped(self.left)} {self.op} {_wrapped(self.right)}"


@dataclass(frozen=True)
class Call:
    function: str
    arguments: tuple

    def sql(self) -> str:
        return f"{FUNCTIONS[self.function]}({', '.join(a.sql() for a in self.arguments)})"

    def text(self) -> str:
        return f"{self.function}({', '.join(a.text() for a in self.arguments)})"


def _wrapped(node) -> str:
    return f"({node.text()})" if isinstance(node, (Binary, Negate)) else node.text()


def quote(name: str) -> str:
    """A SQL identifier, quoted (double quotes inside doubled)."""
    return '"' + name.replace('"', '""') + '"'


# --- the parser -----------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, columns: Iterable[str], other_columns: Iterable[str]):
        self.tokens = tokenize(text)
        self.at = 0
        self.columns = set(columns)
        self.other_columns = set(other_columns)  # exist, but are not numbers
        self.used: list[str] = []

    @property
    def token(self) -> Token:
        token = self.tokens[self.at]
        if token.kind == "error":
            hint = _HINTS.get(token.text)
            raise ExpressionError(f"unexpected {token.text!r} at position {token.position + 1}"
                                  + (f": {hint}" if hint else ""))
        return token

    def advance(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def fail(self, what: str, token: Token | None = None):
        token = token or self.token
        found = "the end of the expression" if token.kind == "end" else repr(token.text)
        raise ExpressionError(f"{what} at position {token.position + 1}, found {found}")

    def parse(self):
        if self.token.kind == "end":
            raise ExpressionError("the expression is empty")
        node = self.expression()
        if self.token.kind != "end":
            if self.token.text == "(":
                self.fail("unexpected '(': only min and max can be called")
            self.fail("expected an operator (+ - * /) or the end")
        return node

    def expression(self):
        node = self.term()
        while self.token.text in ("+", "-") and self.token.kind == "op":
            op = self.advance().text
            node = Binary(op, node, self.term())
        return node

    def term(self):
        node = self.unary()
        while self.token.text in ("*", "/") and self.token.kind == "op":
            op = self.advance().text
            if self.token.text == "*" and op == "*":
                raise ExpressionError(f"unexpected '*' at position {self.token.position + 1}: "
                                      "powers are not part of the grammar")
            node = Binary(op, node, self.unary())
        return node

    def unary(self):
        if self.token.kind == "op" and self.token.text in ("-", "+"):
            sign = self.advance().text
            operand = self.unary()
            return Negate(operand) if sign == "-" else operand
        return self.atom()

    def atom(self):
        token = self.token
        if token.kind == "number":
            self.advance()
            value = float(token.text)
            if not math.isfinite(value):
                raise ExpressionError(f"number {token.text!r} at position {token.position + 1} is not finite")
            return Number(value)
        if token.kind == "name":
            self.advance()
            if self.token.text == "(" and self.token.kind == "op":
                return self.call(token)
            return self.column(token)
        if token.kind == "op" and token.text == "(":
            self.advance()
            node = self.expression()
            self.expect(")", "a closing ')'")
            return node
        self.fail("expected a number, a column, min(...), max(...) or '('")

    def call(self, name: Token):
        if name.text not in FUNCTIONS:
            raise ExpressionError(f"{name.text!r} at position {name.position + 1} cannot be called: the only "
                                  f"functions are {' and '.join(FUNCTIONS)}")
        self.advance()  # (
        arguments = [self.expression()]
        while self.token.kind == "op" and self.token.text == ",":
            self.advance()
            arguments.append(self.expression())
        self.expect(")", f"',' or ')' in {name.text}(...)")
        if len(arguments) < 2:
            raise ExpressionError(f"{name.text}(...) at position {name.position + 1} needs at least two arguments")
        return Call(name.text, tuple(arguments))

    def column(self, name: Token):
        if name.text in FUNCTIONS:
            raise ExpressionError(f"{name.text} at position {name.position + 1} is a function: "
                                  f"write {name.text}(a, b)")
        if name.text not in self.columns:
            if name.text in self.other_columns:
                raise ExpressionError(f"column {name.text!r} at position {name.position + 1} is not a number")
            raise ExpressionError(f"unknown column {name.text!r} at position {name.position + 1}"
                                  f"{did_you_mean(name.text, sorted(self.columns))}")
        if name.text not in self.used:
            self.used.append(name.text)
        return Column(name.text)

    def expect(self, text: str, what: str):
        if not (self.token.kind == "op" and self.token.text == text):
            self.fail(f"expected {what}")
        self.advance()


@dataclass(frozen=True)
class Expression:
    """A parsed reward expression."""

    source: str
    tree: object
    columns: tuple[str, ...]  # the columns it reads, in order of first use

    def sql(self) -> str:
        return self.tree.sql()

    def text(self) -> str:
        """The expression as parsed, spaced and parenthesised canonically."""
        return self.tree.text()


def parse(text: str, columns: Iterable[str], other_columns: Iterable[str] = ()) -> Expression:
    """Parse ``text`` over the numeric ``columns``; ``other_columns`` exist but are not numbers.

    Raises :class:`ExpressionError` with the position of the first mistake.
    """
    parser = _Parser(text, columns, other_columns)
    tree = parser.parse()
    return Expression(text, tree, tuple(parser.used))
