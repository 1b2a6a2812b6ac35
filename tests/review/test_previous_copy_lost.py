"""Review: the previous copy is dropped before the new build exists; a build that then fails
(or is killed) leaves the target with no previous copy at all."""

from __future__ import annotations

import json

from snapdb import names

from ..conftest import create_db, databases, run_cli, write_config

DATA = "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)"


def test_killed_build_loses_the_only_previous_copy(pg, tmp_path, dbname):
    src = create_db(pg, dbname, DATA)
    target = dbname + "-dev"
    cfg = str(write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                           {"src": (pg.url(src), "production"), "dev": (pg.url(target), "dev")}))
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    assert run_cli("--config", cfg, "restore", "--into", "dev").returncode == 0
    r = run_cli("--config", cfg, "restore", "--into", "dev", "--json")
    prev = json.loads(r.stdout)["previous"]
    assert prev in databases(pg)
    # the next nightly run dies (OOM killer, reboot, Ctrl-\) before its build is verified
    r = run_cli("--config", cfg, "restore", "--into", "dev", env={"SNAPDB_KILL_AT": "restore:created"})
    assert r.returncode == -9
    left = sorted(d for d in databases(pg) if names.is_prev_of(target, d))
    print("previous copies after the failed run:", left)
    # README: "If anything fails, the target is exactly as it was. The previous copy is kept"
    assert prev in databases(pg), "the previous copy was dropped by a run that never built its replacement"


def test_failing_build_loses_the_only_previous_copy(pg, tmp_path, dbname):
    """No crash needed: a build that fails in post-data (the classic search_path-dependent
    expression index, which every pg_restore trips on) also costs the previous copy."""
    src = create_db(pg, dbname, DATA)
    target = dbname + "-dev"
    cfg = str(write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                           {"src": (pg.url(src), "production"), "dev": (pg.url(target), "dev")}))
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    assert run_cli("--config", cfg, "restore", "--into", "dev").returncode == 0
    prev = json.loads(run_cli("--config", cfg, "restore", "--into", "dev", "--json").stdout)["previous"]
    with pg.connect(src) as conn:
        conn.execute("CREATE TABLE lookup (k int); INSERT INTO lookup VALUES (1);"
                     "CREATE FUNCTION f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT k FROM lookup LIMIT 1';"
                     "CREATE INDEX ON t (f(id))")
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    r = run_cli("--config", cfg, "restore", "--into", "dev")
    print(r.returncode, r.stderr)
    assert r.returncode != 0
    assert prev in databases(pg), "the failed run dropped the previous copy"
