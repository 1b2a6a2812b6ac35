"""snapdb's Python API: one function per verb, each returning a plain result object.

The CLI (`snapdb.cli`) is a thin layer over these functions; cron wrappers and tests may call
them directly, e.g. ``commands.restore(load_config(), into="service0-dev")``. They raise
`SnapdbError` subclasses and never print or exit.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from . import manifest as mf
from .config import Config, Endpoint, is_url, parse_url
from .errors import ConfigError, IntegrityError, RefusedError, StoreError, TargetError
from .names import valid_dbname
from .progress import NULL, Reporter
from .restore import restore_snapshot
from .snapshot import take_snapshot
from .store import Store, open_store
from .verify import verify_database, verify_files


@dataclass
class SnapshotInfo:
    """A snapshot as listed: identity, size and compression ratio."""

    id: str
    source: str
    created_at: str
    label: str | None
    stored_bytes: int
    raw_bytes: int
    tables: int
    rows: int
    release: str | None = None

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0

    @classmethod
    def from_manifest(cls, m: mf.Manifest) -> SnapshotInfo:
        return cls(
            id=m.id, source=m.source, created_at=m.created_at, label=m.label,
            stored_bytes=m.stored_bytes, raw_bytes=m.raw_bytes, tables=len(m.tables), rows=m.rows,
            release=(m.release or {}).get("tag"),
        )

    def to_json(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


@dataclass
class RestoreResult:
    """What a restore did."""

    snapshot_id: str
    source: str
    target: str
    server: str
    previous: str | None
    kept_previous: list[str] = field(default_factory=list)
    dropped_previous: list[str] = field(default_factory=list)
    tables: int = 0
    rows: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


@dataclass
class VerifyResult:
    """Outcome of `verify`: file problems, and database differences when `against` was given."""

    snapshot_id: str
    against: str | None
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {
            "snapshot_id": self.snapshot_id, "against": self.against, "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
        }


def _store(cfg: Config, store: str | None) -> Store:
    return open_store(cfg.store(store))


def snapshot(
    cfg: Config,
    source: str,
    *,
    label: str | None = None,
    jobs: int = 2,
    store: str | None = None,
    reporter: Reporter = NULL,
) -> SnapshotInfo:
    """Take a consistent, verified, zstd-compressed snapshot of SOURCE.

    Example: ``snapshot(cfg, "prod", label="nightly")``
    """
    ep = cfg.endpoint(source)
    st = _store(cfg, store)
    return SnapshotInfo.from_manifest(take_snapshot(ep, st, jobs=jobs, label=label, reporter=reporter))


def source_name(cfg: Config, ref: str) -> str:
    """The name snapshots of `ref` are filed under: service name, a URL's dbname, or `ref`."""
    if ref in cfg.services:
        return ref
    if is_url(ref):
        return Endpoint(params=parse_url(ref, what="URL")).dbname
    return ref


def snapshots(cfg: Config, source: str | None = None, *, store: str | None = None) -> list[SnapshotInfo]:
    """List snapshots, newest first (only those of SOURCE if given).

    Example: ``snapshots(cfg, "prod")``
    """
    st = _store(cfg, store)
    name = source_name(cfg, source) if source else None
    return [SnapshotInfo.from_manifest(m) for m in mf.list_manifests(st, name)]


def _pick_manifest(cfg: Config, st: Store, from_: str | None, snapshot_id: str | None) -> mf.Manifest:
    if from_ and snapshot_id:
        raise ConfigError("give either --from or --snapshot, not both")
    if snapshot_id:
        return mf.read_manifest(st, snapshot_id)
    name = source_name(cfg, from_) if from_ else None
    found = mf.list_manifests(st, name)
    if not found:
        what = f"of {name!r} " if name else ""
        raise StoreError(f"no snapshots {what}in {st.describe()}", hint="take one with: snapdb snapshot SOURCE")
    return found[0]


