"""Independent comparison of two databases, for round-trip tests.

Deliberately does not reuse snapdb's own checksum code: schemas are compared as
``pg_dump --schema-only`` text, table contents with a server-side md5 over each table's sorted
row texts, plus sequences, large objects, materialized-view state and database properties.
"""

from __future__ import annotations

import subprocess

from psycopg import sql

from snapdb.postgres import read_database_props


def schema_dump(pg, dbname: str) -> str:
    out = subprocess.run(
        [pg.tool("pg_dump"), "--schema-only", "--no-sync", "-d", pg.conninfo(dbname)],
        capture_output=True, text=True, check=True,
    ).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


def baseline_copy(pg, src: str, name: str, dst_pg=None) -> str:
    """Copy `src` to `name` with plain pg_dump | pg_restore (the reference for deparse drift).

    With `dst_pg`, `name` is created there: `pg`'s own pg_dump, `dst_pg`'s pg_restore.
    """
    dpg = dst_pg or pg
    with dpg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    dump = subprocess.run([pg.tool("pg_dump"), "-Fc", "-d", pg.conninfo(src)], capture_output=True, check=True).stdout
    subprocess.run([dpg.tool("pg_restore"), "--exit-on-error", "-d", dpg.conninfo(name)], input=dump,
                   capture_output=True, check=True)
    return name


def table_fingerprints(pg, dbname: str) -> dict[str, tuple[int, str]]:
    out = {}
    with pg.connect(dbname) as conn:
        rels = conn.execute(
            """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND n.nspname NOT LIKE 'pg_toast%' AND (c.relkind = 'r' OR c.relispopulated)"""
        ).fetchall()
        for schema, name in rels:
            ident = sql.Identifier(schema, name)
            row = conn.execute(
                sql.SQL("SELECT count(*), md5(string_agg(x, E'\\n' ORDER BY x COLLATE \"C\")) "
                        "FROM (SELECT t::text AS x FROM ONLY {} t) s").format(ident)
            ).fetchone()
            out[f"{schema}.{name}"] = (row[0], row[1])
    return out


def sequences(pg, dbname: str) -> dict[str, tuple]:
    with pg.connect(dbname) as conn:
        names = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE relkind = 'S'"
        ).fetchall()
        return {
            f"{s}.{n}": conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(s, n))).fetchone()
            for s, n in names
        }


def large_objects(pg, dbname: str) -> list[tuple]:
    with pg.connect(dbname) as conn:
        return conn.execute(
            "SELECT oid, pg_get_userbyid(lomowner), md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid"
        ).fetchall()


def matview_state(pg, dbname: str) -> list[tuple]:
    with pg.connect(dbname) as conn:
        return conn.execute("SELECT schemaname, matviewname, ispopulated FROM pg_matviews ORDER BY 1, 2").fetchall()


def assert_same_database(pg, src: str, dst: str, schema_reference: str | None = None, dst_pg=None) -> None:
    """Assert `dst` equals `src`: schema (or `schema_reference`'s), rows, sequences, LOs, props.

    `dst_pg` is the server holding `dst` (and `schema_reference`) when it is not `pg`; across
    major versions pass a reference on `dst_pg`, since each pg_dump version writes its own text.
    """
    dpg = dst_pg or pg
    ref, ref_pg = (schema_reference, dpg) if schema_reference else (src, pg)
    a, b = schema_dump(ref_pg, ref), schema_dump(dpg, dst)
    if a != b:
        import difflib

        diff = "\n".join(list(difflib.unified_diff(a.splitlines(), b.splitlines(), ref, dst, lineterm=""))[:60])
        raise AssertionError(f"schema of {dst} differs from {ref}:\n{diff}")
    fa, fb = table_fingerprints(pg, src), table_fingerprints(dpg, dst)
    assert fa.keys() == fb.keys()
    differing = [k for k in fa if fa[k] != fb[k]]
    assert not differing, f"table contents differ: {differing[:10]}"
    assert sequences(pg, src) == sequences(dpg, dst)
    assert large_objects(pg, src) == large_objects(dpg, dst)
    assert matview_state(pg, src) == matview_state(dpg, dst)
    with pg.connect() as a_conn, dpg.connect() as b_conn:
        assert read_database_props(a_conn, src) == read_database_props(b_conn, dst)
