"""Issue 9's cron guard and history: `restore --if-newer` skips a target that provably holds the
snapshot (by the catalog's record of the restore that built it, found by OID), and restores one
that does not; `snapdb history` lists snapshots, restores, upgrades and failures newest first."""

from __future__ import annotations

import getpass
import json
import shutil
import socket

import pytest
from psycopg import sql

from snapdb import commands
from snapdb.config import load_config
from snapdb.errors import ConfigError, IntegrityError

from .conftest import ROOT, create_db, run_cli, write_config

MANAGED = """
CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY);
INSERT INTO public.alembic_version VALUES ('a1b2c3d4e5f6');
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 200) g;
"""


def _oid(pg, name: str) -> int | None:
    with pg.connect() as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return int(row[0]) if row else None


def _cli_restore(c: list[str]) -> dict:
    r = run_cli(*c, "--json", "restore", "--into", "dev", "--from", "src", "--if-newer")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_restore_if_newer(pg, tmp_path, dbname):
    src, dev = create_db(pg, dbname, MANAGED), dbname + "_dev"
    cfg_path = write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                            {"src": (pg.url(src), "production"), "dev": (pg.url(dev), "dev")})
    c, cfg = ["--config", str(cfg_path)], load_config(cfg_path)
    first = commands.snapshot(cfg, "src")

    def _restore(c) -> dict:
        return commands.restore(cfg, into="dev", from_="src", if_newer=True).to_json()

    # a target that does not exist yet is restored
    res = _cli_restore(c)
    assert res["outcome"] == "restored" and res["snapshot_id"] == first.id
    oid = _oid(pg, dev)
    with pg.connect(dev) as conn:  # the copy records which snapshot it came from
        assert conn.execute("SELECT restored_from FROM snapdb.history WHERE operation = 'restore'").fetchall() == [
            (first.id,)]
    mon = commands.monitor(cfg, "dev")  # and `status` shows it, by the same proof as --if-newer
    assert mon.services[0]["last_restore"]["snapshot"] == first.id
    assert [e["holds"]["snapshot"] if e["holds"] else None for e in commands.status(cfg).services] == [first.id, None]
    r = run_cli(*c, "status")
    assert r.returncode == 0 and f"dev (dev): revision a1b2c3d4e5f6, holds snapshot {first.id}" in r.stdout, r.stdout

    # the same snapshot again: nothing happens, and it says so
    res = _cli_restore(c)
    assert res["outcome"] == "skipped" and res["snapshot_id"] == first.id and str(oid) in res["held"]
    assert _oid(pg, dev) == oid
    r = run_cli(*c, "restore", "--into", "dev", "--from", "src", "--if-newer")
    assert r.returncode == 0, r.stderr
    assert f"is up to date: it already holds snapshot {first.id}" in r.stderr and _oid(pg, dev) == oid

    # a new snapshot is restored
    with pg.connect(src) as conn:
        conn.execute("INSERT INTO items VALUES (201, 'new')")
    second = commands.snapshot(cfg, "src")
    res = _restore(c)
    assert res["outcome"] == "restored" and res["snapshot_id"] == second.id
    oid2 = _oid(pg, dev)
    assert oid2 != oid and _restore(c)["outcome"] == "skipped"

    # a copy made by hand carries the same snapdb.history row (it travels with the data), but
    # snapdb did not build it: it is restored
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(dev + "_hand"), sql.Identifier(dev)))
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(dev)))
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(dev + "_hand"), sql.Identifier(dev)))
    with pg.connect(dev) as conn:
        assert conn.execute("SELECT restored_from FROM snapdb.history ORDER BY id DESC LIMIT 1").fetchone()[0] == second.id
    hand = _oid(pg, dev)
    assert commands.status(cfg, "dev").services[0]["holds"] is None
    res = _restore(c)
    assert res["outcome"] == "restored" and res["snapshot_id"] == second.id and _oid(pg, dev) not in (hand, oid2)

    # contents replaced in place (same OID) lose the copy's restore row: restored as well
    with pg.connect(dev) as conn:
        conn.execute("DELETE FROM snapdb.history")
    before = _oid(pg, dev)
    assert _restore(c)["outcome"] == "restored" and _oid(pg, dev) != before
    assert _restore(c)["outcome"] == "skipped"


