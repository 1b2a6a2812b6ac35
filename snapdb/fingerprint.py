"""A database's catalog fingerprint: cheap, and changed by any write that matters to a copy.

`fingerprint(conn)` (a session on the database) records every table, partitioned table,
materialized view, foreign table and sequence: OID, relfilenode (a TRUNCATE or a rewrite gives a
new one), name, columns, and each sequence's last value; and the large objects' count, highest
OID and, when readable (superusers), total size. `diff` lists what differs between two.

It does not see row changes inside a table that keeps its relfilenode; callers that need those
excluded hold locks (`snapdb.hold`) or decode WAL (`snapdb.cutover.proof`).
"""

from __future__ import annotations

import psycopg

_FINGERPRINT_TABLES = """
SELECT c.oid::text, c.relfilenode::text, n.nspname || '.' || c.relname, c.relkind::text,
       coalesce((SELECT string_agg(a.attname || ':' || a.atttypid::text, ',' ORDER BY a.attnum)
                 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), ''),
       CASE WHEN c.relkind = 'S' THEN pg_catalog.pg_sequence_last_value(c.oid)::text END
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm', 'S', 'f') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
ORDER BY c.oid
"""


def fingerprint(conn: psycopg.Connection) -> dict:
    """A's catalog fingerprint (see module docstring), on a session connected to A."""
    tables, seqs = [], {}
    for oid, node, name, kind, cols, last in conn.execute(_FINGERPRINT_TABLES).fetchall():
        tables.append([oid, node, name, kind, cols])
        if kind == "S":
            seqs[name] = last  # pg_sequence_last_value: None until the sequence is first used
    lo = list(conn.execute("SELECT count(*), coalesce(max(oid)::text, '') FROM pg_catalog.pg_largeobject_metadata").fetchone())
    try:
        with conn.transaction():
            size = conn.execute("SELECT coalesce(sum(length(data)), 0)::text FROM pg_catalog.pg_largeobject").fetchone()[0]
    except psycopg.Error:
        size = None  # only superusers may read pg_largeobject
    return {"relations": tables, "sequences": seqs, "large_objects": lo + [size]}


def diff(before: dict, after: dict, ignore_schemas: tuple[str, ...] = ()) -> list[str]:
    """What changed between two fingerprints, one line per difference (empty: unchanged);
    relations and sequences in `ignore_schemas` do not count."""
    out = []
    skip = tuple(f"{x}." for x in ignore_schemas)
    b = {r[0]: r for r in before["relations"] if not r[2].startswith(skip)}
    a = {r[0]: r for r in after["relations"] if not r[2].startswith(skip)}
    for oid in sorted(set(a) - set(b)):
        out.append(f"relation {a[oid][2]} was created")
    for oid in sorted(set(b) - set(a)):
        out.append(f"relation {b[oid][2]} was dropped")
    for oid in sorted(set(a) & set(b)):
        if a[oid][1] != b[oid][1]:
            out.append(f"relation {a[oid][2]} was truncated or rewritten (new relfilenode)")
        elif a[oid][2:] != b[oid][2:]:
            out.append(f"relation {b[oid][2]} was renamed or altered")
    for name in sorted(set(before["sequences"]) | set(after["sequences"])):
        if name.startswith(skip):
            continue
        if before["sequences"].get(name) != after["sequences"].get(name):
            out.append(f"sequence {name} moved: {before['sequences'].get(name)} -> {after['sequences'].get(name)}")
    if before["large_objects"] != after["large_objects"]:
        out.append(f"large objects changed: {before['large_objects']} -> {after['large_objects']}")
    return out
