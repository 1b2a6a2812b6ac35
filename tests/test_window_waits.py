"""Issue 8, acceptance 3: the replicate-mode window's waits that did not depend on the work done.

Profiling the window (bench/replicate_window_profile.py) showed two waits whose length depended on
timing alone: the proof's WAL flush (with ``synchronous_commit = off`` the WAL writer flushes at
most once per ``wal_writer_delay``: 0.07-0.36 s per proof) and renames meeting a session still
exiting (``ALTER DATABASE … RENAME`` waits in steps of 100 ms). These tests pin the fixes: the
proof forces the flush (`proof.force_flush`) and the swap polls for sessions to be gone
(`postgres.wait_sessions_gone`).
"""

from __future__ import annotations

import time

import psycopg

from snapdb.cutover import proof
from snapdb.postgres import wait_sessions_gone

from .conftest import start_cluster


def test_the_proof_forces_the_wal_flush_instead_of_waiting_for_the_wal_writer():
    """With the WAL writer asleep for 10 s and commits asynchronous, the proof sees a write made
    just before it at once, and the flush it forces (a logical message in the maintenance
    database) is not taken for a write to the proved database, nor a message of its own there."""
    c = start_cluster("flush", settings={"wal_level": "logical", "wal_writer_delay": "10000ms",
                                         "wal_writer_flush_after": 0})
    try:
        with c.connect() as maint:
            maint.execute("CREATE DATABASE proved")
            with c.connect("proved") as a:
                a.execute("CREATE TABLE t (x int)")
                assert a.execute("SHOW synchronous_commit").fetchone()[0] == "off"
                lsn, why = proof.create_slot(a, "snapdb_proof_flushtest", 10)
                assert lsn and not why
                freeze_lsn = a.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
                assert proof.writes_after(a, "snapdb_proof_flushtest", freeze_lsn, flush_via=maint) == []
                a.execute("INSERT INTO t VALUES (42)")  # asynchronous: not flushed until the WAL writer wakes
                t0 = time.monotonic()
                found = proof.writes_after(a, "snapdb_proof_flushtest", freeze_lsn, flush_via=maint)
                took = time.monotonic() - t0
                assert found and "42" in found[0], found
                assert took < 2.0, f"the proof waited {took:.2f} s for the WAL writer"
                after = a.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
                assert proof.force_flush(a)  # its own message in the proved database itself
                assert proof.writes_after(a, "snapdb_proof_flushtest", after, flush_via=maint) == []
                proof.drop_slot(a, "snapdb_proof_flushtest")
    finally:
        c.stop()


def test_wait_sessions_gone_sees_a_session_leave_inside_a_transaction(pg):
    with pg.connect() as maint:
        maint.execute("DROP DATABASE IF EXISTS waitgone")
        maint.execute("CREATE DATABASE waitgone")
        try:
            other = psycopg.connect(pg.conninfo("waitgone"), autocommit=True)
            with maint.transaction():
                assert not wait_sessions_gone(maint, "waitgone", timeout=0.1)
                other.close()
                t0 = time.monotonic()
                assert wait_sessions_gone(maint, "waitgone", timeout=5.0)  # not the transaction's first snapshot
                assert time.monotonic() - t0 < 5.0
        finally:
            maint.execute("DROP DATABASE IF EXISTS waitgone")


def test_a_swap_waits_for_exiting_sessions_only_where_nobody_can_reconnect(pg, monkeypatch):
    """Found by the same review: polling for ended sessions before the rename, with no lock held,
    let clients that reconnect at once back into a target open to connections (a dev database's
    app), and the rename then failed after 5 s, at every attempt. Only databases closed to
    connections are waited for; the open target is renamed under the rename's own lock."""
    from snapdb import swap

    waited: list[str] = []
    real = swap.wait_sessions_gone
    monkeypatch.setattr(swap, "wait_sessions_gone", lambda conn, db, **kw: waited.append(db) or real(conn, db, **kw))
    with pg.connect() as maint:
        for db in ("swapopen", "swapbuild"):
            maint.execute(f"DROP DATABASE IF EXISTS {db}")
        maint.execute("CREATE DATABASE swapopen")
        maint.execute("CREATE DATABASE swapbuild")
        oid = maint.execute("SELECT oid FROM pg_database WHERE datname = 'swapbuild'").fetchone()[0]
        app = psycopg.connect(pg.conninfo("swapopen"), autocommit=True)  # a live session on the open target
        try:
            swap.close_build(maint, "swapbuild")
            prev = swap.swap_in(maint, "swapopen", "swapbuild", oid)
            assert waited == ["swapbuild"], waited
            assert maint.execute("SELECT oid FROM pg_database WHERE datname = 'swapopen'").fetchone()[0] == oid
        finally:
            app.close()
            for db in ("swapopen", "swapbuild", prev):
                if db:
                    maint.execute(f'DROP DATABASE IF EXISTS "{db}"')
