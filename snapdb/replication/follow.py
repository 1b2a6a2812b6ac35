"""One database following another by logical replication: publication on the source, subscription
on the follower, lag, the LSN fence, and tearing it all down.

Contract (every function takes autocommit sessions; names are quoted, never formatted in):

- `create_publication(conn, name, tables)` on the source database: ``FOR TABLE`` exactly the
  given tables, each with a column list when one is given (PostgreSQL 15+), so the follower may
  have more columns or tables than the source. snapdb's own schema and the alembic version table
  are never published by the callers (each side keeps its own).
- `create_subscription(conn, name, conninfo, publication, slot)` on the follower: an existing
  slot (``create_slot = false``: required when both databases are in one cluster, where creating
  the slot from the subscription would wait for its own transaction), no initial copy
  (``copy_data = false``: the follower was copied from the slot's exported snapshot),
  ``synchronous_commit = on`` (an applied transaction is durable before it is confirmed, so the
  fence means durable) and ``disable_on_error = true`` (an apply error stops the subscription
  instead of retrying forever; `wait_for` reports it). `conninfo` never carries a password:
  the follower's server must authenticate to the source without one (trust or peer on a local
  socket, certificates, or a ``.pgpass`` of the server's OS user).
- `lag_bytes(src, slot)` is how far the follower's confirmed position is behind the source's
  current WAL; `wait_for(src, dst, sub, slot, lsn, timeout)` returns once the follower has
  confirmed everything up to `lsn` (the fence), or raises `TargetError` when the subscription
  stopped, its worker is gone for good, or `timeout` passes.
- `stop(dst, src, sub, slot)` disables the subscription, ends its worker and walsender, detaches
  and drops it, and drops the slot; every part is skipped when already gone (safe to repeat
  after a crash). `drop_publication(conn, name)` likewise.
- `copy_sequences(src, dst)` sets every sequence of the follower that also exists on the source
  to the source's state (``last_value``, ``is_called``), all sequences, not only those owned by
  a column; returns what it set and what it could not.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ..config import Endpoint
from ..errors import TargetError
from ..postgres import first_line, read_sequences
from . import slots

#: libpq keywords of the source endpoint that a subscription's connection keeps
_CONN_KEYS = ("host", "hostaddr", "port", "user", "dbname", "sslmode", "sslcert", "sslkey", "sslrootcert",
              "sslcrl", "target_session_attrs", "connect_timeout", "options")


def subscription_conninfo(src: Endpoint, dbname: str, application_name: str) -> str:
    """The connection string a subscription uses to reach `dbname` on `src`'s server (no password:
    see module docstring)."""
    params = {k: v for k, v in src.params.items() if k in _CONN_KEYS and v not in (None, "")}
    params["dbname"] = dbname
    params["application_name"] = application_name
    params.setdefault("host", src.host)
    params.setdefault("port", src.port)
    params.setdefault("user", src.user)
    return make_conninfo(**params)


def create_publication(conn: psycopg.Connection, name: str, tables: list[tuple[str, str, list[str] | None]]) -> None:
    if not tables:
        raise TargetError("there are no tables to replicate")
    items = []
    for schema, table, cols in tables:
        item = sql.SQL("ONLY {}").format(sql.Identifier(schema, table))
        if cols is not None:
            item = sql.SQL("{} ({})").format(item, sql.SQL(", ").join(sql.Identifier(c) for c in cols))
        items.append(item)
    conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), sql.SQL(", ").join(items)))


def drop_publication(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))


def create_subscription(conn: psycopg.Connection, name: str, conninfo: str, publication: str, slot: str) -> None:
    slots.check_name(slot)
    conn.execute(sql.SQL(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = false, create_slot = false, "
        "slot_name = {}, enabled = true, synchronous_commit = 'on', disable_on_error = true)").format(
        sql.Identifier(name), sql.Literal(conninfo), sql.Identifier(publication), sql.Literal(slot)))


def subscription(conn: psycopg.Connection, name: str) -> dict | None:
    """The subscription `name` of `conn`'s database: enabled, worker pid, last received LSN."""
    row = conn.execute(
        """SELECT s.subenabled, st.pid, st.received_lsn::text, st.latest_end_lsn::text
           FROM pg_catalog.pg_subscription s
           LEFT JOIN pg_catalog.pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL
           WHERE s.subname = %s AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database
                                                 WHERE datname = pg_catalog.current_database())""",
        (name,)).fetchone()
    if row is None:
        return None
    return {"enabled": bool(row[0]), "pid": row[1], "received_lsn": row[2], "latest_end_lsn": row[3]}


