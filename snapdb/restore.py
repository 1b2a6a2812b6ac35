"""Restore a snapshot into a temporary database, verify it, and swap it in by rename.

`Build` is one restore on one server, in phases that `restore_snapshot` runs in order (the
cutover runs them too, with its own swap). Each phase is safe to interrupt; the target is touched
only by the swap:

1. `prepare`: refuse system databases, snapdb's side databases, templates and production
   databases as targets; verify every snapshot file (sha256, size); on the target server (a
   session to the maintenance database) refuse the snapshot's own source, take the server-wide
   lock of the target's name (`locks`), read what the target carries (`swap.inspect`) and refuse
   what a rename would break; check, before anything exists, every right the run will need
   (ownership of the target, CREATEDB, ending other roles' sessions, dropping slots, detaching
   subscriptions), every role the snapshot needs (`roles`, after the role map) and every
   database-level setting the build will get (`postgres.setting_problems`); pick the
   pg_restore for this server. Detach any subscription still enabled in an earlier copy set
   aside (a run killed after its swap could leave one consuming).
2. `make_room`: drop previous copies beyond `keep_previous` (surplus the policy drops whatever
   happens; the copies it keeps stay until the swap has committed).
3. `build`: ``CREATE DATABASE <tmp>`` owned by the restoring role (an owner may always grant
   itself CONNECT and allow connections again, so the real owner, often the application's login
   role, gets the build only at the seal) with the snapshot's encoding, locale and locale provider
   stated explicitly, remembering its OID, closed to connections until its privileges are
   snapdb's own role's alone (no other role may read it until the seal); restore the schema
   (`_lend_create`: what the owner-to-be would have had on ``public``), load every table part
   with COPY in `jobs` worker processes (through the partition root where enum OIDs decide the
   partition), restore the post-data section. Then a
   `hold.TableHold` in SHARE mode keeps every other session from writing to the build while it
   is verified (by OID) against the manifest (ANALYZE runs in the hold's transaction meanwhile);
   a non-production target's scrub rules run in the hold's transaction (`scrub`: after the
   verification, which proves what was restored; a failing check drops the build); a managed
   database's ``restore`` row and the database-level properties but the owner and the
   privileges (with the scrub's settings, also for the roles whose own settings would outrank
   them) are written.
4. `seal`: close the build to connections, end every other session on it, check its catalog
   fingerprint has not moved since verification and commit the hold (what is swapped in is what
   was verified; the scrub is committed); only then give it its owner and privileges
   (`open_privileges`): a kill at any moment before leaves a build only snapdb's role can reach.
5. `swap` (`swap.swap_in`), in one transaction: check again what the target carries, end the
   target's and the build's sessions, rename the target aside and the build into place, and prove
   by OID that the database now called target is this run's build.
6. `after_swap`: detach and drop what the old copy carried when told to, drop previous copies
   beyond `keep_previous`. The restore has happened: problems here are warnings.

Any failure before the swap commits drops the build (only the one with this run's OID) and
leaves the target as it was.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
from psycopg import sql

from . import faults, fingerprint, history, locks, manifest as mf, names, pgtools, pipes, restore_checks, roles, scrub, swap
from .config import Endpoint
from .errors import IntegrityError, RefusedError, SnapdbError, TargetError
from .hold import TableHold
from .postgres import (
    SNAPDB_SCHEMA, DatabaseProps, apply_database_props, connect, control_session, create_database, drop_database,
    first_line, is_superuser, keep_session_alive, open_database_acl, own_acl, restrict_database_acl, set_sequences,
    system_identifier,
)
from .progress import NULL, Reporter
from .store import Store
from .verify import verify_database, verify_files
from .restore_checks import RestoreOptions  # noqa: F401 (re-exported: commands builds one)
from .workers import Session, WorkerPool, load_pack

log = logging.getLogger(__name__)

VERIFY_MODES = ("full", "quick")
SYSTEM_DATABASES = ("postgres", "template0", "template1")


@dataclass
class RestoreOutcome:
    target: str
    previous: str | None
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    tables: int = 0
    rows: int = 0
    seconds: float = 0.0
    oid: int | None = None
    system_identifier: str | None = None  # the target server's, when the role may read it
    verified: str = "full"
    warnings: list[str] = field(default_factory=list)
    scrub: dict | None = None  # what the scrub rules did (scrub.run), when the target has some


def check_target_name(target: str, maintenance_db: str) -> None:
    """Refuse targets that must never be replaced: system databases, the maintenance database,
    and names of snapdb's own side databases (temporary builds, previous copies)."""
    if not names.valid_dbname(target):
        raise TargetError(f"invalid target database name {target!r} (1 to 63 bytes, no NUL)")
    if target in SYSTEM_DATABASES or target == maintenance_db:
        what = "the maintenance database" if target == maintenance_db and target not in SYSTEM_DATABASES else "a system database"
        raise RefusedError(f"refusing to restore into {target!r}: it is {what}",
                           hint="restore into a database of your own, e.g. --into service0-dev; nothing was changed")
    if target.endswith(names.TMP_SUFFIX) or names.looks_like_prev(target) or names.looks_like_set_aside(target):
        raise RefusedError(f"refusing to restore into {target!r}: the name is one of snapdb's side databases "
                           "(a temporary build, a previous copy a later run may drop, or a copy a cutover set aside)",
                           hint="restore into the database it belongs to; nothing was changed")


