"""Issue 12, points 1 and 2: a snapshot is one committed state of the source, and partitions whose
placement depends on enum OIDs restore.

Point 1: a TRUNCATE or a table-rewriting ALTER that commits while the snapshot waits for its
locks used to make the table look empty or stale (the snapshot was fixed before the locks).
Each case below holds such a change open in another session, starts the snapshot, waits until
the snapshot is blocked on it, commits, and compares the restored copy with the source as it is
afterwards, independently of snapdb's code (tests/dbcompare.py).
"""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql

from .conftest import create_db, pause_env, popen_cli, run_cli, wait_for
from .dbcompare import assert_same_database, schema_dump, table_fingerprints

SOURCE = """
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
CREATE TABLE other (id int, n int);
INSERT INTO other SELECT g, 0 FROM generate_series(1, 10) g;
CREATE TABLE m (id int, at date, v int) PARTITION BY RANGE (at);
CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO m SELECT g, DATE '2025-01-01' + g, g FROM generate_series(1, 600) g;
CREATE TABLE parent (id int);
CREATE TABLE kid (extra text) INHERITS (parent);
INSERT INTO parent SELECT generate_series(1, 5);
INSERT INTO kid SELECT g, 'k' FROM generate_series(1, 50) g;
"""

# each change commits in one transaction while the snapshot waits for its lock
CHANGES = {
    "truncate": "TRUNCATE t; INSERT INTO t VALUES (1, 'after'), (2, 'after'); UPDATE other SET n = 1",
    "rewrite": "ALTER TABLE t ALTER COLUMN id TYPE bigint USING id * 10; UPDATE other SET n = 2",
    "partition": "TRUNCATE m_2025; INSERT INTO m VALUES (1, '2025-05-05', 7); UPDATE other SET n = 3",
    "inheritance-child": "TRUNCATE kid; INSERT INTO kid VALUES (99, 'after'); UPDATE other SET n = 4",
}


def _wait_blocked(pg, dbname: str, timeout: float = 60) -> None:
    """Wait until a snapdb session on `dbname` waits for a lock."""
    deadline = time.monotonic() + timeout
    with pg.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
                            "AND application_name LIKE 'snapdb%%'", (dbname,)).fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError("the snapshot never waited for the lock")


def _snapshot_and_restore(pg, tmp_path, src: str) -> str:
    store = str(tmp_path / "store")
    r = run_cli("snapshot", pg.url(src), "--store", store)
    assert r.returncode == 0, r.stderr
    r = run_cli("restore", "--into", src + "_copy", "--server", pg.url(), "--store", store)
    assert r.returncode == 0, r.stderr
    return src + "_copy"


@pytest.mark.parametrize("change", list(CHANGES))
def test_change_committed_while_the_snapshot_waits(pg, tmp_path, dbname, change):
    src = create_db(pg, dbname, SOURCE)
    blocker = psycopg.connect(pg.conninfo(src))
    blocker.execute(CHANGES[change])  # holds ACCESS EXCLUSIVE locks until commit
    store = str(tmp_path / "store")
    proc = popen_cli("snapshot", pg.url(src), "--store", store)
    try:
        _wait_blocked(pg, src)
        blocker.commit()
        out, err = proc.communicate(timeout=120)
    finally:
        blocker.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    r = run_cli("restore", "--into", src + "_copy", "--server", pg.url(), "--store", store)
    assert r.returncode == 0, r.stderr
    # the copy is the committed state after the change: schema and rows alike
    assert_same_database(pg, src, src + "_copy")


