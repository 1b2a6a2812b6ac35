"""A database's catalog fingerprint: cheap, and changed by any write that matters to a copy.

`fingerprint(conn)` (a session on the database) records every table, partitioned table,
materialized view, foreign table and sequence: OID, relfilenode (a TRUNCATE or a rewrite gives a
new one), name, columns, and each sequence's last value; and the large objects' count, highest
OID and, when readable (superusers), total size. `diff` lists what differs between two.

With ``catalogs=True`` it also digests, per catalog that DDL or a GRANT changes (`CATALOGS`),
the key and ``xmin`` of every row (an UPDATE of a catalog row, such as a GRANT's new ACL, gives
it a new ``xmin``; a new or dropped object adds or removes a row), and the database's own ACL,
owner and settings; and the pages of the large objects (``pg_largeobject``: key and ``xmin``,
so an ``lo_put`` into an existing object shows; superusers only, else recorded as unreadable).
Objects in schema ``snapdb`` (snapdb's own history) and in temporary schemas do not count.
`since`: an earlier fingerprint; rows changed after its ``xid_horizon`` are then named, for the
message. Digests are order-independent sums of 64-bit hashes: no catalog is held in memory.

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

# namespaces whose objects do not count: snapdb's own, temporary ones
_SKIP_NS = ("(SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'snapdb' OR nspname LIKE 'pg\\_temp\\_%' "
            "OR nspname LIKE 'pg\\_toast\\_temp\\_%')")


def _rel_ok(col: str) -> str:
    return f"NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class k WHERE k.oid = {col} AND k.relnamespace IN {_SKIP_NS})"


#: catalog -> (key expression, name of the object for messages, filter)
CATALOGS: dict[str, tuple[str, str, str]] = {
    "pg_namespace": ("oid::text", "'schema ' || nspname", f"oid NOT IN {_SKIP_NS}"),
    "pg_class": ("oid::text", "'relation ' || oid::regclass::text", f"relnamespace NOT IN {_SKIP_NS}"),
    "pg_attribute": ("attrelid::text || '.' || attnum::text", "'column ' || attrelid::regclass::text || '.' || attname",
                     _rel_ok("attrelid")),
    "pg_proc": ("oid::text", "'function ' || oid::regprocedure::text", f"pronamespace NOT IN {_SKIP_NS}"),
    "pg_type": ("oid::text", "'type ' || oid::regtype::text", f"typnamespace NOT IN {_SKIP_NS}"),
    "pg_constraint": ("oid::text", "'constraint ' || conname", f"connamespace NOT IN {_SKIP_NS}"),
    "pg_index": ("indexrelid::text", "'index ' || indexrelid::regclass::text", _rel_ok("indexrelid")),
    "pg_trigger": ("oid::text", "'trigger ' || tgname || ' on ' || tgrelid::regclass::text", _rel_ok("tgrelid")),
    "pg_policy": ("oid::text", "'policy ' || polname || ' on ' || polrelid::regclass::text", _rel_ok("polrelid")),
    "pg_default_acl": ("oid::text", "'default privileges of ' || defaclrole::regrole::text",
                       f"defaclnamespace NOT IN {_SKIP_NS}"),
    "pg_sequence": ("seqrelid::text", "'sequence ' || seqrelid::regclass::text", _rel_ok("seqrelid")),
    "pg_rewrite": ("oid::text", "'rule ' || rulename || ' on ' || ev_class::regclass::text", _rel_ok("ev_class")),
    "pg_attrdef": ("oid::text", "'default of ' || adrelid::regclass::text || ' column ' || adnum::text",
                   _rel_ok("adrelid")),
    "pg_extension": ("oid::text", "'extension ' || extname", "true"),
    "pg_largeobject_metadata": ("oid::text", "'large object ' || oid::text", "true"),
    "pg_largeobject": ("loid::text || '.' || pageno::text", "'large object ' || loid::text", "true"),
}

# values (not xmin) of the database's own row and settings: `ALTER DATABASE` and GRANT ON DATABASE
_DATABASE = """
SELECT (SELECT coalesce(datacl::text, '') || '|' || datdba::text || '|' || datconnlimit::text
        FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()),
       (SELECT coalesce(string_agg(setrole::text || '=' || setconfig::text, ',' ORDER BY setrole), '')
        FROM pg_catalog.pg_db_role_setting
        WHERE setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))