def restore_snapshot(
    store: Store,
    manifest: mf.Manifest,
    server: Endpoint,
    target: str,
    *,
    jobs: int = 2,
    keep_previous: int = 1,
    maintenance_db: str = "postgres",
    verify: str = "full",
    options: RestoreOptions | None = None,
    reporter: Reporter = NULL,
) -> RestoreOutcome:
    """Restore `manifest`'s snapshot into database `target` on `server` (see module docstring).

    `verify` is ``"full"`` (read every table back and compare its rows and checksum with the
    manifest) or ``"quick"`` (no read-back). Both check, before anything is touched, every file's
    sha256, then zstd's content checksum as each file is decompressed, the server's row count
    for each file, the tables present, sequence values and the large-object count: what was
    loaded is provably the snapshot's rows; "full" also proves what the server stored.
    """
    started = time.monotonic()
    b = Build(store, manifest, server, target, jobs=jobs, maintenance_db=maintenance_db, verify=verify,
              options=options, reporter=reporter)
    try:
        b.prepare()
        dropped = b.make_room(keep_previous)
        faults.checkpoint("restore:room-made")
        try:
            b.build()
            b.seal()
            faults.checkpoint("restore:before-swap")
            previous = b.swap()
        except BaseException:
            b.discard()
            raise
        faults.checkpoint("restore:swapped")
        out = RestoreOutcome(target=target, previous=previous, dropped=dropped, tables=len(manifest.tables),
                             rows=manifest.rows, oid=b.oid, system_identifier=b.sysid, verified=verify)
        out.warnings = list(b.warnings)
        out.scrub = b.scrubbed
        out.kept, more = b.after_swap(previous, keep_previous, out.warnings)
        out.dropped += more
    except psycopg.Error as exc:
        raise TargetError(f"restore into {target!r} failed: {first_line(exc)}", hint=_privilege_hint(exc)) from None
    finally:
        b.close()
    out.seconds = time.monotonic() - started
    return out


