"""Review: a failing parallel pg_restore is reported as 'a worker process died unexpectedly';
the statement and the server's error are dropped."""

from __future__ import annotations

from ..conftest import create_db, run_cli, write_config


def test_post_data_failure_names_the_real_error(pg, tmp_path, dbname):
    src = create_db(pg, dbname, "CREATE TABLE t (id int); INSERT INTO t VALUES (1); CREATE TABLE lookup (k int);"
                                "CREATE FUNCTION f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT k FROM lookup LIMIT 1';"
                                "CREATE INDEX ON t (f(id))")
    cfg = str(write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                           {"src": (pg.url(src), "production"), "dev": (pg.url(dbname + "-dev"), "dev")}))
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    r = run_cli("--config", cfg, "restore", "--into", "dev")  # default --jobs 2
    print(r.returncode, r.stderr)
    assert r.returncode == 5
    assert 'relation "lookup" does not exist' in r.stderr, r.stderr