"""


def _digest(conn: psycopg.Connection, catalog: str) -> list[str] | None:
    key, _name, where = CATALOGS[catalog]
    try:
        with conn.transaction():
            row = conn.execute(
                f"SELECT count(*)::text, coalesce(sum(pg_catalog.hashtextextended({key} || ':' || xmin::text, 0)), 0)::text "
                f"FROM pg_catalog.{catalog} WHERE {where}").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None  # pg_largeobject: superusers only
    return [row[0], row[1]]


def _changed_rows(conn: psycopg.Connection, catalog: str, horizon: str, limit: int = 5) -> list[str]:
    """Objects of `catalog` whose row was written by a transaction at or after `horizon` (xid8)."""
    _key, name, where = CATALOGS[catalog]
    xid32 = str(int(horizon) % 2**32)
    try:
        with conn.transaction():
            return [r[0] for r in conn.execute(
                f"SELECT DISTINCT {name} FROM pg_catalog.{catalog} WHERE {where} "
                f"AND pg_catalog.age(xmin) <= pg_catalog.age('{int(xid32)}'::xid) LIMIT {int(limit)}").fetchall()]
    except psycopg.Error:
        return []


def fingerprint(conn: psycopg.Connection, *, catalogs: bool = False, since: dict | None = None) -> dict:
    """The catalog fingerprint of the database `conn` is connected to (see module docstring)."""
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
    out = {"relations": tables, "sequences": seqs, "large_objects": lo + [size]}
    if catalogs:
        horizon = conn.execute("SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text").fetchone()[0]
        out["xid_horizon"] = horizon
        out["catalogs"] = {c: _digest(conn, c) for c in CATALOGS}
        out["database"] = list(conn.execute(_DATABASE).fetchone())
        if since and since.get("catalogs") and since.get("xid_horizon"):
            out["changed_rows"] = {c: _changed_rows(conn, c, since["xid_horizon"]) for c, d in out["catalogs"].items()
                                   if d is not None and since["catalogs"].get(c) not in (None, d)}
    return out


def unreadable(fp: dict) -> list[str]:
    """The catalogs a fingerprint could not read (its proof does not cover them)."""
    return sorted(c for c, d in (fp.get("catalogs") or {}).items() if d is None)


def diff(before: dict, after: dict, ignore_schemas: tuple[str, ...] = ()) -> list[str]:
    """What changed between two fingerprints, one line per difference (empty: unchanged);
    relations and sequences in `ignore_schemas` do not count. Catalog digests count only when
    both fingerprints have them (and could read them)."""
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
    bc, ac = before.get("catalogs") or {}, after.get("catalogs") or {}
    for cat in CATALOGS:
        if bc.get(cat) is None or ac.get(cat) is None or bc[cat] == ac[cat]:
            continue
        what = "large-object contents" if cat == "pg_largeobject" else (
            "large objects or their privileges" if cat == "pg_largeobject_metadata" else "DDL or a GRANT")
        named = (after.get("changed_rows") or {}).get(cat) or []
        detail = ", ".join(named) if named else (f"{bc[cat][0]} -> {ac[cat][0]} rows" if bc[cat][0] != ac[cat][0]
                                                 else "a row was rewritten")
        out.append(f"catalog {cat} changed ({what}): {detail}")
    if before.get("database") and after.get("database") and before["database"] != after["database"]:
        if before["database"][0] != after["database"][0]:
            out.append("the database's privileges, owner or connection limit changed (GRANT/REVOKE or ALTER DATABASE)")
        if before["database"][1] != after["database"][1]:
            out.append("the database's settings changed (ALTER DATABASE / ALTER ROLE … IN DATABASE … SET)")
    return out
