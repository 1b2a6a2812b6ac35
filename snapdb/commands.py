"""snapdb's Python API: one function per verb, each returning a plain result object.

The CLI (`snapdb.cli`) is a thin layer over these functions; cron wrappers and tests may call
them directly, e.g. ``commands.restore(load_config(), into="service0-dev")``. They raise
`SnapdbError` subclasses and never print or exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import psycopg

from . import gitsource, names, sources
from . import history as records
from . import manifest as mf
from .config import Config, Endpoint, format_duration, is_url
from .errors import ConfigError, IntegrityError, RefusedError, SnapdbError, TargetError
from .ledger import Ledger, check_tag
from .names import valid_dbname
from .postgres import alembic_revisions, connect, first_line
from .progress import NULL, Reporter
from .restore import VERIFY_MODES, RestoreOptions, check_target_name, restore_snapshot
from .snapshot import take_snapshot
from .store import Store, open_store
from .verify import verify_database, verify_files

log = logging.getLogger(__name__)


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
    server: str = ""  # host:port/dbname of the source as recorded
    warnings: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0

    @classmethod
    def from_manifest(cls, m: mf.Manifest) -> SnapshotInfo:
        return cls(
            id=m.id, source=m.source, created_at=m.created_at, label=m.label,
            stored_bytes=m.stored_bytes, raw_bytes=m.raw_bytes, tables=len(m.tables), rows=m.rows,
            release=(m.release or {}).get("tag"),
            server=f"{m.server.get('host')}:{m.server.get('port')}/{m.server.get('dbname')}", warnings=list(m.warnings),
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
    warnings: list[str] = field(default_factory=list)
    verified: str = "full"  # full: every table read back; quick: files, row counts and catalog only
    scrub: dict | None = None  # what the target's scrub rules did (snapdb/scrub.py), if it has some
    outcome: str = "restored"  # or "skipped": --if-newer found the target already holds this snapshot
    held: str | None = None  # with if_newer: why it was skipped, or why not (ops/refresh.py up_to_date)

    def to_json(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


MAINTENANCE_DB_ENV = "SNAPDB_MAINTENANCE_DB"


def maintenance_db() -> str:
    """The database snapdb connects to for creating, renaming and dropping databases."""
    return os.environ.get(MAINTENANCE_DB_ENV) or "postgres"


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


def _store(cfg: Config, store: str | None, read: bool = True) -> Store:
    """Open the store; when it is to be read, check that it exists (a typo is an error)."""
    st = open_store(cfg.store(store), **cfg.store_options)
    if read:
        st.check()
    return st


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
    st = _store(cfg, store, read=False)
    return SnapshotInfo.from_manifest(take_snapshot(
        ep, st, jobs=jobs, label=label, release_probe=_release_probe(cfg, ep), reporter=reporter))


def _release_probe(cfg: Config, ep: Endpoint) -> Callable[[psycopg.Connection], dict | None]:
    """Probe for the manifest: the source's alembic revision and its tag in the ledger, if any."""
    try:
        ledger: Ledger | None = Ledger.load(cfg.migrations_dir(ep.name, must_exist=False))
    except SnapdbError as exc:  # a broken ledger must not stop snapshots; the tag stays unknown
        log.warning("release tags unavailable: %s", exc.message)
        ledger = None

    def probe(conn: psycopg.Connection) -> dict | None:
        revisions = alembic_revisions(conn)
        if not revisions:
            return None
        revision = ",".join(revisions)
        return {"tag": ledger.tag_for(revision) if ledger else None, "revision": revision}

    return probe


def snapshots(cfg: Config, source: str | None = None, *, store: str | None = None) -> list[SnapshotInfo]:
    """List snapshots, newest first (only those of SOURCE if given: for a service, only those
    taken of its own database).

    Example: ``snapshots(cfg, "prod")``
    """
    st = _store(cfg, store)
    if source is None:
        return [SnapshotInfo.from_manifest(m) for m in mf.list_manifests(st)]
    _name, own, _other = sources.of_source(cfg, source, st)
    return [SnapshotInfo.from_manifest(m) for m in own]