def lag_bytes(src: psycopg.Connection, slot: str) -> int | None:
    row = src.execute("""SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)
                         FROM pg_catalog.pg_replication_slots WHERE slot_name = %s""", (slot,)).fetchone()
    return None if row is None or row[0] is None else max(0, int(row[0]))


def confirmed(src: psycopg.Connection, slot: str, lsn: str) -> bool:
    row = src.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_catalog.pg_replication_slots "
                      "WHERE slot_name = %s", (lsn, slot)).fetchone()
    return bool(row and row[0])


def wait_for(src: psycopg.Connection, dst: psycopg.Connection, sub: str, slot: str, lsn: str, timeout: float,
             on_wait: Callable[[int | None, float], None] | None = None, poll: float = 0.005) -> float:
    """Wait until the follower has confirmed the source's WAL up to `lsn`; return the seconds
    waited (see module docstring). `on_wait(lag_bytes, waited)` is called about once a second."""
    started = time.monotonic()
    last_report = started
    no_worker_since: float | None = None
    while True:
        if confirmed(src, slot, lsn):
            return time.monotonic() - started
        state = subscription(dst, sub)
        now = time.monotonic()
        if state is None:
            raise TargetError(f"the subscription {sub} is gone")
        if not state["enabled"]:
            raise TargetError(f"the subscription {sub} stopped after an apply error (the follower's server log "
                              "names it: often a row that conflicts with a constraint the new release added)")
        if state["pid"] is None:
            no_worker_since = no_worker_since or now
            if now - no_worker_since > max(30.0, timeout / 2):
                raise TargetError(f"the subscription {sub} has had no worker for {now - no_worker_since:.0f} s "
                                  "(max_logical_replication_workers, or the follower cannot connect to the source)")
        else:
            no_worker_since = None
        if now - started > timeout:
            raise TargetError(f"the follower did not catch up within {timeout:.0f} s "
                              f"(still {lag_bytes(src, slot) or 0} bytes behind)")
        if on_wait is not None and now - last_report >= 1.0:
            on_wait(lag_bytes(src, slot), now - started)
            last_report = now
        time.sleep(poll)


def stop(dst: psycopg.Connection | None, src: psycopg.Connection, sub: str, slot: str, *, wait: float = 10.0) -> None:
    """Remove the replication (see module docstring). `dst` may be None when the follower's
    database is gone (its subscription went with it)."""
    ident = sql.Identifier(sub)
    if dst is not None and subscription(dst, sub) is not None:
        dst.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
        deadline = time.monotonic() + wait
        while (state := subscription(dst, sub)) is not None and state["pid"] is not None:
            dst.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (state["pid"],))  # disabled: not restarted
            if time.monotonic() > deadline:
                raise TargetError(f"the worker of subscription {sub} does not stop")
            time.sleep(0.01)
        dst.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
        dst.execute(sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(ident))
    slots.drop(src, slot, wait=wait)


def copy_sequences(src: psycopg.Connection, dst: psycopg.Connection) -> dict:
    """Set the follower's sequences from the source's (see module docstring)."""
    have = {(r[0], r[1]) for r in dst.execute(
        """SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'S'""").fetchall()}
    done, missing = [], []
    for s in read_sequences(src):
        if (s.schema, s.name) not in have:
            missing.append(f"{s.schema}.{s.name}")
            continue
        try:
            dst.execute("SELECT pg_catalog.setval(%s::regclass, %s, %s)",
                        (sql.Identifier(s.schema, s.name).as_string(dst), s.last_value, s.is_called))
        except psycopg.Error as exc:
            raise TargetError(f"cannot set sequence {s.schema}.{s.name} on the new database: {first_line(exc)}") from None
        done.append(f"{s.schema}.{s.name}")
    return {"set": len(done), "missing_on_follower": missing}
