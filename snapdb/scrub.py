"""Scrub rules for non-production restores: run on a restore's build, after its verification,
before the swap, so the target never holds unscrubbed data.

``[services.X.scrub]`` (`config.ScrubConfig`) for a non-production service X:

- ``columns = { "app.customers.email" = "'user' || id || '@example.invalid'" }``: one
  ``UPDATE schema.table SET column = (expression)`` per entry; the names are quoted as written,
  the expression is SQL from the configuration (evaluated per row, so it may use the row's
  columns);
- ``sql = ["scrub/dev.sql"]``: files of SQL statements, run in order after the column rules
  (relative to the configuration file; no transaction control inside: they run in snapdb's);
- ``settings = { "app.send_mail" = "off" }``: settings the copy gets on top of the snapshot's:
  at database level (replacing the source's setting of the same name), and for every role whose
  own setting of that name would outrank it (`with_settings`);
- ``checks = ["SELECT 1 FROM app.customers WHERE email NOT LIKE '%@example.invalid'"]``: queries
  that must return no row once the rules have run; a row aborts the restore.

`rules_digest(rules)` is the sha256 of what the rules demand (the column rules in order, the SQL
files' contents in order, the settings, the checks, and `MECHANICS`); `run` records the digest of
what it ran, and `restore --if-newer` restores a copy again when the rules now give another one.

Contract: `run(conn, rules, build=…, target=…)` runs the rules and checks in `conn`'s open
transaction (the restore's hold: every table of the build locked in SHARE mode by that very
transaction, so no other session changes the build meanwhile; and until the seal no role but
snapdb's own, and superusers, may connect to it), and returns the record of what it did (rows
per column rule, files with their sha256, checks passed, the rules' digest, seconds; the
restore adds ``role_settings``, the roles `role_overrides` gave the settings to). It refuses
(`RefusedError`) a database that is not a restore's temporary build of a different target: scrub
rules never run on a live database, production least of all. A failing statement raises
`TargetError`, a failing check `IntegrityError`; the caller drops the build, the target stays
as it was.
"""

from __future__ import annotations

import hashlib
import json
import time

import psycopg
from psycopg import sql

from . import names
from .config import ScrubConfig
from .errors import ConfigError, IntegrityError, RefusedError, TargetError
from .postgres import DatabaseProps, first_line

HINT = "the target is unchanged; fix [services.{service}.scrub] and restore again"

#: how snapdb applies the rules, as part of their digest: raised when a change to that makes the
#: copies scrubbed before it unsafe (2: settings also outrank the roles' own settings), so that
#: `restore --if-newer` restores those copies again
MECHANICS = 2


def rules_digest(rules: ScrubConfig | None) -> str | None:
    """The digest of what `rules` demand (see the module docstring); None without rules.
    The SQL files count by their contents, not their names. Raises `ConfigError` when a file
    cannot be read."""
    if rules is None:
        return None
    return _digest(rules, [hashlib.sha256(_read(p)).hexdigest() for p in rules.sql])


