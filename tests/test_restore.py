"""Snapshot → restore end to end on a real cluster: swap, previous copies, safety rules."""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from psycopg import sql

from snapdb import commands, names
from snapdb.config import Config, load_config
from snapdb.errors import ConfigError, IntegrityError, RefusedError

from .conftest import create_db, ensure_roles, run_cli, sample_sql, write_config
from .dbcompare import assert_same_database, database_props


def _cfg(tmp_path, pg, store, **services) -> Config:
    return load_config(write_config(tmp_path / "snapdb.toml", store, services))


def _databases(pg) -> set[str]:
    with pg.connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def test_roundtrip_sample_database(pg, tmp_path, store, dbname):
    create_db(pg, dbname, sample_sql())
    ensure_roles(pg, "rt_owner")
    with pg.connect() as conn:
        d = sql.Identifier(dbname)
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO rt_owner").format(d))  # not the default owner
        conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 17").format(d))  # nor the default limit
        conn.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '12MB'").format(d))
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = '$user', public, \"Odd\"").format(d))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'the source'").format(d))
        conn.execute("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname='app_ro') THEN CREATE ROLE app_ro; END IF; END$$")
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO app_ro").format(d))
        conn.execute(sql.SQL("REVOKE TEMP ON DATABASE {} FROM PUBLIC").format(d))
        conn.execute(sql.SQL("ALTER ROLE app_ro IN DATABASE {} SET statement_timeout = '5s'").format(d))
    cfg = _cfg(tmp_path, pg, store, src=(pg.url(dbname), "production"))
    info = commands.snapshot(cfg, "src", label="t1")
    assert info.source == "src" and info.tables >= 6 and info.rows > 2000

    target = dbname + "-dev"
    res = commands.restore(cfg, into=target, from_="src", server="src")
    assert res.target == target and res.previous is None
    assert_same_database(pg, dbname, target)
    b = database_props(pg, target)
    assert b == database_props(pg, dbname)  # independent of snapdb's own reader
    assert "search_path=\"$user\", public, \"Odd\"" in b["settings"][""]
    assert (b["comment"], b["owner"], b["connection_limit"]) == ("the source", "rt_owner", 17)
    with pg.connect(target) as conn:
        assert conn.execute("SELECT ispopulated FROM pg_matviews WHERE matviewname = 'mv_empty'").fetchone()[0] is False
        assert conn.execute("SELECT count(*) FROM mv_counts").fetchone()[0] == 3
        assert conn.execute("SELECT last_value FROM free_seq").fetchone()[0] == 101
        assert conn.execute("SELECT lo_get(oid) FROM pg_largeobject_metadata").fetchone()[0] == b"large object bytes"
        # the trigger came back and fires
        conn.execute("""INSERT INTO "order-items" (qty) VALUES (1)""")
        assert conn.execute("""SELECT note FROM "order-items" ORDER BY id DESC LIMIT 1""").fetchone()[0] == "touched"


def test_restore_over_open_sessions_keeps_previous(pg, tmp_path, store, dbname):
    create_db(pg, dbname, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
    cfg = _cfg(tmp_path, pg, store, src=(pg.url(dbname), "production"), dev=(pg.url(dbname + "-dev"), "dev"))
    commands.snapshot(cfg, "src")
    commands.restore(cfg, into="dev")
    with pg.connect(dbname) as conn:
        conn.execute("INSERT INTO t SELECT generate_series(101, 150)")
    commands.snapshot(cfg, "src")
    # a session idling in the target, one in a transaction
    idle = psycopg.connect(pg.conninfo(dbname + "-dev"), autocommit=True)
    busy = psycopg.connect(pg.conninfo(dbname + "-dev"))
    busy.execute("SELECT count(*) FROM t")
    res = commands.restore(cfg, into="dev", keep_previous=1)
    assert res.previous and names.is_prev_of(dbname + "-dev", res.previous)
    with pytest.raises(psycopg.OperationalError):
        idle.execute("SELECT 1")
    idle.close()
    busy.close()
    with pg.connect(dbname + "-dev") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 150
    with pg.connect(res.previous) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 100
    # keep_previous bounds the number of old copies
    time.sleep(1.1)
    res2 = commands.restore(cfg, into="dev", keep_previous=1)
    assert res2.dropped_previous == [res.previous]
    prevs = [d for d in _databases(pg) if names.is_prev_of(dbname + "-dev", d)]
    assert prevs == [res2.previous]
    res3 = commands.restore(cfg, into="dev", keep_previous=0)
    assert not [d for d in _databases(pg) if names.is_prev_of(dbname + "-dev", d)]
    assert res3.previous in res3.dropped_previous


def test_refuses_production_and_own_source(pg, tmp_path, store, dbname):
    create_db(pg, dbname, "CREATE TABLE t (id int)")
    other = create_db(pg, dbname + "_other", "CREATE TABLE keep_me (id int)")
    cfg = _cfg(tmp_path, pg, store, src=(pg.url(dbname), "dev"), prod=(pg.url(other), "production"))
    commands.snapshot(cfg, "src")
    with pytest.raises(RefusedError, match="production"):
        commands.restore(cfg, into="prod")
    with pytest.raises(RefusedError, match="production"):
        commands.restore(cfg, into=other, server=pg.url())  # same database, reached by bare name
    with pytest.raises(RefusedError, match="own source"):
        commands.restore(cfg, into="src")
    with pytest.raises(RefusedError, match="own source"):
        commands.restore(cfg, into=dbname, server="src")  # bare name on the source's server
    with pg.connect(other) as conn:
        assert conn.execute("SELECT to_regclass('keep_me') IS NOT NULL").fetchone()[0]
    # through the real CLI: one error line, a hint, the documented exit code
    r = run_cli("--config", str(tmp_path / "snapdb.toml"), "restore", "--into", "prod")
    assert r.returncode == RefusedError.exit_code
    assert r.stderr.splitlines()[0].startswith("error: refusing to restore into 'prod'")
    assert r.stderr.splitlines()[1].startswith("hint: ")


def test_bad_input_changes_nothing(pg, tmp_path, store, dbname):
    create_db(pg, dbname, "CREATE TABLE t (id int)")
    cfg_path = write_config(tmp_path / "snapdb.toml", store, {"src": (pg.url(dbname), "dev")})
    before = _databases(pg)
    cases = [
        (["restore", "--into", "x", "--snapshot", "nope"], 6),
        (["restore", "--into", "x"], 6),  # empty store
        (["snapshot", "nosuchservice"], 3),
        (["snapshot", "postgresql://a:b@c:d:e/f"], 3),
        (["snapshot", "postgresql://u:secret@127.0.0.1/x"], 3),
        (["restore", "--into", "x", "--jobs", "0"], 2),
        (["verify", "nope"], 6),
    ]
    for args, code in cases:
        r = run_cli("--config", str(cfg_path), *args)
        assert r.returncode == code, (args, r.stderr)
        assert "secret" not in r.stderr
        if code != 2:
            assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) <= 2, r.stderr
    assert _databases(pg) == before
    assert not list(store.glob("snapshots/*/manifest.json"))
    bad = tmp_path / "bad.toml"
    bad.write_text('[store]\nurl = "/tmp/x"\nbogus = 1\n')
    r = run_cli("--config", str(bad), "snapshots")
    assert r.returncode == 3 and "unknown key 'bogus'" in r.stderr
    with pytest.raises(ConfigError):
        load_config(bad)