def _resolve_target(cfg: Config, into: str, server: str | None, m: mf.Manifest) -> tuple[Endpoint, str]:
    """Return (server endpoint, database name) for a restore target.

    A bare database name needs `server`: guessing the server (the snapshot's source's, as
    before) built a typo'd target on production."""
    if into in cfg.services or is_url(into):
        if server:
            raise ConfigError("--server applies only when --into is a bare database name")
        ep = cfg.endpoint(into).admin()
        return ep, ep.dbname
    if not server:
        import difflib

        close = difflib.get_close_matches(into, list(cfg.services), n=1)
        known = ", ".join(sorted(cfg.services)) or "none configured"
        raise ConfigError(
            f"unknown target {into!r}: not a service in the configuration"
            + (f" (did you mean {close[0]!r}?)" if close else ""),
            hint=f"services: {known}; to create or replace a database by that name, say on which server: "
                 f"--into {into} --server SERVICE_OR_URL",
        )
    ep = cfg.endpoint(server).admin()
    return ep.with_dbname(into), into


def _check_target_allowed(cfg: Config, into: str, ep: Endpoint, dbname: str, m: mf.Manifest) -> None:
    for name, svc in cfg.services.items():
        same_db = svc.dbname == dbname and ep.server_key() in {svc.server_key(), svc.admin().server_key()}
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


def _refuse_during_cutover(cfg: Config, st: Store, ep: Endpoint, dbname: str, what: str) -> None:
    """Refuse to change a service's database (or its cutover's new one) while a cutover of it
    is unfinished or a manual freeze is in place (`journal.refuse_while_busy`)."""
    from .cutover import journal

    for name, svc in cfg.services.items():
        if ep.server_key() in {svc.server_key(), svc.admin().server_key()} and dbname in (
                svc.dbname, names.tmp_name(svc.dbname)):
            journal.refuse_while_busy(st, name, what)


