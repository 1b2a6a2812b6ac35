"""Swapping a verified build in by rename, and what the database being replaced carries.

Contract:

- `inspect(conn, dbname)` reads what a rename would break or change: prepared transactions
  (a rename would wait for them forever), logical replication slots (dropped silently with the
  old copy when it is dropped), subscriptions (the old copy would go on consuming, and a
  database with subscriptions cannot be dropped), ``ALLOW_CONNECTIONS false`` (a new database
  would come back connectable). `refuse_unsafe` turns these into one `RefusedError`.
- `swap_in(conn, target, build, build_oid, ...)` renames `target` aside and `build` into place
  in one transaction, proving inside that transaction that the database now called `target` is
  the one with `build_oid` (the build this run made and verified): anything else rolls back.
- `drop_copy(...)` drops a set-aside copy, first detaching and dropping its subscriptions
  (which would otherwise make DROP DATABASE fail) and its logical slots, explicitly;
  `try_drop_copy` does the same but returns a warning instead of raising.
- `detach_leftovers` disables subscriptions still enabled in a target's previous copies.
- `prev_copies` lists a target's previous copies, newest first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
from psycopg import sql

from . import manifest as mf, names
from .config import Endpoint
from .errors import IntegrityError, RefusedError, SnapdbError, TargetError
from .postgres import (connect, database_exists, drop_database, first_line, list_databases, rename_database,
                       terminate_sessions, wait_sessions_gone)

log = logging.getLogger(__name__)

SWAP_ATTEMPTS = 5
#: how long a swap waits for the sessions it ended on a database closed to connections to be
#: gone before renaming it (`_wait_if_closed`; the rename itself would wait for them in steps of
#: 100 ms, inside the freeze window of a cutover)
SESSION_EXIT_WAIT = 0.5


@dataclass
class TargetState:
    """What the existing target database carries (see `inspect`)."""

    exists: bool
    oid: int | None = None
    prepared: list[str] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    allow_connections: bool = True


def inspect(conn: psycopg.Connection, dbname: str) -> TargetState:
    """Read `dbname`'s state from the shared catalogs (any database's session will do)."""
    row = conn.execute("SELECT oid, datallowconn FROM pg_catalog.pg_database WHERE datname = %s", (dbname,)).fetchone()
    if row is None:
        return TargetState(exists=False)
    oid = int(row[0])
    st = TargetState(exists=True, oid=oid, allow_connections=bool(row[1]))
    st.prepared = [r[0] for r in conn.execute(
        "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE database = %s ORDER BY 1", (dbname,))]
    st.slots = [r[0] for r in conn.execute(
        "SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE datoid = %s ORDER BY 1", (oid,))]
    st.subscriptions = [r[0] for r in conn.execute(
        "SELECT subname FROM pg_catalog.pg_subscription WHERE subdbid = %s ORDER BY 1", (oid,))]
    return st


def refuse_unsafe(st: TargetState, target: str, *, drop_slots: bool, detach_subscriptions: bool) -> None:
    """Raise `RefusedError` when replacing the target would silently break something."""
    if st.prepared:
        raise RefusedError(
            f"database {target!r} has {len(st.prepared)} prepared transaction(s) ({st.prepared[0]}); a rename would wait forever",
            hint="COMMIT PREPARED or ROLLBACK PREPARED them first; nothing was changed",
        )
    if st.slots and not drop_slots:
        raise RefusedError(
            f"database {target!r} holds logical replication slot(s) {', '.join(st.slots)}: replacing it drops them, "
            "and whatever consumes them loses its place",
            hint="move the consumers elsewhere first, or pass --drop-slots to drop them with the old copy; nothing was changed",
        )
    if st.subscriptions and not detach_subscriptions:
        raise RefusedError(
            f"database {target!r} has subscription(s) {', '.join(st.subscriptions)}: the copy set aside would go on "
            "consuming its publisher's slot",
            hint="pass --detach-subscriptions to disable them in the copy set aside (the publisher keeps its slots), "
                 "or drop them first; nothing was changed",
        )


def prev_copies(conn: psycopg.Connection, target: str) -> list[str]:
    """The previous copies of `target` on the server, newest first."""
    return sorted((d for d in list_databases(conn) if names.is_prev_of(target, d)), reverse=True)


def swap_in(conn: psycopg.Connection, target: str, build: str, build_oid: int, *,
            keep_closed: bool = False, attempts: int = SWAP_ATTEMPTS, aside: str | None = None,
            recheck: Callable[[psycopg.Connection], None] | None = None) -> str | None:
    """Rename `target` aside and `build` into place in one transaction; return the name the old
    target got (None when there was none).

    The build is expected closed to connections (``ALLOW_CONNECTIONS false``, so nobody can have
    written to it since it was sealed); the transaction opens it again unless `keep_closed`
    (the target refused connections too). `recheck(conn)` runs first inside the transaction (to
    refuse a target that changed meanwhile). After the renames the database now named `target`
    must have OID `build_oid`, else the transaction rolls back and `IntegrityError` is raised:
    whatever took the build's name is never swapped in. `aside` names the old target (default:
    a ``__prev_`` name). Sessions connected to the target are terminated; new ones racing in
    are retried `attempts` times.
    """
    existed = database_exists(conn, target)
    prev = None
    if existed:
        taken = set(list_databases(conn))
        if aside:
            prev = aside
        else:
            when = mf.utcnow()
            prev = names.prev_name(target, when)
            while prev in taken:
                when += timedelta(seconds=1)
                prev = names.prev_name(target, when)
    last: str = "busy"
    for attempt in range(attempts):
        try:
            with conn.transaction():
                if recheck is not None:
                    recheck(conn)
                if existed:
                    terminate_sessions(conn, target)
                    _wait_if_closed(conn, target)
                    rename_database(conn, target, prev)
                terminate_sessions(conn, build)
                _wait_if_closed(conn, build)
                rename_database(conn, build, target)
                row = conn.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (target,)).fetchone()
                if row is None or int(row[0]) != build_oid:
                    raise _NotOurs(row[0] if row else None)
                if not keep_closed:
                    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(target)))
                else:
                    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(target)))
            return prev
        except _NotOurs as exc:
            raise IntegrityError(
                f"refusing to swap in {build!r}: it is not the database this run built and verified "
                f"(OID {exc.oid}, expected {build_oid})",
                hint=f"another process replaced it; {target!r} is unchanged",
            ) from None
        except psycopg.errors.ObjectInUse as exc:  # a session raced in; terminate again
            last = first_line(exc)
            time.sleep(0.2 * (attempt + 1))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise TargetError(
                f"could not swap {target!r}: {first_line(exc)}",
                hint="the restoring role must own the target (or be a member of its owner), have CREATEDB, and be "
                     "allowed to end its sessions (GRANT pg_signal_backend TO the role); the target is unchanged",
            ) from None
    raise TargetError(
        f"could not swap {target!r}: {last}",
        hint=f"sessions keep connecting to {target!r} (see pg_stat_activity); the target is unchanged",
    )


def close_build(conn: psycopg.Connection, build: str) -> None:
    """Refuse new connections to the build (everyone's, superusers' too) until the swap."""
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(build)))


def _wait_if_closed(conn: psycopg.Connection, dbname: str) -> None:
    """Before renaming `dbname`, wait (milliseconds) for the sessions just ended to be gone,
    when nobody can connect to it meanwhile (``ALLOW_CONNECTIONS false``: a build, a cutover's
    closed A); the rename would wait for them in steps of 100 ms. A database open to connections
    is renamed at once: the rename's lock keeps reconnecting clients out while it waits, and an
    unlocked wait would let them back in (then the rename fails after 5 s)."""
    row = conn.execute("SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = %s", (dbname,)).fetchone()
    if row is not None and not row[0]:
        wait_sessions_gone(conn, dbname, timeout=SESSION_EXIT_WAIT)


class _NotOurs(Exception):
    def __init__(self, oid) -> None:
        super().__init__(oid)
        self.oid = oid


def drop_copy(conn: psycopg.Connection, server: Endpoint, dbname: str) -> list[str]:
    """Drop the set-aside database `dbname`, its subscriptions and logical slots first, each
    explicitly; return what was dropped besides the database (for the result)."""
    st = inspect(conn, dbname)
    if not st.exists:
        return []
    dropped = []
    if st.subscriptions:
        dropped += detach_subscriptions(server, dbname, drop=True)
    for slot in st.slots:
        conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (slot,))
        dropped.append(f"replication slot {slot}")
    drop_database(conn, dbname)
    return dropped


def detach_subscriptions(server: Endpoint, dbname: str, drop: bool = False) -> list[str]:
    """Disable the subscriptions of database `dbname` and detach them from their publisher's
    slot (``slot_name = NONE``: the publisher keeps the slot), dropping them when `drop`."""
    done = []
    try:
        with connect(server, TargetError, dbname=dbname, autocommit=True) as conn:
            for (sub,) in conn.execute(
                    "SELECT subname FROM pg_catalog.pg_subscription WHERE subdbid = "
                    "(SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())").fetchall():
                ident = sql.Identifier(sub)
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
                if drop:
                    conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
                done.append(f"subscription {sub}")
    except psycopg.Error as exc:
        raise TargetError(f"detaching the subscriptions of {dbname!r} failed: {first_line(exc)}") from None
    return done


def try_drop_copy(conn: psycopg.Connection, server: Endpoint, dbname: str) -> str | None:
    """`drop_copy`, but a failure comes back as a warning (None when dropped)."""
    try:
        drop_copy(conn, server, dbname)
        return None
    except (psycopg.Error, SnapdbError) as exc:
        text = exc.message if isinstance(exc, SnapdbError) else first_line(exc)
        return f"could not drop {dbname!r} ({text}); it is kept, drop it when it can be"


def detach_leftovers(conn: psycopg.Connection, server: Endpoint, target: str) -> list[str]:
    """Disable and detach subscriptions still enabled in `target`'s previous copies (a copy set
    aside must never consume its publisher's slot); return warnings for what could not be."""
    notes = []
    for d in prev_copies(conn, target):
        st = inspect(conn, d)
        if not st.subscriptions:
            continue
        enabled = conn.execute("SELECT count(*) FROM pg_catalog.pg_subscription WHERE subdbid = %s AND subenabled",
                               (st.oid,)).fetchone()[0]
        if not enabled:
            continue
        try:
            done = detach_subscriptions(server, d)
            notes.append(f"disabled and detached {', '.join(done)} left enabled in the copy set aside {d!r}")
        except SnapdbError as exc:
            notes.append(f"{exc.message}: the copy set aside {d!r} may still consume its publisher's slot")
    return notes


def drop_build_quietly(conn: psycopg.Connection | None, server: Endpoint, maintenance_db: str, build: str,
                       lock_name: str, build_oid: int | None) -> None:
    """Drop the temporary build after a failure (only the one with `build_oid`, when known);
    reconnect once if the session was lost, and then only while holding the lock again."""
    from . import locks

    def drop(c: psycopg.Connection) -> None:
        if build_oid is not None:
            row = c.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (build,)).fetchone()
            if row is None or int(row[0]) != build_oid:
                return  # not ours (or already gone)
        drop_database(c, build)

    try:
        if conn is not None and not (conn.closed or conn.broken):
            drop(conn)
            return
    except psycopg.Error:
        pass
    try:
        with connect(server, TargetError, dbname=maintenance_db, autocommit=True) as fresh:
            locks.acquire(fresh, lock_name, "cleanup", repr(lock_name))
            drop(fresh)
            return
    except (psycopg.Error, SnapdbError):
        pass
    log.warning("could not drop %s; the next run will", build)
