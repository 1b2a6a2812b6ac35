"""Roles a snapshot needs on the target server, checked before anything is built, and mapped.

Roles are not part of a snapshot: every role that owns an object, receives a privilege, is named
by a policy or a user mapping, owns the database or has settings in it must exist on the target
server (a missing one used to stop every nightly refresh halfway). `scan` reads them from the
snapshot's schema archive; the restore compares them with the target server's roles and the
restoring role's rights (`target_roles`) and raises one error listing every problem.

How the archive is read: ``pg_restore -f -`` prints it as SQL, which `snapdb.sqltext` splits
into top-level statements, so nothing inside a string literal, a dollar-quoted function body, a
quoted identifier or a comment is ever taken for a statement. Role names appear only in
statements pg_dump itself generates, recognised by their leading words: ``ALTER … OWNER TO r``,
``GRANT … TO r``, ``REVOKE … FROM r``, ``ALTER DEFAULT PRIVILEGES FOR ROLE r …``,
``SET SESSION AUTHORIZATION r``, ``CREATE POLICY … TO r, …`` and ``CREATE USER MAPPING FOR r``.

Mapping (``[services.X.roles]``, source role -> target role): `rewrite` replaces exactly those
role tokens, writing every mapped name as a quoted identifier (keywords included); everything
else passes through byte for byte. A restore with a mapping runs every section of the archive
through ``pg_restore -f - | rewrite | psql`` instead of plain pg_restore (see `restore`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import psycopg

from . import sqltext

_KEYWORDS = {"public", "current_user", "session_user", "current_role"}


@dataclass
class RoleRefs:
    """Role names (as on the source) and what they are needed for."""

    uses: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str, use: str) -> None:
        self.uses.setdefault(name, set()).add(use)

    def owners(self) -> set[str]:
        return {r for r, u in self.uses.items() if "owner" in u}


def _role_positions(tokens: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """Token indexes of the role names in one generated statement, with what each is for."""
    w = sqltext.words(tokens)
    if not w:
        return []
    up = [t.upper() if kind == "ident" else None for _, kind, t in w]

    def ident_at(j: int, string: bool = False) -> bool:
        return 0 <= j < len(w) and w[j][1] in (("ident", "qident", "string") if string else ("ident", "qident"))

    def top_level_last(word: str) -> int | None:
        depth, found = 0, None
        for j, (_, kind, t) in enumerate(w):
            if kind == "op" and t == "(":
                depth += 1
            elif kind == "op" and t == ")":
                depth -= 1
            elif depth == 0 and up[j] == word:
                found = j
        return found

    out: list[tuple[int, str]] = []
    if up[0] in ("GRANT", "REVOKE") or up[:4] == ["ALTER", "DEFAULT", "PRIVILEGES", "FOR"]:
        if up[:4] == ["ALTER", "DEFAULT", "PRIVILEGES", "FOR"] and len(w) > 5 and up[4] in ("ROLE", "USER") and ident_at(5):
            out.append((w[5][0], "default privileges"))
        verb = "GRANT" if "GRANT" in up else "REVOKE"
        j = top_level_last("TO" if verb == "GRANT" else "FROM")
        if j is not None and ident_at(j + 1):
            out.append((w[j + 1][0], "grantee"))
    elif up[:3] == ["SET", "SESSION", "AUTHORIZATION"] and ident_at(3, string=True):
        out.append((w[3][0], "grantor"))
    elif up[:2] == ["CREATE", "POLICY"]:
        j = next((k for k in range(2, len(w)) if up[k] == "TO"), None)
        k = (j or 0) + 1
        while j is not None and ident_at(k) and up[k] not in ("USING", "WITH"):
            out.append((w[k][0], "policy"))
            if k + 1 < len(w) and w[k + 1][2] == ",":
                k += 2
            else:
                break
    elif up[:4] == ["CREATE", "USER", "MAPPING", "FOR"] and ident_at(4):
        out.append((w[4][0], "user mapping"))
    elif up[0] == "ALTER" and len(w) >= 5 and up[-4:-2] == ["OWNER", "TO"] and ident_at(len(w) - 2) and w[-1][2] == ";":
        out.append((w[-2][0], "owner"))
    return out


def _name(kind: str, text: str) -> str | None:
    """The role a token names, or None for PUBLIC / CURRENT_USER and the like."""
    if kind == "string":
        return text[1:-1].replace("''", "'") if text.startswith("'") else None
    name = sqltext.unquote(kind, text)
    return None if kind == "ident" and name in _KEYWORDS else name


def rewrite(chunks: Iterable[str], mapping: dict[str, str], refs: RoleRefs | None = None) -> Iterator[str]:
    """Yield pg_restore's text output with role names mapped (see module docstring), recording
    every role reference (under its source name) in `refs`."""
    refs = refs if refs is not None else RoleRefs()
    for piece in sqltext.statements(chunks):
        if piece.kind != "statement":
            yield piece.text
            continue
        positions = _role_positions(piece.tokens)
        if not positions:
            yield piece.text
            continue
        tokens = list(piece.tokens)
        for idx, use in positions:
            kind, text = tokens[idx]
            name = _name(kind, text)
            if name is None:
                continue
            refs.add(name, use)
            if name in mapping:
                new = sqltext.quote(mapping[name])
                tokens[idx] = (kind, "'" + mapping[name].replace("'", "''") + "'" if kind == "string" else new)
        yield "".join(t for _, t in tokens)


def scan(chunks: Iterable[str]) -> RoleRefs:
    """The role references of pg_restore's text output."""
    refs = RoleRefs()
    for _ in rewrite(chunks, {}, refs):
        pass
    return refs


