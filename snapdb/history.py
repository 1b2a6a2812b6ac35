"""Operation history: ``snapdb.history`` in each managed database, and the store's catalog.

Every upgrade (and every restore of a managed database) is one `Record`. In the database it is a
row of ``snapdb.history``, inserted with outcome ``running`` before anything changes and updated
as revisions complete and at the end; the catalog holds the same record as one JSON object per
operation, ``catalog/history/<record_id>.json``, published atomically by the store when the
operation ends. The rehearsal gate reads the catalog (`find_rehearsal`); a restored database
learns which snapshot it came from by its newest ``restore`` row (`restored_from`).

A restore that fails is recorded in the catalog only (`publish_failed_restore`, outcome
``failed`` or ``interrupted``, no OID): it changed no database. Readers that want what a
database holds look at ``succeeded`` records only.

A database is *managed* once it has an alembic version table. A restore writes its ``restore``
row only when the snapshot's source was managed (its manifest records a release), so restores
of other databases stay exact copies. The row is written into the temporary database after it
has been verified, before the swap, so it never exists without the copy it describes.
"""

from __future__ import annotations

import getpass
import json
import logging
from collections.abc import Callable
import secrets
import socket
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from . import __version__
from . import manifest as mf
from .config import Endpoint
from .errors import IntegrityError, SnapdbError, TargetError
from .postgres import SNAPDB_SCHEMA, connect, first_line
from .store import MissingError, Store

log = logging.getLogger(__name__)

CATALOG_PREFIX = "catalog/history/"
FORMAT = "snapdb-history/1"

_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
COMMENT ON SCHEMA {schema} IS 'snapdb: operation history of this database (upgrades, restores)';
CREATE TABLE IF NOT EXISTS {table} (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id            text NOT NULL UNIQUE,
    operation            text NOT NULL,
    service              text,
    tag                  text,
    from_revision        text,
    to_revision          text,
    reached_revision     text,
    failed_revision      text,
    checksum             text,
    restored_from        text,
    restored_from_source text,
    started_at           timestamptz NOT NULL,
    ended_at             timestamptz,
    os_user              text,
    client_host          text,
    outcome              text NOT NULL,
    skip_rehearsal       boolean NOT NULL DEFAULT false,
    rehearsal            text,
    scripts_origin       text,
    error                text,
    snapdb_version       text
)
"""


@dataclass
class Record:
    """One operation on one database, as stored in ``snapdb.history`` and in the catalog.

    `to_revision` is the revision the operation aimed at, `reached_revision` the one the
    database was left at; `failed_revision` names the revision that failed. `restored_from` is
    the snapshot id the database was restored from (and `restored_from_source` that snapshot's
    source), for upgrades as found in the database's newest ``restore`` row. `outcome` is one of
    ``running``, ``succeeded``, ``failed``, ``interrupted``.
    """

    record_id: str
    operation: str
    started_at: str
    os_user: str
    client_host: str
    outcome: str = "running"
    service: str | None = None
    database: dict | None = None  # {"host", "port", "dbname"}: catalog only
    tag: str | None = None
    from_revision: str | None = None
    to_revision: str | None = None
    reached_revision: str | None = None
    failed_revision: str | None = None
    checksum: str | None = None
    restored_from: str | None = None
    restored_from_source: str | None = None
    ended_at: str | None = None
    skip_rehearsal: bool = False
    rehearsal: str | None = None
    scripts_origin: str | None = None
    error: str | None = None
    snapdb_version: str = __version__
    restored_from_server: dict | None = None  # catalog only: the restored snapshot's source server
    seconds: float | None = None  # catalog only: how long the operation took
    #: catalog only: per revision applied, {"revision", "seconds", "replication": classify()}
    #: (`snapdb.replication.compat`): what a replicate-mode cutover plans with
    revisions: list[dict] | None = None
    #: catalog only: what a restore's scrub rules did (`snapdb.scrub.run`)
    scrub: dict | None = None

    # `database` and `restored_from_server` live in the catalog only: snapdb.history has no columns for them

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: object) -> Record:
        """The record `data` (a catalog object of this `FORMAT`) holds; `IntegrityError` unless
        it is an object of this format whose every known field has its declared type, with
        the required ones present and its times ISO 8601 with a time zone, so readers can
        compare and subtract them. Unknown keys are ignored."""
        if not isinstance(data, dict):
            raise IntegrityError(f"not a JSON object but {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise IntegrityError(f"unsupported history format {_cut(data.get('format'))}")
        values = {}
        for f in fields(cls):
            if f.name not in data:
                if f.default is MISSING:
                    raise IntegrityError(f"no {f.name}")
                continue
            v, kinds = data[f.name], _KINDS[f.type]
            if not (v is None and "None" in f.type or isinstance(v, kinds) and not (bool not in kinds and
                                                                                   isinstance(v, bool))):
                raise IntegrityError(f"{f.name} is {_cut(v)}, not {f.type}")
            values[f.name] = v
        for name in ("started_at", "ended_at"):
            if values.get(name) is not None and not _aware(values[name]):
                raise IntegrityError(f"{name} {_cut(values[name])} is not an ISO 8601 time with a time zone")
        return cls(**values)

    def ended(self) -> datetime | None:
        return datetime.fromisoformat(self.ended_at) if self.ended_at else None


#: the Python types a catalog value may have, per declared field type of `Record`
_KINDS = {"str": (str,), "str | None": (str,), "bool": (bool,), "float | None": (int, float),
          "dict | None": (dict,), "list[dict] | None": (list,)}


def _aware(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def _cut(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def new_record(operation: str, ep: Endpoint, dbname: str | None = None, **values) -> Record:
    """A fresh record for `operation` on `ep` (or database `dbname` on its server), started now."""
    now = mf.utcnow()
    return Record(
        record_id=now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond:06d}Z-" + secrets.token_hex(3),
        operation=operation, started_at=now.isoformat(), os_user=os_user(), client_host=socket.gethostname(),
        service=ep.name, database={"host": ep.host, "port": ep.port, "dbname": dbname or ep.dbname}, **values,
    )


def os_user() -> str:
    """The operating-system user running snapdb (``unknown`` when it cannot be told)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _table() -> sql.Composable:
    return sql.Identifier(SNAPDB_SCHEMA, "history")


