"""Review: enum hash partitions deeper in a tree, with a default partition and expression keys,
restored on the same server and onto 18."""

from __future__ import annotations

import json

import pytest

from ..conftest import create_db, run_cli

SQL = """
CREATE TYPE color AS ENUM ('red', 'green', 'blue', 'cyan', 'magenta', 'yellow', 'black', 'white');
CREATE TABLE ev (region text, c color, n int, note text) PARTITION BY LIST (region);
CREATE TABLE ev_eu PARTITION OF ev FOR VALUES IN ('eu') PARTITION BY HASH (c);
CREATE TABLE ev_eu_0 PARTITION OF ev_eu FOR VALUES WITH (MODULUS 3, REMAINDER 0);
CREATE TABLE ev_eu_1 PARTITION OF ev_eu FOR VALUES WITH (MODULUS 3, REMAINDER 1);
CREATE TABLE ev_eu_2 PARTITION OF ev_eu FOR VALUES WITH (MODULUS 3, REMAINDER 2);
CREATE TABLE ev_other PARTITION OF ev DEFAULT PARTITION BY HASH ((ARRAY[c]), n);
CREATE TABLE ev_other_0 PARTITION OF ev_other FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE ev_other_1 PARTITION OF ev_other FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE arr (k color[], v int) PARTITION BY HASH (k);
CREATE TABLE arr_0 PARTITION OF arr FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE arr_1 PARTITION OF arr FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO ev SELECT (ARRAY['eu','us','asia'])[1 + g % 3], (enum_range(NULL::color))[1 + g % 8], g, 'n' || g
  FROM generate_series(1, 3000) g;
INSERT INTO arr SELECT ARRAY[(enum_range(NULL::color))[1 + g % 8], (enum_range(NULL::color))[1 + (g / 8) % 8]], g
  FROM generate_series(1, 500) g;
"""


def _rows(pg, db):
    with pg.connect(db) as conn:
        return (conn.execute("SELECT count(*), md5(string_agg(x::text, ',' ORDER BY x::text)) FROM ev x").fetchone(),
                conn.execute("SELECT count(*), md5(string_agg(x::text, ',' ORDER BY x::text)) FROM arr x").fetchone())


@pytest.mark.parametrize("where", ["same", "18"])
def test_deep_enum_hash_trees(pg, pg18, tmp_path, dbname, where):
    src = create_db(pg, dbname, SQL)
    store = str(tmp_path / "store")
    r = run_cli("snapshot", pg.url(src), "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["id"]
    dst = pg if where == "same" else pg18
    r = run_cli("restore", "--snapshot", sid, "--into", dbname + "_c", "--server", dst.url(), "--store", store)
    assert r.returncode == 0, r.stderr
    assert _rows(dst, dbname + "_c") == _rows(pg, src)
    r = run_cli("verify", sid, "--against", dst.url(dbname + "_c"), "--store", store)
    assert r.returncode == 0, r.stdout + r.stderr