def test_snapshots_listing_and_json(pg, tmp_path, store, dbname):
    create_db(pg, dbname, "CREATE TABLE t AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 5000) g")
    cfg_path = write_config(tmp_path / "snapdb.toml", store, {"src": (pg.url(dbname), "dev")})
    r1 = run_cli("--config", str(cfg_path), "snapshot", "src", "--label", "first", "--json")
    assert r1.returncode == 0, r1.stderr
    first = json.loads(r1.stdout)
    time.sleep(1.1)
    r2 = run_cli("--config", str(cfg_path), "snapshot", "src")
    assert r2.returncode == 0, r2.stderr
    second_id = r2.stdout.strip()
    r = run_cli("--config", str(cfg_path), "snapshots", "--json")
    items = json.loads(r.stdout)
    assert [i["id"] for i in items] == [second_id, first["id"]]
    assert items[1]["label"] == "first" and items[1]["ratio"] > 5
    r = run_cli("--config", str(cfg_path), "snapshots")
    assert second_id in r.stdout and "first" in r.stdout
    # snapshot files are private to their owner
    for p in store.rglob("*"):
        assert (p.stat().st_mode & 0o077) == 0, p
    # the manifest holds no user name or URL
    manifest = (store / "snapshots" / second_id / "manifest.json").read_text()
    assert "postgresql://" not in manifest and '"user"' not in manifest


def test_verify_against_reports_differences(pg, tmp_path, store, dbname):
    create_db(pg, dbname, "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 50);"
                          "CREATE TABLE b (id int); INSERT INTO b VALUES (1)")
    cfg_path = write_config(tmp_path / "snapdb.toml", store, {"src": (pg.url(dbname), "dev")})
    sid = run_cli("--config", str(cfg_path), "snapshot", "src").stdout.strip()
    r = run_cli("--config", str(cfg_path), "verify", sid, "--against", "src")
    assert r.returncode == 0, r.stderr
    with pg.connect(dbname) as conn:
        conn.execute("UPDATE a SET id = id + 1 WHERE id = 7")
        conn.execute("INSERT INTO b VALUES (2)")
    r = run_cli("--config", str(cfg_path), "verify", sid, "--against", "src", "--json")
    assert r.returncode == IntegrityError.exit_code
    problems = {p["name"]: p for p in json.loads(r.stdout)["problems"]}
    assert set(problems) == {"public.a", "public.b"}
    assert "checksum" in problems["public.a"]["expected"] and problems["public.b"]["actual"] == "2 rows"


def test_restore_to_second_server_under_source_name(pg, pg2, tmp_path, store, dbname):
    """Two hosts: the source's own name is a fine target on another server."""
    create_db(pg, dbname, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 77)")
    cfg = _cfg(tmp_path, pg, store, src=(pg.url(dbname), "standby"))
    commands.snapshot(cfg, "src")
    res = commands.restore(cfg, into=dbname, server=pg2.url())
    assert res.server == f"127.0.0.1:{pg2.port}"
    with pg2.connect(dbname) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 77
    # the same server reached under another host name is still the source's own server
    with pytest.raises(RefusedError, match="own source"):
        commands.restore(cfg, into=dbname, server=pg.url().replace("127.0.0.1", "localhost"))