def restore(
    cfg: Config,
    into: str,
    *,
    from_: str | None = None,
    snapshot_id: str | None = None,
    server: str | None = None,
    jobs: int = 2,
    keep_previous: int = 1,
    verify: str = "full",
    store: str | None = None,
    no_owner: bool = False,
    no_privileges: bool = False,
    drop_slots: bool = False,
    detach_subscriptions: bool = False,
    if_newer: bool = False,
    reporter: Reporter = NULL,
) -> RestoreResult:
    """Restore a snapshot into a temporary database, verify it, and swap it in as INTO.

    With `if_newer`, do nothing (outcome ``skipped``) when INTO provably holds that snapshot, scrubbed
    under its current scrub rules (`snapdb.ops.refresh`), dropping a build an interrupted run left.

    Example: ``restore(cfg, into="service0-dev", from_="prod", if_newer=True)``
    """
    if keep_previous < 0:
        raise ConfigError("--keep-previous must be 0 or more")
    if jobs < 1:
        raise ConfigError("--jobs must be 1 or more")
    if verify not in VERIFY_MODES:
        raise ConfigError(f"--verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    if into in cfg.services or is_url(into):
        check_target_name(cfg.endpoint(into).dbname, maintenance_db())
    elif valid_dbname(into):
        check_target_name(into, maintenance_db())  # refused before the store is even read
    st = _store(cfg, store)
    m = sources.pick_manifest(cfg, st, from_, snapshot_id)
    ep, dbname = _resolve_target(cfg, into, server, m)
    if not valid_dbname(dbname):
        raise ConfigError(f"invalid target database name {dbname!r} (1 to 63 bytes, no NUL)")
    _check_target_allowed(cfg, into, ep, dbname, m)
    _refuse_during_cutover(cfg, st, ep, dbname, f"restore into {dbname!r}")
    scrubbing, why = _scrub_rules(cfg, into, ep, dbname), None
    if if_newer:  # skipped only when it holds the snapshot, scrubbed under the rules it has now
        from .ops.refresh import drop_leftover_build, up_to_date

        skip, why = up_to_date(st, ep, dbname, maintenance_db(), m.id, scrubbing["scrub"], scrubbing["service"])
        if skip:
            return RestoreResult(snapshot_id=m.id, source=m.source, target=dbname, server=f"{ep.host}:{ep.port}",
                                 previous=None, tables=len(m.tables), rows=m.rows, verified=verify,
                                 outcome="skipped", held=why, warnings=drop_leftover_build(ep, dbname, maintenance_db()))
    role_map = cfg.services[into].role_map if into in cfg.services else (
        cfg.services[server].role_map if server in cfg.services else {})
    opts = RestoreOptions(no_owner=no_owner, no_privileges=no_privileges, role_map=dict(role_map),
                          drop_slots=drop_slots, detach_subscriptions=detach_subscriptions,
                          protected=sources.production_identities(cfg, st), **scrubbing)
    started, clock = mf.utcnow(), time.monotonic()
    try:
        out = restore_snapshot(st, m, ep, dbname, jobs=jobs, keep_previous=keep_previous,
                               maintenance_db=maintenance_db(), verify=verify, options=opts, reporter=reporter)
    except (SnapdbError, KeyboardInterrupt) as exc:  # recorded for `snapdb history`, then reported
        records.publish_failed_restore(st, ep, dbname, m, exc, started, time.monotonic() - clock)
        raise
    warnings = list(out.warnings) + records.publish_restore(st, ep, dbname, m, oid=out.oid, seconds=out.seconds,
                                                            system_identifier=out.system_identifier, scrub=out.scrub)
    return RestoreResult(
        snapshot_id=m.id, source=m.source, target=dbname, server=f"{ep.host}:{ep.port}",
        previous=out.previous, kept_previous=out.kept, dropped_previous=out.dropped,
        tables=out.tables, rows=out.rows, seconds=out.seconds, warnings=warnings, verified=out.verified,
        scrub=out.scrub, held=why,
    )


def _scrub_rules(cfg: Config, into: str, ep: Endpoint, dbname: str) -> dict:
    from .scrub import rules_for

    service, rules = rules_for(cfg, into, ep.server_key(), dbname)
    return {"scrub": rules, "service": service}


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


# -- releases and upgrades -------------------------------------------------------------------------
# `releases` and `migrate` import alembic and SQLAlchemy (0.4 s); they are imported by the three
# functions below only, so the other commands start fast.


@dataclass
class UpgradeResult:
    """What `upgrade` planned and did. `outcome`: ``upgraded``, ``up-to-date`` or ``planned``."""

    target: str
    database: str
    tag: str
    revision: str
    checksum: str
    scripts: str
    from_revision: str | None
    from_tag: str | None
    steps: list[dict] = field(default_factory=list)
    outcome: str = "planned"
    mode: str = "upgrade"  # upgrade | dry-run | sql
    production: str | None = None
    rehearsal: str | None = None
    rehearsal_skipped: bool = False
    restored_from: str | None = None
    history_id: str | None = None
    sql: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def _production_service(cfg: Config, ref: str, ep: Endpoint) -> str | None:
    """The production service `ref` is, or points at (same database on the server of its `url`
    or its `admin_url`), if any. (`_production_by_identity` also compares system identifiers.)"""
    for name, svc in cfg.services.items():
        if svc.role != "production":
            continue
        keys = {svc.server_key(), svc.admin().server_key()}
        if name == ref or (svc.dbname == ep.dbname and ({ep.server_key(), ep.admin().server_key()} & keys)):
            return name
    return None


def _rehearsal_hint(cfg: Config, prod: str, tag: str) -> str:
    dev = next((n for n, s in cfg.services.items() if s.role == "dev"), None) or next(
        (n for n, s in cfg.services.items() if s.role != "production"), "DEV_DATABASE")
    return (f"rehearse it on a copy first: `snapdb restore --into {dev} --from {prod}` then "
            f"`snapdb upgrade {dev} --to {tag}` (or pass --skip-rehearsal, which is recorded)")


def upgrade(
    cfg: Config,
    target: str,
    *,
    to: str,
    dry_run: bool = False,
    sql: bool = False,
    skip_rehearsal: bool = False,
    migrations: str | None = None,
    store: str | None = None,
) -> UpgradeResult:
    """Upgrade TARGET to release TO: check the scripts against the ledger, plan, and apply.

    Scripts come from git tag TO when the migrations directory is in a git repository that has
    it, else from the working tree. A production service needs a rehearsal on record (see
    docs/upgrades.md). `dry_run` returns the plan; `sql` the offline SQL; neither changes anything.

    Example: ``upgrade(cfg, "service0-dev", to="v2.0")``
    """
    from . import migrate, releases

    if dry_run and sql:
        raise ConfigError("give either --dry-run or --sql, not both")
    check_tag(to)
    ep = cfg.endpoint(target)
    prod = _production_service(cfg, target, ep)
    mdir = cfg.migrations_dir(ep.name, migrations)
    ledger = Ledger.load(mdir)
    rel = ledger.get(to)
    changes = not (dry_run or sql)
    st = _store(cfg, store, read=False) if (changes or prod) else None
    where = ep.name or ep.display()
    if changes:
        _refuse_during_cutover(cfg, st, ep.admin(), ep.dbname, f"upgrade {where}")
    with contextlib.ExitStack() as stack:
        scripts = stack.enter_context(releases.open_scripts(mdir, to))
        releases.check_release(rel, scripts)
        session = stack.enter_context(migrate.UpgradeSession(ep.admin(), lock=changes))
        if prod is None:  # the same database reached another way (an alias, another address)?
            try:
                known = st if st is not None else _store(cfg, store, read=False)
            except ConfigError:
                known = None
            prod = sources.production_by_identity(cfg, known, ep.dbname, {ep.server_key(), ep.admin().server_key()},
                                           session.system_identifier)
            if prod is not None and st is None:
                st = known
        restored, restored_server = _provenance(st, session, ep)
        worktree = None
        if session.current and scripts.commit and not scripts.knows(session.current):
            worktree = stack.enter_context(releases.open_scripts(mdir))  # to tell "ahead" from "unknown"
        steps = migrate.plan(scripts, session.current, rel.revision, ledger.tag_for, where, worktree)
        result = UpgradeResult(
            target=where, database=ep.display(), tag=to, revision=rel.revision, checksum=rel.checksum,
            scripts=scripts.origin, from_revision=session.current, from_tag=ledger.tag_for(session.current),
            steps=[s.to_json() for s in steps], mode="dry-run" if dry_run else "sql" if sql else "upgrade",
            production=prod, restored_from=restored[0] if restored else None,
        )
        if not steps:
            result.outcome = "up-to-date"
            return result
        if prod:
            prod_ep = cfg.services[prod]

            def is_prod(server: dict) -> bool:
                return mf.same_source(server, prod_ep, session.system_identifier)

            found = records.find_rehearsal(st, prod, to, rel.checksum, cfg.rehearsal_max_age, mf.utcnow(), is_prod)
            if found is not None:
                result.rehearsal = found.record_id
            elif not skip_rehearsal:
                raise RefusedError(
                    f"refusing to upgrade production service {prod!r} to {to}: no rehearsal on record "
                    f"(a successful upgrade to {to} with checksum {rel.checksum[:12]} of a database restored "
                    f"from a snapshot of {prod!r}, ended within {format_duration(cfg.rehearsal_max_age)})",
                    hint=_rehearsal_hint(cfg, prod, to),
                )
            else:
                result.rehearsal_skipped = True
                log.warning("upgrading production service %r to %s WITHOUT a rehearsal on record "
                            "(--skip-rehearsal); this is recorded in its history", prod, to)
        if dry_run:
            return result
        if sql:
            result.sql = migrate.offline_sql(scripts, session.current, rel.revision)
            return result
        rec = records.new_record(
            "upgrade", ep, tag=to, from_revision=session.current, to_revision=rel.revision,
            reached_revision=session.current, checksum=rel.checksum,
            restored_from=result.restored_from,
            restored_from_source=restored[1] if restored else None,
            skip_rehearsal=result.rehearsal_skipped, rehearsal=result.rehearsal, scripts_origin=scripts.origin,
        )
        rec.restored_from_server = restored_server
        result.history_id = rec.record_id
        result.seconds = session.apply(scripts, steps, rec, st)
        result.outcome = "upgraded"
        return result


def _provenance(st: Store | None, session, ep: Endpoint) -> tuple[tuple[str, str] | None, dict | None]:
    """Which snapshot the database was restored from ((id, source) or None), and that snapshot's
    recorded source server: from the database's own snapdb.history, else (a copy of an
    unmanaged database, which carries no history) from the catalog's record of the restore that
    produced this database, found by the database's OID on this server."""
    restored = session.restored_from
    server = None
    if st is None:
        return restored, None
    if restored is None:
        rec = records.find_restore(st, {"host": ep.host, "port": ep.port,
                                        "system_identifier": session.system_identifier}, session.oid)
        if rec is not None and rec.restored_from:
            return (rec.restored_from, rec.restored_from_source), rec.restored_from_server
        return None, None
    try:
        m = mf.read_manifest(st, restored[0])
        server = {k: m.server.get(k) for k in ("host", "port", "dbname", "system_identifier")}
    except SnapdbError:  # the snapshot was deleted: its restore record still says where it came from
        rec = next((r for r in records.list_catalog(st) if r.operation == "restore" and r.restored_from == restored[0]), None)
        server = rec.restored_from_server if rec else None
    return restored, server


@dataclass
class ReleaseAddResult:
    """The release `release add` recorded."""

    tag: str
    revision: str
    checksum: str
    scripts: str
    ledger: str
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def release_add(cfg: Config, tag: str, *, migrations: str | None = None) -> ReleaseAddResult:
    """Record the migrations' single head as release TAG in the ledger (releases.toml).

    Example: ``release_add(cfg, "v2.0")``
    """
    from . import releases

    mdir = cfg.migrations_dir(None, migrations)
    rel, origin = releases.add_release(mdir, tag)
    return ReleaseAddResult(tag=rel.tag, revision=rel.revision, checksum=rel.checksum, scripts=origin,
                            ledger=str(Ledger.load(mdir).path), files=rel.files)


@dataclass
class ReleaseStatus:
    """One ledger entry: do its scripts still match, and which databases and snapshots are at it."""

    tag: str
    revision: str
    checksum: str
    recorded_at: str
    scripts: str = "ok"  # ok | modified | unreadable
    origin: str = ""
    problems: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)


