"""``-k``: which cells to keep, as pytest's ``-k`` says which tests to run.

The grammar is pytest's (``_pytest/mark/expression.py``)::

    expression: expr? EOF
    expr:       and_expr ('or' and_expr)*
    and_expr:   not_expr ('and' not_expr)*
    not_expr:   'not' not_expr | '(' expr ')' | word

A word keeps the cells whose id contains it, whatever its case (pytest's matching); ``and``,
``or`` and ``not`` are the operators, spelt in lower case. A word is any run of characters other
than white space and parentheses: a cell id's ``=``, ``@`` and ``,`` are part of a word here,
where pytest's lexer refuses them, so a piece of an id (``recipe=slice``) stays one word.

pytest's own parser is not used: pytest is not a dependency of the command line, the module is
private (``_pytest``; its matcher's signature changed in pytest 8), and its lexer would make an
error of every ``-k`` that names a piece of an id with ``=`` in it, which worked before.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from harness.core.errors import UserError

OPTION = "-k"
_OPERATORS = frozenset({"and", "or", "not"})
_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_GRAMMAR = (
    f"{OPTION} takes words (a cell is kept if its id contains the word, whatever its case) "
    "joined by and, or, not and parentheses, as pytest's -k does"
)

Match = Callable[[str], bool]  # is a lower-cased cell id kept


class SelectionError(UserError):
    """A ``-k`` expression that does not parse; the message says where and what was expected."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "(", ")", "and", "or", "not", "word" or "end"
    text: str
    column: int  # 1-based, as pytest reports it


def selector(text: str) -> Match:
    """Whether a cell id is kept by the ``-k`` expression ``text``; a blank one keeps every id.
    Raises :class:`SelectionError` for an expression that does not parse."""
    if not text.strip():
        return lambda _id: True
    try:
        match = _Parser(text).parse()
    except RecursionError:
        raise SelectionError(f"{OPTION} {text[:40]!r}...: nested too deep ({_GRAMMAR})") from None
    return lambda cell_id: match(cell_id.lower())


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = [
            _Token(
                kind=found[0] if found[0] in "()" or found[0] in _OPERATORS else "word",
                text=found[0],
                column=found.start() + 1,
            )
            for found in _TOKEN.finditer(text)
        ]
        self.tokens.append(_Token(kind="end", text="", column=len(text) + 1))
        self.at = 0

    def parse(self) -> Match:
        match = self._or()
        if self._peek().kind != "end":
            self._fail("'and', 'or' or the end")
        return match

    def _peek(self) -> _Token:
        return self.tokens[self.at]

    def _accept(self, kind: str) -> bool:
        if self._peek().kind != kind:
            return False
        self.at += 1
        return True

    def _or(self) -> Match:
        parts = [self._and()]
        while self._accept("or"):
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda cell_id: any(part(cell_id) for part in parts)

    def _and(self) -> Match:
        parts = [self._not()]
        while self._accept("and"):
            parts.append(self._not())
        if len(parts) == 1:
            return parts[0]
        return lambda cell_id: all(part(cell_id) for part in parts)

    def _not(self) -> Match:
        if self._accept("not"):
            inner = self._not()
            return lambda cell_id: not inner(cell_id)
        if self._accept("("):
            inner = self._or()
            if not self._accept(")"):
                self._fail("')'")
            return inner
        token = self._peek()
        if token.kind != "word":
            self._fail("a word, 'not' or '('")
        self.at += 1
        word = token.text.lower()
        return lambda cell_id: word in cell_id

    def _fail(self, expected: str) -> NoReturn:
        token = self._peek()
        got = "the end of the expression" if token.kind == "end" else repr(token.text)
        raise SelectionError(
            f"{OPTION} {self.text!r}: at column {token.column}, expected {expected}, got {got} "
            f"({_GRAMMAR})"
        )
