"""Roles a snapshot needs on the target server, checked before anything is built, and mapped.

Roles are not part of a snapshot: every role that owns an object, receives a privilege, is named
by a policy or a user mapping, owns the database or has settings in it must exist on the target
server (a missing one used to stop every nightly refresh halfway). `scan` reads them from the
snapshot's schema archive; `check` compares them with the target server's roles and the
restoring role's rights, and raises one error listing every problem.

How the archive is read: ``pg_restore --schema-only -f -`` prints the archive as SQL, one block
per archive entry, each opened by pg_restore's own header comment (``-- Name: …; Type: …;
Schema: …; Owner: …``). Role names appear in fixed places only: the ``ALTER … OWNER TO r;`` line
pg_restore writes as the last statement of an entry, the statements of ``ACL`` and ``DEFAULT ACL``
entries (``GRANT … TO r``, ``REVOKE … FROM r``, ``ALTER DEFAULT PRIVILEGES FOR ROLE r``,
``SET SESSION AUTHORIZATION r``), the ``TO`` list of a ``POLICY`` entry and the ``FOR r`` of a
``USER MAPPING``. Anything else (a function body that happens to contain ``GRANT``, a comment)
is never read as a role reference nor rewritten.

Mapping (``[services.X.roles]``, source role -> target role): `rewrite` replaces the names in
exactly those places. A restore with a mapping runs the schema sections through
``pg_restore -f - | rewrite | psql`` instead of plain pg_restore (see `restore`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import psycopg

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*)'
_HEADER = re.compile(r"^-- Name: .*; Type: (?P<type>[A-Z][A-Z ]*?); Schema: .*; Owner: .*$")
_OWNER = re.compile(rf"^(?P<head>ALTER .+ OWNER TO )(?P<role>{_IDENT})(?P<tail>;)$")
_GRANT = re.compile(rf"^(?P<head>(?:ALTER DEFAULT PRIVILEGES FOR ROLE {_IDENT}(?: IN SCHEMA {_IDENT})? )?GRANT .+ TO )"
                    rf"(?P<role>{_IDENT})(?P<tail>(?: WITH GRANT OPTION)?;)$")
_REVOKE = re.compile(rf"^(?P<head>(?:ALTER DEFAULT PRIVILEGES FOR ROLE {_IDENT}(?: IN SCHEMA {_IDENT})? )?REVOKE .+ FROM )"
                     rf"(?P<role>{_IDENT})(?P<tail>(?: CASCADE)?;)$")
_DEFAULT_FOR = re.compile(rf"^(?P<head>ALTER DEFAULT PRIVILEGES FOR ROLE )(?P<role>{_IDENT})(?P<tail> .*)$")
_SESSION_AUTH = re.compile(rf"^(?P<head>SET SESSION AUTHORIZATION )(?P<role>{_IDENT});$")
_POLICY = re.compile(rf"^(?P<head>CREATE POLICY {_IDENT} ON {_IDENT}(?:\.{_IDENT})?(?: AS [A-Z]+)?(?: FOR [A-Z]+)? TO )"
                     rf"(?P<roles>{_IDENT}(?:, {_IDENT})*)(?P<tail>(?: USING \(| WITH CHECK \(|;).*)$", re.S)
_MAPPING = re.compile(rf"^(?P<head>CREATE USER MAPPING FOR )(?P<role>{_IDENT})(?P<tail> SERVER .*)$", re.S)
_KEYWORDS = {"PUBLIC", "CURRENT_USER", "SESSION_USER", "CURRENT_ROLE"}
_SESSION_LINES = ("SET ", "SELECT pg_catalog.set_config(", "\\", "--")


def unquote(ident: str) -> str:
    if ident.startswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident.lower()


def quote(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) and name.upper() not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


@dataclass
class RoleRefs:
    """Role names (as on the source) and what they are needed for."""

    uses: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str, use: str) -> None:
        self.uses.setdefault(name, set()).add(use)

    def owners(self) -> set[str]:
        return {r for r, u in self.uses.items() if "owner" in u}

    def merge(self, other: RoleRefs) -> None:
        for r, u in other.uses.items():
            for x in u:
                self.add(r, x)


def _blocks(lines: Iterable[str]) -> Iterator[tuple[str | None, list[str]]]:
    """Split pg_restore's text output into (entry type, lines) blocks; text before the first
    header comes with type None. A block starts at the ``--`` line above its header."""
    kind: str | None = None
    block: list[str] = []
    pending: list[str] = []  # a "--" line that may open the next header
    for line in lines:
        m = _HEADER.match(line.rstrip("\n"))
        if m and pending:
            yield kind, block
            kind, block = m.group("type"), pending + [line]
            pending = []
            continue
        if pending:
            block.extend(pending)
            pending = []
        if line.rstrip("\n") == "--":
            pending = [line]
        else:
            block.append(line)
    block.extend(pending)
    yield kind, block


def _map_one(raw: str, mapping: dict[str, str], refs: RoleRefs, use: str) -> str:
    """Record one role token and return it mapped (keywords such as PUBLIC stay as they are)."""
    if not raw.startswith('"') and raw.upper() in _KEYWORDS:
        return raw
    name = unquote(raw)
    refs.add(name, use)
    return quote(mapping[name]) if name in mapping else raw


def _sub_role(m: re.Match, mapping: dict[str, str], refs: RoleRefs, use: str) -> str:
    return m.group("head") + _map_one(m.group("role"), mapping, refs, use) + (m.groupdict().get("tail") or "")


def _process_block(kind: str | None, block: list[str], mapping: dict[str, str], refs: RoleRefs) -> list[str]:
    """Record the role references of one block and return it with `mapping` applied."""
    if kind is None:
        return block
    out = list(block)
    if kind in ("ACL", "DEFAULT ACL"):
        for i, line in enumerate(out):
            text, nl = line.rstrip("\n"), line[len(line.rstrip("\n")):]
            for rx, use in ((_GRANT, "grantee"), (_REVOKE, "grantee"), (_SESSION_AUTH, "grantor")):
                m = rx.match(text)
                if m:
                    text = _sub_role(m, mapping, refs, use)
                    break
            m = _DEFAULT_FOR.match(text)
            if m:
                text = _sub_role(m, mapping, refs, "default privileges")
            out[i] = text + nl
        return out
    if kind == "POLICY":
        for i, line in enumerate(out):
            m = _POLICY.match(line)
            if m:
                roles = re.findall(_IDENT, m.group("roles"))
                new = ", ".join(_map_one(r, mapping, refs, "policy") for r in roles)
                out[i] = m.group("head") + new + m.group("tail")
                break
    elif kind == "USER MAPPING":
        for i, line in enumerate(out):
            m = _MAPPING.match(line)
            if m:
                out[i] = _sub_role(m, mapping, refs, "user mapping")
                break
    # the owner statement is the block's last statement (pg_restore writes it after the entry's
    # definition, so a matching line inside a function body is never taken for it); only the
    # session settings pg_restore writes for the next entry (SET …, set_config, psql's \
    # commands) may follow it, each on a line of its own
    for i in range(len(out) - 1, -1, -1):
        text = out[i].rstrip("\n")
        if not text.strip() or text.startswith(_SESSION_LINES):
            continue
        m = _OWNER.match(text)
        if m:
            out[i] = _sub_role(m, mapping, refs, "owner") + out[i][len(text):]
        break
    return out


def rewrite(lines: Iterable[str], mapping: dict[str, str], refs: RoleRefs | None = None) -> Iterator[str]:
    """Yield pg_restore's text output `lines` with role names mapped (see module docstring),
    recording every role reference (under its source name) in `refs`."""
    refs = refs if refs is not None else RoleRefs()
    for kind, block in _blocks(lines):
        yield from _process_block(kind, block, mapping, refs)


def scan(lines: Iterable[str]) -> RoleRefs:
    """The role references of pg_restore's text output `lines`."""
    refs = RoleRefs()
    for _ in rewrite(lines, {}, refs):
        pass
    return refs


# -- the target server ---------------------------------------------------------------------------
@dataclass
class TargetRoles:
    """What the restoring role may do on the target server."""

    existing: set[str]
    superuser: bool
    createrole: bool
    current: str
    can_set: Callable[[str], bool]


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

    return TargetRoles(existing, bool(sup), bool(createrole), current, can_set)
