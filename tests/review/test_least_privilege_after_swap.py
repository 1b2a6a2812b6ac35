"""Review defect 6 and 10: --drop-slots / --detach-subscriptions with a least-privilege restoring
role, and a role that cannot end sessions: refused before anything is built (they used to fail
after the swap had committed, or after a whole build)."""

from __future__ import annotations

import json

from psycopg import sql

from ..conftest import databases, run_cli, write_config

DATA = "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)"


def _lp(pg, tag):
    with pg.connect() as conn:
        for d in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (tag + "%",)).fetchall():
            with pg.connect(d[0]) as c2:
                for (s,) in c2.execute("SELECT subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid AND d.datname = current_database()").fetchall():
                    c2.execute(f"ALTER SUBSCRIPTION {s} DISABLE; ALTER SUBSCRIPTION {s} SET (slot_name = NONE); DROP SUBSCRIPTION {s}")
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(d[0])))
    pg.psql(f"DROP ROLE IF EXISTS {tag}_app; DROP ROLE IF EXISTS {tag}_snap")
    pg.psql(f"CREATE ROLE {tag}_app NOLOGIN; CREATE ROLE {tag}_snap LOGIN CREATEDB; GRANT {tag}_app TO {tag}_snap; "
            f"GRANT pg_signal_backend TO {tag}_snap")
    pg.psql(f"CREATE DATABASE {tag}_src OWNER {tag}_app")
    pg.psql(f"CREATE DATABASE \"{tag}_src-dev\" OWNER {tag}_app")
    with pg.connect(f"{tag}_src") as conn:
        conn.execute(f"SET ROLE {tag}_app; " + DATA)


def _cfg(pg, tmp_path, tag):
    return str(write_config(tmp_path / "snapdb.toml", tmp_path / "store", {
        "src": (pg.url(f"{tag}_src", user=f"{tag}_snap"), "production"),
        "dev": (pg.url(f"{tag}_src-dev", user=f"{tag}_snap"), "dev")}))


def _trace(tmp_path):
    d = tmp_path / "trace"
    d.mkdir(exist_ok=True)
    return d, {"SNAPDB_TRACE_DIR": str(d)}


def test_drop_slots_without_replication_right(pg, tmp_path):
    tag = "rvslot"
    _lp(pg, tag)
    cfg = _cfg(pg, tmp_path, tag)
    with pg.connect(f"{tag}_src-dev") as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('rvslot_s', 'pgoutput')")
    try:
        assert run_cli("--config", cfg, "snapshot", "src").returncode == 0, "snapshot"
        before = databases(pg)
        trace, env = _trace(tmp_path)
        r = run_cli("--config", cfg, "restore", "--into", "dev", "--drop-slots", env=env)
        assert r.returncode == 5 and "needs REPLICATION" in r.stderr, r.stderr
        assert databases(pg) == before and not (trace / "restore:created.passed").exists()
    finally:
        with pg.connect() as conn:
            conn.execute("SELECT pg_drop_replication_slot('rvslot_s')")


def test_detach_subscriptions_without_ownership(pg, tmp_path):
    tag = "rvsub"
    _lp(pg, tag)
    cfg = _cfg(pg, tmp_path, tag)
    with pg.connect(f"{tag}_src-dev") as conn:
        conn.execute(sql.SQL("CREATE SUBSCRIPTION rvsub_s CONNECTION {} PUBLICATION p WITH (connect = false)").format(
            sql.Literal(pg.conninfo(f"{tag}_src"))))
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    before = databases(pg)
    trace, env = _trace(tmp_path)
    r = run_cli("--config", cfg, "restore", "--into", "dev", "--detach-subscriptions", env=env)
    assert r.returncode == 5 and "needs their owner" in r.stderr and "rvsub_s" in r.stderr, r.stderr
    assert databases(pg) == before and not (trace / "restore:created.passed").exists()


def test_role_that_cannot_end_sessions_finds_out_after_the_build(pg, tmp_path):
    """A restoring role without pg_signal_backend, and a developer (another role) connected to
    dev: the whole build is made and verified, then thrown away; and the previous copy, dropped
    before the build, is gone."""
    import psycopg
    tag = "rvsig"
    _lp(pg, tag)
    pg.psql(f"REVOKE pg_signal_backend FROM {tag}_snap")
    pg.psql(f"DROP ROLE IF EXISTS {tag}_dev; CREATE ROLE {tag}_dev LOGIN")
    cfg = _cfg(pg, tmp_path, tag)
    assert run_cli("--config", cfg, "snapshot", "src").returncode == 0
    assert run_cli("--config", cfg, "restore", "--into", "dev").returncode == 0
    r = run_cli("--config", cfg, "restore", "--into", "dev", "--json")
    prev = json.loads(r.stdout)["previous"]
    dev = psycopg.connect(pg.conninfo(f"{tag}_src-dev").replace("user=postgres", f"user={tag}_dev"), autocommit=True)
    trace = tmp_path / "trace"
    trace.mkdir()
    r = run_cli("--config", cfg, "restore", "--into", "dev", env={"SNAPDB_TRACE_DIR": str(trace)})
    dev.close()
    print(r.returncode, r.stderr, sorted(p.name for p in trace.iterdir()))
    assert r.returncode != 0
    assert not (trace / "restore:verified.passed").exists() or prev in databases(pg), \
        "the previous copy was dropped, and the failure showed only after the build"
