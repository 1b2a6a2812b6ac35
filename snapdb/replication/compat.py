"""Which revisions keep logical replication working: decided from what a revision did, measured.

A replicate-mode cutover applies the release's first revisions to the new database (B) while it
still follows the live one (A), and only the rest inside the freeze. A revision may run before
the freeze when rows that A's release goes on writing still replicate into B *and mean the same
there*, and B's rows can be replicated back into A for a rollback. The rule, checked on what the
revision actually changed (`capture` before and after it, `classify` the difference), never on
its name or text:

Compatible (runs before the freeze):
- new tables, sequences, views, functions, types, schemas, comments, grants;
- new columns on existing tables that are nullable or have a default (or are identity or
  generated columns): rows replicated from A leave them to their default;
- new indexes that are not unique, changed column defaults;
- rows inserted into existing tables (a conflict with a replicated row would stop the
  subscription loudly, before the freeze, not lose anything).

Not compatible (runs inside the freeze, after B has caught up):
- a table dropped, renamed, truncated or rewritten; a column dropped, renamed or retyped;
- rows updated or deleted in existing tables (replicated changes would overwrite or miss them);
- a new constraint on an existing table (CHECK, UNIQUE, PRIMARY KEY, EXCLUDE, FOREIGN KEY,
  NOT NULL on an existing column), a new unique index or trigger on one, a changed replica
  identity: rows the old release still writes could be rejected, or (foreign keys and triggers,
  which the apply worker does not fire) silently not checked;
- an existing sequence moved (B's sequences are set from A's inside the freeze).

Row changes are read from ``pg_stat_user_tables`` after the revision's own session has ended (a
backend publishes its counters when it exits): other sessions writing to the same database at
the same time make a revision look less compatible, never more. snapdb's own schema and the
alembic version table are not looked at.
"""

from __future__ import annotations

import psycopg

from ..postgres import SNAPDB_SCHEMA

_TABLES = """
SELECT c.oid, n.nspname, c.relname, c.relfilenode::text, c.relkind, c.relreplident,
       coalesce((SELECT json_object_agg(a.attname, json_build_array(
                    pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''))
                 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                '{}'::json),
       coalesce((SELECT json_object_agg(k.conname, k.contype) FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid),
                '{}'::json),
       coalesce((SELECT json_object_agg(i.indexrelid::regclass::text, i.indisunique) FROM pg_catalog.pg_index i
                 WHERE i.indrelid = c.oid), '{}'::json),
       coalesce((SELECT json_agg(t.tgname ORDER BY t.tgname) FROM pg_catalog.pg_trigger t
                 WHERE t.tgrelid = c.oid AND NOT t.tgisinternal), '[]'::json),
       coalesce((SELECT json_agg(x.indexrelid::regclass::text) FROM pg_catalog.pg_index x
                 WHERE x.indrelid = c.oid AND (x.indisreplident OR (c.relreplident = 'd' AND x.indisprimary))), '[]'::json)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', %s)
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND NOT (c.relname = 'alembic_version' AND c.relkind = 'r')
"""

_STATS = """
SELECT relid, n_tup_ins, n_tup_upd, n_tup_del FROM pg_catalog.pg_stat_user_tables
WHERE schemaname <> %s
"""


def capture(conn: psycopg.Connection) -> dict:
    """The catalog facts `classify` compares, and the row-change counters (see module docstring)."""
    rels = {}
    for oid, schema, name, node, kind, ident, cols, cons, idx, trg, ridx in conn.execute(_TABLES, (SNAPDB_SCHEMA,)).fetchall():
        rels[str(oid)] = {"name": f"{schema}.{name}", "node": node, "kind": kind, "ident": ident, "columns": cols,
                          "constraints": cons, "indexes": idx, "triggers": trg, "ident_index": ridx}
    seqs = {}
    for oid, rel in rels.items():
        if rel["kind"] == "S":
            row = conn.execute("SELECT pg_catalog.pg_sequence_last_value(%s::oid)", (int(oid),)).fetchone()
            seqs[oid] = None if row[0] is None else str(row[0])
    stats = {str(r[0]): [int(r[1]), int(r[2]), int(r[3])] for r in conn.execute(_STATS, (SNAPDB_SCHEMA,)).fetchall()}
    return {"relations": rels, "sequences": seqs, "stats": stats}


