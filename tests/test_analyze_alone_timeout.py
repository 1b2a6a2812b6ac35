"""The analyze-alone session (restore._analyze_alone_if_many, commit 7cc04d6) runs ANALYZE under
whatever statement_timeout the server or the restoring role has: every other long statement of a
restore runs with it disabled (the hold's `keep_session_alive`, the workers' DATA_SESSION_SETTINGS,
pg_restore's own `SET statement_timeout = 0`), and so did the ANALYZE this session replaces
(inside the hold). A server with a statement_timeout restores a small database but fails on
exactly the databases large enough to take this path ("ANALYZE of the build failed: canceling
statement due to statement timeout"), the largest, slowest ones, after all their rows were loaded.

The build's ANALYZE is made slow (and the test deterministic) by one expression index whose
function takes a millisecond per row: ANALYZE evaluates it on every sampled row."""
from __future__ import annotations

from .conftest import create_db, default_major, run_cli, start_cluster


def test_analyze_alone_is_not_cut_short_by_a_statement_timeout(pg, tmp_path):
    body = ";".join(f"CREATE TABLE t{i} (id int PRIMARY KEY, a int, b text, c text); "
                    f"CREATE INDEX ON t{i} (a); CREATE INDEX ON t{i} (b); CREATE INDEX ON t{i} (c); "
                    f"INSERT INTO t{i} SELECT g, g, 'b' || g, 'c' || g FROM generate_series(1, 30) g" for i in range(1, 401))
    body += """;CREATE FUNCTION slow(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS
                 $$BEGIN PERFORM pg_catalog.pg_sleep(0.001); RETURN v; END$$;
               CREATE TABLE slowly (v int); INSERT INTO slowly SELECT generate_series(1, 3000);
               CREATE INDEX ON slowly (slow(v))"""
    src = create_db(pg, "r10_analyze_timeout", body)
    store = tmp_path / "store"
    assert run_cli("snapshot", pg.url(src), "--store", str(store)).returncode == 0
    small = start_cluster("r10smalltimeout", major=default_major(),
                          settings={"max_locks_per_transaction": 10, "max_connections": 20})
    try:
        with small.connect() as conn:  # e.g. a DBA's guard against runaway queries
            conn.execute("ALTER ROLE postgres SET statement_timeout = '1500ms'")
        r = run_cli("restore", "--into", "copy", "--server", small.url(), "--store", str(store), "--jobs", "2")
        assert r.returncode == 0, r.stderr  # fails: ANALYZE of the build failed: canceling statement due to statement timeout
        with small.connect("copy") as conn:
            assert conn.execute("SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND attname = 'b'").fetchone()[0] == 400
    finally:
        small.stop()
