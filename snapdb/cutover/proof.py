"""What "A took no write after the freeze point" means, and how it is proven before the swap.

Two independent proofs, both recorded in the receipt:

- **Decoded WAL** (when the server can do logical decoding: ``wal_level = logical``, a free
  replication slot, and a role with REPLICATION or superuser): a logical slot on A
  (``test_decoding``) is created before the freeze starts. Before the swap, once the WAL is
  flushed past every commit so far (with ``synchronous_commit = off`` an acknowledged commit may
  not be flushed yet, and decoding reads only flushed WAL; the flush is forced, `force_flush`,
  rather than waited for), its changes are peeked:
  any transaction with a row change in A that committed after the freeze point's LSN is a write
  A took during the freeze. This sees every INSERT, UPDATE, DELETE and TRUNCATE, in tables old and
  new, whoever made it.
- **Catalog fingerprint** (always): every table's OID, relfilenode (a TRUNCATE or a rewrite gives
  a new one), name and columns; every sequence's state; the large objects' count, highest OID and,
  when readable, total size; a digest of (key, xmin) of every row of the catalogs DDL and GRANTs
  change and of the large objects' pages (superusers only: otherwise the plan warns), and the
  database's own privileges and settings. Taken at the freeze point and again before the swap.
  This covers what decoding does not see (sequences, large objects, DDL, GRANTs).

Without decoding, writes to existing tables are still impossible (the freeze's table locks), but
a resumed cutover (whose locks were lost with the killed process) cannot prove the gap: it then
compares A's rows with the snapshot in full before swapping (`run`).
"""

from __future__ import annotations

import re
import time

import psycopg

from ..errors import TargetError
from .. import fingerprint as _fp
from ..fingerprint import diff, unreadable  # noqa: F401 (part of the proof)


def fingerprint(conn: psycopg.Connection, since: dict | None = None) -> dict:
    """The proof's catalog fingerprint of A (`snapdb.fingerprint` with the catalog digests:
    DDL, GRANTs, large-object contents); with `since` (the freeze point's), naming what changed."""
    return _fp.fingerprint(conn, catalogs=True, since=since)

from ..postgres import first_line

# -- decoded WAL -----------------------------------------------------------------------------------
def slot_name(cutover_id: str) -> str:
    return "snapdb_proof_" + re.sub(r"[^a-z0-9_]", "_", cutover_id.lower())[:48]


def create_slot(conn: psycopg.Connection, name: str, timeout: float) -> tuple[str | None, str | None]:
    """Create the proof slot on A (session `conn` on A); return (its start LSN, None), or (None,
    why not) when the server cannot decode (no logical WAL, no privilege, no free slot) or
    creating it takes longer than `timeout` (it waits for transactions running elsewhere)."""
    try:
        with conn.transaction():
            conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true)", (f"{int(timeout * 1000)}ms",))
            row = conn.execute("SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot(%s, 'test_decoding')",
                               (name,)).fetchone()
        return row[0], None
    except psycopg.errors.DuplicateObject:
        row = conn.execute("SELECT restart_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                           (name,)).fetchone()
        return (row[0] if row else None), None
    except psycopg.Error as exc:
        return None, first_line(exc)


#: the prefix of the logical message `force_flush` commits (in a database other than A's, so
#: that no decoding of A sees it; `writes_after` ignores it anyway)
FLUSH_PREFIX = "snapdb.flush"


def force_flush(conn: psycopg.Connection) -> bool:
    """Make the server flush its WAL now, past everything inserted so far: a transactional logical
    message (empty, prefix `FLUSH_PREFIX`, in `conn`'s database) committed with
    ``synchronous_commit = local``, whose commit flushes the WAL up to itself (and waits for no
    synchronous standby). It changes no table,
    sequence or catalog row; it takes a transaction ID. With ``synchronous_commit = off`` (or a
    commit that wrote no WAL) the server's own flush waits for the WAL writer, which flushes at
    most once per ``wal_writer_delay``; this costs a round trip instead. False when the session
    cannot (then the caller waits for the WAL writer)."""
    try:
        with conn.transaction():
            # local: flushed here, never waiting for a synchronous standby (which may be down)
            conn.execute("SELECT pg_catalog.set_config('synchronous_commit', 'local', true)")
            conn.execute("SELECT pg_catalog.pg_logical_emit_message(true, %s, '')", (FLUSH_PREFIX,))
        return True
    except psycopg.Error:
        return False


def wait_flushed(conn: psycopg.Connection, timeout: float = 30.0, flush_via: psycopg.Connection | None = None) -> str:
    """Wait until the WAL is flushed past everything inserted so far; return that LSN. With
    `flush_via` (a session on the same server, outside any transaction; best in another database
    than the one being proved), the flush is forced through it first (`force_flush`)."""
    target = conn.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()[0]
    if flush_via is not None:
        force_flush(flush_via)
    deadline = time.monotonic() + timeout
    while not conn.execute("SELECT pg_catalog.pg_current_wal_flush_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise TargetError("the WAL was not flushed within 30 s; cannot prove the freeze")
        time.sleep(0.005)
    return target


def writes_after(conn: psycopg.Connection, slot: str, freeze_lsn: str, limit: int = 20,
                 flush_via: psycopg.Connection | None = None) -> list[str]:
    """Row changes in A that committed after `freeze_lsn`, as decoded (at most `limit` lines);
    the slot is only peeked, never advanced. `flush_via`: see `wait_flushed`."""
    wait_flushed(conn, flush_via=flush_via)
    rows = conn.execute(
        "SELECT lsn::text, data FROM pg_catalog.pg_logical_slot_peek_changes(%s, NULL, NULL, "
        "'skip-empty-xacts', '1', 'include-xids', '0')", (slot,)).fetchall()
    out: list[str] = []
    pending: list[str] = []
    for lsn, data in rows:
        if data.startswith("BEGIN"):
            pending = []
        elif data.startswith("COMMIT"):
            if pending and _after(conn, lsn, freeze_lsn):
                out.extend(pending[: limit - len(out)])
            pending = []
        elif not data.startswith(_OWN_MESSAGE):
            pending.append(data)
        if len(out) >= limit:
            break
    return out


_OWN_MESSAGE = f"message: transactional: 1 prefix: {FLUSH_PREFIX},"


def _after(conn: psycopg.Connection, lsn: str, freeze_lsn: str) -> bool:
    return bool(conn.execute("SELECT %s::pg_lsn > %s::pg_lsn", (lsn, freeze_lsn)).fetchone()[0])


def drop_slot(conn: psycopg.Connection, name: str) -> bool:
    """Drop the proof slot if it exists (any database's session); True when one was dropped."""
    row = conn.execute("SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
    if row is None:
        return False
    if row[0]:
        conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (row[0],))
        time.sleep(0.2)
    conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (name,))
    return True