class Build:
    """One restore build (see module docstring). `close()` always, in a ``finally``."""

    def __init__(self, store: Store, manifest: mf.Manifest, server: Endpoint, target: str, *, jobs: int = 2,
                 maintenance_db: str = "postgres", verify: str = "full", options: RestoreOptions | None = None,
                 reporter: Reporter = NULL, build_name: str | None = None, lock: bool = True,
                 operation: str = "restore") -> None:
        if verify not in VERIFY_MODES:
            raise TargetError(f"unknown verification mode {verify!r} (one of {', '.join(VERIFY_MODES)})")
        self.store, self.manifest, self.server, self.target = store, manifest, server, target
        self.jobs, self.maintenance_db, self.verify = max(1, jobs), maintenance_db, verify
        self.opts = options or RestoreOptions()
        self.reporter = reporter
        self.tmp = build_name or names.tmp_name(target)
        self.lock, self.operation = lock, operation
        self.pool: WorkerPool | None = None
        self.maint: psycopg.Connection | None = None
        self.workdir: Path | None = None
        self.hold: TableHold | None = None
        self.state = swap.TargetState(exists=False)
        self.oid: int | None = None
        self.sysid: str | None = None
        self.owner: str | None = None
        self.tool = ""
        self.archive: Path | None = None
        self.warnings: list[str] = []
        self._fingerprint: dict | None = None
        self.scrubbed: dict | None = None
        self.props: DatabaseProps | None = None  # what `build` applies; the privileges at the seal
        self._me = ""  # the restoring role: until the seal the build's only grantee

    # -- 1. prepare -------------------------------------------------------------------------------
    def prepare(self, inspect_target: bool = True, own_source: bool = False) -> None:
        """`inspect_target` False and `own_source` True are the cutover's: it builds a copy of
        its own (frozen) source beside it, and checked the source itself in its preflight."""
        if inspect_target:
            check_target_name(self.target, self.maintenance_db)
        self.pool = WorkerPool(self.jobs, self.reporter)
        bad = verify_files(self.store, self.manifest, self.reporter, pool=self.pool)
        if bad:
            raise IntegrityError(
                f"snapshot {self.manifest.id} is damaged: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
                hint="the target was not touched; restore another snapshot",
            )
        faults.checkpoint("restore:files-verified")
        self.maint = control_session(self.server, TargetError, dbname=self.maintenance_db)
        self.sysid = system_identifier(self.maint)
        if not own_source:
            self._refuse_protected()
            restore_checks.check_not_source(self.maint, self.manifest, self.server, self.target)
        if self.lock:
            locks.acquire(self.maint, self.target, self.operation, f"{self.target!r} on {self.server.host}:{self.server.port}")
        faults.checkpoint("restore:locked")
        if inspect_target:
            self.state = swap.inspect(self.maint, self.target)
            swap.refuse_unsafe(self.state, self.target, drop_slots=self.opts.drop_slots,
                               detach_subscriptions=self.opts.detach_subscriptions)
            self._check_rights()
            self.warnings += swap.detach_leftovers(self.maint, self.server, self.target)
        self.workdir = pgtools.scratch_dir()
        self.archive = restore_checks.extract_archive(self.store, self.manifest, self.workdir)
        self.tool = restore_checks.restore_tool(self.manifest, self.maint)
        overrides = {} if self.opts.scrub is None else scrub.role_overrides(
            restore_checks.mapped_props(self.manifest.database, self.opts, None), self.opts.scrub.settings,
            scrub.server_role_settings(self.maint))
        self.owner = restore_checks.check_roles(self.maint, self.archive, self.manifest.database, self.opts, self.tool, overrides)

    def _refuse_protected(self) -> None:
        key = self.server.server_key()
        for p in self.opts.protected:
            if p["dbname"] != self.target:
                continue
            same = key in {tuple(s) for s in p["servers"]}
            if not same and p.get("system_identifier") and self.sysid:
                same = str(p["system_identifier"]) == str(self.sysid)
            if not same and not p.get("system_identifier"):
                same = True  # cannot tell this server from production's: treat it as production
            if same:
                raise RefusedError(f"refusing to restore into {self.target!r}: it is production service {p['name']!r}'s "
                                   "database", hint="a restore replaces its target; restore into a dev or standby "
                                   "database instead; nothing was changed")

    def _check_rights(self) -> None:
        """Refuse, before anything is built, what the run could only find out later."""
        m = self.maint
        st = self.state
        su, createdb, replication = m.execute(
            "SELECT rolsuper, rolcreatedb, rolreplication FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
        problems = []
        if not (su or createdb):
            problems.append("it needs CREATEDB")
        if st.exists:
            row = m.execute("SELECT datistemplate, pg_catalog.pg_get_userbyid(datdba), "
                            "pg_catalog.pg_has_role(datdba, 'MEMBER') FROM pg_catalog.pg_database WHERE datname = %s",
                            (self.target,)).fetchone()
            if row[0]:
                raise RefusedError(f"refusing to replace {self.target!r}: it is a template database (IS_TEMPLATE), "
                                   "which cannot be dropped", hint=f"ALTER DATABASE {names.quote_ident(self.target)} "
                                   "IS_TEMPLATE false first, if it really is to be replaced; nothing was changed")
            if not (su or row[2]):
                problems.append(f"it must own {self.target!r} (be a member of {row[1]}) to rename and drop it")
            blockers = m.execute(
                """SELECT DISTINCT a.usename, r.rolsuper FROM pg_catalog.pg_stat_activity a
                   JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid
                   WHERE a.datname = %s AND a.pid <> pg_catalog.pg_backend_pid()
                     AND NOT pg_catalog.pg_has_role(a.usesysid, 'MEMBER')""", (self.target,)).fetchall()
            signal = su or m.execute("SELECT pg_catalog.pg_has_role('pg_signal_backend', 'MEMBER')").fetchone()[0]
            stuck = [u for u, usu in blockers if (usu and not su) or not signal]
            if stuck:
                problems.append(f"it cannot end the sessions of {', '.join(sorted(stuck))} on {self.target!r} at the swap "
                                "(GRANT pg_signal_backend to it; a superuser's sessions need a superuser)")
            if st.slots and self.opts.drop_slots and not (su or replication):
                problems.append("dropping replication slots (--drop-slots) needs REPLICATION")
            if st.subscriptions and self.opts.detach_subscriptions:
                foreign = [r[0] for r in m.execute(
                    "SELECT subname FROM pg_catalog.pg_subscription WHERE subdbid = %s "
                    "AND NOT pg_catalog.pg_has_role(subowner, 'MEMBER')", (st.oid,))]
                if foreign and not su:
                    problems.append(f"detaching subscription(s) {', '.join(foreign)} needs their owner (or a superuser)")
        if problems:
            raise TargetError(f"the restoring role cannot complete this restore: {'; '.join(problems)}",
                              hint="see docs/quickstart.md (least-privilege roles); nothing was changed")

    # -- 2. room --------------------------------------------------------------------------------
    def make_room(self, keep_previous: int) -> list[str]:
        """Drop previous copies beyond the newest `keep_previous` before building: copies the
        policy would drop whatever this run does (e.g. after `--keep-previous` was lowered).
        The copies kept stay until the swap has committed. Peak disk: target, `keep_previous`
        copies and the build."""
        assert self.maint is not None
        doomed = swap.prev_copies(self.maint, self.target)[max(keep_previous, 0):]
        dropped = []
        for d in doomed:
            note = swap.try_drop_copy(self.maint, self.server, d)
            if note:
                self.warnings.append(note)
            else:
                dropped.append(d)
        return dropped

    # -- 3. build ---------------------------------------------------------------------------------
    def build(self, props: DatabaseProps | None = None) -> int:
        """Create, load and verify the build; apply `props` (default: the manifest's, mapped)
        but their owner and privileges: from its creation until `open_privileges` the build is
        the restoring role's, and only it (and superusers, whom no privilege stops) may connect
        to it. Returns its OID."""
        assert self.maint is not None and self.pool is not None and self.archive is not None
        drop_database(self.maint, self.tmp)  # a build left by an interrupted run (we hold the lock)
        # snapdb's alone until the seal: PUBLIC's default CONNECT would let other roles read the
        # rows before they are scrubbed, and so would owning it (an owner holds every grant option
        # and may ALTER DATABASE … ALLOW_CONNECTIONS): the restoring role owns it until the seal.
        # Created closed to every session, so none can be there when the privileges are narrowed
        self.oid = create_database(self.maint, self.tmp, self.manifest.database, owner=None, allow_connections=False)
        self._me = self.maint.execute("SELECT current_user").fetchone()[0]
        with self.maint.transaction():
            restrict_database_acl(self.maint, self.tmp, self._me)
            self.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(self.tmp)))
        faults.checkpoint("restore:created")
        lent = _lend_create(self.server, self.tmp, self.owner)
        _build(self.pool, self.store, self.manifest, self.server, self.tmp, self.jobs, self.reporter, self.archive,
               self.tool, self.opts)
        _return_create(self.server, self.tmp, self.owner, lent, self.archive, self.tool, self.opts)
        faults.checkpoint("restore:loaded")
        analyzed = _analyze_alone_if_many(self.server, self.tmp)
        self.hold = TableHold(self.server, self.tmp, "SHARE", TargetError, on_wait=self._end_build_sessions)
        analyzer = _InThread(lambda: None if analyzed else self.hold.conn.execute("ANALYZE"))
        try:
            self._fingerprint = fingerprint.fingerprint(self.hold.conn)
            analyzer.start()
            diffs = verify_database(self.server, self.manifest, error_cls=TargetError, dbname=self.tmp, jobs=self.jobs,
                                    reporter=self.reporter, pool=self.pool, read_tables=self.verify == "full",
                                    expected_oid=self.oid, held=True)
        finally:
            analyzer.join()
        self.pool.close()  # the workers' sessions must be gone before the rename
        if diffs:
            raise IntegrityError(
                f"restored database differs from snapshot {self.manifest.id}: {diffs[0]}"
                + (f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""),
                hint="the target was not touched",
            )
        faults.checkpoint("restore:verified")
        if self.opts.scrub is not None:  # verified first (it proves what was restored), then scrubbed
            self.scrubbed = scrub.run(self.hold.conn, self.opts.scrub, build=self.tmp, target=self.target,
                                      service=self.opts.service)
            # the statistics ANALYZE took above (same transaction) sampled the rows before the scrub:
            # most_common_vals and histogram_bounds would keep production values; take them again,
            # of what the scrub wrote (a whole-database ANALYZE here would lock every table and index
            # of the build in this one transaction: out of shared memory at tens of thousands)
            _analyze_written(self.hold.conn)
            self._fingerprint = fingerprint.fingerprint(self.hold.conn)  # the seal compares with the scrubbed copy
            faults.checkpoint("restore:scrubbed")
        history.record_restore(self.server, self.tmp, self.target, self.manifest, conn=self.hold.conn)
        props = props or restore_checks.mapped_props(self.manifest.database, self.opts, self.owner)
        if self.opts.scrub is not None:  # also for the roles whose own settings would outrank them
            server_roles = scrub.server_role_settings(self.maint)
            self.scrubbed["role_settings"] = scrub.role_overrides(props, self.opts.scrub.settings, server_roles)
            props = scrub.with_settings(props, self.opts.scrub.settings, server_roles)
        self.props = props
        with self.maint.transaction():  # all but the owner and the privileges: `open_privileges`
            apply_database_props(self.maint, self.tmp, replace(props, owner="", acl=own_acl(self._me)))
        return self.oid

    def open_privileges(self) -> None:
        """Give the build the owner and database privileges of its `props` (the target's, after
        the role map and the options) instead of the restoring role's; `seal` does, once the
        build is closed to connections and its scrub committed."""
        assert self.maint is not None and self.props is not None
        with self.maint.transaction():
            open_database_acl(self.maint, self.tmp, self.props, self._me)

    def _end_build_sessions(self, own: int | None = None) -> list[tuple]:
        """End every session on the build but the hold's own (pid `own`, default the current
        hold's); return (pid, user, application) of each."""
        assert self.maint is not None
        own = own if own is not None else (self.hold.pid if self.hold is not None else 0)
        found = self.maint.execute(
            "SELECT pid, usename, application_name FROM pg_catalog.pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid() AND pid <> %s", (self.tmp, own)).fetchall()
        for pid, user, _app in found:
            try:
                self.maint.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,))
            except psycopg.errors.InsufficientPrivilege:
                raise TargetError(f"a session of {user} is connected to the build {self.tmp!r} and cannot be ended",
                                  hint="the target is unchanged; grant the restoring role pg_signal_backend") from None
        return found

    def release_hold(self) -> None:
        """Commit and end the hold early (a cutover upgrades the build next, which needs its
        tables); `seal` then cannot compare fingerprints."""
        if self.hold is not None:
            self.hold.commit()
            self.hold.close()
            self.hold = None

    # -- 4. seal ------------------------------------------------------------------------------------
    def seal(self) -> None:
        """Close the build to new sessions (until the swap opens it), end the others, check
        nothing moved since verification (when the hold is still there), commit the hold (and
        with it the scrub), and only then give the build its owner and privileges
        (`open_privileges`: nobody can connect now)."""
        assert self.maint is not None
        swap.close_build(self.maint, self.tmp)
        intruders = self._end_build_sessions()
        faults.checkpoint("restore:sealing")
        if self.hold is not None:
            assert self._fingerprint is not None
            now = fingerprint.fingerprint(self.hold.conn)
            moved = fingerprint.diff(self._fingerprint, now, ignore_schemas=(SNAPDB_SCHEMA,))  # its history row is ours
            if moved:
                found = ", ".join(f"{u}/{a or '-'}" for _, u, a in intruders)
                who = f" (sessions found on it: {found})" if intruders else ""
                raise IntegrityError(f"the build {self.tmp!r} changed after it was verified: {moved[0]}{who}",
                                     hint="something else writes to snapdb's build; the target is unchanged")
            self.hold.commit()
            self.hold.close()
            self.hold = None
        self.open_privileges()

    # -- 5. swap ----------------------------------------------------------------------------------------
    def swap(self, aside: str | None = None) -> str | None:
        assert self.maint is not None and self.oid is not None
        return swap.swap_in(self.maint, self.target, self.tmp, self.oid, keep_closed=not self.state.allow_connections,
                            aside=aside, recheck=lambda c: self._recheck(c))

    def _recheck(self, conn: psycopg.Connection) -> None:
        """Inside the swap transaction: what the target carries now (it may have changed during
        a long build) must still be acceptable."""
        st = swap.inspect(conn, self.target)
        swap.refuse_unsafe(st, self.target, drop_slots=self.opts.drop_slots, detach_subscriptions=self.opts.detach_subscriptions)
        new = (set(st.slots) - set(self.state.slots)) | (set(st.subscriptions) - set(self.state.subscriptions))
        if new:
            raise RefusedError(f"{self.target!r} gained {', '.join(sorted(new))} while the copy was built; refusing to "
                               "replace it", hint="run the restore again; the target is unchanged")
        self.state = st

    def discard(self) -> None:
        """Drop the build after a failure (only the one this run created)."""
        if self.hold is not None:
            self.hold.close()
            self.hold = None
        if self.pool is not None:
            self.pool.close()
        swap.drop_build_quietly(self.maint, self.server, self.maintenance_db, self.tmp, self.target, self.oid)

    # -- 6. after the swap ---------------------------------------------------------------------------------
    def after_swap(self, previous: str | None, keep_previous: int, warnings: list[str]) -> tuple[list[str], list[str]]:
        """Detach what the old copy carried (when told to) and rotate previous copies; every
        problem becomes a warning, since the restore has happened. Returns (kept, dropped)."""
        assert self.maint is not None
        if not self.state.allow_connections:
            warnings.append(f"{self.target!r} did not allow connections (ALLOW_CONNECTIONS false); the new copy does not either")
        if previous and self.state.subscriptions:
            try:
                done = swap.detach_subscriptions(self.server, previous)
                warnings.append(f"disabled and detached {', '.join(done)} in {previous!r}; the publisher keeps its slots")
            except SnapdbError as exc:
                warnings.append(f"{exc.message} (the copy set aside may still consume; the next run retries)")
        if previous and self.state.slots:
            for slot in self.state.slots:
                try:
                    self.maint.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (slot,))
                except psycopg.Error as exc:
                    warnings.append(f"could not drop replication slot {slot}: {first_line(exc)}")
            warnings.append(f"dropped replication slot(s) {', '.join(self.state.slots)} with the old copy (--drop-slots)")
        prevs = swap.prev_copies(self.maint, self.target)
        kept, dropped = prevs[:max(keep_previous, 0)], []
        for d in prevs[max(keep_previous, 0):]:
            note = swap.try_drop_copy(self.maint, self.server, d)
            if note:
                warnings.append(note)
                kept.append(d)
            else:
                dropped.append(d)
        return kept, dropped

    def close(self) -> None:
        if self.hold is not None:
            self.hold.close()
        if self.pool is not None:
            self.pool.close()
        if self.maint is not None:
            self.maint.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _analyze_alone_if_many(server: Endpoint, dbname: str) -> bool:
    """ANALYZE the build now, in a session of its own (one transaction per table), when its
    tables and indexes would take more than a quarter of the server's lock table inside the
    hold's transaction (``max_locks_per_transaction`` × (``max_connections`` +
    ``max_prepared_transactions``)): tens of thousands of tables. Return whether it did; else
    ANALYZE runs in the hold's transaction beside the verification, as usual."""
    with connect(server, TargetError, dbname=dbname, autocommit=True) as conn:
        keep_session_alive(conn)  # no statement_timeout of the server's or the role's: the largest builds would fail
        rels, capacity = conn.execute(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_class WHERE relkind IN ('r', 'p', 'i', 'm', 't')), "
            "current_setting('max_locks_per_transaction')::bigint * (current_setting('max_connections')::bigint "
            "+ current_setting('max_prepared_transactions')::bigint)").fetchone()
        if rels * 4 <= capacity:
            return False
        try:
            conn.execute("ANALYZE")
        except psycopg.Error as exc:
            raise TargetError(f"ANALYZE of the build failed: {first_line(exc)}") from None
        return True


