"""Issue 12, points 4 and 8, on servers of their own: a libc database restored onto a server whose
template0 uses ICU stays libc; a snapshot of a hot standby skips the unlogged tables it cannot
read, and says so."""

from __future__ import annotations

import json

import pytest

from snapdb.cluster import Cluster

from .conftest import create_db, run_cli, start_cluster
from .dbcompare import database_props, table_fingerprints


@pytest.fixture(scope="module")
def pg_icu():
    """A server whose template databases use the ICU provider (locale en-US)."""
    c = start_cluster("icu", major=15, initdb_args=["--locale-provider=icu", "--icu-locale=en-US"])
    yield c
    c.stop()


def test_locale_provider_is_carried_exactly(pg, pg_icu, tmp_path, dbname):
    src = create_db(pg, dbname, "CREATE TABLE w (v text); INSERT INTO w VALUES ('a'), ('B'), ('c'), ('D')")
    store = str(tmp_path / "store")
    assert run_cli("snapshot", pg.url(src), "--store", store).returncode == 0
    r = run_cli("restore", "--into", src, "--server", pg_icu.url(), "--store", store)
    assert r.returncode == 0, r.stderr
    with pg_icu.connect() as conn:
        assert conn.execute("SELECT datlocprovider FROM pg_database WHERE datname = 'template0'").fetchone()[0] == "i"
    a, b = database_props(pg, src), database_props(pg, src, other=pg_icu)
    assert (b["provider"], b["collate"], b["ctype"]) == (a["provider"], a["collate"], a["ctype"]) == ("c", "C", "C")
    with pg.connect(src) as x, pg_icu.connect(src) as y:
        order = "SELECT string_agg(v, '' ORDER BY v) FROM w"
        assert x.execute(order).fetchone()[0] == y.execute(order).fetchone()[0] == "BDac"  # byte order, not ICU's


@pytest.fixture(scope="module")
def primary_and_standby():
    primary = start_cluster("primary")
    try:
        standby = Cluster.standby_of(primary)
    except BaseException:
        primary.stop()
        raise
    yield primary, standby
    standby.stop()
    primary.stop()


def test_snapshot_of_a_hot_standby_skips_unlogged_tables(pg, primary_and_standby, tmp_path):
    primary, standby = primary_and_standby
    create_db(primary, "hs_src", """
        CREATE TABLE kept (id int PRIMARY KEY, v text);
        INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
        CREATE UNLOGGED TABLE scratch (id int, v text);
        INSERT INTO scratch SELECT g, 'x' FROM generate_series(1, 500) g;
        CREATE UNLOGGED SEQUENCE useq;
        SELECT nextval('useq');
        CREATE SEQUENCE lseq START 40;
        SELECT nextval('lseq');""")
    standby.wait_for_replay(primary)
    store = str(tmp_path / "store")
    r = run_cli("snapshot", standby.url("hs_src"), "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert any("unlogged" in w and "public.scratch" in w for w in info["warnings"])
    [manifest] = list((tmp_path / "store" / "snapshots").glob("*/manifest.json"))
    m = json.loads(manifest.read_text())
    assert m["skipped"] == [{"schema": "public", "name": "scratch", "reason": "unlogged table on a hot standby"}]
    assert m["server"]["in_recovery"] is True
    r = run_cli("snapshot", standby.url("hs_src"), "--store", store)  # plain output: the warning on stderr
    assert r.returncode == 0 and "warning:" in r.stderr and "unlogged" in r.stderr
    r = run_cli("restore", "--snapshot", info["id"], "--into", "hs_copy", "--server", pg.url(), "--store", store)
    assert r.returncode == 0, r.stderr
    copy = table_fingerprints(pg, "hs_copy")
    assert copy["public.kept"] == table_fingerprints(primary, "hs_src")["public.kept"]
    assert copy["public.scratch"][0] == 0  # created, empty
    with pg.connect("hs_copy") as conn:
        # a standby sees a sequence as WAL-logged, up to 32 values ahead of the primary: ahead, never behind
        assert 40 <= conn.execute("SELECT last_value FROM lseq").fetchone()[0] <= 40 + 32
    r = run_cli("verify", info["id"], "--against", pg.url("hs_copy"), "--store", store)
    assert r.returncode == 0, r.stdout + r.stderr