def _digest(rules: ScrubConfig, file_sha256: list[str]) -> str:
    doc = {"mechanics": MECHANICS, "columns": [list(c) for c in rules.columns], "sql": file_sha256,
           "settings": sorted(rules.settings.items()), "checks": list(rules.checks)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read(path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read scrub file {path}: {exc.strerror or exc}") from None


def run(conn: psycopg.Connection, rules: ScrubConfig, *, build: str, target: str, service: str | None = None) -> dict:
    """Scrub the build `build` (to become `target`) on `conn`; see the module docstring."""
    current = conn.execute("SELECT pg_catalog.current_database()").fetchone()[0]
    if current != build or build == target or not build.endswith(names.TMP_SUFFIX):
        raise RefusedError(f"refusing to scrub {current!r}: scrub rules run only on a restore's temporary build",
                           hint="scrubbing is for the copies a restore builds, never for a live database")
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise TargetError("scrubbing needs the restore's open transaction on the build")
    hint = HINT.format(service=service or target)
    started = time.monotonic()
    out: dict = {"columns": [], "sql": [], "settings": dict(rules.settings), "checks": 0}
    for schema, table, column, expr in rules.columns:
        name = f"{schema}.{table}.{column}"
        stmt = sql.SQL("UPDATE {} SET {} = ({})").format(sql.Identifier(schema, table), sql.Identifier(column),
                                                         sql.SQL(expr))
        try:
            rows = conn.execute(stmt).rowcount
        except psycopg.Error as exc:
            raise TargetError(f"scrub rule for {name} failed: {first_line(exc)}", hint=hint) from None
        out["columns"].append({"column": name, "rows": rows})
    for path in rules.sql:
        text = _read(path)
        try:
            conn.execute(text.decode("utf-8"))
        except (psycopg.Error, UnicodeDecodeError) as exc:
            why = first_line(exc) if isinstance(exc, psycopg.Error) else "not UTF-8"
            raise TargetError(f"scrub file {path.name} failed: {why}", hint=hint) from None
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
            raise TargetError(f"scrub file {path.name} ended snapdb's transaction (COMMIT or ROLLBACK in it)",
                              hint="remove transaction control from the file; " + hint)
        out["sql"].append({"file": str(path), "sha256": hashlib.sha256(text).hexdigest()})
    for n, query in enumerate(rules.checks, 1):
        try:
            row = conn.execute(query).fetchone()
        except psycopg.Error as exc:
            raise TargetError(f"scrub check {n} failed to run: {first_line(exc)}", hint=hint) from None
        if row is not None:
            raise IntegrityError(f"scrub check {n} returned a row, so the copy is not clean: {query.strip()[:120]}",
                                 hint=hint)
        out["checks"] += 1
    out["digest"] = _digest(rules, [f["sha256"] for f in out["sql"]])  # of what ran (a file may change meanwhile)
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


def rules_for(cfg, into: str, server_key: tuple[str, str], dbname: str) -> tuple[str | None, ScrubConfig | None]:
    """The scrub rules a restore into `dbname` on the server `server_key` must run: those of the
    service `into`, else of any service that is this database on this server (a URL, a bare name
    or a second service naming a scrubbed service's database is scrubbed all the same).
    Returns (service, rules), or (None, None)."""
    if into in cfg.scrub:
        return into, cfg.scrub[into]
    for name, rules in cfg.scrub.items():  # another service that is the same database
        svc = cfg.services[name]
        if svc.dbname == dbname and server_key in {svc.server_key(), svc.admin().server_key()}:
            return name, rules
    return None, None


def _name(item: str) -> str:
    """The setting name of a ``name=value`` entry of pg_db_role_setting (names are case-blind)."""
    return item.split("=", 1)[0].lower()


def server_role_settings(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Every role's settings for all databases of `conn`'s server (``ALTER ROLE … SET``)."""
    return {role: list(items or []) for role, items in conn.execute(
        "SELECT pg_catalog.pg_get_userbyid(setrole), setconfig FROM pg_catalog.pg_db_role_setting "
        "WHERE setdatabase = 0 AND setrole <> 0 ORDER BY 1").fetchall()}


def role_overrides(props: DatabaseProps, settings: dict[str, str],
                   server_roles: dict[str, list[str]]) -> dict[str, list[str]]:
    """The scrub `settings` each role must get in the copy itself, so that they hold for it.

    A session's defaults come from the most specific entry: its role in its database (``ALTER
    ROLE r IN DATABASE d SET``: `props.role_settings`, copied from the source), then its role on
    every database (``ALTER ROLE r SET``: `server_roles`, the target server's), then the database
    (``ALTER DATABASE d SET``), then the server. A database-level scrub setting therefore loses to
    either role entry of the same name. Each role that has one gets the scrub's value for itself
    in the copy (role-in-database: the top level, which wins over whatever is below it and
    changes nothing outside the copy); resetting instead would hand the decision to the role's
    server-wide value, and that one cannot be reset without changing every database on the server.
    Returns {role: names of the settings given} (roles as in `props`, after any role map)."""
    want = {k.lower() for k in settings}
    out = {}
    for role in sorted(set(props.role_settings) | set(server_roles)):
        hit = {_name(i) for i in props.role_settings.get(role, []) + server_roles.get(role, [])} & want
        if hit:
            out[role] = sorted(k for k in settings if k.lower() in hit)
    return out


def with_settings(props: DatabaseProps, settings: dict[str, str],
                  server_roles: dict[str, list[str]] | None = None) -> DatabaseProps:
    """`props` with the scrub `settings` set at database level (replacing those of the same name)
    and for every role of `role_overrides` in the database (replacing its own entry)."""
    if not settings:
        return props
    from dataclasses import replace

    want = {k.lower() for k in settings}
    keep = [s for s in props.settings if _name(s) not in want]
    role_settings = {r: list(v) for r, v in props.role_settings.items()}
    for role, given in role_overrides(props, settings, server_roles or {}).items():
        role_settings[role] = [s for s in role_settings.get(role, []) if _name(s) not in want] + [
            f"{k}={settings[k]}" for k in given]
    return replace(props, settings=keep + [f"{k}={v}" for k, v in settings.items()], role_settings=role_settings)