_COLUMNS = [f.name for f in fields(Record)
            if f.name not in ("database", "restored_from_server", "seconds", "revisions", "scrub")]


def ensure_table(conn: psycopg.Connection) -> None:
    """Create ``snapdb.history`` if missing (autocommit connection; idempotent).

    An existing table is left alone, so roles that do not own it only need INSERT and UPDATE.
    """
    if has_table(conn):
        return
    conn.execute(sql.SQL(_DDL).format(schema=sql.Identifier(SNAPDB_SCHEMA), table=_table()))


def has_table(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT pg_catalog.to_regclass(%s)", (f"{SNAPDB_SCHEMA}.history",)).fetchone()
    return row[0] is not None


def insert(conn: psycopg.Connection, rec: Record) -> None:
    """Insert `rec` as a row (the table must exist)."""
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            _table(), sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)),
            sql.SQL(", ").join(sql.Placeholder() * len(_COLUMNS)),
        ),
        [getattr(rec, c) for c in _COLUMNS],
    )


def update(conn: psycopg.Connection, rec: Record) -> None:
    """Write `rec`'s current values over its row (matched by record id)."""
    cols = [c for c in _COLUMNS if c != "record_id"]
    conn.execute(
        sql.SQL("UPDATE {} SET {} WHERE record_id = %s").format(
            _table(), sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in cols)
        ),
        [getattr(rec, c) for c in cols] + [rec.record_id],
    )


def mark_interrupted(conn: psycopg.Connection) -> int:
    """Mark rows still ``running`` as ``interrupted``; call only while holding the upgrade lock."""
    cur = conn.execute(
        sql.SQL("UPDATE {} SET outcome = 'interrupted' WHERE outcome = 'running'").format(_table())
    )
    return cur.rowcount


def restored_from(conn: psycopg.Connection) -> tuple[str, str] | None:
    """Return (snapshot id, source) of the newest ``restore`` row, or None."""
    if not has_table(conn):
        return None
    row = conn.execute(
        sql.SQL("SELECT restored_from, restored_from_source FROM {} WHERE operation = 'restore' "
                "AND restored_from IS NOT NULL ORDER BY id DESC LIMIT 1").format(_table())
    ).fetchone()
    return (row[0], row[1]) if row else None


def rows(conn: psycopg.Connection, limit: int = 100) -> list[Record]:
    """The newest `limit` rows of ``snapdb.history``, newest first (empty without the table)."""
    if not has_table(conn):
        return []
    cur = conn.execute(
        sql.SQL("SELECT {} FROM {} ORDER BY id DESC LIMIT %s").format(
            sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), _table()),
        (limit,),
    )
    out = []
    for r in cur.fetchall():
        values = dict(zip(_COLUMNS, r, strict=True))
        for k, v in values.items():
            if isinstance(v, datetime):
                values[k] = v.isoformat()
        out.append(Record(**values))
    return out


