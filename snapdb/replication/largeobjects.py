"""Large objects across a replicate-mode cutover (logical replication does not carry them).

B gets A's large objects with the initial copy. `digest(conn)` summarises every large object's
pages and metadata by row version (``xmin``): any ``lo_create``, ``lo_put``, ``lo_unlink``,
truncation, owner or privilege change gives a new digest, without reading the data. The cutover
takes it before the slot's snapshot and again inside the freeze; when it differs, `copy_all`
replaces B's large objects with A's (OIDs, owners, privileges and data, 1 MiB at a time),
inside the freeze. Reading ``pg_largeobject`` needs a superuser, as the replicate mode does.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

CHUNK = 1 << 20

_DIGEST = """
SELECT coalesce(md5(string_agg(x, ',' ORDER BY x)), '') FROM (
    SELECT 'm' || oid::text || ':' || xmin::text AS x FROM pg_catalog.pg_largeobject_metadata
    UNION ALL
    SELECT 'p' || loid::text || '.' || pageno::text || ':' || xmin::text FROM pg_catalog.pg_largeobject) s
"""


def digest(conn: psycopg.Connection) -> str:
    return conn.execute(_DIGEST).fetchone()[0]


def copy_all(src: psycopg.Connection, dst: psycopg.Connection) -> dict:
    """Make `dst`'s large objects exactly `src`'s (autocommit sessions; `dst` in one transaction)."""
    objects = src.execute("SELECT oid, pg_catalog.pg_get_userbyid(lomowner) FROM pg_catalog.pg_largeobject_metadata "
                          "ORDER BY oid").fetchall()
    total = 0
    with dst.transaction():
        dst.execute("SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata")
        for oid, owner in objects:
            dst.execute("SELECT pg_catalog.lo_create(%s)", (oid,))
            offset = 0
            while True:
                chunk = src.execute("SELECT pg_catalog.lo_get(%s, %s, %s)", (oid, offset, CHUNK)).fetchone()[0]
                if not chunk:
                    break
                dst.execute("SELECT pg_catalog.lo_put(%s, %s, %s)", (oid, offset, bytes(chunk)))
                offset += len(chunk)
                total += len(chunk)
                if len(chunk) < CHUNK:
                    break
            dst.execute(sql.SQL("ALTER LARGE OBJECT {} OWNER TO {}").format(sql.Literal(oid), sql.Identifier(owner)))
            for grantee, priv, grantable in src.execute(
                    """SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
                              a.privilege_type, a.is_grantable
                       FROM pg_catalog.pg_largeobject_metadata m, aclexplode(m.lomacl) a
                       WHERE m.oid = %s AND a.grantee <> m.lomowner""", (oid,)).fetchall():
                if priv not in ("SELECT", "UPDATE"):
                    continue
                who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
                dst.execute(sql.SQL("GRANT {} ON LARGE OBJECT {} TO {}{}").format(
                    sql.SQL(priv), sql.Literal(oid), who, sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
    return {"count": len(objects), "bytes": total}
