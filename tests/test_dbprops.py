"""Issue 12, point 5 (settings set to an empty list) and the format-1 fixture (snapshots written by
an earlier release stay restorable)."""

from __future__ import annotations

import shutil

import pytest
from psycopg import sql

from .conftest import ROOT, create_db, ensure_roles, run_cli
from .dbcompare import assert_same_database, database_props


def test_empty_list_settings_are_carried_exactly(pg, tmp_path, dbname):
    src = create_db(pg, dbname, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    ensure_roles(pg, "empty_list_role")
    d = sql.Identifier(src)
    with pg.connect() as conn:
        # PostgreSQL stores '' for these lists as one empty element (""); for the preload lists
        # that names a library "" which no session can load, so those are set only for a role
        # that never logs in (at database level they would lock every role out, snapdb included)
        for stmt in ("ALTER DATABASE {} SET search_path = ''",
                     "ALTER DATABASE {} SET temp_tablespaces = ''",
                     "ALTER ROLE empty_list_role IN DATABASE {} SET session_preload_libraries = ''",
                     "ALTER ROLE empty_list_role IN DATABASE {} SET local_preload_libraries = ''",
                     "ALTER ROLE empty_list_role IN DATABASE {} SET search_path = ''",
                     "ALTER ROLE postgres IN DATABASE {} SET search_path = 'a', '', \"b c\""):
            conn.execute(sql.SQL(stmt).format(d))
    store = str(tmp_path / "store")
    assert run_cli("snapshot", pg.url(src), "--store", store).returncode == 0
    r = run_cli("restore", "--into", src + "_copy", "--server", pg.url(), "--store", store)
    assert r.returncode == 0, r.stderr
    a, b = database_props(pg, src), database_props(pg, src + "_copy")
    assert a["settings"] == b["settings"]
    assert 'search_path=""' in b["settings"][""] and 'search_path=""' in b["settings"]["empty_list_role"]


@pytest.mark.parametrize("version", [1, 2])
def test_earlier_format_snapshot_restores_and_verifies(pg, tmp_path, dbname, version):
    """fixtures/snapshot-v1 was written by snapdb at commit 795888a (format snapdb-snapshot/1, crc32
    and adler32 checksums), fixtures/snapshot-v2 at commit 15b6801 (format 2, one file per table):
    today's snapdb restores and verifies them, and the result equals a database loaded from the
    same SQL (compared without snapdb's code)."""
    store = tmp_path / "store"
    shutil.copytree(ROOT / "fixtures" / f"snapshot-v{version}" / "store", store)
    [sid] = [p.name for p in (store / "snapshots").iterdir()]
    assert f'"format": "snapdb-snapshot/{version}"' in (store / "snapshots" / sid / "manifest.json").read_text()
    r = run_cli("verify", sid, "--store", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    copy = dbname + f"_from_v{version}"
    r = run_cli("restore", "--snapshot", sid, "--into", copy, "--server", pg.url(), "--store", str(store))
    assert r.returncode == 0, r.stderr
    ref = create_db(pg, dbname + "_ref", (ROOT / "fixtures" / f"snapshot-v{version}" / "source.sql").read_text())
    pg.psql(f"ALTER DATABASE \"{ref}\" SET work_mem = '12MB'")
    pg.psql(f"COMMENT ON DATABASE \"{ref}\" IS 'written by snapdb format {version}'")
    assert_same_database(pg, ref, copy, lo_oids=False)
    r = run_cli("verify", sid, "--against", pg.url(copy), "--store", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    with pg.connect(copy) as conn:
        conn.execute('UPDATE "order-items" SET note = \'changed\' WHERE id = 5')
    r = run_cli("verify", sid, "--against", pg.url(copy), "--store", str(store))
    assert r.returncode == 7 and 'order-items' in r.stdout, r.stdout + r.stderr
