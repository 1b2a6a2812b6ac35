"""The cutover journal: one JSON object per service in the store's catalog, rewritten atomically
before and after every step, so a killed run can always be resumed or aborted.

Layout: ``catalog/cutovers/<key>/journal.json`` for the service's current (or last) cutover,
``catalog/cutovers/<key>/<id>.json`` for every finished one (done or aborted), and
``catalog/receipts/<id>.json`` for the receipt of a completed one. `<key>` is 16 hex digits of the
sha256 of the service name (any name fits a store key); the objects carry the name itself.

Contract: `Journal.load(store, service)` returns the service's journal or None; `start` refuses
(`BusyError`) while an unfinished one exists; `begin(step)` / `end(step, **facts)` record a step
before and after it runs, each a complete atomic rewrite (the store's writer publishes only whole
objects); `close(state)` ends it (``done`` or ``aborted``) and files a copy under its id.
`facts` holds whatever a later step, a resume or an abort needs (the freeze's original settings,
the freeze point, the snapshot id, the build's name and OID, the set-aside name).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import secrets
import socket
from dataclasses import asdict, dataclass, field

from .. import __version__
from ..errors import BusyError, IntegrityError, StoreError
from ..manifest import utcnow
from ..store import MissingError, Store

FORMAT = "snapdb-cutover/1"
PREFIX = "catalog/cutovers/"
RECEIPTS = "catalog/receipts/"
STEPS = ("preflight", "freeze", "snapshot", "build", "upgrade", "prove", "swap", "compare", "finish")
#: the replicate mode's steps (`snapdb.cutover.replicate`)
REPLICATE_STEPS = ("preflight", "build", "follow", "upgrade", "freeze", "fence", "finalize", "prove", "swap",
                   "compare", "reverse", "finish")
STEPS_BY_MODE = {"snapshot": STEPS, "replicate": REPLICATE_STEPS}


def service_key(service: str) -> str:
    return hashlib.sha256(service.encode("utf-8")).hexdigest()[:16]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass
class Step:
    name: str
    status: str = "pending"  # pending | running | done | failed | skipped
    started_at: str | None = None
    ended_at: str | None = None
    seconds: float | None = None
    note: str | None = None


@dataclass
class Journal:
    """One cutover of one service (see module docstring)."""

    id: str
    service: str
    tag: str
    mode: str
    freeze_mode: str
    started_at: str
    state: str = "running"  # running | aborting | done | aborted
    step: str = "preflight"
    steps: list[Step] = field(default_factory=lambda: [Step(s) for s in STEPS])
    facts: dict = field(default_factory=dict)
    os_user: str = field(default_factory=_user)
    client_host: str = field(default_factory=socket.gethostname)
    snapdb_version: str = __version__
    format: str = FORMAT

    # -- persistence -----------------------------------------------------------------------
    @staticmethod
    def key(service: str) -> str:
        return f"{PREFIX}{service_key(service)}/journal.json"

    @classmethod
    def load(cls, store: Store, service: str) -> Journal | None:
        try:
            with store.reader(cls.key(service)) as f:
                data = json.loads(f.read())
        except MissingError:
            return None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise IntegrityError(f"the cutover journal of {service!r} is not valid JSON ({exc})",
                                 hint=f"it is {cls.key(service)} in the store") from None
        if not isinstance(data, dict):
            raise IntegrityError(f"the cutover journal of {service!r} is not a JSON object but {type(data).__name__}",
                                 hint=f"it is {cls.key(service)} in the store")
        if data.get("format") != FORMAT:
            raise IntegrityError(f"unsupported cutover journal format {data.get('format')!r}")
        try:
            data["steps"] = [Step(**s) for s in data.get("steps", [])]
            return cls(**data)
        except TypeError:  # a step that is not an object, a field this snapdb does not know or lacks
            raise IntegrityError(f"the cutover journal of {service!r} is not one this snapdb can read "
                                 "(unknown or missing fields)", hint=f"it is {cls.key(service)} in the store") from None

    def save(self, store: Store) -> None:
        """Rewrite the journal; refuses (`BusyError`) to overwrite another run's unfinished one,
        so a run only ever records (and closes) the cutover it owns."""
        current = type(self).load(store, self.service)
        if current is not None and current.id != self.id and current.state in ("running", "aborting"):
            raise BusyError(f"the journal of {self.service!r} belongs to another cutover (id {current.id}, at step "
                            f"{current.step}); this run (id {self.id}) leaves it alone",
                            hint=f"`snapdb status {self.service}` shows it")
        data = json.dumps(asdict(self), indent=1, ensure_ascii=False, default=str).encode("utf-8")
        with store.writer(self.key(self.service)) as f:
            f.write(data)

    @classmethod
    def start(cls, store: Store, service: str, tag: str, mode: str, freeze_mode: str) -> Journal:
        """A new journal for `service`, saved; refuses while an unfinished one exists."""
        old = cls.load(store, service)
        if old is not None and old.state in ("running", "aborting"):
            raise BusyError(
                f"a cutover of {service!r} to {old.tag} (id {old.id}, started {old.started_at} by "
                f"{old.os_user}@{old.client_host}) is unfinished, at step {old.step}",
                hint=f"finish it with `snapdb cutover {service} --resume` or undo it with "
                     f"`snapdb cutover {service} --abort`; nothing was changed",
            )
        now = utcnow()
        j = cls(id=now.strftime("%Y%m%dT%H%M%S") + "Z-" + secrets.token_hex(3), service=service, tag=tag,
                mode=mode, freeze_mode=freeze_mode, started_at=now.isoformat(),
                steps=[Step(s) for s in STEPS_BY_MODE[mode]])
        j.save(store)
        return j

    # -- steps ----------------------------------------------------------------------------------
    def get(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def done(self, name: str) -> bool:
        return any(s.name == name and s.status in ("done", "skipped") for s in self.steps)

    def begin(self, store: Store, name: str) -> None:
        s = self.get(name)
        s.status, s.started_at, s.ended_at, s.seconds = "running", utcnow().isoformat(), None, None
        self.step = name
        self.save(store)

    def end(self, store: Store, name: str, note: str | None = None, **facts) -> None:
        s = self.get(name)
        now = utcnow()
        s.status, s.ended_at = "done", now.isoformat()
        if s.started_at:
            from datetime import datetime

            s.seconds = round((now - datetime.fromisoformat(s.started_at)).total_seconds(), 3)
        s.note = note
        self.facts.update(facts)
        self.save(store)

    def note(self, store: Store, **facts) -> None:
        """Record facts in the middle of a step (e.g. a name chosen before it is used)."""
        self.facts.update(facts)
        self.save(store)

    def close(self, store: Store, state: str) -> None:
        """End the cutover (``done`` or ``aborted``) and file a copy under its id."""
        self.state = state
        self.facts["ended_at"] = utcnow().isoformat()
        self.save(store)
        data = json.dumps(asdict(self), indent=1, ensure_ascii=False, default=str).encode("utf-8")
        with store.writer(f"{PREFIX}{service_key(self.service)}/{self.id}.json") as f:
            f.write(data)


FREEZES = "catalog/freezes/"


def freeze_key(service: str) -> str:
    """Where a manual freeze of `service` (`snapdb freeze`) records what it changed."""
    return f"{FREEZES}{service_key(service)}.json"


def refuse_while_busy(store: Store, service: str, what: str) -> None:
    """Refuse to `what` (a restore into, an upgrade of) `service` while a cutover of it is
    unfinished (`BusyError`: it owns the database, even when no process runs it) or a manual
    freeze is in place (`RefusedError`); nothing is changed. Light: no PostgreSQL, no alembic."""
    from ..errors import RefusedError

    j = Journal.load(store, service)
    if j is not None and j.state in ("running", "aborting"):
        raise BusyError(f"refusing to {what}: a cutover of {service!r} to {j.tag} (id {j.id}) is unfinished, "
                        f"at step {j.step}",
                        hint=f"finish it (`snapdb cutover {service} --resume`) or undo it (`--abort`) first; "
                             "nothing was changed")
    try:
        with store.reader(freeze_key(service)) as f:
            raw = f.read()
    except MissingError:
        return
    try:  # a record that cannot be read refuses all the same: the freeze it records may be in place
        since = json.loads(raw).get("started_at")
    except (ValueError, AttributeError):
        since = "unknown: its record cannot be read"
    raise RefusedError(f"refusing to {what}: {service!r} is frozen by `snapdb freeze` (since {since})",
                       hint=f"end the manual freeze first: snapdb unfreeze {service}; nothing was changed")


def write_receipt(store: Store, receipt: dict) -> str:
    """Publish a cutover receipt; return its key."""
    key = f"{RECEIPTS}{receipt['id']}.json"
    with store.writer(key) as f:
        f.write(json.dumps(receipt, indent=1, ensure_ascii=False, default=str).encode("utf-8"))
    return key


def read_receipt(store: Store, cutover_id: str) -> dict:
    try:
        with store.reader(f"{RECEIPTS}{cutover_id}.json") as f:
            return json.loads(f.read())
    except MissingError:
        raise StoreError(f"no cutover receipt {cutover_id!r} in {store.describe()}") from None


def _read_quietly(store: Store, key: str) -> Journal | None:
    """The journal at `key`, or None when it is gone or unreadable (listings skip those)."""
    try:
        with store.reader(key) as f:
            data = json.loads(f.read())
        data["steps"] = [Step(**s) for s in data.get("steps", [])]
        return Journal(**data)
    except (MissingError, ValueError, TypeError, AttributeError):  # AttributeError: not an object
        return None


def all_journals(store: Store) -> list[Journal]:
    """The current journal of every service that had a cutover."""
    found = (_read_quietly(store, key) for key in store.list(PREFIX) if key.endswith("/journal.json"))
    return [j for j in found if j is not None]


def finished(store: Store, service: str) -> list[Journal]:
    """Every finished (done or aborted) cutover of `service`, in no particular order."""
    found = (_read_quietly(store, key) for key in store.list(f"{PREFIX}{service_key(service)}/")
             if key.endswith(".json") and not key.endswith("/journal.json"))
    return [j for j in found if j is not None]
