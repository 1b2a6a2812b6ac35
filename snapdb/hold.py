"""Holding table locks on a whole database from one session, until released.

`TableHold(ep, dbname, mode)` opens a session on `dbname`, begins a transaction and locks every
table and partitioned table there (materialized views cannot be locked; their contents are
derived, never copied) (``LOCK TABLE ONLY … IN <mode> MODE``, 200
per statement), retrying while tables are dropped or renamed under it, and keeps the transaction
open. Uses:

- a restore's build is held in ``SHARE`` mode from before its verification until just before the
  swap: other sessions can read it but not write or alter it, so what is swapped in is what was
  verified. ANALYZE runs in the hold's own transaction (its own locks never conflict with it),
  except for a build whose tables and indexes would crowd the server's lock table: then it runs
  just before the hold, in its own session (`restore._analyze_alone_if_many`).
- a cutover's frozen database is held in ``EXCLUSIVE`` mode (reads pass, every write waits).

The session's idle timeouts are disabled (a hold can be idle for hours). `close` ends the
session and with it the locks; `on_wait(pid)` is called with the hold's own backend pid when a lock is not granted within 2 s.
`commit` commits what the hold's own transaction wrote (ANALYZE
statistics, a history row) and keeps nothing locked.
"""

from __future__ import annotations

import time

import psycopg

from .config import Endpoint
from .errors import SnapdbError
from .postgres import connect, first_line, keep_session_alive
from .relations import lock_statements

LOCKABLE_SQL = """SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
    ORDER BY c.oid"""
MODES = ("SHARE", "EXCLUSIVE")


class TableHold:
    """See module docstring."""

    def __init__(self, ep: Endpoint, dbname: str, mode: str, error_cls: type[SnapdbError], *,
                 timeout: float = 30.0, on_wait=None) -> None:
        assert mode in MODES
        self.dbname, self.mode, self.error_cls = dbname, mode, error_cls
        self.conn = connect(ep, error_cls, dbname=dbname, autocommit=True)
        self.pid = self.conn.info.backend_pid
        self.tables: list[tuple[str, str]] = []
        try:
            keep_session_alive(self.conn)
            self._lock_all(timeout, on_wait)
        except psycopg.Error as exc:
            self.close()
            raise error_cls(f"could not lock the tables of {dbname!r}: {first_line(exc)}") from None
        except BaseException:
            self.close()
            raise

    def _lock_all(self, timeout: float, on_wait) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.conn.execute("BEGIN")
            self.conn.execute("SET LOCAL lock_timeout = '2s'")
            tables = [(s, n) for s, n in self.conn.execute(LOCKABLE_SQL).fetchall()]
            try:
                for stmt in lock_statements(tables, self.mode):
                    self.conn.execute(stmt)
                self.conn.execute("SET LOCAL lock_timeout = '0'")
                self.tables = tables
                return
            except (psycopg.errors.LockNotAvailable, psycopg.errors.UndefinedTable) as exc:
                self.conn.execute("ROLLBACK")
                if time.monotonic() >= deadline:
                    raise self.error_cls(f"could not lock the tables of {self.dbname!r}: {first_line(exc)}",
                                         hint="a session keeps holding a conflicting lock") from None
                if on_wait is not None:
                    on_wait(self.pid)  # e.g. end the other sessions, which hold conflicting locks

    def alive(self) -> bool:
        return not (self.conn.closed or self.conn.broken)

    def commit(self) -> None:
        """Commit the hold's transaction (releasing its locks)."""
        if self.alive() and self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        """End the session (an open transaction rolls back; the locks go)."""
        self.conn.close()