def restore_record(server: Endpoint, target: str, manifest: mf.Manifest) -> Record:
    """The record of a restore of `manifest`'s snapshot into `target` on `server`."""
    release = manifest.release or {}
    rec = new_record(
        "restore", server.with_dbname(target, name=server.name if server.dbname == target else None),
        tag=release.get("tag"), to_revision=release.get("revision"), reached_revision=release.get("revision"),
        restored_from=manifest.id, restored_from_source=manifest.source, outcome="succeeded",
    )
    rec.ended_at = rec.started_at
    rec.restored_from_server = {k: manifest.server.get(k) for k in ("host", "port", "dbname", "system_identifier")}
    return rec


def record_restore(server: Endpoint, dbname: str, target: str, manifest: mf.Manifest,
                   conn: psycopg.Connection | None = None) -> Record | None:
    """Write the ``restore`` row into freshly built database `dbname` that becomes `target`, and
    return the record (its catalog copy is published after the swap).

    Writes nothing into the database when the snapshot's source was not managed (no release in
    the manifest), so such restores stay exact copies; the record is returned all the same.
    """
    rec = restore_record(server, target, manifest)
    if not manifest.release:
        return rec
    try:
        if conn is not None:  # the caller's session on `dbname` (in its transaction)
            ensure_table(conn)
            insert(conn, rec)
            return rec
        with connect(server, TargetError, dbname=dbname, autocommit=True) as own:
            ensure_table(own)
            insert(own, rec)
    except psycopg.Error as exc:
        raise TargetError(f"recording the restore in snapdb.history failed: {first_line(exc)}",
                          hint="the target is unchanged") from None
    return rec


# -- the store's catalog -------------------------------------------------------------------------
def publish_restore(store: Store, server: Endpoint, target: str, manifest: mf.Manifest, *, oid: int | None,
                    system_identifier: str | None, seconds: float, scrub: dict | None) -> list[str]:
    """Publish a finished restore's record in the catalog and return warnings (empty: done).

    For a managed source the record is the ``restore`` row written into the copy, for any other
    the same record without a row. It names the new database by OID and server, which is how an
    upgrade of an unmanaged copy finds out what it was restored from (`find_restore`). Runs
    after the swap: the restore has happened, so a failure here is a warning, not an error."""
    rec = None
    try:
        if manifest.release:
            with connect(server, TargetError, dbname=target, autocommit=True) as conn:
                rec = next((r for r in rows(conn, 20) if r.operation == "restore" and r.restored_from == manifest.id),
                           None)
        if rec is None:
            rec = restore_record(server, target, manifest)
        rec.restored_from_server = {k: manifest.server.get(k) for k in ("host", "port", "dbname", "system_identifier")}
        rec.database = {"host": server.host, "port": server.port, "dbname": target, "oid": oid,
                        "system_identifier": system_identifier}
        rec.seconds = round(seconds, 3)
        rec.scrub = scrub
        write_catalog(store, rec)
    except psycopg.Error as exc:
        return [f"restored {target!r}, but reading its snapdb.history failed: {first_line(exc)}"]
    except SnapdbError as exc:
        return [f"restored {target!r}, but recording it in the store's catalog failed: {exc.message}"]
    return []


def publish_failed_restore(store: Store, server: Endpoint, target: str, manifest: mf.Manifest,
                           error: BaseException, started: datetime, seconds: float) -> None:
    """Publish the record of a restore that failed (a `SnapdbError`) or was interrupted, so
    `snapdb history` shows it; the target was left as it was, so the record names no OID.

    Best effort: the restore's own error is what the caller reports, so a store that cannot
    take the record is logged, not raised."""
    rec = restore_record(server, target, manifest)
    rec.outcome = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    rec.error = error.message if isinstance(error, SnapdbError) else "interrupted"
    rec.reached_revision = None
    rec.started_at, rec.ended_at, rec.seconds = started.isoformat(), mf.utcnow().isoformat(), round(seconds, 3)
    rec.restored_from_server = {k: manifest.server.get(k) for k in ("host", "port", "dbname", "system_identifier")}
    rec.database = {"host": server.host, "port": server.port, "dbname": target, "oid": None}
    try:
        write_catalog(store, rec)
    except SnapdbError as exc:
        log.warning("could not record the failed restore in the store's catalog: %s", exc.message)


def write_catalog(store: Store, rec: Record) -> None:
    """Publish `rec` as ``catalog/history/<record_id>.json`` (atomic; overwrites the same id)."""
    data = json.dumps(rec.to_json(), indent=1, ensure_ascii=False).encode("utf-8")
    with store.writer(f"{CATALOG_PREFIX}{rec.record_id}.json") as f:
        f.write(data)


