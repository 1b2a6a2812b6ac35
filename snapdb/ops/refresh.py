"""The cron guard of ``restore --if-newer``: which snapshot a restore target holds.

Authority is the store's catalog record of the restore that built the database, found by the
database's OID on its server (`history.find_restore`): the OID names the very database object
snapdb created and swapped in, and nothing but that restore gives a database that OID. A
database made any other way (pg_restore or CREATE DATABASE … TEMPLATE by hand, a rename of
another database) has another OID, even when it carries a ``snapdb.history`` row naming the same
snapshot: that row travels with the data (pg_dump, template copies, snapshots of a copy), so on
its own it proves nothing about this database. For a copy of a managed source the database's
newest ``restore`` row must agree as well: a ``pg_restore --clean`` into the same database keeps
its OID but replaces its rows, and its history with them. Anything missing, unreadable or in
disagreement means "not held": the restore runs, which is never wrong, only slower.

A scrubbed copy is up to date only when it was scrubbed under the rules its service has now:
`up_to_date` compares the digest of the rules the restore ran (its catalog record's
``scrub.digest``) with `scrub.rules_digest` of the current ones, so a copy restored before the
rules existed (or changed) is restored again, although it holds the snapshot.

Read access only: a session to the maintenance database (the target's OID, the server's system
identifier when the role may read it), one to the target (its ``snapdb.history``) when the copy
should carry a row, and catalog reads. No lock: the restore that may follow takes its own, and a
skip changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from .. import history
from ..config import Endpoint, ScrubConfig
from ..errors import SnapdbError, TargetError
from ..postgres import connect, first_line, system_identifier
from ..store import Store


@dataclass
class Held:
    """What a target holds: `snapshot_id` (None: not provably a snapdb restore of any), why,
    and the target's OID and the catalog record that proves it."""

    snapshot_id: str | None
    reason: str
    oid: int | None = None
    record_id: str | None = None
    scrub_digest: str | None = None  # the digest of the scrub rules the restore ran (None: none)


def held_snapshot(store: Store, server: Endpoint, dbname: str, maintenance_db: str,
                  records: list[history.Record] | None = None) -> Held:
    """Which snapshot database `dbname` on `server` provably holds (see module docstring).
    `records`: the catalog already read, when asking about several databases."""
    with connect(server, TargetError, dbname=maintenance_db, autocommit=True) as conn:
        row = conn.execute("SELECT oid, datallowconn FROM pg_catalog.pg_database WHERE datname = %s",
                           (dbname,)).fetchone()
        if row is None:
            return Held(None, f"{dbname!r} does not exist")
        sysid = system_identifier(conn)
    oid = int(row[0])
    rec = history.find_restore(store, {"host": server.host, "port": server.port, "system_identifier": sysid}, oid,
                               records)
    if rec is None or not rec.restored_from:
        return Held(None, f"no snapdb restore on record built {dbname!r} (OID {oid})", oid)
    if rec.to_revision is not None:  # a managed source: the restore wrote its row into the copy
        if not row[1]:
            return Held(None, f"{dbname!r} does not allow connections, so its snapdb.history cannot be read", oid)
        try:
            with connect(server.with_dbname(dbname), TargetError, autocommit=True) as conn:
                own = history.restored_from(conn)
        except (SnapdbError, psycopg.Error) as exc:
            why = exc.message if isinstance(exc, SnapdbError) else first_line(exc)
            return Held(None, f"cannot read {dbname!r}'s snapdb.history: {why}", oid)
        if own is None or own[0] != rec.restored_from:
            return Held(None, f"{dbname!r}'s snapdb.history names {own[0] if own else 'no restore'}, not snapshot "
                              f"{rec.restored_from} (its contents were replaced since)", oid)
    digest = rec.scrub.get("digest") if isinstance(rec.scrub, dict) else None
    return Held(rec.restored_from, f"restore {rec.record_id} built {dbname!r} (OID {oid}) from snapshot "
                                   f"{rec.restored_from}", oid, rec.record_id, digest)


def up_to_date(store: Store, server: Endpoint, dbname: str, maintenance_db: str, snapshot_id: str,
               rules: ScrubConfig | None, service: str | None = None) -> tuple[bool, str]:
    """Whether `restore --if-newer` may skip restoring `snapshot_id` into `dbname`, and why (or
    why not): the database provably holds that snapshot (`held_snapshot`) and was scrubbed under
    the scrub `rules` (of `service`) it is to have now, or neither then nor now."""
    from ..scrub import rules_digest

    held = held_snapshot(store, server, dbname, maintenance_db)
    if held.snapshot_id != snapshot_id:
        return False, held.reason if held.snapshot_id is None else f"{held.reason}, not {snapshot_id}"
    want = rules_digest(rules)
    if held.scrub_digest == want:
        return True, held.reason
    rules_of = f"[services.{service}.scrub]" if service else "its scrub rules"
    if want is None:
        why = f"but unlike now it was scrubbed (the rules of {rules_of} are gone)"
    elif held.scrub_digest is None:
        why = f"but unscrubbed, or scrubbed by a snapdb that recorded no digest, and {rules_of} demands a scrub"
    else:
        why = f"but scrubbed under other scrub rules than {rules_of} has now (digest {held.scrub_digest[:12]}, " \
              f"now {want[:12]})"
    return False, f"{held.reason}, {why}"


def holdings(store: Store, services: dict[str, Endpoint], maintenance_db: str) -> dict[str, dict | None]:
    """For `snapdb status`: per service, ``{"snapshot", "record", "restored_at"}`` of the snapshot
    its database provably holds, or None (never restored by snapdb, replaced since, unreachable:
    status reports reachability itself). Reads the catalog once."""
    records = history.list_catalog(store)
    by_id = {r.record_id: r for r in records}
    out: dict[str, dict | None] = {}
    for name, ep in services.items():
        try:
            held = held_snapshot(store, ep.admin(), ep.dbname, maintenance_db, records)
        except SnapdbError:
            held = Held(None, "unreachable")
        rec = by_id.get(held.record_id or "")
        out[name] = None if held.snapshot_id is None else {
            "snapshot": held.snapshot_id, "record": held.record_id, "restored_at": rec.ended_at if rec else None}
    return out