@dataclass
class ReleasesResult:
    """`releases`: the ledger's releases, the working tree's heads, and where databases are."""

    migrations: str
    heads: list[str] = field(default_factory=list)
    releases: list[ReleaseStatus] = field(default_factory=list)
    databases: list[dict] = field(default_factory=list)  # {service, revision, tag, error}
    snapshots: list[dict] = field(default_factory=list)  # {id, source, tag, revision}

    def to_json(self) -> dict:
        return asdict(self)


def releases(cfg: Config, *, migrations: str | None = None, store: str | None = None) -> ReleasesResult:
    """List releases, whether their scripts still match, and which databases and snapshots are at which.

    Databases are the configured services that use this migrations directory (unreachable ones
    are listed with their error); snapshots are those in the store whose manifest records one
    of the ledger's revisions.

    Example: ``releases(cfg)``
    """
    from . import releases as rl

    mdir = cfg.migrations_dir(None, migrations)
    ledger = Ledger.load(mdir)
    out = ReleasesResult(migrations=str(mdir))
    with contextlib.ExitStack() as stack:
        worktree = stack.enter_context(rl.open_scripts(mdir))
        out.heads = worktree.heads()
        gd = gitsource.locate(mdir)
        for rel in ledger.releases.values():
            status = ReleaseStatus(rel.tag, rel.revision, rel.checksum, rel.recorded_at)
            try:
                if gd is not None and gitsource.tag_commit(gd, rel.tag):
                    with rl.open_scripts(mdir, rel.tag) as tagged:
                        diffs, status.origin = tagged.compare(rel), tagged.origin
                else:
                    diffs, status.origin = worktree.compare(rel), worktree.origin
                if diffs:
                    status.scripts, status.problems = "modified", [str(d) for d in diffs]
            except SnapdbError as exc:
                status.scripts, status.problems = "unreadable", [exc.message]
            out.releases.append(status)
    by_tag = {r.tag: r for r in out.releases}
    for name, svc in cfg.services.items():
        if cfg.migrations_dir(name, must_exist=False) != mdir:  # the services that use this directory
            continue
        entry = {"service": name, "revision": None, "tag": None, "error": None}
        try:
            with connect(svc, TargetError, autocommit=True) as conn:
                entry["revision"] = ",".join(alembic_revisions(conn) or []) or None
        except (SnapdbError, psycopg.Error) as exc:
            entry["error"] = exc.message if isinstance(exc, SnapdbError) else first_line(exc)
        entry["tag"] = ledger.tag_for(entry["revision"])
        if entry["tag"]:
            by_tag[entry["tag"]].databases.append(name)
        out.databases.append(entry)
    try:
        st = _store(cfg, store, read=False)  # a store not created yet holds no snapshots
    except ConfigError:  # no store configured: list releases and databases only
        st = None
    revisions = {r.revision for r in ledger.releases.values()}
    for m in mf.list_manifests(st) if st is not None else []:
        rev = (m.release or {}).get("revision")
        if rev in revisions:
            tag = (m.release or {}).get("tag")
            tag = tag if tag in by_tag and by_tag[tag].revision == rev else ledger.tag_for(rev)
            by_tag[tag].snapshots.append(m.id)
            out.snapshots.append({"id": m.id, "source": m.source, "tag": tag, "revision": rev})
    return out


