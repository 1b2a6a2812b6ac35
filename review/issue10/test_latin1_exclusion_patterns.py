"""pg_dump's --exclude-table-data patterns are passed as UTF-8 (Python's argv), but pg_dump
talks to the server in the database's encoding: in a LATIN1 (or any non-UTF-8) database, a
schema or table whose name is not ASCII is not matched, pg_dump puts its rows into the archive,
and every restore of the snapshot loads them twice (archive + data file) and fails its
verification ("expected 2 rows, found 4"). `snapdb snapshot` and `snapdb verify ID` report the
snapshot fine; it can never be restored.

Format 3's one-pattern-per-schema (`"schema".*`, snapshot.data_exclusions) has the same flaw for
a whole schema; the per-table pattern had it before."""
from __future__ import annotations

import json

from tests.conftest import pg, run_cli  # noqa: F401


def test_latin1_database_with_non_ascii_names_restores(pg, tmp_path):
    src = "r10_latin1"
    with pg.connect() as conn:
        conn.execute(f"CREATE DATABASE {src} TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'")
    with pg.connect(src) as conn:
        conn.execute('CREATE SCHEMA "bücher"; CREATE TABLE "bücher".a (id int); INSERT INTO "bücher".a VALUES (1), (2);'
                     'CREATE TABLE "bücher".b (id int); INSERT INTO "bücher".b VALUES (3);'
                     'CREATE TABLE public."größe" (id int); INSERT INTO public."größe" VALUES (4);'
                     'CREATE MATERIALIZED VIEW public.mv AS SELECT 1 AS one')  # public: patterns one by one
    store = tmp_path / "store"
    r = run_cli("snapshot", pg.url(src), "--store", str(store))
    assert r.returncode == 0, r.stderr
    [d] = list((store / "snapshots").iterdir())
    rows = {t["name"]: t["rows"] for t in json.loads((d / "manifest.json").read_text())["tables"]}
    assert rows == {"a": 2, "b": 1, "größe": 1}
    r = run_cli("restore", "--into", src + "_copy", "--server", pg.url(), "--store", str(store))
    assert r.returncode == 0, r.stderr  # fails: restored database differs: … expected 1 rows, found 2 rows
    with pg.connect(src + "_copy") as conn:
        assert conn.execute('SELECT count(*) FROM "bücher".a').fetchone()[0] == 2
        assert conn.execute('SELECT count(*) FROM public."größe"').fetchone()[0] == 1
