"""Two major versions: the system's PostgreSQL 15 and the embedded PostgreSQL 18.

Snapshots of 15 databases restored onto 18 (the realdb cases the embedded build can load), an
upgrade rehearsed on a copy restored onto 18, and the client-tool rules of
docs/postgres-versions.md: pg_dump of the source's major, pg_restore of the target's, and the
refusals (older target, archive newer than the target, only older or unusable tools).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from psycopg import errors as pgerrors

from snapdb import commands
from snapdb import manifest as mf
from snapdb.config import load_config
from snapdb.errors import RefusedError, TargetError, ToolError
from snapdb.names import tmp_name
from snapdb.pgtools import embedded_bindir
from snapdb.store import open_store

from .conftest import ROOT, create_db, run_cli, write_config
from .dbcompare import assert_same_database, baseline_copy, table_fingerprints
from .test_realdb import load_case

# The realdb cases the embedded 18 build loads. danbooru_structure needs pgcrypto (not built:
# no OpenSSL); pg_regression15 needs ICU, lz4 and libxml, and has generated columns in
# inheritance children that only the parent lacks, which 15 accepts and 18 rejects.
CASES_ON_18 = ["pagila", "chinook", "openacs_kernel", "osm_structure"]
V11, V20 = "7d2e4b8c1a21", "c94a06f3e872"


def _manifest(store, snapshot_id: str) -> mf.Manifest:
    return mf.read_manifest(open_store(str(store)), snapshot_id)


def _databases(cluster) -> set[str]:
    with cluster.connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


@pytest.mark.parametrize("case", CASES_ON_18)
def test_15_snapshot_restored_on_18(pg, pg18, tmp_path, store, case):
    src = f"v18_{case}"
    load_case(pg, case, src)
    with pg.connect() as conn:
        conn.execute(f'ALTER DATABASE "{src}" SET work_mem = \'24MB\'')
        conn.execute(f"COMMENT ON DATABASE \"{src}\" IS 'realdb {case} on 15'")
    target = f"{src}-dev"
    cfg = load_config(write_config(tmp_path / "snapdb.toml", store, {
        "prod": (pg.url(src), "production"), "dev18": (pg18.url(target), "dev")}))
    info = commands.snapshot(cfg, "prod", jobs=2)
    m = _manifest(store, info.id)
    assert m.server["version_num"] // 10000 == 15 and m.pg_dump_version.startswith("15.")  # the source's own
    res = commands.restore(cfg, into="dev18", from_="prod", jobs=2)
    assert res.snapshot_id == info.id and res.target == target
    # the reference: 15's own pg_dump | 18's pg_restore, the combination that is known to work
    reference = baseline_copy(pg, src, f"{src}_plain", dst_pg=pg18)
    assert_same_database(pg, src, target, schema_reference=reference, dst_pg=pg18)


def test_why_the_other_cases_do_not_load_on_18(pg, pg18):
    """Each reason given in CASES_ON_18's comment, shown on both servers."""
    db = create_db(pg18, "why_not_18")
    with pg.connect() as c15, pg18.connect(db) as c18:
        assert c15.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pgcrypto'").fetchone()[0] == 1
        assert c18.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pgcrypto'").fetchone()[0] == 0
        statements = {
            "CREATE COLLATION und_icu (provider = icu, locale = 'und')": "ICU is not supported",
            "CREATE TABLE lz (t text COMPRESSION lz4)": "lz4 not supported",
            "SELECT xmlparse(document '<a/>')": "unsupported XML feature",
        }
        for statement, error in statements.items():
            with pytest.raises(pgerrors.FeatureNotSupported, match=error):
                c18.execute(statement)
        c15.execute("BEGIN")
        for statement in statements:
            c15.execute(statement)
        c15.execute("ROLLBACK")
        inherit = ("CREATE TABLE gp (a int, b int); "
                   "CREATE TABLE gc (a int, b int GENERATED ALWAYS AS (a * 2) STORED) INHERITS (gp)")
        c15.execute("BEGIN")
        c15.execute(inherit)
        c15.execute("ROLLBACK")
        with pytest.raises(pgerrors.InvalidColumnDefinition, match="specifies generation expression"):
            c18.execute(inherit)


