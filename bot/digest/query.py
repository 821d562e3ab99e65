"""Topic queries: the common subset of public-inbox/lei search, compiled to SQL.

Kernel people already write `s:arm64 dfn:arch/arm64/kvm/` into lore and
lei, so a topic is written the same way:

    s:WORD     subject            f:WORD    sender (From name or address)
    b:WORD     body               dfn:PATH  a file path (prefix) a diff touches
    WORD       subject or body    "a b"     a phrase (also s:"a b")
    a b        both (AND)         a OR b    either
    NOT a, -a  not a              ( ... )   grouping

Words match case-insensitively anywhere in the text (`s:arm` also finds
`arm64`); `dfn:` paths match as a case-sensitive prefix. `OR`, `AND` and
`NOT` are operators only in capitals, as in lei.

A query is parsed into a small tree and compiled to an SQL condition over
`messages AS m` whose every user-given value is a bound parameter: query
text never becomes SQL text. Whatever is typed, parsing either succeeds or
raises QueryError, one sentence that says what is wrong with an example.
"""

from __future__ import annotations

import json
import re
import sqlite3
import unicodedata

from bot.errors import DigestError
from bot.record import Record

MAX_LENGTH = 500
"""Characters; a topic is a line in a mail, not a program."""
MAX_TERMS = 40
MAX_DEPTH = 20
PREFIXES = {"s": "subject", "f": "sender", "b": "body", "dfn": "file path"}
EXAMPLE = "e.g. 'dfn:arch/arm64/kvm/ OR s:arm64'"
_TOKEN = re.compile(r'\s*(?:(\()|(\))|("[^"]*"?)|([^\s()"]+(?:"[^"]*"?)?))')
_PREFIXED = re.compile(r"^([A-Za-z]+):(.*)$", re.S)
_OPERATORS = ("AND", "OR", "NOT")


class QueryError(DigestError):
    """A topic query that cannot be read; the message says why, with an example."""


class Term(Record):
    """One search term: `field` is s, f, b, dfn or '' (subject or body)."""

    field: str
    value: str


class Not(Record):
    operand: Node


class And(Record):
    operands: tuple[Node, ...]


class Or(Record):
    operands: tuple[Node, ...]


Node = Term | Not | And | Or


def _fail(what: str) -> QueryError:
    return QueryError(f"{what}; {EXAMPLE}")


def _tokens(text: str) -> list[str]:
    """Parentheses, quoted phrases and words (a word may end in a phrase)."""
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:  # pragma: no cover - the pattern always advances
            raise _fail("the query could not be read")
        token = next(g for g in m.groups() if g is not None)
        if token.count('"') % 2:
            raise _fail(f"the quote in {token!r} is not closed")
        out.append(token)
        pos = m.end()
    return out


def _unquote(value: str) -> str:
    return " ".join(value.replace('"', " ").split())


def _term(token: str) -> Term:
    """A word, a phrase or `prefix:value`."""
    m = _PREFIXED.match(token)
    if m is None:
        value = _unquote(token)
        if not value:
            raise _fail('an empty phrase "" matches nothing; put words inside the quotes')
        return Term("", value)
    name, raw = m.group(1).lower(), m.group(2)
    if name not in PREFIXES:
        known = ", ".join(f"{p}:" for p in PREFIXES)
        raise _fail(
            f"{m.group(1)}: is not a search prefix; use {known} or plain words,"
            f' and quote a word that ends in a colon ("{m.group(1)}:")'
        )
    value = _unquote(raw)  # whitespace runs fold, so normal() keeps the meaning
    if not value.strip():
        raise _fail(f"{name}: needs a {PREFIXES[name]} after it, with no space")
    return Term(name, value.strip())