def test_restore_if_newer_unmanaged_source(pg, tmp_path, dbname):
    """Without a release, the copy carries no row: the catalog's record by OID alone decides."""
    src = create_db(pg, dbname, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    dev = dbname + "_dev"
    cfg = load_config(write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                                   {"src": (pg.url(src), "production"), "dev": (pg.url(dev), "dev")}))
    snap = commands.snapshot(cfg, "src")
    with pg.connect() as conn:  # dev made by hand from the source: never restored by snapdb
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(dev), sql.Identifier(src)))
    hand = _oid(pg, dev)
    res = commands.restore(cfg, into="dev", from_="src", if_newer=True)
    assert res.outcome == "restored" and res.snapshot_id == snap.id and _oid(pg, dev) != hand
    oid = _oid(pg, dev)
    res = commands.restore(cfg, into="dev", from_="src", if_newer=True)
    assert res.outcome == "skipped" and res.snapshot_id == snap.id and _oid(pg, dev) == oid
    assert res.to_json()["outcome"] == "skipped"


def test_history_lists_operations_newest_first(pg, tmp_path, dbname):
    prod, dev = create_db(pg, dbname, (ROOT / "fixtures" / "service0.sql").read_text()), dbname + "_dev"
    migrations = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", migrations, ignore=shutil.ignore_patterns("__pycache__"))
    cfg_path = write_config(tmp_path / "snapdb.toml", tmp_path / "store",
                            {"prod": (pg.url(prod), "production"), "dev": (pg.url(dev), "dev")})
    cfg_path.write_text(cfg_path.read_text() + f"\n[upgrade]\nmigrations = {json.dumps(str(migrations))}\n")
    cfg, c = load_config(cfg_path), ["--config", str(cfg_path)]

    snap = commands.snapshot(cfg, "prod")
    commands.restore(cfg, into="dev", from_="prod")
    up = commands.upgrade(cfg, "dev", to="v1.1")
    oid = _oid(pg, dev)
    [data] = [p for p in (tmp_path / "store" / "snapshots" / snap.id / "data").iterdir()][:1]
    data.write_bytes(b"not the stored bytes")
    with pytest.raises(IntegrityError, match="damaged"):
        commands.restore(cfg, into="dev", from_="prod")
    assert _oid(pg, dev) == oid  # the failed restore left the target as it was

    r = run_cli(*c, "history", "--json")
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)["entries"]
    assert [(e["operation"], e["outcome"], e["service"], e["snapshot"]) for e in entries] == [
        ("restore", "failed", "dev", snap.id), ("upgrade", "succeeded", "dev", snap.id),
        ("restore", "succeeded", "dev", snap.id), ("snapshot", "succeeded", "prod", snap.id)]
    assert [e["tag"] for e in entries] == ["v1.0", "v1.1", "v1.0", "v1.0"]
    assert entries[1]["record_id"] == up.history_id and entries[1]["details"]["to_revision"] == up.revision
    assert "damaged" in entries[0]["error"] and all(e["error"] is None for e in entries[1:])
    starts = [e["started_at"] for e in entries]
    assert starts == sorted(starts, reverse=True)
    for e in entries:
        assert (e["os_user"], e["client_host"]) == (getpass.getuser(), socket.gethostname()), e
        assert e["seconds"] is not None and 0 <= e["seconds"] < 120, e
        assert e["database"].endswith("/" + (prod if e["operation"] == "snapshot" else dev)), e

    r = run_cli(*c, "history", "dev", "--json")
    assert [e["operation"] for e in json.loads(r.stdout)["entries"]] == ["restore", "upgrade", "restore"]
    assert [e.operation for e in commands.history(cfg, "prod").entries] == ["snapshot"]
    assert [e.outcome for e in commands.history(cfg, limit=2).entries] == ["failed", "succeeded"]

    r = run_cli(*c, "history")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4, r.stdout
    assert lines[0].split()[1:3] == ["restore", "failed"] and "error: snapshot" in lines[0] and "damaged" in lines[0]
    assert lines[3].split()[1:3] == ["snapshot", "succeeded"] and f"snapshot {snap.id}" in lines[3]
    assert all(f"by {getpass.getuser()}@{socket.gethostname()}" in ln for ln in lines)
    r = run_cli(*c, "history", "nosuch")
    assert r.returncode == ConfigError.exit_code and "unknown service 'nosuch'" in r.stderr
