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
should carry a row, and catalog reads. No lock: the restore that may follow takes its own.

One thing a skip does change: a killed restore leaves its temporary build
(``<target>__snapdb_new``: the snapshot's rows, unscrubbed when the kill came before the scrub
committed), which the next restore that runs drops. A skipping run drops it too
(`drop_leftover_build`), under the target's lock, and leaves it alone while another run holds
that lock (it is that run's build). `leftover_build` shows one in ``snapdb status``.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from .. import history, locks, names
from ..config import Endpoint, ScrubConfig
from ..errors import BusyError, SnapdbError, TargetError
from ..postgres import connect, control_session, drop_database, first_line, system_identifier
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


def drop_leftover_build(server: Endpoint, dbname: str, maintenance_db: str) -> list[str]:
    """Drop `dbname`'s temporary build left by an interrupted run, taking `dbname`'s lock first
    (`restore --if-newer` skipped: no restore will drop it this time); return what to tell (no
    build: nothing). While another run holds the lock the build is that run's: left alone."""
    build, where = names.tmp_name(dbname), f"{dbname!r} on {server.host}:{server.port}"
    try:
        with control_session(server, TargetError, dbname=maintenance_db) as conn:
            if conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (build,)).fetchone() is None:
                return []
            try:
                locks.acquire(conn, dbname, "cleanup", where)
            except BusyError as exc:
                return [f"left the temporary build {build!r} alone: {exc.message}, whose build it is"]
            drop_database(conn, build)  # as the next restore would (`restore.Build.build`)
    except (SnapdbError, psycopg.Error) as exc:
        why = exc.message if isinstance(exc, SnapdbError) else first_line(exc)
        return [f"could not drop {build!r}, left by an interrupted restore ({why}); the next restore that runs "
                "drops it"]
    return [f"dropped {build!r}, the temporary build an interrupted restore left"]


def leftover_build(ep: Endpoint, maintenance_db: str) -> dict | None:
    """For `snapdb status`: the temporary build of `ep`'s database, if there is one, as
    ``{"name", "bytes", "busy"}`` (`busy`: the run holding the database's lock, which is making
    it; None: an interrupted run left it; `bytes` None when the role may not size it). None when
    there is none or the server cannot be reached (status says so itself)."""
    build = names.tmp_name(ep.dbname)
    try:
        with connect(ep.admin(), TargetError, dbname=maintenance_db, autocommit=True) as conn:
            row = conn.execute(
                "SELECT CASE WHEN pg_catalog.has_database_privilege(oid, 'CONNECT') OR "
                "pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE') THEN pg_catalog.pg_database_size(oid) END "
                "FROM pg_catalog.pg_database WHERE datname = %s", (build,)).fetchone()
            if row is None:
                return None
            held = [h for h in locks.holders(conn, ep.dbname) if h.state == "h"]
    except (SnapdbError, psycopg.Error):
        return None
    return {"name": build, "bytes": None if row[0] is None else int(row[0]),
            "busy": held[0].describe() if held else None}
