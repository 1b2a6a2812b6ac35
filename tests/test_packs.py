"""Snapshot format 3 (issue 10): small tables share pack files, and the pg_dump command line
excludes table data by schema, so many small tables cost few files and few patterns."""

from __future__ import annotations

import json

from snapdb.config import Endpoint, parse_url
from snapdb.errors import SourceError
from snapdb.postgres import TableRef, connect
from snapdb.snapshot import data_exclusions, plan_files

from .conftest import create_db, run_cli
from .dbcompare import assert_same_database

MANY = ";".join(
    f"CREATE TABLE app.t{i} (id int PRIMARY KEY, name text, note text); "
    f"INSERT INTO app.t{i} SELECT g, 'row ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE E'tab\\there' END FROM generate_series(1, {i}) g"
    for i in range(1, 41)
) + (";CREATE TABLE app.empty (id int); "
     "CREATE TABLE big.wide (id int PRIMARY KEY, pad text); "
     "INSERT INTO big.wide SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 8000) g; "
     "CREATE TABLE mixed.plain (id int); INSERT INTO mixed.plain SELECT generate_series(1, 5); "
     "CREATE MATERIALIZED VIEW mixed.mv AS SELECT count(*) AS n FROM mixed.plain; "
     "CREATE SEQUENCE app.counter START 7")


def _many(pg, name: str) -> str:
    return create_db(pg, name, "CREATE SCHEMA app; CREATE SCHEMA big; CREATE SCHEMA mixed; " + MANY)


def _manifest(store) -> tuple[dict, object]:
    [d] = list((store / "snapshots").iterdir())
    return json.loads((d / "manifest.json").read_text()), d