def _analyze_written(conn: psycopg.Connection) -> None:
    """ANALYZE, in `conn`'s transaction, every table that transaction has inserted into, updated
    or deleted from (``pg_stat_xact_user_tables``) or rewritten, truncated or altered (its
    ``pg_class`` row is this transaction's): after a scrub, the tables it changed."""
    written = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_catalog.pg_stat_xact_user_tables s ON s.relid = c.oid "
        "WHERE c.relkind IN ('r', 'm', 'p') AND (s.n_tup_ins + s.n_tup_upd + s.n_tup_del > 0 "
        "OR c.xmin::text::bigint = pg_catalog.txid_current() % 4294967296) ORDER BY 1, 2").fetchall()
    for schema, name in written:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, name)))


class _InThread:
    """Run a callable in a thread, re-raising its exception at `join`."""

    def __init__(self, fn) -> None:
        self.fn, self.exc, self.t = fn, None, None

    def start(self) -> None:
        def run():
            try:
                self.fn()
            except BaseException as exc:  # noqa: BLE001 (re-raised in join)
                self.exc = exc
        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()

    def join(self) -> None:
        if self.t is not None:
            self.t.join()
        if self.exc is not None:
            exc, self.exc = self.exc, None
            if isinstance(exc, psycopg.Error):
                raise TargetError(f"ANALYZE of the build failed: {first_line(exc)}") from None
            raise exc