def classify(before: dict, after: dict, *, rows: bool = True) -> dict:
    """What a revision did, by the rule of the module docstring: ``{"compatible": bool,
    "reasons": [...], "inserted": [tables], "changed": [tables]}``. `changed` lists existing
    tables whose definition or rows the revision changed (their contents may differ from A's
    afterwards), `inserted` those it only added rows to. Without `rows` the row counters are
    not looked at (on a database that replication writes to, they count its work too). `rows`
    (the result's) maps each existing table whose rows changed to [inserted, updated, deleted];
    `rewritten` lists the tables given a new relfilenode."""
    reasons: list[str] = []
    changed: set[str] = set()
    inserted: set[str] = set()
    row_changes: dict[str, list[int]] = {}
    dropped: set[str] = set()
    b_rel, a_rel = before["relations"], after["relations"]
    for oid, old in b_rel.items():
        name = old["name"]
        new = a_rel.get(oid)
        if new is None:
            reasons.append(f"drops {name}")
            changed.add(name)
            dropped.add(name)
            continue
        if new["name"] != name:
            reasons.append(f"renames {name} to {new['name']}")
            changed.add(name)
            dropped.add(name)
        if old["kind"] == "S":
            if before["sequences"].get(oid) != after["sequences"].get(oid):
                reasons.append(f"moves sequence {name}")
            continue
        if new["node"] != old["node"] and old["kind"] == "r":
            reasons.append(f"rewrites or truncates {name}")
            changed.add(name)
        for col, (typ, notnull, _hasdef) in old["columns"].items():
            now = new["columns"].get(col)
            if now is None:
                reasons.append(f"drops or renames column {name}.{col}")
                changed.add(name)
            elif now[0] != typ:
                reasons.append(f"changes the type of {name}.{col} ({typ} -> {now[0]})")
                changed.add(name)
            elif now[1] and not notnull:
                reasons.append(f"makes {name}.{col} NOT NULL")
                changed.add(name)
        for col, (_typ, notnull, hasdef) in new["columns"].items():
            if col not in old["columns"] and notnull and not hasdef:
                reasons.append(f"adds {name}.{col} NOT NULL without a default")
                changed.add(name)
        kinds = {"c": "CHECK", "u": "UNIQUE", "p": "PRIMARY KEY", "x": "EXCLUDE", "f": "FOREIGN KEY", "t": "trigger"}
        for con, kind in new["constraints"].items():
            if con not in old["constraints"] and kind in kinds:
                reasons.append(f"adds {kinds[kind]} constraint {con} to {name}")
                changed.add(name)
        for idx, unique in new["indexes"].items():
            if idx not in old["indexes"] and unique:
                reasons.append(f"adds unique index {idx} to {name}")
                changed.add(name)
        for tg in new["triggers"]:
            if tg not in old["triggers"]:
                reasons.append(f"adds trigger {tg} to {name} (the apply worker does not fire it)")
                changed.add(name)
        if new["ident"] != old["ident"] or sorted(new["ident_index"]) != sorted(old["ident_index"]):
            reasons.append(f"changes the replica identity of {name}")
            changed.add(name)
        if rows:
            b_st, a_st = before["stats"].get(oid), after["stats"].get(oid)
            if b_st is not None and a_st is not None:
                ins, upd, dele = (a_st[i] - b_st[i] for i in range(3))
                if ins or upd or dele:
                    row_changes[name] = [ins, upd, dele]
                if upd > 0 or dele > 0:
                    reasons.append(f"updates or deletes rows of {name} ({upd} updated, {dele} deleted)")
                    changed.add(name)
                elif ins > 0:
                    inserted.add(name)
    rewritten = sorted(n for n in changed if any(r == f"rewrites or truncates {n}" for r in reasons))
    return {"compatible": not reasons, "reasons": reasons, "inserted": sorted(inserted - changed),
            "changed": sorted(changed), "rows": row_changes if rows else None, "rewritten": rewritten,
            "dropped": sorted(dropped)}
