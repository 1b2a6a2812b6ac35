"""`snapdb history`: every snapshot, restore, upgrade, cutover and rollback, newest first.

Sources: the snapshots' manifests (a snapshot exists only once its manifest is written, so each
one listed succeeded; unfinished ones are `prune`'s and `status`'s business) and the store's
catalog of operation records (`history.list_catalog`: restores, failed ones included, upgrades,
cutovers, rollbacks). The databases' own ``snapdb.history`` tables are not read: they hold the
same records, the catalog holds every database's, and reading it needs no database session.

Times: a record's `started_at` is when it was opened, which for a restore (written once the
copy is verified) and a rollback (written when it is done) is near its end; when a record says
how long the operation took (`seconds`) its start is its end minus that. A cutover's `seconds`
is its freeze window (shown as such); its duration is end minus start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from .. import history, manifest as mf
from ..config import Config
from ..store import Store

OPERATIONS = ("snapshot", "restore", "upgrade", "cutover", "rollback")


@dataclass
class Entry:
    """One operation: what, how it ended, when and how long, who and where, on what."""

    operation: str
    outcome: str  # succeeded | failed | interrupted | running
    started_at: str | None
    ended_at: str | None
    seconds: float | None
    os_user: str | None
    client_host: str | None
    service: str | None  # the service (or source name) it concerned
    database: str | None  # host:port/dbname
    snapshot: str | None  # the snapshot taken, restored, or the one the database was restored from
    tag: str | None  # the release involved
    record_id: str | None  # the catalog record (None for a snapshot: its id is `snapshot`)
    error: str | None = None
    details: dict = field(default_factory=dict)


@dataclass
class HistoryResult:
    """`history`'s entries, newest first."""

    entries: list[Entry] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"entries": [asdict(e) for e in self.entries]}


def _iso(value: str | None) -> datetime | None:
    try:
        t = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t


def _from_snapshot(m: mf.Manifest) -> Entry:
    start = _iso(m.created_at)
    end = start + timedelta(seconds=m.seconds) if start and m.seconds is not None else None
    by = m.taken_by or {}
    s = m.server or {}
    return Entry(
        operation="snapshot", outcome="succeeded", started_at=m.created_at, ended_at=end.isoformat() if end else None,
        seconds=m.seconds, os_user=by.get("os_user"), client_host=by.get("client_host"), service=m.source,
        database=f"{s.get('host')}:{s.get('port')}/{s.get('dbname')}", snapshot=m.id,
        tag=(m.release or {}).get("tag"), record_id=None,
        details={k: v for k, v in (("label", m.label), ("revision", (m.release or {}).get("revision")),
                                   ("stored_bytes", m.stored_bytes), ("rows", m.rows)) if v is not None},
    )


def _from_record(rec: history.Record) -> Entry:
    start, end = _iso(rec.started_at), _iso(rec.ended_at)
    details: dict = {}
    if rec.operation == "cutover":
        if rec.seconds is not None:
            details["freeze_window_seconds"] = rec.seconds
        seconds = (end - start).total_seconds() if start and end else None
    else:
        seconds = rec.seconds if rec.seconds is not None else (
            (end - start).total_seconds() if start and end else None)
        if rec.seconds is not None and end is not None:
            start = end - timedelta(seconds=rec.seconds)
    for k in ("from_revision", "to_revision", "reached_revision", "failed_revision", "rehearsal"):
        if getattr(rec, k):
            details[k] = getattr(rec, k)
    if rec.skip_rehearsal:
        details["skip_rehearsal"] = True
    if rec.scrub:
        details["scrubbed"] = True
    db = rec.database or {}
    return Entry(
        operation=rec.operation, outcome=rec.outcome, started_at=start.isoformat() if start else rec.started_at,
        ended_at=rec.ended_at, seconds=round(seconds, 3) if seconds is not None else None, os_user=rec.os_user,
        client_host=rec.client_host, service=rec.service,
        database=f"{db.get('host')}:{db.get('port')}/{db.get('dbname')}" if db else None,
        snapshot=rec.restored_from, tag=rec.tag, record_id=rec.record_id,
        error=" ".join(rec.error.split()) if rec.error else None, details=details,
    )


def collect(store: Store, manifests: list[mf.Manifest], *, cfg: Config | None = None, service: str | None = None,
            limit: int | None = None) -> HistoryResult:
    """The entries of `manifests` (already filtered to `service`'s snapshots by the caller) and
    of the catalog's records (those concerning `service`, when given), newest first, at most
    `limit`. An operation recorded under a name no longer configured still matches by name."""
    svc = cfg.services.get(service) if cfg is not None and service else None
    entries = [_from_snapshot(m) for m in manifests]
    entries += [_from_record(r) for r in history.list_catalog(store)
                if r.operation in OPERATIONS and (service is None or history.concerns(r, service, svc))]
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    entries.sort(key=lambda e: (_iso(e.started_at) or epoch, e.record_id or e.snapshot or ""), reverse=True)
    return HistoryResult(entries=entries[:limit] if limit is not None else entries)