@dataclass
class Unreadable:
    """A catalog record this snapdb cannot read: a newer format, or not a record at all.

    `raw` is the object's bytes as stored, for readers that must fail closed (`prune` keeps
    every snapshot whose id occurs in them); `why` says what is wrong with it."""

    key: str
    raw: bytes
    why: str


def read_catalog(store: Store) -> tuple[list[Record], list[Unreadable]]:
    """Every record in the catalog, newest first, and the records it holds that this snapdb
    cannot read (see `Record.from_json`), in key order. A record deleted while it is listed is
    neither; a store that fails raises `StoreError`."""
    out, unreadable = [], []
    for key in store.list(CATALOG_PREFIX):
        if not key.endswith(".json"):
            continue
        try:
            with store.reader(key) as f:
                raw = f.read()
        except MissingError:
            continue
        try:
            out.append(Record.from_json(json.loads(raw)))
        except ValueError as exc:  # not JSON (JSONDecodeError), not UTF-8 (UnicodeDecodeError)
            unreadable.append(Unreadable(key, raw, f"not JSON: {exc}"))
        except (IntegrityError, RecursionError) as exc:  # RecursionError: nested beyond json's reach
            unreadable.append(Unreadable(key, raw, exc.message if isinstance(exc, IntegrityError) else
                                         "nested too deeply"))
    out.sort(key=lambda r: r.record_id, reverse=True)
    return out, unreadable


def list_catalog(store: Store) -> list[Record]:
    """Every record in the catalog that this snapdb can read, newest first (`read_catalog`
    without the unreadable ones). For readers to which a record missing is the safe side: the
    rehearsal gate then finds no rehearsal, `status --check` no refresh; `prune` must not use it."""
    return read_catalog(store)[0]


def concerns(rec: Record, name: str, svc: Endpoint | None) -> bool:
    """Whether `rec` is about service `name` (configured as `svc`, None when it is not): recorded
    under that name, or on its database, the same database name on the server of its url or
    its admin_url (`Endpoint.server_key`: errs towards "same server"), however the operation
    named it (by service, by URL, by a bare name with ``--server``)."""
    if rec.service == name:
        return True
    db = rec.database or {}
    if svc is None or db.get("dbname") != svc.dbname:
        return False
    where = Endpoint(params={"host": str(db.get("host")), "port": str(db.get("port"))}).server_key()
    return where in {svc.server_key(), svc.admin().server_key()}


def find_rehearsal(store: Store, source: str, tag: str, checksum: str, max_age: timedelta,
                   now: datetime, is_source: Callable[[dict], bool]) -> Record | None:
    """The newest successful upgrade to `tag` with `checksum` of a database restored from a
    snapshot of `source`, ended within `max_age` before `now`; None if there is none.

    The snapshot must have been taken of `source`'s own database: `is_source` is called with
    the restored snapshot's recorded source server (host, port, dbname, system identifier) and
    must say yes. A rehearsal on a copy of a same-named database elsewhere does not count."""
    for rec in list_catalog(store):
        if (rec.operation == "upgrade" and rec.outcome == "succeeded" and rec.tag == tag
                and rec.checksum == checksum and rec.restored_from and rec.restored_from_source == source
                and rec.restored_from_server and is_source(rec.restored_from_server)
                and rec.ended() is not None and now - rec.ended() <= max_age):
            return rec
    return None


def find_restore(store: Store, server: dict, oid: int, records: list[Record] | None = None) -> Record | None:
    """The newest catalog record of a restore that produced the database with OID `oid` on the
    server `server` ({"host", "port", "system_identifier"}); None if there is none. `records`:
    the catalog already read (`list_catalog`), when looking up several databases.

    Restores of unmanaged sources write nothing into the copy, so this is how an upgrade of such
    a copy (the first release of an existing database) learns which snapshot it holds.
    """
    _E = Endpoint
    key = _E(params={"host": str(server.get("host")), "port": str(server.get("port"))}).server_key()
    for rec in list_catalog(store) if records is None else records:
        db = rec.database or {}
        if rec.operation != "restore" or rec.outcome != "succeeded" or db.get("oid") != oid:
            continue
        if server.get("system_identifier") and db.get("system_identifier"):
            if str(server["system_identifier"]) == str(db["system_identifier"]):
                return rec
        elif _E(params={"host": str(db.get("host")), "port": str(db.get("port"))}).server_key() == key:
            return rec
    return None
