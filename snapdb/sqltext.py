"""A small SQL lexer for the text pg_restore prints: enough to tell pg_restore's own structure
(entry headers, statements) from what an entry contains (string literals, dollar-quoted
bodies, quoted identifiers, comments), so that nothing inside a literal, a body or a comment is
ever mistaken for a statement or rewritten.

Contract: `statements(text_chunks)` yields `Piece`s in order, which concatenate back to the
input exactly: top-level comments (``kind="comment"``), psql meta-command lines (``"meta"``),
whitespace (``"space"``) and statements (``"statement"``: from the first token to the ``;`` that
ends it at top level, with its tokens). Tokens are (kind, text): ``ident``, ``qident``
(double-quoted), ``string`` (any quoted literal, E'' and dollar-quoted ones included),
``number``, ``op``, ``space``, ``comment``. Input may arrive in arbitrary chunks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

_DOLLAR = re.compile(r"\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
_IDENT = re.compile(r"[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*")
_NUMBER = re.compile(r"\d+(\.\d*)?([eE][+-]?\d+)?")


@dataclass
class Piece:
    kind: str  # statement | comment | meta | space
    text: str
    tokens: list[tuple[str, str]] = field(default_factory=list)


class _Incomplete(Exception):
    """The token continues past the end of the buffer."""


def _token(buf: str, i: int, final: bool) -> tuple[str, int]:
    """The kind and end of the token starting at `i`; `_Incomplete` when it may go on."""
    c = buf[i]
    n = len(buf)
    if c.isspace():
        j = i
        while j < n and buf[j].isspace():
            j += 1
        if j == n and not final:
            raise _Incomplete
        return "space", j
    if buf.startswith("--", i):
        j = buf.find("\n", i)
        if j < 0:
            if not final:
                raise _Incomplete
            return "comment", n
        return "comment", j + 1
    if buf.startswith("/*", i):
        depth, j = 0, i
        while j < n:
            if buf.startswith("/*", j):
                depth, j = depth + 1, j + 2
            elif buf.startswith("*/", j):
                depth, j = depth - 1, j + 2
                if depth == 0:
                    return "comment", j
            else:
                j += 1
        if not final:
            raise _Incomplete
        return "comment", n
    if c == "'" or (c in "eEbBxXnNuU" and buf.startswith("'", i + 1)) or (c in "uU" and buf.startswith("&'", i + 1)):
        start = buf.index("'", i)
        escapes = c in "eE"
        j = start + 1
        while j < n:
            if escapes and buf[j] == "\\":
                j += 2
                continue
            if buf[j] == "'":
                if j + 1 < n and buf[j + 1] == "'":
                    j += 2
                    continue
                if j + 1 == n and not final:
                    raise _Incomplete  # '' across the chunk boundary
                return "string", j + 1
            j += 1
        if not final:
            raise _Incomplete
        return "string", n
    if c == '"':
        j = i + 1
        while j < n:
            if buf[j] == '"':
                if j + 1 < n and buf[j + 1] == '"':
                    j += 2
                    continue
                if j + 1 == n and not final:
                    raise _Incomplete
                return "qident", j + 1
            j += 1
        if not final:
            raise _Incomplete
        return "qident", n
    if c == "$":
        m = _DOLLAR.match(buf, i)
        if m:
            tag = m.group(0)
            end = buf.find(tag, m.end())
            if end < 0:
                if not final:
                    raise _Incomplete
                return "string", n
            return "string", end + len(tag)
        if i + 1 == n and not final:
            raise _Incomplete
    m = _IDENT.match(buf, i)
    if m:
        if m.end() == n and not final:
            raise _Incomplete
        return "ident", m.end()
    m = _NUMBER.match(buf, i)
    if m:
        if m.end() == n and not final:
            raise _Incomplete
        return "number", m.end()
    return "op", i + 1


def statements(chunks: Iterable[str]) -> Iterator[Piece]:
    """Split pg_restore's text output into pieces (see module docstring)."""
    buf = ""
    stmt_text: list[str] = []
    stmt_tokens: list[tuple[str, str]] = []
    at_line_start = True
    it = iter(chunks)
    final = False
    while True:
        if not final:
            try:
                buf += next(it)
            except StopIteration:
                final = True
        i = 0
        n = len(buf)
        while i < n:
            if not stmt_tokens and at_line_start and buf[i] == "\\":  # psql meta-command line
                j = buf.find("\n", i)
                if j < 0 and not final:
                    break
                j = n if j < 0 else j + 1
                yield Piece("meta", buf[i:j])
                i, at_line_start = j, True
                continue
            try:
                kind, j = _token(buf, i, final)
            except _Incomplete:
                break
            text = buf[i:j]
            if stmt_tokens:
                stmt_text.append(text)
                stmt_tokens.append((kind, text))
                if kind == "op" and text == ";":
                    yield Piece("statement", "".join(stmt_text), stmt_tokens)
                    stmt_text, stmt_tokens = [], []
            elif kind in ("space", "comment"):
                yield Piece(kind, text)
            else:
                stmt_text, stmt_tokens = [text], [(kind, text)]
                if kind == "op" and text == ";":
                    yield Piece("statement", text, stmt_tokens)
                    stmt_text, stmt_tokens = [], []
            at_line_start = text.endswith("\n") if kind in ("space", "comment") else False
            i = j
        buf = buf[i:]
        if final:
            if buf:  # cannot happen with final=True except for an empty remainder
                yield Piece("space", buf)
            if stmt_tokens:
                yield Piece("statement", "".join(stmt_text), stmt_tokens)
            return


def words(tokens: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """The non-space, non-comment tokens of a statement with their index: (index, kind, text)."""
    return [(k, kind, text) for k, (kind, text) in enumerate(tokens) if kind not in ("space", "comment")]


def unquote(kind: str, text: str) -> str:
    """The name an identifier token stands for (unquoted identifiers fold to lower case)."""
    if kind == "qident":
        return text[1:-1].replace('""', '"')
    return text.lower()


def quote(name: str) -> str:
    """A name as a double-quoted identifier: always valid, whatever the name (keywords too)."""
    return '"' + name.replace('"', '""') + '"'
