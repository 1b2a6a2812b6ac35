"""A snapshot whose exporting session dies while the workers copy is published anyway, with a
table read after its TRUNCATE committed: the manifest records 0 rows for a table that had 3 at
the snapshot's instant, a restore loads it empty and its verification agrees.

Why it matters: the consistency promise ("every table is locked before the snapshot is fixed, so
a TRUNCATE or a table rewrite that commits meanwhile is wholly in or wholly out") rests on the
exporting session holding its ACCESS SHARE locks until every table is read. Since commit a7d74ca
the workers hold no lock on what they have read either (`_end_reads`), and when the exporter is
gone `_end_reads` swallows the failed re-import (`conn.close()`); nothing ever checks that the
exporter survived the copy. The exporter is killed in real life by a recovery conflict on a hot
standby source (an idle-in-transaction lock holder is terminated after max_standby_streaming_delay
when the primary TRUNCATEs / VACUUM FULLs / ALTERs a table), by pg_terminate_backend, a proxy or a
network failure; here pg_terminate_backend stands for them.
"""
from __future__ import annotations

import json
import threading
import time

from .conftest import create_db, pause_env, popen_cli


def _wait(pred, what, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"snapshot ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_snapshot_fails_when_its_exporting_session_died_during_the_copy(pg, tmp_path):
    src = create_db(pg, "r10_exporter_death",
                    "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 5);"
                    "CREATE TABLE victim (id int); INSERT INTO victim VALUES (1), (2), (3);"
                    "CREATE TABLE c (id int); INSERT INTO c SELECT generate_series(1, 7);")
    store = tmp_path / "store"
    faults, env = pause_env(tmp_path, "snapshot:catalog-read")
    proc = popen_cli("snapshot", pg.url(src), "--store", str(store), "--jobs", "1", env=env)
    truncator = None
    try:
        _wait(lambda: (faults / "snapshot:catalog-read.reached").exists(), "the pause", proc)
        with pg.connect(src) as watch:
            [(exporter,)] = watch.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'").fetchall()
            # an application TRUNCATEs victim: it queues behind the exporter's ACCESS SHARE lock
            done: list = []

            def truncate():
                with pg.connect(src) as conn:
                    conn.execute("TRUNCATE victim")
                done.append(True)
            truncator = threading.Thread(target=truncate, daemon=True)
            truncator.start()
            waiting = ("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                       "WHERE c.relname = 'victim' AND NOT l.granted")
            _wait(lambda: watch.execute(waiting).fetchone()[0] >= 1, "the TRUNCATE to queue", proc)
            (faults / "snapshot:catalog-read.go").touch()
            # the worker (its snapshot imported) reaches victim and queues behind the TRUNCATE
            _wait(lambda: watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'COPY%victim%'").fetchone()[0] >= 1,
                "the worker to wait for victim", proc)
            watch.execute("SELECT pg_terminate_backend(%s)", (exporter,))  # the exporter dies
        truncator.join(60)
        assert done, "the TRUNCATE did not commit"
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:  # a snapshot was published: it must hold victim as of its instant
        [d] = list((store / "snapshots").iterdir())
        doc = json.loads((d / "manifest.json").read_text())
        rows = {t["name"]: t["rows"] for t in doc["tables"]}
        assert rows == {"a": 5, "victim": 3, "c": 7}, rows  # fails: victim has 0 rows in the manifest


def test_snapshot_of_a_hot_standby_fails_when_a_recovery_conflict_ends_its_exporter(tmp_path):
    """The same without anyone killing anything: the source is a hot standby (a supported source:
    `role = "standby"`), the primary TRUNCATEs a table while the snapshot runs. Replaying the
    TRUNCATE's ACCESS EXCLUSIVE lock conflicts with the exporter's ACCESS SHARE lock; after
    max_standby_streaming_delay the standby terminates the exporter (idle in transaction), the
    replay goes on, and the worker that was queued behind it reads the table after the TRUNCATE."""
    from snapdb.cluster import Cluster

    from tests.conftest import start_cluster

    primary = start_cluster("r10primary")
    standby = None
    proc = None
    try:
        standby = Cluster.standby_of(primary, settings={"max_standby_streaming_delay": "2s"})
        src = create_db(primary, "r10_standby_src",
                        "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 5);"
                        "CREATE TABLE victim (id int); INSERT INTO victim VALUES (1), (2), (3);"
                        "CREATE TABLE c (id int); INSERT INTO c SELECT generate_series(1, 7);")
        standby.wait_for_replay(primary)
        store = tmp_path / "store"
        faults, env = pause_env(tmp_path, "snapshot:catalog-read")
        proc = popen_cli("snapshot", standby.url(src), "--store", str(store), "--jobs", "1", env=env)
        _wait(lambda: (faults / "snapshot:catalog-read.reached").exists(), "the pause", proc)
        with primary.connect(src) as conn:
            conn.execute("TRUNCATE victim")  # on the primary: nothing there waits for the standby
        with standby.connect(src) as watch:
            replay_waits = ("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                            "WHERE c.relname = 'victim' AND l.mode = 'AccessExclusiveLock' AND NOT l.granted")
            _wait(lambda: watch.execute(replay_waits).fetchone()[0] >= 1, "the replay to wait for the exporter", proc)
            (faults / "snapshot:catalog-read.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if standby is not None:
            standby.stop()
        primary.stop()
    if proc.returncode == 0:  # published: it must hold victim as of its instant
        [d] = list((store / "snapshots").iterdir())
        doc = json.loads((d / "manifest.json").read_text())
        rows = {t["name"]: t["rows"] for t in doc["tables"]}
        assert rows == {"a": 5, "victim": 3, "c": 7}, (rows, err)  # fails: victim has 0 rows