def test_small_tables_share_pack_files_and_restore_exactly(pg, tmp_path):
    src = _many(pg, "packs_src")
    store = tmp_path / "store"
    r = run_cli("snapshot", pg.url(src), "--store", str(store), "--jobs", "2")
    assert r.returncode == 0, r.stderr
    doc, d = _manifest(store)
    assert doc["format"] == "snapdb-snapshot/3"
    by_name = {t["name"]: t for t in doc["tables"]}
    assert len(by_name) == 43
    packed = [t for t in doc["tables"] if "offset" in t["parts"][0]]
    packs = {t["parts"][0]["file"] for t in packed}
    assert len(packed) == 42 and by_name["wide"]["parts"][0]["file"] == "data/00001.copy.zst"
    assert 2 <= len(packs) <= 42 // 2, packs  # at least one pack per job, several tables in each
    assert sorted(p.name for p in (d / "data").iterdir()) == sorted(
        [f.split("/")[1] for f in packs] + ["00001.copy.zst"])
    for f in packs:  # segments follow each other from 0 and fill the decompressed file
        segs = sorted((t["parts"][0]["offset"], t["parts"][0]["length"]) for t in packed if t["parts"][0]["file"] == f)
        assert segs[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(segs, segs[1:]))
        raw = next(x["raw_size"] for x in doc["files"] if x["path"] == f)
        assert segs[-1][0] + segs[-1][1] == raw
    r = run_cli("restore", "--into", src + "_copy", "--server", pg.url(), "--store", str(store), "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert_same_database(pg, src, src + "_copy")
    with pg.connect(src + "_copy") as conn:  # the materialized view's data came through pg_dump
        assert conn.execute("SELECT n FROM mixed.mv").fetchone()[0] == 5
        assert conn.execute("SELECT last_value FROM app.counter").fetchone()[0] == 7
    r = run_cli("verify", doc["id"], "--against", pg.url(src + "_copy"), "--store", str(store))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_manifest_that_misplaces_packed_tables_is_refused(pg, tmp_path):
    """Two packed tables' offsets swapped in the manifest: the restore must not load one table's
    rows into the other; it refuses and the target stays as it was."""
    src = _many(pg, "packs_swap")
    store = tmp_path / "store"
    assert run_cli("snapshot", pg.url(src), "--store", str(store), "--jobs", "1").returncode == 0
    doc, d = _manifest(store)
    a, b = [t for t in doc["tables"] if t["name"] in ("t10", "t11")]
    assert a["parts"][0]["file"] == b["parts"][0]["file"]
    for k in ("offset", "length"):
        a["parts"][0][k], b["parts"][0][k] = b["parts"][0][k], a["parts"][0][k]
    (d / "manifest.json").write_text(json.dumps(doc))
    target = create_db(pg, "packs_swap_target", "CREATE TABLE keep (v int); INSERT INTO keep VALUES (42)")
    r = run_cli("restore", "--into", target, "--server", pg.url(), "--store", str(store))
    assert r.returncode == 7, r.stdout + r.stderr
    with pg.connect(target) as conn:
        assert conn.execute("SELECT v FROM keep").fetchone()[0] == 42


def test_plan_files_packs_small_tables_for_every_job():
    big, small = 200 << 20, 4096
    tables = [TableRef("s", "big", [], bytes=big), TableRef("s", "mid", [], bytes=2 << 20)] + \
             [TableRef("s", f"t{i}", [], bytes=small) for i in range(1000)]
    files = plan_files(tables, 4, 150000)
    split = [p for p, segs in files if segs[0][0] == 0]
    assert len(split) == 4 and all(p.startswith("data/00001.") for p in split)
    assert ("data/00002.copy.zst", [(1, None)]) in files
    packs = [segs for p, segs in files if p.startswith("data/pack-")]
    assert len(packs) >= 4 and max(len(s) for s in packs) <= 256
    assert sorted(i for s in packs for i, _ in s) == list(range(2, 1002))
    assert plan_files([TableRef("s", "only", [], bytes=small)], 2, 150000) == [("data/00001.copy.zst", [(0, None)])]


def test_data_exclusions_use_one_pattern_per_schema_when_exact(pg):
    src = _many(pg, "packs_patterns")
    ep = Endpoint(params=parse_url(pg.url(src), "test"))
    with connect(ep, SourceError) as conn:
        tables = [(s, n) for s, n in conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'S') AND n.nspname IN ('app', 'big', 'mixed')").fetchall()]
        got = data_exclusions(conn, tables)
        assert got == ['"app".*', '"big".*', '"mixed"."plain"']  # mixed has a materialized view to keep
        assert data_exclusions(conn, [("app", "t1"), ('odd"name', "x")]) == ['"app"."t1"']


def test_workers_release_the_locks_of_tables_they_have_read(pg):
    """Reading many tables in one exported snapshot must not hold one lock per table in every
    worker until the end (20,000 tables would exhaust the lock table): each batch ends its
    transaction and begins the next in the same snapshot."""
    from snapdb.postgres import open_data_session
    from snapdb.progress import NULL
    from snapdb.workers import Session, WorkerPool, checksum_part

    src = _many(pg, "packs_locks")
    ep = Endpoint(params=parse_url(pg.url(src), "test"))
    pool = WorkerPool(1, NULL)
    try:
        main = open_data_session(ep, SourceError)
        try:
            exported = main.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0]
            tables = [TableRef("app", f"t{i}", ["id", "name", "note"]) for i in range(1, 41)]
            for release, expected in ((True, 0), (False, 40)):  # released only where another session holds locks
                session = Session(ep, SourceError, snapshot=exported, release_locks=release)
                results = pool.run_items(checksum_part, [(session, t, None) for t in tables], [0] * len(tables))
                assert [r[0] for r in results] == list(range(1, 41))
                with pg.connect(src) as watcher:
                    held = watcher.execute(
                        "SELECT count(DISTINCT l.relation) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'app' AND c.relkind = 'r' AND l.pid <> %s AND l.pid <> pg_backend_pid()",
                        (main.info.backend_pid,)).fetchone()[0]
                assert held == expected, (release, held)
        finally:
            main.close()
    finally:
        pool.close()


def test_restore_of_many_indexed_tables_within_a_small_lock_table(pg, tmp_path):
    """ANALYZE inside the hold's transaction locks every index too: a database of many indexed
    tables exhausted the lock table ("out of shared memory") where pg_restore worked. On a server
    whose lock table is small for the build, ANALYZE runs first in its own session."""
    from .conftest import default_major, start_cluster

    body = ";".join(f"CREATE TABLE t{i} (id int PRIMARY KEY, a int, b text, c text); "
                    f"CREATE INDEX ON t{i} (a); CREATE INDEX ON t{i} (b); CREATE INDEX ON t{i} (c); "
                    f"INSERT INTO t{i} SELECT g, g, 'b' || g, 'c' || g FROM generate_series(1, 30) g" for i in range(1, 401))
    src = create_db(pg, "packs_locktable", body)
    store = tmp_path / "store"
    assert run_cli("snapshot", pg.url(src), "--store", str(store)).returncode == 0
    small = start_cluster("smalllocks", major=default_major(), settings={"max_locks_per_transaction": 10, "max_connections": 20})
    try:
        r = run_cli("restore", "--into", "copy", "--server", small.url(), "--store", str(store), "--jobs", "2")
        assert r.returncode == 0, r.stderr
        with small.connect("copy") as conn:
            assert conn.execute("SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND attname = 'b'").fetchone()[0] == 400
            assert conn.execute("SELECT count(*) FROM t400").fetchone()[0] == 30
    finally:
        small.stop()