def test_a_case_the_18_build_cannot_load_fails_cleanly(pg, pg18, tmp_path, store):
    src = "v18_danbooru"
    load_case(pg, "danbooru_structure", src)
    cfg = load_config(write_config(tmp_path / "snapdb.toml", store, {
        "prod": (pg.url(src), "production"), "dev18": (pg18.url("danbooru18"), "dev")}))
    commands.snapshot(cfg, "prod", jobs=2)
    with pytest.raises(TargetError, match='extension "pgcrypto" is not available'):
        commands.restore(cfg, into="dev18", from_="prod", jobs=2)
    assert not {"danbooru18", tmp_name("danbooru18")} & _databases(pg18)


def test_upgrade_rehearsed_on_a_copy_restored_on_18(pg, pg18, tmp_path, store):
    prod = create_db(pg, "v18_service0", (ROOT / "fixtures" / "service0.sql").read_text())
    migrations = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", migrations, ignore=shutil.ignore_patterns("__pycache__"))
    cfg_path = tmp_path / "snapdb.toml"
    cfg_path.write_text(
        f"[store]\nurl = {json.dumps(str(store))}\n\n[upgrade]\nmigrations = {json.dumps(str(migrations))}\n\n"
        f"[services.prod]\nurl = {json.dumps(pg.url(prod))}\nrole = \"production\"\n\n"
        f"[services.dev18]\nurl = {json.dumps(pg18.url('service0-dev18'))}\nrole = \"dev\"\n")
    cfg = load_config(cfg_path)
    info = commands.snapshot(cfg, "prod")
    assert info.release == "v1.0"
    commands.restore(cfg, into="dev18", from_="prod")
    res = commands.upgrade(cfg, "dev18", to="v2.0")
    assert res.outcome == "upgraded" and [s["revision"] for s in res.steps] == [V11, V20]
    assert res.restored_from == info.id
    with pg18.connect("service0-dev18") as conn:
        assert conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()[0] == 18
        assert conn.execute("SELECT version_num FROM public.alembic_version").fetchone()[0] == V20
        assert conn.execute("SELECT first_name, last_name, loyalty_tier FROM app.customers WHERE id = 7").fetchone() == (
            "Customer", "7", "standard")
        assert [r[0] for r in conn.execute("SELECT operation FROM snapdb.history ORDER BY id")] == ["restore", "upgrade"]
    # the rehearsal on 18 counts for production on 15
    res = commands.upgrade(cfg, "prod", to="v2.0")
    assert res.outcome == "upgraded" and res.rehearsal


# -- client-tool rules ----------------------------------------------------------------------------
def _attver_columns(pg, dbname: str) -> int:
    with pg.connect(dbname) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attnum > 0 "
            "AND array_to_string(attoptions, ',') LIKE '%pg_attver=%'").fetchone()[0]


