"""Independent comparison of two databases, for round-trip tests.

Deliberately does not reuse snapdb's own checksum code: schemas are compared as
``pg_dump --schema-only`` text, table contents with a server-side md5 over each table's sorted
row texts, plus sequences, large objects, materialized-view state and database properties.
"""

from __future__ import annotations

import subprocess

from psycopg import sql


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


def database_props(pg, dbname: str, other=None, default_acl_as_none: bool = False) -> dict:
    """Database-level properties straight from the shared catalogs (not snapdb's reader): owner,
    encoding, locale and provider, connection limit, whether it accepts connections, grants,
    comment, and every database and role-in-database setting exactly as stored. `other`: the
    cluster holding `dbname` when it is not `pg`. `default_acl_as_none`: grants equal to the
    defaults (``acldefault``) read as no ACL, which means the same (a restoring role that is no
    superuser cannot store "no ACL" once it has changed a database's grants)."""
    acl = "(SELECT array_agg(a::text ORDER BY a::text) FROM unnest(datacl) a)"
    if default_acl_as_none:
        acl = (f"CASE WHEN {acl} = (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(acldefault('d', datdba)) a) "
               f"THEN NULL ELSE {acl} END")
    with (other or pg).connect() as conn:
        locale = "datlocale" if conn.info.server_version >= 170000 else "daticulocale"
        row = conn.execute(sql.SQL(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype, "
            "datlocprovider::text, {}, datconnlimit, datallowconn, " + acl + ", "
            "shobj_description(oid, 'pg_database'), oid FROM pg_database WHERE datname = %s").format(
                sql.Identifier(locale)), (dbname,)).fetchone()
        settings = conn.execute(
            "SELECT coalesce(pg_get_userbyid(NULLIF(setrole, 0)), ''), setconfig FROM pg_db_role_setting "
            "WHERE setdatabase = %s ORDER BY 1", (row[10],)).fetchall()
    keys = ["owner", "encoding", "collate", "ctype", "provider", "locale", "connection_limit", "allow_connections",
            "acl", "comment"]
    return {**dict(zip(keys, row[:10])), "settings": {r: list(c) for r, c in settings}}


def assert_same_database(pg, src: str, dst: str, schema_reference: str | None = None,
                         lo_oids: bool = True, dst_pg=None) -> None:
    """Assert `dst` equals `src`: schema (or `schema_reference`'s), rows, sequences, LOs, props.

    `dst_pg`: the cluster holding `dst` (and `schema_reference`) when it is not `pg` (a restore
    onto a second server; across major versions pass a reference on `dst_pg`, since each
    pg_dump version writes its own text);
    `lo_oids` False compares large objects by owner and content only (`src` loaded anew)."""
    pg2 = dst_pg or pg
    ref, ref_pg = (schema_reference, pg2) if schema_reference else (src, pg)
    a, b = schema_dump(ref_pg, ref), schema_dump(pg2, dst)
    if a != b:
        import difflib

        diff = "\n".join(list(difflib.unified_diff(a.splitlines(), b.splitlines(), ref, dst, lineterm=""))[:60])
        raise AssertionError(f"schema of {dst} differs from {ref}:\n{diff}")
    fa, fb = table_fingerprints(pg, src), table_fingerprints(pg2, dst)
    assert fa.keys() == fb.keys()
    differing = [k for k in fa if fa[k] != fb[k]]
    assert not differing, f"table contents differ: {differing[:10]}"
    assert sequences(pg, src) == sequences(pg2, dst)
    if lo_oids:
        assert large_objects(pg, src) == large_objects(pg2, dst)
    else:  # `src` was loaded anew (new OIDs): owners and contents
        assert sorted(lo[1:] for lo in large_objects(pg, src)) == sorted(lo[1:] for lo in large_objects(pg2, dst))
    assert matview_state(pg, src) == matview_state(pg2, dst)
    assert database_props(pg, src, default_acl_as_none=True) == database_props(pg, dst, other=pg2,
                                                                               default_acl_as_none=True)