def _resolve_target(cfg: Config, into: str, server: str | None, m: mf.Manifest) -> tuple[Endpoint, str]:
    """Return (server endpoint, database name) for a restore target."""
    if into in cfg.services or is_url(into):
        if server:
            raise ConfigError("--server applies only when --into is a bare database name")
        ep = cfg.endpoint(into)
        return ep, ep.dbname
    if server:
        ep = cfg.endpoint(server)
    elif m.source in cfg.services:
        ep = cfg.services[m.source]
    else:
        ep = Endpoint(params={"host": m.server["host"], "port": str(m.server["port"])})
    return ep.with_dbname(into), into


def _check_target_allowed(cfg: Config, into: str, ep: Endpoint, dbname: str, m: mf.Manifest) -> None:
    for name, svc in cfg.services.items():
        same_db = (svc.server_key(), svc.dbname) == (ep.server_key(), dbname)
        if svc.role == "production" and (name == into or same_db):
            raise RefusedError(
                f"refusing to restore into {name!r}: it is a production service",
                hint="a restore replaces its target; restore into a dev or standby database instead",
            )
    if into in cfg.services and into == m.source:  # bare names: checked against the server
        raise RefusedError(
            f"refusing to restore snapshot {m.id} into its own source {into!r}",
            hint=f"restore into another database, e.g. --into {into}-dev",
        )


def restore(
    cfg: Config,
    into: str,
    *,
    from_: str | None = None,
    snapshot_id: str | None = None,
    server: str | None = None,
    jobs: int = 2,
    keep_previous: int = 1,
    store: str | None = None,
    reporter: Reporter = NULL,
) -> RestoreResult:
    """Restore a snapshot into a temporary database, verify it, and swap it in as INTO.

    Example: ``restore(cfg, into="service0-dev", from_="prod")``
    """
    if keep_previous < 0:
        raise ConfigError("--keep-previous must be 0 or more")
    if jobs < 1:
        raise ConfigError("--jobs must be 1 or more")
    st = _store(cfg, store)
    m = _pick_manifest(cfg, st, from_, snapshot_id)
    ep, dbname = _resolve_target(cfg, into, server, m)
    if not valid_dbname(dbname):
        raise ConfigError(f"invalid target database name {dbname!r} (1 to 63 bytes, no NUL)")
    _check_target_allowed(cfg, into, ep, dbname, m)
    out = restore_snapshot(
        st, m, ep, dbname, jobs=jobs, keep_previous=keep_previous,
        maintenance_db=os.environ.get("SNAPDB_MAINTENANCE_DB", "postgres"), reporter=reporter,
    )
    return RestoreResult(
        snapshot_id=m.id, source=m.source, target=dbname, server=f"{ep.host}:{ep.port}",
        previous=out.previous, kept_previous=out.kept, dropped_previous=out.dropped,
        tables=out.tables, rows=out.rows, seconds=out.seconds,
    )


def verify(
    cfg: Config,
    snapshot_id: str,
    *,
    against: str | None = None,
    jobs: int = 2,
    store: str | None = None,
    reporter: Reporter = NULL,
) -> VerifyResult:
    """Check a snapshot's files, and with AGAINST compare a live database with it.

    Example: ``verify(cfg, "20261127T170512.123Z-ab12", against="dev")``
    """
    st = _store(cfg, store)
    m = mf.read_manifest(st, snapshot_id)
    result = VerifyResult(snapshot_id=m.id, against=against)
    result.problems = verify_files(st, m, reporter)
    if against:
        ep = cfg.endpoint(against)
        result.problems += verify_database(ep, m, error_cls=TargetError, jobs=jobs, reporter=reporter)
    return result


def raise_if_failed(result: VerifyResult) -> None:
    """Raise `IntegrityError` describing the first problem of a failed verification."""
    if not result.ok:
        first = result.problems[0]
        more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        raise IntegrityError(f"snapshot {result.snapshot_id}: {first}{more}")
