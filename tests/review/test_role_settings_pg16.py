"""Review: on PostgreSQL 16+ CREATEROLE alone does not allow ALTER ROLE r IN DATABASE d SET
(ADMIN OPTION on r is needed): the up-front check passes, the restore fails after the build."""

from __future__ import annotations

from ..conftest import run_cli


def test_role_settings_on_18_fail_after_the_build(pg18, tmp_path, dbname):
    pg18.psql("DROP ROLE IF EXISTS rvrs_snap")
    pg18.psql("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rvrs_app') THEN CREATE ROLE rvrs_app; END IF;"
              " IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rvrs_other') THEN CREATE ROLE rvrs_other; END IF; END$$")
    pg18.psql("CREATE ROLE rvrs_snap LOGIN CREATEDB CREATEROLE; GRANT rvrs_app TO rvrs_snap")
    pg18.psql(f'CREATE DATABASE "{dbname}" OWNER rvrs_app')
    with pg18.connect(dbname) as conn:
        conn.execute("SET ROLE rvrs_app; CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    pg18.psql(f'ALTER ROLE rvrs_other IN DATABASE "{dbname}" SET work_mem = \'8MB\'')
    store = str(tmp_path / "store")
    r = run_cli("snapshot", pg18.url(dbname), "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    trace = tmp_path / "trace"
    trace.mkdir()
    r = run_cli("restore", "--into", dbname + "_copy", "--server", pg18.url("postgres", user="rvrs_snap"),
                "--store", store, env={"SNAPDB_TRACE_DIR": str(trace)})
    print(r.returncode, r.stderr, sorted(p.name for p in trace.iterdir()))
    # expected: refused up front ("cannot set per-role settings"), before anything is built
    assert not (trace / "restore:verified.passed").exists(), "failed only after building and verifying"
