"""Logical replication slots: created with an exported snapshot, inspected, dropped.

Contract:

- `ExportedSlot(ep, name)` opens a replication connection (``replication=database``) to `ep`'s
  database and runs ``CREATE_REPLICATION_SLOT name LOGICAL pgoutput (SNAPSHOT 'export')``; its
  `snapshot` can be imported (``SET TRANSACTION SNAPSHOT``) by any session on that database
  for as long as the object is open, and `lsn` is the slot's consistent point: every
  transaction that committed before it is visible in the snapshot, every later one will be
  streamed from the slot. The slot itself is not held by the connection (a subscription can use
  it). `close()` ends the connection (and the exported snapshot, not the slot). Creating a slot
  waits for the transactions with a transaction ID running at that moment; `timeout` bounds the
  wait (`TargetError`).
- `drop(conn, name)` drops a slot if it exists, first ending the walsender that holds it;
  `info(conn, name)` reads one from ``pg_replication_slots``.

Slot names are validated (``[a-z0-9_]``, at most 63 bytes) because the replication protocol's
command takes the name as a bare word.
"""

from __future__ import annotations

import re
import threading
import time

import psycopg

from ..config import Endpoint
from ..errors import TargetError
from ..postgres import first_line

_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a valid replication slot name: {name!r}")
    return name


class ExportedSlot:
    """A new logical slot and the snapshot exported at its consistent point (see module docstring)."""

    def __init__(self, ep: Endpoint, name: str, *, plugin: str = "pgoutput", timeout: float = 60.0,
                 dbname: str | None = None) -> None:
        check_name(name)
        info = ep.conninfo(dbname) + " replication=database"
        try:
            self.conn = psycopg.connect(info, autocommit=True, connect_timeout=30)
        except psycopg.Error as exc:
            raise TargetError(f"cannot open a replication connection to {ep.label(dbname)}: {first_line(exc)}",
                              hint="the role needs REPLICATION (or superuser) and pg_hba.conf must allow "
                                   "replication connections to that database") from None
        watchdog = threading.Timer(timeout, self.conn.cancel)  # the wait for running transactions
        watchdog.daemon = True
        try:
            watchdog.start()
            try:
                res = self.conn.pgconn.exec_(f"CREATE_REPLICATION_SLOT {name} LOGICAL {plugin} EXPORT_SNAPSHOT".encode())
            finally:
                watchdog.cancel()
            if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
                msg = (res.error_message or b"").decode("utf-8", "replace").strip()
                if "cancel" in msg.lower():
                    msg = (f"it waited more than {timeout:.0f} s for transactions running on the server to end "
                           f"({msg.splitlines()[0] if msg else 'canceled'})")
                raise TargetError(f"cannot create replication slot {name}: {first_line(Exception(msg))}")
            self.name = name
            self.lsn = res.get_value(0, 1).decode()
            self.snapshot = res.get_value(0, 2).decode()
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ExportedSlot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def info(conn: psycopg.Connection, name: str) -> dict | None:
    """The slot `name` on `conn`'s server: database, plugin, active pid, confirmed flush LSN."""
    row = conn.execute(
        """SELECT database, plugin, active_pid, confirmed_flush_lsn::text, restart_lsn::text
           FROM pg_catalog.pg_replication_slots WHERE slot_name = %s""", (name,)).fetchone()
    if row is None:
        return None
    return {"database": row[0], "plugin": row[1], "active_pid": row[2], "confirmed_flush_lsn": row[3],
            "restart_lsn": row[4]}


def drop(conn: psycopg.Connection, name: str, *, wait: float = 10.0) -> bool:
    """Drop slot `name` if it exists (`conn`: autocommit, any database of the slot's server),
    ending the session that holds it first; True when one was dropped."""
    deadline = time.monotonic() + wait
    while True:
        slot = info(conn, name)
        if slot is None:
            return False
        if slot["active_pid"]:
            conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (slot["active_pid"],))
            if time.monotonic() > deadline:
                raise TargetError(f"replication slot {name} stays in use by pid {slot['active_pid']}")
            time.sleep(0.02)
            continue
        try:
            conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (name,))
            return True
        except psycopg.errors.UndefinedObject:
            return False
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
