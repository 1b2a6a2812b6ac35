"""Review: a target marked IS_TEMPLATE (used to clone test databases from): the swap succeeds,
the new copy silently stops being a template, and the copy set aside can never be dropped, so
every later restore fails before building."""

from __future__ import annotations

from psycopg import sql


from ..conftest import create_db, run_cli, write_config

DATA = "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)"


def test_template_target(pg, tmp_path, dbname):
    src = create_db(pg, dbname, DATA)
    target = create_db(pg, dbname + "-dev", DATA)
    pg.psql(f'ALTER DATABASE "{target}" IS_TEMPLATE true')
    cfg = str(write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                           {"src": (pg.url(src), "production"), "dev": (pg.url(target), "dev")}))
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    try:
        r1 = run_cli("--config", cfg, "restore", "--into", "dev", "--keep-previous", "0")
        print("first", r1.returncode, r1.stderr)
        r2 = run_cli("--config", cfg, "restore", "--into", "dev", "--keep-previous", "0")
        print("second", r2.returncode, r2.stderr)
        with pg.connect() as conn:
            print(conn.execute("SELECT datname, datistemplate FROM pg_database WHERE datname LIKE %s",
                               (target + "%",)).fetchall())
        assert r1.returncode in (0, 8), r1.stderr  # done, or refused up front
        assert r2.returncode in (0, 8), r2.stderr
    finally:
        with pg.connect() as conn:
            for (d,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (target + "%",)).fetchall():
                conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(d)))