# -- cutover, freeze, rollback, status -------------------------------------------------------------
# The cutover package imports the release machinery (alembic); like the release commands, these
# import it on first use only.


def cutover(
    cfg: Config,
    service: str,
    *,
    to: str | None = None,
    freeze: bool = False,
    freeze_mode: str = "read-only",
    mode: str = "snapshot",
    timeout: float | None = None,
    drain_timeout: float = 5.0,
    dry_run: bool = False,
    resume: bool = False,
    abort: bool = False,
    finish: bool = False,
    jobs: int = 2,
    migrations: str | None = None,
    store: str | None = None,
    reporter: Reporter = NULL,
    max_freeze: float | None = None,
    to_server: str | None = None,
    catchup_timeout: float = 3600.0,
):
    """Cut SERVICE over to release TO: freeze it, build the release beside it (snapshot mode) or
    beside it while it is live, following it by logical replication (replicate mode), prove
    nothing was written after the freeze, swap, keep the old database set aside (docs/cutover.md).
    `finish` ends a replicate-mode cutover's rollback window.

    Example: ``cutover(cfg, "prod", to="v2.0", freeze=True)``
    """
    from .cutover import api

    if sum(map(bool, (resume, abort, finish))) + bool(to) != 1:
        raise ConfigError("give exactly one of --to TAG, --resume, --abort and --finish")
    if max_freeze is not None and max_freeze <= 0 or catchup_timeout <= 0:
        raise ConfigError("--max-freeze and --catchup-timeout must be positive")
    other = None
    if to_server is not None:
        from .config import Endpoint, parse_url

        other = Endpoint(params=parse_url(to_server, "--to-server URL"), name=service)
    if jobs < 1:
        raise ConfigError("--jobs must be 1 or more")
    if timeout is not None and timeout <= 0 or drain_timeout < 0:
        raise ConfigError("--timeout must be positive and --drain-timeout 0 or more")
    if service not in cfg.services:
        raise ConfigError(f"unknown service {service!r} (services: {', '.join(sorted(cfg.services)) or 'none'})",
                          hint="a cutover switches a service of snapdb.toml")
    st = _store(cfg, store, read=False)
    mdir = cfg.migrations_dir(service, migrations)
    probe = _release_probe(cfg, cfg.services[service])
    if resume:
        return api.resume(cfg, service, st, mdir, jobs=jobs, maintenance_db=maintenance_db(), release_probe=probe,
                          reporter=reporter)
    if abort:
        return api.abort(cfg, service, st, mdir, jobs=jobs, maintenance_db=maintenance_db(), reporter=reporter)
    if finish:
        return api.finish_window(cfg, service, st, maintenance_db=maintenance_db())
    try:
        _name, own, _other = sources.of_source(cfg, service, st)
    except SnapdbError:
        own = []
    return api.start(cfg, service, to, st, mdir, own, freeze_=freeze, freeze_mode=freeze_mode,
                     drain_timeout=drain_timeout, timeout=timeout, dry_run=dry_run, jobs=jobs,
                     maintenance_db=maintenance_db(), release_probe=probe, reporter=reporter, mode=mode,
                     max_freeze=max_freeze, to_server=other, catchup_timeout=catchup_timeout)


