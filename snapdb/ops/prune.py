"""Deleting snapshots: `prune` (by the retention policy) and `delete` (by id), and debris.

What the store holds under ``snapshots/`` falls into three kinds (`scan`):

- *complete* snapshots (a manifest): judged by the policy (`store.retention.plan`); *verified*
  means the manifest is readable and every file it lists is present. A manifest this snapdb
  cannot read (a newer format) is left alone.
- *unfinished* ones (no manifest) with a writer lease (`store.lease`): deleted only once the
  writer is provably gone (``dead``); a live writer's, or one whose writer cannot be judged from
  here (another machine), is left alone and reported.
- *cut-short deletions* (a ``deleting.json`` marker, no manifest): garbage, always finished.
  Objects with neither a manifest, a lease nor a marker (written by a snapdb before leases) are
  left alone: only `delete ID --force` removes them.

Protected from both verbs (`references`): snapshots named by a cutover's journal, receipt or
freeze record (``catalog/cutovers/``, ``catalog/receipts/``, ``catalog/freezes/``), by a
cutover's or a rollback's history record, and by a rehearsal: a successful upgrade of a
database restored from the snapshot, ended within ``[upgrade] rehearsal_max_age`` (the window in
which it can gate a production upgrade). Restore records protect nothing (a nightly refresh
would otherwise keep every snapshot forever). A catalog record this snapdb cannot read (a newer
history format, not JSON, not an object) may be any of these, so it protects every snapshot
whose id occurs in it. `delete --force` overrides these references except an unfinished
cutover's journal (its resume or abort needs the snapshot).

A deletion publishes its marker, removes the manifest first (from then on the snapshot does not
exist), then the files, the writer lease and the marker: a deletion killed midway is finished
by the next prune.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from .. import history, manifest as mf
from ..errors import BusyError, IntegrityError, RefusedError, StoreError
from ..store import MissingError, Store, lease
from ..store.retention import Candidate, Policy, plan

log = logging.getLogger(__name__)

CUTOVER_PREFIXES = ("catalog/cutovers/", "catalog/receipts/", "catalog/freezes/")


@dataclass
class Entry:
    """One snapshot id in the store, whatever state it is in."""

    id: str
    keys: list[str]
    manifest: mf.Manifest | None = None
    unreadable: str | None = None  # why the manifest could not be read
    verified: bool = False
    lease: lease.Lease | None = None
    deleting: bool = False

    @property
    def complete(self) -> bool:
        return mf.MANIFEST in {k.rsplit("/", 1)[-1] for k in self.keys} and self.unreadable is None and \
            self.manifest is not None


def valid_id(snapshot_id: str) -> bool:
    return bool(snapshot_id) and "/" not in snapshot_id and not snapshot_id.startswith(".") and len(snapshot_id) < 200


def scan(store: Store) -> dict[str, Entry]:
    """Every snapshot id under ``snapshots/``, with its keys, manifest, lease and marker."""
    groups: dict[str, list[str]] = {}
    for k in store.list(mf.PREFIX):
        sid = k[len(mf.PREFIX):].split("/", 1)[0]
        groups.setdefault(sid, []).append(k)
    present = set(k for ks in groups.values() for k in ks)
    out = {}
    for sid, keys in groups.items():
        e = Entry(sid, keys)
        names = {k[len(mf.PREFIX) + len(sid) + 1:] for k in keys}
        if mf.MANIFEST in names:
            try:
                e.manifest = mf.read_manifest(store, sid)
                e.verified = all(mf.key(sid, f.path) in present for f in e.manifest.files)
            except (IntegrityError, StoreError) as exc:
                e.unreadable = exc.message
        else:
            e.lease = lease.read(store, sid) if lease.WRITER in names else None
            e.deleting = lease.DELETING in names
        out[sid] = e
    return out


def _strings(value) -> list[str]:
    """Every string in a parsed JSON value, keys excepted (iteratively: depth is the file's)."""
    out, todo = [], [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return out


def _ids_in(raw: bytes, ids: set[str]) -> set[str]:
    """The ids of `ids` that occur in `raw`, the bytes of a record that cannot be read: as
    text, and as strings of its JSON when it is JSON at all (which undoes escapes)."""
    found = {sid for sid in ids if sid.encode() in raw}
    try:
        found |= set(_strings(json.loads(raw))) & ids
    except (ValueError, RecursionError):
        pass
    return found


@dataclass
class Reference:
    reason: str
    hard: bool = False  # not even --force overrides it


def references(store: Store, ids: set[str], now: datetime, rehearsal_max_age: timedelta) -> dict[str, Reference]:
    """Snapshot ids in `ids` that the catalog protects, with the first reason found (see the
    module docstring). Fails closed: a record that cannot be read protects every id of `ids`
    that occurs in its bytes, since what it is cannot be told."""
    found: dict[str, Reference] = {}

    def add(sid: str, ref: Reference) -> None:
        if sid in ids and (sid not in found or (ref.hard and not found[sid].hard)):
            found[sid] = ref

    for prefix in CUTOVER_PREFIXES:
        for k in store.list(prefix):
            if not k.endswith(".json"):
                continue
            try:
                with store.reader(k) as f:
                    raw = f.read()
            except MissingError:
                continue
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                for s in _ids_in(raw, ids):
                    add(s, Reference(f"referenced by {k}, which is not JSON"))
                continue
            unfinished = k.endswith("/journal.json") and isinstance(data, dict) and \
                data.get("state") in ("running", "aborting")
            what = ("the unfinished cutover " if unfinished else "cutover record ") + k.rsplit("/", 1)[-1]
            if prefix == "catalog/receipts/":
                what = f"cutover receipt {k.rsplit('/', 1)[-1]}"
            elif prefix == "catalog/freezes/":
                what = f"freeze record {k.rsplit('/', 1)[-1]}"
            for s in _strings(data):
                add(s, Reference(f"referenced by {what}", hard=unfinished))
    records, unreadable = history.read_catalog(store)
    for u in unreadable:  # what it is, and whether it protects, cannot be told: it protects
        for s in _ids_in(u.raw, ids):
            add(s, Reference(f"referenced by catalog record {u.key.rsplit('/', 1)[-1]}, which this snapdb cannot "
                             f"read ({u.why}; a newer snapdb may)"))
    for rec in records:
        if rec.operation == "upgrade":
            ended = rec.ended()
            if rec.outcome == "succeeded" and rec.restored_from and ended is not None and \
                    now - ended <= rehearsal_max_age:
                add(rec.restored_from, Reference(f"referenced by rehearsal {rec.record_id} (upgrade of "
                                                 f"{(rec.database or {}).get('dbname') or rec.service} to {rec.tag})"))
        elif rec.operation != "restore":
            for s in _strings(rec.to_json()):
                add(s, Reference(f"referenced by {rec.operation} record {rec.record_id}"))
    return found


@dataclass
class PruneResult:
    """What `prune` kept, deleted (or, with `dry_run`, would delete) and left alone."""

    dry_run: bool
    policy: dict
    kept: list[dict] = field(default_factory=list)  # {id, source, created_at, reasons}
    deleted: list[dict] = field(default_factory=list)  # {id, source, created_at, kind, bytes, objects}
    left_alone: list[dict] = field(default_factory=list)  # {id, why}
    bytes_freed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def delete_entry(store: Store, e: Entry) -> int:
    """Delete every object of `e`, manifest first and marker last; return how many."""
    marker = lease.Lease.mine(e.id, e.manifest.source if e.manifest else None, "delete")
    lease.publish(store, marker, lease.DELETING)
    order = sorted(e.keys, key=lambda k: (not k.endswith("/" + mf.MANIFEST), k.endswith("/" + lease.WRITER), k))
    done = 0
    for k in order:
        if k != lease.key(e.id, lease.DELETING):
            store.delete(k)
            done += 1
    store.delete(lease.key(e.id, lease.DELETING))
    return done


def prune(store: Store, policy: Policy, now: datetime, *, rehearsal_max_age: timedelta, dry_run: bool = False,
          sources: set[str] | None = None) -> PruneResult:
    """Delete what `policy` does not keep, and the debris of writers provably gone (see module
    docstring). `sources` limits it to those sources' snapshots and debris."""
    entries = scan(store)
    refs = references(store, set(entries), now, rehearsal_max_age)
    out = PruneResult(dry_run=dry_run, policy=asdict(policy))
    complete = {sid: e for sid, e in entries.items() if e.complete}
    if sources is not None:
        complete = {sid: e for sid, e in complete.items() if e.manifest.source in sources}
    candidates = [Candidate(sid, e.manifest.created(), e.manifest.source, e.verified) for sid, e in complete.items()]
    doomed: list[tuple[Entry, dict]] = []
    for d in plan(candidates, policy, now, {sid: r.reason for sid, r in refs.items()}):
        m = complete[d.id].manifest
        info = {"id": d.id, "source": d.source, "created_at": m.created_at}
        if d.keep:
            out.kept.append({**info, "reasons": d.reasons})
        else:
            doomed.append((complete[d.id], {**info, "kind": "snapshot" if complete[d.id].verified else
                                            "unverified snapshot (files missing)", "bytes": m.stored_bytes}))
    for sid, e in sorted(entries.items()):
        if e.complete:
            continue
        if e.unreadable is not None:
            out.left_alone.append({"id": sid, "why": f"manifest unreadable: {e.unreadable}"})
            continue
        src = e.lease.source if e.lease else None
        if sources is not None and src not in sources and not e.deleting:
            continue
        if e.deleting:
            doomed.append((e, {"id": sid, "source": src, "created_at": None, "kind": "a deletion cut short",
                               "bytes": None}))
        elif e.lease is None:
            out.left_alone.append({"id": sid, "why": "unfinished, no writer lease (written by an older snapdb?): "
                                                     f"remove with snapdb delete {sid} --force"})
        else:
            state = lease.writer_state(e.lease)
            if state == "dead":
                doomed.append((e, {"id": sid, "source": src, "created_at": e.lease.started_at,
                                   "kind": "unfinished, writer gone", "bytes": None}))
            else:
                why = ("unfinished, its writer is running" if state == "alive" else
                       "unfinished, its writer cannot be checked from here (another machine or container)")
                out.left_alone.append({"id": sid, "why": f"{why}: {e.lease.describe()}"})
    for e, info in doomed:
        info["objects"] = len(e.keys)
        if not dry_run:
            delete_entry(store, e)
            if not e.complete:  # its writer is gone: what it left unlisted goes too
                info["incomplete_writes"] = store.discard_incomplete(mf.key(e.id, ""))
        out.deleted.append(info)
        out.bytes_freed += info["bytes"] or 0
    return out


@dataclass
class DeleteResult:
    """What `delete` removed."""

    deleted: list[dict] = field(default_factory=list)  # {id, source, kind, objects}
    forced: list[dict] = field(default_factory=list)  # {id, reason}: references --force overrode

    def to_json(self) -> dict:
        return asdict(self)


def delete(store: Store, ids: list[str], now: datetime, *, rehearsal_max_age: timedelta,
           force: bool = False) -> DeleteResult:
    """Delete the snapshots `ids`, all or nothing: every id is checked before the first deletion."""
    if not ids:
        raise StoreError("no snapshot id given")
    for sid in ids:
        if not valid_id(sid):
            raise StoreError(f"invalid snapshot id {sid[:80]!r}", hint="list them with: snapdb snapshots")
    entries = scan(store)
    missing = [sid for sid in ids if sid not in entries]
    if missing:
        raise StoreError(f"no snapshot {missing[0]!r} in {store.describe()}" +
                         (f" (and {len(missing) - 1} more unknown ids)" if len(missing) > 1 else ""),
                         hint="list them with: snapdb snapshots; nothing was deleted")
    refs = references(store, set(ids), now, rehearsal_max_age)
    out = DeleteResult()
    todo = []
    for sid in dict.fromkeys(ids):
        e = entries[sid]
        ref = refs.get(sid)
        if ref is not None and (ref.hard or not force):
            raise RefusedError(f"refusing to delete snapshot {sid}: {ref.reason}",
                               hint=("finish or abort that cutover first" if ref.hard else
                                     "pass --force to delete it all the same") + "; nothing was deleted")
        if ref is not None:
            out.forced.append({"id": sid, "reason": ref.reason})
        kind = "snapshot"
        if not e.complete and not e.deleting and e.unreadable is None:
            state = lease.writer_state(e.lease) if e.lease else "unknown"
            if state == "alive":
                raise BusyError(f"snapshot {sid} is still being written by {e.lease.describe()}",
                                hint="wait for it to finish; nothing was deleted")
            if state == "unknown" and not force:
                who = e.lease.describe() if e.lease else "an unknown writer (no lease)"
                raise RefusedError(f"refusing to delete unfinished snapshot {sid}: its writer, {who}, cannot be "
                                   "proven gone from this machine",
                                   hint="make sure it is not running, then pass --force; nothing was deleted")
            kind = "unfinished"
        todo.append((e, kind))
    for e, kind in todo:
        n = delete_entry(store, e)
        if kind == "unfinished":
            n += store.discard_incomplete(mf.key(e.id, ""))
        out.deleted.append({"id": e.id, "source": e.manifest.source if e.manifest else
                            (e.lease.source if e.lease else None), "kind": kind, "objects": n})
    return out