def _privilege_hint(exc: psycopg.Error) -> str:
    if isinstance(exc, psycopg.errors.InsufficientPrivilege) and "to set parameter" in str(exc):
        return ("the restoring role needs SET privilege on it (GRANT SET ON PARAMETER name TO role, PostgreSQL "
                "15+) or to be a superuser. The target is unchanged")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return ("the restoring role needs CREATEDB, membership in the roles that own objects (or --no-owner), and "
                "ownership of the target; see docs/quickstart.md (least privilege). The target is unchanged")
    return "the target is unchanged"


def _restore_flags(opts: RestoreOptions) -> list[str]:
    return (["--no-owner"] if opts.no_owner else []) + (["--no-privileges"] if opts.no_privileges else [])


def _pg_restore(server: Endpoint, dbname: str, archive: Path, sections: list[str], jobs: int, tool: str,
                opts: RestoreOptions, entries: Path | None = None) -> None:
    what = f"pg_restore ({'+'.join(sections) or 'privileges'})"
    flags = ["--no-tablespaces"] + _restore_flags(opts) + [f"--section={s}" for s in sections] + \
        (["-L", str(entries)] if entries else [])
    if opts.role_map:
        # role names rewritten on the way: pg_restore prints SQL, psql runs it in one transaction
        psql = str(Path(tool).with_name("psql"))
        consumer = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"] + \
            pgtools.conninfo_arg(server.conninfo(dbname)) + ["-f", "-"]
        producer = [tool] + flags + ["-f", "-", str(archive)]
        pipes.pipe_through(producer, consumer, lambda lines: roles.rewrite(lines, opts.role_map), TargetError, what)
        return
    argv = [tool, "--exit-on-error"] + flags + ([f"--jobs={jobs}"] if jobs > 1 else [])
    pgtools.run_tool(argv + pgtools.conninfo_arg(server.conninfo(dbname)) + [str(archive)], TargetError, what)


