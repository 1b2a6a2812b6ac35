"""Server-wide locks on database names: one per database, shared by every operation that changes it.

Why not advisory locks: PostgreSQL scopes them to the database a session is connected to, so two
runs connected to different maintenance databases never see each other's (a second restore then
dropped the first one's verified build). snapdb registers its locks where every session of a
server can see them, whichever database it is connected to: in ``application_name``, which
``pg_stat_activity`` shows to every role.

Protocol (one lock per session; `acquire`):

1. ``SET application_name = 'snapdb-lock:<key>:w:<operation>:<pid>'`` (``w``: registering);
2. read the other sessions whose application_name carries the same key: one marked ``h``
   (held) means the lock is taken (`BusyError`, naming the operation and the holder's pid); one
   marked ``w`` is another run registering at this very moment: clear ours, wait a random
   moment and start again (a few attempts, then `BusyError`);
3. ``SET application_name = 'snapdb-lock:<key>:h:<operation>:<pid>'``: held.

Two runs cannot both hold the lock: each sets its mark before reading the others', so whichever
reads second sees the first one's mark (reading ``pg_stat_activity`` in a new transaction sees
every name set before it). The lock lives exactly as long as the session: a killed snapdb
releases it, as a PostgreSQL advisory lock would. `<key>` is 16 hex digits of the sha256 of the
database name, so the name fits PostgreSQL's 63 bytes; the lock covers the database and the
side databases derived from its name (temporary build, previous copies).

Contract: `acquire(conn, dbname, operation)` takes the lock on `conn` (an autocommit session that
must stay open while the lock is needed, with the idle timeouts disabled, see
`postgres.control_session`) or raises `BusyError`; `holders(conn, dbname)` lists who holds it.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass

import psycopg

from .errors import BusyError

PREFIX = "snapdb-lock:"
ATTEMPTS = 8


def key(dbname: str) -> str:
    """The lock key of database `dbname`: 16 hex digits."""
    return hashlib.sha256(dbname.encode("utf-8")).hexdigest()[:16]


@dataclass
class Holder:
    """A session marked with a lock: its backend pid, state (``h`` held, ``w`` registering),
    the operation and the pid of the snapdb process that holds it."""

    backend_pid: int
    state: str
    operation: str
    client_pid: str

    def describe(self) -> str:
        return f"snapdb {self.operation} (process {self.client_pid}, server session {self.backend_pid})"


def _mark(dbname: str, state: str, operation: str) -> str:
    return f"{PREFIX}{key(dbname)}:{state}:{operation[:12]}:{os.getpid()}"


def holders(conn: psycopg.Connection, dbname: str) -> list[Holder]:
    """Other sessions marked with `dbname`'s lock (held or registering), as seen now."""
    rows = conn.execute(
        """SELECT pid, application_name FROM pg_catalog.pg_stat_activity
           WHERE application_name LIKE %s AND pid <> pg_catalog.pg_backend_pid()""",
        (PREFIX + key(dbname) + ":%",),
    ).fetchall()
    out = []
    for pid, name in rows:
        parts = name.split(":")
        if len(parts) == 5:
            out.append(Holder(pid, parts[2], parts[3], parts[4]))
    return out


def _set_name(conn: psycopg.Connection, value: str) -> None:
    conn.execute("SELECT pg_catalog.set_config('application_name', %s, false)", (value,))


def acquire(conn: psycopg.Connection, dbname: str, operation: str, where: str) -> None:
    """Take the server-wide lock of database `dbname` on `conn`, or raise `BusyError`.

    `where` describes the database for the message (``'service0-dev' on db2:5432``).
    """
    for attempt in range(ATTEMPTS):
        _set_name(conn, _mark(dbname, "w", operation))
        others = holders(conn, dbname)
        held = [h for h in others if h.state == "h"]
        if held:
            _set_name(conn, "snapdb")
            raise BusyError(
                f"another {held[0].describe()} holds the lock of {where}",
                hint="wait for it to finish; nothing was changed",
            )
        if not others:
            _set_name(conn, _mark(dbname, "h", operation))
            return
        _set_name(conn, "snapdb")  # another run is registering right now: let one of us win
        time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
    raise BusyError(f"another snapdb run keeps taking the lock of {where}",
                    hint="wait for it to finish; nothing was changed")


def release(conn: psycopg.Connection) -> None:
    """Give the lock up without closing the session (closing it releases it too)."""
    if not (conn.closed or conn.broken):
        _set_name(conn, "snapdb")
