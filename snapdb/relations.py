"""Which relations a snapshot copies, how they are locked before the snapshot is fixed, and how
partitions whose placement depends on enum OIDs are loaded.

One instant, really: in a ``REPEATABLE READ`` transaction the MVCC snapshot is fixed by the
first statement that needs one, and ``LOCK TABLE`` is not such a statement. So `lock_tables`
lists the tables in a short transaction of its own, then opens the snapshot transaction with
``LOCK TABLE ONLY … IN ACCESS SHARE MODE`` on every one of them as its first statements, and
only then reads the catalog again, which fixes the snapshot. A ``TRUNCATE`` or a table-rewriting
``ALTER TABLE`` that commits while a lock waits is therefore either wholly visible or not at all;
with the snapshot taken first (as before), such a table looked empty or stale. If the set of
tables (by OID, schema and name) differs between the two readings, a table was created, dropped
or renamed in between: the transaction is rolled back and the whole step retried.

Hash partitions and enums: the hash of an enum value is the hash of its OID, and a restore gives
every enum value a new OID, so a row of a hash-partitioned table whose key involves an enum
(directly, or through a domain, array, composite or range type, or any key expression) may
belong to another partition in the restored database. Such tables are loaded through their
partition root (`TableRef.load_via`), as pg_dump's ``--load-via-partition-root`` does, and
verified as one group per root.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import sql

from .postgres import SNAPDB_SCHEMA, TableRef

#: Relations that belong to user schemas: not catalogs, not temporary, not extension members.
_USER_RELATION = """
      n.nspname NOT IN ('pg_catalog', 'information_schema', {snapdb})
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND c.relpersistence <> 't'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
"""

_LOCKABLE_SQL = """
SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND """ + _USER_RELATION + """
ORDER BY 1
"""

_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname,
       coalesce(array_agg(a.attname ORDER BY a.attnum)
                FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
                '{{}}') AS cols,
       pg_catalog.pg_relation_size(c.oid) AS bytes,
       c.relpersistence,
       CASE WHEN c.reltoastrelid <> 0 THEN pg_catalog.pg_relation_size(c.reltoastrelid) ELSE 0 END AS toast_bytes
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
WHERE c.relkind = 'r' AND """ + _USER_RELATION + """
GROUP BY n.nspname, c.relname, c.oid
ORDER BY bytes DESC, n.nspname, c.relname
"""

#: Leaves of partition trees that hash on something whose hash depends on enum OIDs, with the
#: root of their tree. `dep` is the closure of enum types under domains, arrays, composites
#: (any relation's row type) and ranges / multiranges over them.
_LOAD_VIA_ROOT_SQL = """
WITH RECURSIVE dep(oid) AS (
    SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typtype = 'e'
  UNION
    SELECT x.typ FROM dep JOIN (
        SELECT t.oid AS typ, t.typbasetype AS base FROM pg_catalog.pg_type t WHERE t.typtype = 'd'
        UNION ALL SELECT t.typarray, t.oid FROM pg_catalog.pg_type t WHERE t.typarray <> 0
        UNION ALL SELECT c.reltype, a.atttypid FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
                  WHERE c.reltype <> 0 AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL SELECT r.rngtypid, r.rngsubtype FROM pg_catalog.pg_range r
        UNION ALL SELECT r.rngmultitypid, r.rngsubtype FROM pg_catalog.pg_range r
    ) x ON x.base = dep.oid
),
hashed AS (
    SELECT pt.partrelid FROM pg_catalog.pg_partitioned_table pt
    WHERE pt.partstrat = 'h' AND (
        pt.partexprs IS NOT NULL
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = pt.partrelid AND a.attnum = ANY (pt.partattrs::int2[])
                     AND a.atttypid IN (SELECT oid FROM dep)))
)
SELECT c.oid, rn.nspname, r.relname
FROM pg_catalog.pg_class c
JOIN LATERAL (SELECT pg_catalog.pg_partition_root(c.oid) AS root) pr ON true
JOIN pg_catalog.pg_class r ON r.oid = pr.root
JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
WHERE c.relkind = 'r' AND c.relispartition
  AND EXISTS (SELECT 1 FROM pg_catalog.pg_partition_ancestors(c.oid) anc(relid)
              WHERE anc.relid IN (SELECT partrelid FROM hashed))
"""