def _lend_create(server: Endpoint, dbname: str, owner: str | None) -> list[str]:
    """Lend CREATE on the build's schemas owned by pg_database_owner (``public``, 15+) to its
    owner-to-be `owner` for the restore; return those schemas (`_return_create` takes it back).

    pg_restore's ``ALTER TABLE … OWNER TO r`` needs r to have CREATE on the schema; on such a
    schema the database's owner has it, and its members. The build is the restoring role's until
    the seal, so a restoring role that is no superuser (superusers pass that check) lends it
    meanwhile; harmless, since no privilege lets that role connect to the build."""
    with connect(server, TargetError, dbname=dbname, autocommit=True) as conn:
        if not owner or is_superuser(conn) or owner == conn.execute("SELECT current_user").fetchone()[0]:
            return []
        lent = [r[0] for r in conn.execute("SELECT nspname FROM pg_catalog.pg_namespace "
                                           "WHERE pg_catalog.pg_get_userbyid(nspowner) = 'pg_database_owner'")]
        for schema in lent:
            conn.execute(sql.SQL("GRANT CREATE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(owner)))
    return lent


def _return_create(server: Endpoint, dbname: str, owner: str | None, lent: list[str], archive: Path, tool: str,
                   opts: RestoreOptions) -> None:
    """Revoke what `_lend_create` lent, then apply those schemas' privileges from the archive
    again (GRANT and REVOKE statements: applied twice they give what applying them once would)."""
    if not lent:
        return
    with connect(server, TargetError, dbname=dbname, autocommit=True) as conn:
        for schema in lent:
            conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {} CASCADE").format(sql.Identifier(schema),
                                                                                    sql.Identifier(owner)))
    toc = list(pipes.lines_of([tool, "-l", str(archive)], TargetError, "listing the schema archive"))
    acls = [line for line in toc if any(f" ACL - SCHEMA {s} " in line for s in lent)]
    if acls and not opts.no_privileges:
        path = archive.with_name("schema-acl.list")
        path.write_text("".join(acls), encoding="utf-8", errors="surrogateescape")
        _pg_restore(server, dbname, archive, [], 1, tool, opts, entries=path)  # (an ACL's section: none)