def test_tables_created_and_dropped_between_listing_and_locking(pg, tmp_path, dbname):
    """A table created (with rows) and one dropped after the tables were listed: the snapshot
    notices, lists again, and the copy equals the source afterwards."""
    src = create_db(pg, dbname, SOURCE + "CREATE TABLE drop_me (id int); INSERT INTO drop_me VALUES (1);")
    faults, env = pause_env(tmp_path, "snapshot:tables-listed")
    store = str(tmp_path / "store")
    proc = popen_cli("snapshot", pg.url(src), "--store", store, "--json", env=env)
    try:
        wait_for(faults / "snapshot:tables-listed.reached", proc)
        with pg.connect(src) as conn:
            conn.execute("CREATE TABLE late (id int); INSERT INTO late SELECT generate_series(1, 77); DROP TABLE drop_me")
        (faults / "snapshot:tables-listed.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    r = run_cli("restore", "--into", src + "_copy", "--server", pg.url(), "--store", store)
    assert r.returncode == 0, r.stderr
    assert_same_database(pg, src, src + "_copy")
    assert table_fingerprints(pg, src + "_copy")["public.late"][0] == 77


# -- point 2 --------------------------------------------------------------------------------
HASH_ENUM = """
CREATE TYPE color AS ENUM ('red', 'orange', 'yellow', 'green', 'blue', 'indigo', 'violet', 'black');
CREATE DOMAIN dcolor AS color;
CREATE TYPE pair AS (c color, n int);
CREATE TABLE h_enum (c color, v int) PARTITION BY HASH (c);
CREATE TABLE h_dom (c dcolor, v int) PARTITION BY HASH (c);
CREATE TABLE h_arr (c color[], v int) PARTITION BY HASH (c);
CREATE TABLE h_comp (c pair, v int) PARTITION BY HASH (c);
CREATE TABLE h_int (c int, v int) PARTITION BY HASH (c);
CREATE TABLE r_top (at int, c color, v int) PARTITION BY RANGE (at);
CREATE TABLE r_low PARTITION OF r_top FOR VALUES FROM (0) TO (1000) PARTITION BY HASH (c);
"""


def _hash_enum_sql() -> str:
    parts = [HASH_ENUM]
    for t in ("h_enum", "h_dom", "h_arr", "h_comp", "h_int", "r_low"):
        for i in range(4):
            parts.append(f"CREATE TABLE {t}_{i} PARTITION OF {t} FOR VALUES WITH (MODULUS 4, REMAINDER {i});")
    labels = "(enum_range(NULL::color))[1 + g % 8]"
    parts += [
        f"INSERT INTO h_enum SELECT {labels}, g FROM generate_series(1, 400) g;",
        f"INSERT INTO h_dom SELECT {labels}, g FROM generate_series(1, 400) g;",
        f"INSERT INTO h_arr SELECT ARRAY[{labels}], g FROM generate_series(1, 400) g;",
        f"INSERT INTO h_comp SELECT ROW({labels}, 1)::pair, g FROM generate_series(1, 400) g;",
        "INSERT INTO h_int SELECT g, g FROM generate_series(1, 400) g;",
        f"INSERT INTO r_top SELECT g, {labels}, g FROM generate_series(1, 400) g;",
    ]
    return "\n".join(parts)


def _root_rows(pg, dbname: str) -> dict[str, tuple]:
    out = {}
    with pg.connect(dbname) as conn:
        for root in ("h_enum", "h_dom", "h_arr", "h_comp", "h_int", "r_top"):
            out[root] = conn.execute(sql.SQL(
                "SELECT count(*), md5(string_agg(x, ',' ORDER BY x COLLATE \"C\")) FROM (SELECT t::text AS x FROM {} t) s"
            ).format(sql.Identifier(root))).fetchone()
    return out


def test_hash_partitions_on_enum_keys_restore(pg, tmp_path, dbname):
    src = create_db(pg, dbname)
    with pg.connect(src) as conn:  # new enum OIDs in the copy differ from these
        conn.execute("CREATE TYPE burn AS ENUM ('a', 'b', 'c'); DROP TYPE burn")
        conn.execute(_hash_enum_sql())
    copy = _snapshot_and_restore(pg, tmp_path, src)
    assert schema_dump(pg, copy) == schema_dump(pg, src)
    assert _root_rows(pg, copy) == _root_rows(pg, src)
    # int-keyed hash partitions keep their placement; they are compared partition by partition
    assert {k: v for k, v in table_fingerprints(pg, copy).items() if k.startswith("public.h_int_")} == \
        {k: v for k, v in table_fingerprints(pg, src).items() if k.startswith("public.h_int_")}
    # the copy verifies against the snapshot, and a changed row in one of the grouped trees is found
    store = str(tmp_path / "store")
    snap = run_cli("snapshots", "--store", store, "--json")
    import json

    sid = json.loads(snap.stdout)[0]["id"]
    r = run_cli("verify", sid, "--against", pg.url(copy), "--store", store)
    assert r.returncode == 0, r.stdout + r.stderr
    with pg.connect(copy) as conn:
        conn.execute("UPDATE h_comp SET v = v + 1 WHERE v = 17")
    r = run_cli("verify", sid, "--against", pg.url(copy), "--store", store)
    assert r.returncode == 7 and "public.h_comp (all partitions)" in r.stdout, r.stdout + r.stderr