def freeze(cfg: Config, service: str, *, mode: str = "read-only", drain_timeout: float = 5.0,
           store: str | None = None):
    """Freeze SERVICE's writes for a manual window (the same layers and checks as a cutover's,
    without the table locks, which need a live session).

    Example: ``freeze(cfg, "prod", mode="offline")``
    """
    from .cutover import api, freeze as fz

    if mode not in fz.MODES:
        raise ConfigError(f"--mode must be one of {', '.join(fz.MODES)}, not {mode!r}")
    return api.freeze_service(cfg, service, _store(cfg, store, read=False), mode=mode, drain_timeout=drain_timeout,
                              maintenance_db=maintenance_db())


def unfreeze(cfg: Config, service: str, *, store: str | None = None):
    """End a manual freeze of SERVICE, restoring its settings and privileges exactly.

    Example: ``unfreeze(cfg, "prod")``
    """
    from .cutover import api

    return api.unfreeze_service(cfg, service, _store(cfg, store, read=False), maintenance_db=maintenance_db())


def rollback(cfg: Config, service: str, *, discard_writes: bool = False, jobs: int = 2, store: str | None = None,
             reporter: Reporter = NULL):
    """Swap SERVICE back to the database its last cutover set aside; refuse if the current one took
    writes, unless `discard_writes` (they are kept in a snapshot first).

    Example: ``rollback(cfg, "prod")``
    """
    from .cutover import api

    if service not in cfg.services:
        raise ConfigError(f"unknown service {service!r}")
    return api.rollback(cfg, service, _store(cfg, store), jobs=jobs, maintenance_db=maintenance_db(),
                        discard_writes=discard_writes, release_probe=_release_probe(cfg, cfg.services[service]),
                        reporter=reporter)