def _q(query: str) -> sql.Composable:
    return sql.SQL(query).format(snapdb=sql.Literal(SNAPDB_SCHEMA))


def lockable(conn: psycopg.Connection) -> list[tuple[int, str, str]]:
    """(oid, schema, name) of every user table and partitioned table, by OID."""
    return [(int(r[0]), r[1], r[2]) for r in conn.execute(_q(_LOCKABLE_SQL)).fetchall()]


def list_tables(conn: psycopg.Connection, *, skip_unlogged: bool = False) -> tuple[list[TableRef], list[TableRef]]:
    """Return (tables whose rows snapdb copies, largest first; unlogged tables skipped).

    Excluded: catalogs, temporary tables, extension members (pg_dump handles extension
    configuration tables itself) and snapdb's own schema, whose history rows travel in pg_dump's
    data section. Partitions are included (their parents hold no rows), each with its
    `load_via` root when its placement depends on enum OIDs, its heap's size in `bytes` and its
    TOAST table's in `toast_bytes` (main forks). With `skip_unlogged` (a hot
    standby, where unlogged tables cannot be read) unlogged tables come back in the second list.
    """
    via = {}
    if conn.info.server_version >= 120000:
        via = {int(r[0]): (r[1], r[2]) for r in conn.execute(_LOAD_VIA_ROOT_SQL).fetchall()}
    tables, skipped = [], []
    for oid, schema, name, cols, size, persistence, toast in conn.execute(_q(_TABLES_SQL)).fetchall():
        t = TableRef(schema, name, list(cols), int(size), load_via=via.get(int(oid)), toast_bytes=int(toast),
                     oid=int(oid))
        (skipped if skip_unlogged and persistence == "u" else tables).append(t)
    return tables, skipped


def lock_statements(tables: list[tuple[str, str]], mode: str) -> list[sql.Composed]:
    """``LOCK TABLE ONLY … IN <mode> MODE`` for (schema, name) `tables`, 200 tables per statement."""
    return [sql.SQL("LOCK TABLE {} IN {} MODE").format(
                sql.SQL(", ").join(sql.SQL("ONLY {}").format(sql.Identifier(s, n)) for s, n in tables[i:i + 200]),
                sql.SQL(mode))
            for i in range(0, len(tables), 200)]


def lock_tables(
    conn: psycopg.Connection,
    *,
    attempts: int = 5,
    checkpoint: Callable[[str], None] = lambda step: None,
    before_snapshot: Callable[[psycopg.Connection], None] | None = None,
) -> list[tuple[int, str, str]]:
    """Lock every user table in ACCESS SHARE mode before the snapshot of `conn`'s transaction
    is fixed, and fix it; return the tables locked (see module docstring).

    `conn` must be idle, with its isolation level and read-only mode set for the snapshot
    transaction. On return that transaction is open, its snapshot fixed. `before_snapshot`, if
    given, is called with `conn` once the locks are held and before the snapshot is fixed (it
    may import one: ``SET TRANSACTION SNAPSHOT``), on every attempt. Raises
    `psycopg.Error` from the server, or `TablesChanging` after `attempts` tries.
    """
    for _ in range(attempts):
        conn.autocommit = True
        before = lockable(conn)
        checkpoint("snapshot:tables-listed")
        conn.autocommit = False
        try:
            for stmt in lock_statements([(s, n) for _, s, n in before], "ACCESS SHARE"):
                conn.execute(stmt)
            if before_snapshot is not None:
                before_snapshot(conn)
            after = lockable(conn)  # the first statement that takes the snapshot
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            conn.rollback()  # dropped or renamed between the two steps
            continue
        if after == before:
            return after
        conn.rollback()
    raise TablesChanging(attempts)


class TablesChanging(Exception):
    """The set of tables changed between listing and locking, `attempts` times in a row."""

    def __init__(self, attempts: int) -> None:
        super().__init__(f"the source's tables were created, dropped or renamed while snapdb locked them, "
                         f"{attempts} times in a row")