def test_newer_pg_dump_alone_is_refused_for_pg_attver_columns(pg, pg18, tmp_path, store, monkeypatch):
    """Debian 15.20 stamps columns with pg_attver; pg_dump 18 would carry it into the snapshot,
    where 18 rejects it and loses the table: with only pg_dump 18 at hand snapdb refuses."""
    src = create_db(pg, "attver_src", "CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    pg_dump18 = pg18.tool("pg_dump")
    if not _attver_columns(pg, src):  # a 15 without Debian's stamp: pg_dump 18 is fine for it
        monkeypatch.setenv("SNAPDB_PG_BINDIR", embedded_bindir())
        commands.snapshot(load_config(write_config(tmp_path / "c.toml", store, {"p": (pg.url(src), "dev")})), "p")
        return
    # the fact behind the rule: pg_dump 18's archive of this table does not restore on 18
    plain = subprocess.run([pg_dump18, "--schema-only", "-d", pg.conninfo(src)], capture_output=True, text=True,
                           check=True).stdout
    assert "SET (pg_attver=" in plain
    archive = tmp_path / "a.dump"
    subprocess.run([pg_dump18, "-Fc", "-f", str(archive), "-d", pg.conninfo(src)], check=True)
    create_db(pg18, "attver_plain18")
    r = subprocess.run([pg18.tool("pg_restore"), "--exit-on-error", "-d", pg18.conninfo("attver_plain18"),
                        str(archive)], capture_output=True, text=True)
    assert r.returncode != 0 and 'unrecognized parameter "pg_attver"' in r.stderr

    cfg_path = write_config(tmp_path / "snapdb.toml", store, {"prod": (pg.url(src), "production")})
    monkeypatch.setenv("SNAPDB_PG_BINDIR", embedded_bindir())  # only PostgreSQL 18's client programs
    with pytest.raises(ToolError, match="pg_attver") as exc:
        commands.snapshot(load_config(cfg_path), "prod")
    assert "postgresql-client-15" in exc.value.hint
    assert not list(store.rglob("manifest.json"))
    r = run_cli("--config", str(cfg_path), "snapshot", "prod")
    assert r.returncode == ToolError.exit_code
    assert r.stderr.startswith("error: only pg_dump 18 was found for this PostgreSQL 15 server") and "hint: " in r.stderr
    # with 15's own pg_dump (the default search finds it first) the same source goes to 18 whole
    monkeypatch.delenv("SNAPDB_PG_BINDIR")
    cfg = load_config(write_config(tmp_path / "snapdb.toml", store, {
        "prod": (pg.url(src), "production"), "dev18": (pg18.url("attver18"), "dev")}))
    commands.snapshot(cfg, "prod")
    commands.restore(cfg, into="dev18", from_="prod")
    assert table_fingerprints(pg18, "attver18") == table_fingerprints(pg, src)


def test_snapshot_by_a_newer_pg_dump_goes_to_18_not_to_15(pg, pg18, tmp_path, store, monkeypatch):
    """A 15 source without stamped columns may be dumped by pg_dump 18; that archive is then
    restored onto 18 and refused for 15 (PostgreSQL does not promise it loads there)."""
    src = create_db(pg, "newdump_src", "CREATE TABLE e (); INSERT INTO e DEFAULT VALUES; INSERT INTO e DEFAULT VALUES; "
                                       "CREATE SEQUENCE s START 40; SELECT nextval('s'); "
                                       "CREATE VIEW v AS SELECT 1 AS one")
    cfg = load_config(write_config(tmp_path / "snapdb.toml", store, {
        "prod": (pg.url(src), "production"), "dev18": (pg18.url("newdump18"), "dev"),
        "dev15": (pg.url("newdump15"), "dev")}))
    monkeypatch.setenv("SNAPDB_PG_BINDIR", embedded_bindir())
    info = commands.snapshot(cfg, "prod")
    assert _manifest(store, info.id).pg_dump_version.startswith("18.")
    commands.restore(cfg, into="dev18", from_="prod")
    with pg18.connect("newdump18") as conn:
        assert conn.execute("SELECT (SELECT count(*) FROM e), (SELECT last_value FROM s), (SELECT one FROM v)").fetchone() == (2, 40, 1)
    monkeypatch.delenv("SNAPDB_PG_BINDIR")  # 15's pg_restore is there, but cannot read the archive
    with pytest.raises(RefusedError, match="dumped by pg_dump 18") as exc:
        commands.restore(cfg, into="dev15", from_="prod")
    assert "PostgreSQL 18 or newer" in exc.value.hint
    assert not {"newdump15", tmp_name("newdump15")} & _databases(pg)


def test_restore_onto_an_older_server_is_refused(pg, pg18, tmp_path, store):
    src = create_db(pg18, "new_src", "CREATE TABLE t AS SELECT generate_series(1, 100) AS id")
    target = create_db(pg, "old_target", "CREATE TABLE keep AS SELECT 1 AS one")
    cfg_path = write_config(tmp_path / "snapdb.toml", store, {
        "prod": (pg18.url(src), "production"), "old": (pg.url(target), "dev")})
    cfg = load_config(cfg_path)
    info = commands.snapshot(cfg, "prod")
    assert _manifest(store, info.id).pg_dump_version.startswith("18.")
    before = table_fingerprints(pg, target)
    r = run_cli("--config", str(cfg_path), "restore", "--into", "old")
    assert r.returncode == RefusedError.exit_code, r.stderr
    assert r.stderr.startswith("error: refusing to restore a snapshot of a PostgreSQL 18 database onto an older "
                               "PostgreSQL 15 server")
    assert table_fingerprints(pg, target) == before and tmp_name(target) not in _databases(pg)


def test_only_a_newer_pg_restore_for_a_15_target_is_refused(pg, pg18, tmp_path, store, monkeypatch):
    src = create_db(pg, "tt_src", "CREATE TABLE t AS SELECT generate_series(1, 100) AS id")
    cfg = load_config(write_config(tmp_path / "snapdb.toml", store, {
        "prod": (pg.url(src), "production"), "dev": (pg.url("tt_dev"), "dev")}))
    info = commands.snapshot(cfg, "prod")
    # the fact behind the rule: pg_restore 18 cannot restore even a 15 archive into a 15 server
    archive = tmp_path / "a.dump"
    subprocess.run([pg.tool("pg_dump"), "-Fc", "-f", str(archive), "-d", pg.conninfo(src)], check=True)
    create_db(pg, "tt_plain")
    r = subprocess.run([pg18.tool("pg_restore"), "--exit-on-error", "-d", pg.conninfo("tt_plain"), str(archive)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and 'unrecognized configuration parameter "transaction_timeout"' in r.stderr
    monkeypatch.setenv("SNAPDB_PG_BINDIR", embedded_bindir())
    with pytest.raises(ToolError, match="only pg_restore 18 was found for this PostgreSQL 15 server") as exc:
        commands.restore(cfg, into="dev", snapshot_id=info.id)
    assert "postgresql-client-15" in exc.value.hint
    assert not {"tt_dev", tmp_name("tt_dev")} & _databases(pg)


def test_only_older_tools_are_refused(pg, pg18, tmp_path, store, monkeypatch):
    src = create_db(pg18, "older_tools_src", "CREATE TABLE t (id int)")
    cfg_path = write_config(tmp_path / "snapdb.toml", store, {"prod": (pg18.url(src), "production")})
    r = run_cli("--config", str(cfg_path), "snapshot", "prod", env={"SNAPDB_PG_BINDIR": pg.bindir})
    assert r.returncode == ToolError.exit_code, r.stderr
    err, hint = r.stderr.strip().splitlines()[-2:]
    assert err == ("error: no pg_dump of PostgreSQL 18 or newer found in SNAPDB_PG_BINDIR "
                   "(only PostgreSQL 15's, which cannot serve a PostgreSQL 18 server)")
    assert hint.startswith("hint: install the PostgreSQL 18 client programs")
    assert not list(store.rglob("manifest.json"))


def test_18_database_with_the_builtin_locale_provider(pg18, tmp_path, store):
    """PostgreSQL 17+ keeps the locale in datlocale and knows the builtin provider: both survive."""
    with pg18.connect() as conn:
        conn.execute("CREATE DATABASE builtin_src TEMPLATE template0 ENCODING 'UTF8' "
                     "LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8'")
    pg18.psql("CREATE TABLE t AS SELECT g AS id, 'é' || g AS v FROM generate_series(1, 300) g", "builtin_src")
    cfg = load_config(write_config(tmp_path / "snapdb.toml", store, {
        "prod": (pg18.url("builtin_src"), "production"), "dev": (pg18.url("builtin_dev"), "dev")}))
    commands.snapshot(cfg, "prod")
    commands.restore(cfg, into="dev", from_="prod")
    with pg18.connect() as conn:
        assert conn.execute("SELECT datlocprovider::text, datlocale FROM pg_database WHERE datname = 'builtin_dev'"
                            ).fetchone() == ("b", "C.UTF-8")
    assert_same_database(pg18, "builtin_src", "builtin_dev")