class _Parser:
    """Recursive descent: or := and (OR and)*; and := unary+; unary := NOT unary | atom."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.terms = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.or_(0)
        if self.peek() is not None:
            # Only a closing parenthesis stops an expression early.
            raise _fail("there is a ')' without a matching '('")
        return node

    def or_(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise _fail(f"the query nests deeper than {MAX_DEPTH} levels")
        parts = [self.and_(depth)]
        while self.peek() == "OR":
            self.take()
            parts.append(self.and_(depth))
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_(self, depth: int) -> Node:
        parts = [self.unary(depth)]
        while (token := self.peek()) is not None and token not in ("OR", ")"):
            if token == "AND":
                self.take()
            parts.append(self.unary(depth))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise _fail(f"the query nests deeper than {MAX_DEPTH} levels")
        token = self.peek()
        if token is None:
            before = self.tokens[self.pos - 1] if self.pos else ""
            if before in _OPERATORS:
                raise _fail(f"{before} at the end needs a term after it")
            raise _fail("the query ends where a term was expected")
        if token in ("OR", "AND", ")"):
            raise _fail(f"{token!r} comes where a term was expected")
        self.take()
        if token == "NOT":
            return Not(self.unary(depth + 1))
        if token == "-" and self.peek() == "(":
            self.take()
            return Not(self.group(depth + 1))
        if token.startswith("-") and len(token) > 1:
            return Not(self.atom(token[1:], depth + 1))
        if token.startswith("+") and len(token) > 1:
            token = token[1:]
        if token == "(":
            return self.group(depth)
        return self.atom(token, depth)

    def atom(self, token: str, depth: int) -> Node:
        if token in ("-", "+"):
            raise _fail(f"a lone {token!r} must be written against its term, as in -s:RFC")
        if token == "(":
            return self.group(depth)
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise _fail(f"the query has more than {MAX_TERMS} terms")
        return _term(token)

    def group(self, depth: int) -> Node:
        if self.peek() == ")":
            raise _fail("the parentheses '()' hold nothing")
        node = self.or_(depth + 1)
        if self.peek() != ")":
            raise _fail("a '(' is not closed by a ')'")
        self.take()
        return node


def parse(text: str) -> Node:
    """The tree of a query; QueryError when it cannot be read."""
    if not isinstance(text, str):
        raise _fail("the query must be text")
    if len(text) > MAX_LENGTH:
        raise _fail(f"the query is longer than {MAX_LENGTH} characters; shorten it")
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs") and ch not in " \t\n":
            raise _fail(f"the query holds the control character {ch!r}; type it as plain text")
    tokens = _tokens(text)
    if not tokens:
        raise _fail("the query is empty")
    return _Parser(tokens).parse()


def normal(text: str) -> str:
    """The query as shown in subjects and stored: one line, single spaces.

    Parsing it again gives the same tree, so grouping subscribers by it is safe.
    """
    parse(text)
    return " ".join(text.split())


def _like(value: str) -> str:
    r"""A LIKE pattern matching `value` anywhere, with `%`, `_` and `\` escaped."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_LIKE = "LIKE ? ESCAPE '\\'"


def compile_sql(node: Node) -> tuple[str, list[str]]:
    """An SQL condition over `messages AS m` and its parameters, in order."""
    if isinstance(node, Term):
        if node.field == "dfn":
            # A prefix as a range: the (seq, path) key answers it directly.
            return (
                "EXISTS (SELECT 1 FROM paths p WHERE p.seq = m.seq AND p.path >= ? AND p.path < ?)",
                [node.value, node.value + "\U0010ffff"],
            )
        columns = {
            "s": ("m.subject",),
            "b": ("m.body",),
            "f": ("m.from_name", "m.from_addr"),
            "": ("m.subject", "m.body"),
        }[node.field]
        sql = " OR ".join(f"{c} {_LIKE}" for c in columns)
        return f"({sql})", [_like(node.value)] * len(columns)
    if isinstance(node, Not):
        sql, params = compile_sql(node.operand)
        return f"(NOT {sql})", params
    joiner = " AND " if isinstance(node, And) else " OR "
    parts = [compile_sql(operand) for operand in node.operands]
    return (
        "(" + joiner.join(sql for sql, _ in parts) + ")",
        [p for _, params in parts for p in params],
    )


class Selection(Record):
    """What a filtered digest of one range keeps.

    `series` are the matching series (any patch or cover letter, in the
    archive up to the range's end, matches); `shown` the positions in the
    range that the patch list and the entries may show (those series'
    messages, matching pull requests and pull requests that carry a
    matching series); `counted` the positions the
    statistics count: the series' messages and every message of their threads.
    """

    series: frozenset[str]
    shown: frozenset[int]
    counted: frozenset[int]


def select(conn: sqlite3.Connection, start_seq: int, end_seq: int, node: Node) -> Selection:
    """The messages of archive range (start_seq, end_seq] that `node` selects."""
    cond, params = compile_sql(node)
    series = frozenset(
        r[0]
        for r in conn.execute(
            f"""SELECT DISTINCT m.series_id FROM messages m
                 WHERE m.series_id IN (SELECT series_id FROM messages
                                        WHERE seq > ? AND seq <= ? AND series_id IS NOT NULL)
                   AND m.seq <= ? AND m.kind IN ('patch', 'cover') AND {cond}""",
            [start_seq, end_seq, end_seq, *params],
        )
    )
    # A pull request belongs to no series: it is matched on its own.
    pulls = conn.execute(
        f"""SELECT m.seq, m.thread_id FROM messages m
             WHERE m.seq > ? AND m.seq <= ? AND m.series_id IS NULL AND m.kind = 'pull'
               AND {cond}""",
        [start_seq, end_seq, *params],
    ).fetchall()
    threads = {t for _, t in pulls}
    shown = {seq for seq, _ in pulls}
    # A pull request that carries a matching series (its patches were sent
    # in reply to it, so it names the series) is shown with it.
    roots = {sid[1 : sid.rfind(">/v")] for sid in series}
    shown.update(
        seq
        for seq, message_id in conn.execute(
            "SELECT seq, message_id FROM messages"
            " WHERE seq > ? AND seq <= ? AND kind = 'pull' AND series_id IS NULL",
            (start_seq, end_seq),
        )
        if message_id in roots
    )
    counted = set(shown)
    for series_id in series:
        threads.update(
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT thread_id FROM messages WHERE series_id = ? AND seq <= ?",
                (series_id, end_seq),
            )
        )
    for seq, series_id, thread_id in conn.execute(
        "SELECT seq, series_id, thread_id FROM messages WHERE seq > ? AND seq <= ?",
        (start_seq, end_seq),
    ):
        if series_id in series:
            shown.add(seq)
            counted.add(seq)
        elif thread_id in threads:
            counted.add(seq)
    return Selection(series, frozenset(shown), frozenset(counted))


def matching_series(
    conn: sqlite3.Connection, series_ids: list[str], end_seq: int, node: Node
) -> set[str]:
    """Those of `series_ids` that `node` matches, by any patch or cover letter
    in the archive up to `end_seq` (for series that need not be in the range,
    such as those waiting for review)."""
    if not series_ids:
        return set()
    cond, params = compile_sql(node)
    return {
        r[0]
        for r in conn.execute(
            f"""SELECT DISTINCT m.series_id FROM messages m
                 WHERE m.series_id IN (SELECT value FROM json_each(?))
                   AND m.seq <= ? AND m.kind IN ('patch', 'cover') AND {cond}""",
            [json.dumps(sorted(set(series_ids))), end_seq, *params],
        )
    }