@dataclass
class StatusResult:
    """Per service: role, release, snapshots, and the cutover's state (in progress, frozen, set aside)."""

    services: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def status(cfg: Config, service: str | None = None, *, store: str | None = None) -> StatusResult:
    """Show each service's role, release, newest snapshot, cutover in progress and frozen state.

    Example: ``status(cfg, "prod")``
    """
    from .cutover import api

    names_ = [service] if service else sorted(cfg.services)
    for n in names_:
        if n not in cfg.services:
            raise ConfigError(f"unknown service {n!r} (services: {', '.join(sorted(cfg.services)) or 'none'})")
    try:
        st = _store(cfg, store, read=False)
    except ConfigError:
        st = None
    out = StatusResult()
    try:  # which snapshot each database provably holds (ops/refresh.py, as restore --if-newer)
        from .ops.refresh import holdings, leftover_build

        held = holdings(st, {n: cfg.services[n] for n in names_}, maintenance_db()) if st is not None else {}
    except SnapdbError:
        held = {}
    for n in names_:
        svc = cfg.services[n]
        entry: dict = {"service": n, "role": svc.role, "database": svc.label(), "release": None, "revision": None,
                       "newest_snapshot": None, "holds": held.get(n), "leftover_build": leftover_build(svc, maintenance_db())}
        try:
            with connect(svc, TargetError, autocommit=True) as conn:
                rev = ",".join(alembic_revisions(conn) or []) or None
            entry["revision"] = rev
        except (SnapdbError, psycopg.Error) as exc:
            entry["error"] = exc.message if isinstance(exc, SnapdbError) else first_line(exc)
        if st is not None:
            try:
                _name, own, _other = sources.of_source(cfg, n, st)
                if own:
                    entry["newest_snapshot"] = {"id": own[0].id, "created_at": own[0].created_at}
            except SnapdbError:
                pass
        entry.update(api.service_status(cfg, n, st))
        out.services.append(entry)
    return out


# -- retention, monitoring, history: the verbs live in snapdb/ops/api.py (re-exported here) ----
from .ops.api import delete, history, monitor, prune  # noqa: E402,F401  (re-exported; ops imports nothing from here)
