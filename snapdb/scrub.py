"""Scrub rules for non-production restores: run on a restore's build, after its verification,
before the swap, so the target never holds unscrubbed data.

``[services.X.scrub]`` (`config.ScrubConfig`) for a non-production service X:

- ``columns = { "app.customers.email" = "'user' || id || '@example.invalid'" }``: one
  ``UPDATE schema.table SET column = (expression)`` per entry; the names are quoted as written,
  the expression is SQL from the configuration (evaluated per row, so it may use the row's
  columns);
- ``sql = ["scrub/dev.sql"]``: files of SQL statements, run in order after the column rules
  (relative to the configuration file; no transaction control inside: they run in snapdb's);
- ``settings = { "app.send_mail" = "off" }``: database-level settings the copy gets on top of
  the snapshot's (applied with the source's, replacing a setting of the same name);
- ``checks = ["SELECT 1 FROM app.customers WHERE email NOT LIKE '%@example.invalid'"]``: queries
  that must return no row once the rules have run; a row aborts the restore.

Contract: `run(conn, rules, build=…, target=…)` runs the rules and checks in `conn`'s open
transaction (the restore's hold: every table of the build locked in SHARE mode by that very
transaction, so no other session sees or changes the build meanwhile), and returns the record of
what it did (rows per column rule, files with their sha256, checks passed, seconds). It refuses
(`RefusedError`) a database that is not a restore's temporary build of a different target: scrub
rules never run on a live database, production least of all. A failing statement raises
`TargetError`, a failing check `IntegrityError`; the caller drops the build, the target stays
as it was.
"""

from __future__ import annotations

import hashlib
import time

import psycopg
from psycopg import sql

from . import names
from .config import ScrubConfig
from .errors import IntegrityError, RefusedError, TargetError
from .postgres import DatabaseProps, first_line

HINT = "the target is unchanged; fix [services.{service}.scrub] and restore again"


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
        text = path.read_bytes()
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


def with_settings(props: DatabaseProps, settings: dict[str, str]) -> DatabaseProps:
    """`props` with the database-level `settings` set (replacing those of the same name)."""
    if not settings:
        return props
    keep = [s for s in props.settings if s.split("=", 1)[0] not in settings]
    from dataclasses import replace

    return replace(props, settings=keep + [f"{k}={v}" for k, v in settings.items()])