def _build(pool: WorkerPool, store: Store, manifest: mf.Manifest, server: Endpoint, tmp: str, jobs: int,
           reporter: Reporter, archive: Path, tool: str, opts: RestoreOptions) -> None:
    reporter.phase("restoring schema")
    _pg_restore(server, tmp, archive, ["pre-data", "data"], 1, tool, opts)
    with connect(server, TargetError, dbname=tmp, autocommit=True) as conn, conn.transaction():
        set_sequences(conn, manifest.sequences)
    reporter.done()
    faults.checkpoint("restore:schema")
    _load_tables(pool, store, manifest, server, tmp, reporter)
    reporter.phase("building indexes and constraints")
    _pg_restore(server, tmp, archive, ["post-data"], jobs, tool, opts)
    reporter.done()


def _load_tables(pool: WorkerPool, store: Store, manifest: mf.Manifest, server: Endpoint, tmp: str,
                 reporter: Reporter) -> None:
    """Load every data file in parallel (the parts of one table concurrently too, the tables of a
    pack one after another in one transaction, reading the file once); the row count the server
    reports for each part must equal the manifest's."""
    sizes = {f.path: f.raw_size for f in manifest.files}
    session = Session(server, TargetError, dbname=tmp, encoding=manifest.database.encoding, readonly=False)
    by_file: dict[str, list] = {}
    for t in manifest.tables:
        for p in t.parts:
            by_file.setdefault(p["file"], []).append((t, p))
    files = sorted(by_file.items(), key=lambda fp: -sizes.get(fp[0], 0))
    for path, parts in files:
        if len(parts) > 1 or "offset" in parts[0][1]:
            parts.sort(key=lambda tp: tp[1].get("offset", -1))
            if any("offset" not in p or "length" not in p for _, p in parts):
                raise IntegrityError(f"manifest of {manifest.id}: {path} holds several tables but not where each starts",
                                     hint="the target was not touched; restore another snapshot")
    reporter.phase("loading tables", total_bytes=sum(sizes.values()), total_items=sum(len(parts) for _, parts in files))

    def done(index: int, stored: list[int]) -> None:
        path, parts = files[index]
        for (t, p), n in zip(parts, stored):
            if n != p["rows"]:
                raise IntegrityError(
                    f"table {t.schema}.{t.name}, {path}: the server stored {n} rows, the manifest says {p['rows']}",
                    hint="the target was not touched",
                )
            reporter.advance(items=1)
            faults.checkpoint("restore:table-loaded")

    tasks = [(session, store, mf.key(manifest.id, path),
              [(t.load_ref(), p.get("offset"), p.get("length")) for t, p in parts]) for path, parts in files]
    pool.run_items(load_pack, tasks, [sizes.get(path, 0) for path, _ in files], on_done=done)
    reporter.done()