#: TOC entry types whose SQL names no role: table and large-object contents (large), and the
#: entries of which a database of many tables has several per table (pg_restore prints no
#: ``OWNER TO`` for them: indexes, constraints, triggers, column defaults, comments, ...)
_UNSCANNED = ("TABLE DATA ", "BLOBS ", "INDEX ", "INDEX ATTACH ", "CONSTRAINT ", "FK CONSTRAINT ",
              "CHECK CONSTRAINT ", "TRIGGER ", "DEFAULT ", "SEQUENCE OWNED BY ", "COMMENT ")


def schema_list(toc_lines: Iterable[str]) -> list[str]:
    """The lines of ``pg_restore -l`` to keep for scanning: every entry but those of
    `_UNSCANNED` (``DEFAULT ACL`` entries are kept).
    Large-object metadata (``BLOB`` / ``BLOB METADATA``, in the data section from pg_dump 17 on)
    and its ACLs stay."""
    import re

    out = []
    for line in toc_lines:
        m = re.match(r"^\s*\d+;\s+\d+\s+\d+\s+(.*)$", line)
        if m and m.group(1).startswith(_UNSCANNED) and not m.group(1).startswith("DEFAULT ACL "):
            continue
        out.append(line)
    return out


# -- the target server ---------------------------------------------------------------------------
@dataclass
class TargetRoles:
    """What the restoring role may do on the target server."""

    existing: set[str]
    superuser: bool
    createrole: bool
    current: str
    can_set: Callable[[str], bool]
    can_alter: Callable[[str], bool] = lambda role: False  # may ALTER ROLE role IN DATABASE … SET


def target_roles(conn: psycopg.Connection) -> TargetRoles:
    """Read the target server's roles and the connected role's rights."""
    existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_catalog.pg_roles")}
    current, sup, createrole = conn.execute(
        "SELECT rolname, rolsuper, rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
    option = "SET" if conn.info.server_version >= 160000 else "MEMBER"

    def can_set(role: str) -> bool:
        if sup or role == current:
            return True
        if role not in existing:
            return False
        return bool(conn.execute("SELECT pg_catalog.pg_has_role(%s, %s)", (role, option)).fetchone()[0])

    def can_alter(role: str) -> bool:
        if sup:
            return True
        if not createrole or role not in existing:
            return False
        row = conn.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone()
        if row[0]:
            return False  # only superusers alter superusers
        if conn.info.server_version >= 160000:  # 16+: CREATEROLE needs ADMIN OPTION on the role
            return bool(conn.execute("SELECT pg_catalog.pg_has_role(%s, 'MEMBER WITH ADMIN OPTION')",
                                     (role,)).fetchone()[0])
        return True

    return TargetRoles(existing, bool(sup), bool(createrole), current, can_set, can_alter)
