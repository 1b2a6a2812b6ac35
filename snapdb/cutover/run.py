"""The cutover itself: start, resume and abort, step by step, journaled (snapshot mode).

Steps (`journal.STEPS`), each recorded before and after it runs:

1. ``preflight`` — `plan.preflight`'s checks and plan (nothing changes).
2. ``freeze`` — hook ``before_freeze``; record A's state (`freeze.capture`) before touching it;
   create the proof slot (`proof.create_slot`); the freeze layers (`freeze.apply`), the drain,
   the table locks (`freeze.Hold`), the probes; record the freeze point (time, WAL position,
   catalog fingerprint, counters); hook ``after_freeze``.
3. ``snapshot`` — a normal snapshot of A (its sessions carry the freeze's token, so the
   gatekeeper lets them in).
4. ``build`` — B restored beside A with the restore machinery (`restore.Build`), verified, given
   A's database-level properties as they were before the freeze.
5. ``upgrade`` — B upgraded to the release (the release machinery; recorded in its history).
6. ``prove`` — A took no write after the freeze point (`proof`); anything else aborts.
7. ``swap`` — B sealed; A closed to connections and its locks released; in one transaction A
   becomes ``SERVICE__pre_<tag>_<time>`` (staying closed and read-only: frozen) and B becomes
   ``SERVICE``, open; the first write B accepts (its history row) ends the freeze window; hook
   ``after_swap``.
8. ``compare`` — with B serving, the set-aside A compared in full with the snapshot's manifest.
9. ``finish`` — the receipt; the journal closed.

A failure or a timeout before the swap commits aborts: B dropped, A unfrozen exactly as it was,
hook ``on_abort``, `AbortedError` (exit 12). `resume` continues a killed run from its journal
(re-establishing the freeze's locks first, and proving A did not change meanwhile); `abort`
undoes it from any step before the swap, and after the swap hands over to `rollback`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Callable

import psycopg
from psycopg import sql

from .. import faults, fingerprint, history, locks, manifest as mf, names
from ..config import Config, Endpoint
from ..errors import AbortedError, ConfigError, IntegrityError, RefusedError, SnapdbError, TargetError
from ..postgres import (SNAPDB_SCHEMA, DatabaseProps, apply_database_acl, connect, control_session, drop_database,
                        first_line, open_database_acl, own_acl)
from ..progress import NULL, Reporter
from ..restore import Build, RestoreOptions
from ..snapshot import take_snapshot
from ..store import Store
from ..verify import table_sums, verify_database
from . import freeze, hooks, journal, proof

log = logging.getLogger(__name__)


@dataclass
class CutoverResult:
    """What a cutover did (or, for ``--dry-run``, would do)."""

    id: str | None
    service: str
    tag: str
    outcome: str  # planned | done | aborted
    plan: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    freeze_window_seconds: float | None = None
    predicted_seconds: float | None = None
    snapshot_id: str | None = None
    set_aside: str | None = None
    proof: dict = field(default_factory=dict)
    compare: dict = field(default_factory=dict)
    hooks: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    receipt: str | None = None
    dropped_set_aside: list[str] = field(default_factory=list)  # older copies beyond keep_set_aside

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RollbackResult:
    service: str
    cutover_id: str
    restored: str  # the database that is SERVICE again (the set-aside one)
    set_aside: str | None  # where the rolled-back release went
    writes: dict = field(default_factory=dict)
    writes_snapshot: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dropped_set_aside: list[str] = field(default_factory=list)  # older copies beyond keep_set_aside

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Context:
    """Everything the steps share (rebuilt from the journal on resume)."""

    cfg: Config
    service: str
    svc: Endpoint  # the service as configured
    ep: Endpoint  # its admin connection (A)
    store: Store
    j: journal.Journal
    maint: psycopg.Connection  # holds the service's lock, on the maintenance database
    maintenance_db: str
    jobs: int = 2
    reporter: Reporter = NULL
    release_probe: Callable | None = None
    mdir: object = None
    st: freeze.FreezeState | None = None
    hold: freeze.Hold | None = None
    build: Build | None = None
    deadline: float | None = None
    result: CutoverResult | None = None
    b_maint: psycopg.Connection | None = None  # replicate mode, another server: its maintenance session
    b_snapshot: tuple | None = None  # replicate mode: (session, exported snapshot) of B as swapped in

    @property
    def dbname(self) -> str:
        return self.ep.dbname

    def facts(self, **extra) -> dict:
        f = self.j.facts
        return {"service": self.service, "tag": self.j.tag, "cutover_id": self.j.id, "database": self.dbname,
                "host": self.ep.host, "port": self.ep.port, "freeze_mode": self.j.freeze_mode,
                "freeze_lsn": (f.get("freeze_point") or {}).get("lsn"), "snapshot_id": f.get("snapshot_id"),
                "set_aside": f.get("set_aside"), **extra}


def proceed(ctx: Context) -> CutoverResult:
    """Run (or go on with) the steps not yet done; abort on failure before the swap."""
    j = ctx.j
    faults.checkpoint("cutover:preflight")
    record_committed_swap(ctx)
    try:
        if not j.done("freeze"):
            _freeze(ctx)
        else:
            _refreeze(ctx)
        faults.checkpoint("cutover:freeze")
        _check_deadline(ctx)
        if not j.done("snapshot"):
            _snapshot(ctx)
        faults.checkpoint("cutover:snapshot")
        _check_deadline(ctx)
        if not j.done("build"):
            _build(ctx)
        faults.checkpoint("cutover:build")
        _check_deadline(ctx)
        if not j.done("upgrade"):
            _upgrade(ctx)
        faults.checkpoint("cutover:upgrade")
        _check_deadline(ctx)
        if not j.done("swap"):
            _prove(ctx)
            faults.checkpoint("cutover:prove")
            _check_deadline(ctx)
            _swap(ctx)
        faults.checkpoint("cutover:swap")
    except AbortedError:
        raise
    except (SnapdbError, psycopg.Error, KeyboardInterrupt) as exc:
        if j.done("swap"):
            raise
        fail_before_swap(ctx, exc, swap_may_have_committed, record_committed_swap, abort_before_swap)
    if not j.done("compare"):
        _compare(ctx)
    faults.checkpoint("cutover:compare")
    if not j.done("finish"):
        _finish(ctx)
    return ctx.result


def record_committed_swap(ctx: Context) -> None:
    """A run killed right after its swap committed, before journaling it: the new database
    serves already; record the swap as done."""
    j = ctx.j
    if not j.done("swap") and (j.facts.get("build") or {}).get("oid") and j.facts.get("aside") and _swapped(ctx):
        ctx.st = freeze.FreezeState.from_json(j.facts["freeze"])
        j.end(ctx.store, "swap", note="the swap had committed when the run was interrupted; its window was not measured",
              set_aside=j.facts["aside"], swapped_at=None, freeze_window_seconds=None)


def fail_before_swap(ctx: Context, exc: BaseException, committed: Callable, record: Callable,
                     abort: Callable) -> None:
    """A step failed (or was interrupted) before the swap was journaled: if the swap may have
    committed (`committed(ctx)`), record it (`record`) and raise without undoing anything;
    else undo the cutover (`abort(ctx, reason)`) and raise `AbortedError`. Always raises."""
    reason = exc.message if isinstance(exc, SnapdbError) else ("interrupted" if isinstance(exc, KeyboardInterrupt)
                                                                else first_line(exc))
    if committed(ctx):
        raise_after_swap(ctx, reason, record)
    abort(ctx, reason)
    raise AbortedError(f"cutover of {ctx.service!r} to {ctx.j.tag} aborted at step {ctx.j.step}: {reason}",
                       hint=f"{ctx.service!r} serves again as before, unfrozen, and took every write; nothing was "
                            "lost" + (f" ({exc.hint})" if isinstance(exc, SnapdbError) and exc.hint else "")) from None


def swap_may_have_committed(ctx: Context) -> bool:
    """After a failure: did the swap commit (B serves as SERVICE)? When that cannot be told
    (the server is unreachable), True: an abort must never run over a committed swap."""
    build = ctx.j.facts.get("build") or {}
    if not build.get("oid") or not ctx.j.facts.get("aside"):
        return False  # the swap never started
    try:
        return _swapped(ctx)
    except psycopg.Error:
        try:
            with control_session(ctx.ep, TargetError, dbname=ctx.maintenance_db) as conn:
                row = conn.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s",
                                   (ctx.dbname,)).fetchone()
            return bool(row) and int(row[0]) == int(build["oid"])
        except (SnapdbError, psycopg.Error):
            return True


def raise_after_swap(ctx: Context, reason: str, record: Callable | None = None) -> None:
    """A failure once the swap may have committed: record it if it did (`record`: the mode's
    way, default snapshot mode's), never abort, and say how to finish."""
    try:
        (record or record_committed_swap)(ctx)
    except (SnapdbError, psycopg.Error):
        pass  # --resume records it
    raise TargetError(f"the cutover of {ctx.service!r} to {ctx.j.tag} was interrupted after its swap: {reason}",
                      hint=f"the new database may already serve as {ctx.service!r}; nothing was undone. "
                           f"`snapdb cutover {ctx.service} --resume` finishes it (or --abort rolls back)")


def _check_deadline(ctx: Context) -> None:
    if ctx.deadline is not None and time.time() > ctx.deadline:
        raise TargetError(f"the cutover's --timeout ({ctx.j.facts.get('timeout')} s) was exceeded before the swap")


def _hook(ctx: Context, point: str, **extra) -> None:
    """Run a hook; its result, failed or not, goes into the journal (and so the receipt)."""
    try:
        res = hooks.run(point, ctx.svc.hooks.get(point), ctx.facts(**extra), ctx.svc.hook_timeout)
    except hooks.HookFailed as exc:
        if exc.result is not None:
            ctx.result.hooks.append({**exc.result.to_json(), "failed": True})
            ctx.j.note(ctx.store, hooks=ctx.result.hooks)
        raise
    if res is not None:
        ctx.result.hooks.append(res.to_json())
        ctx.j.note(ctx.store, hooks=ctx.result.hooks)


def warn(ctx: Context, message: str) -> None:
    """A warning for the result, kept in the journal so a resumed run's receipt has it too."""
    if message not in ctx.result.warnings:
        ctx.result.warnings.append(message)
    ctx.j.note(ctx.store, warnings=list(ctx.result.warnings))


# -- 2. freeze -------------------------------------------------------------------------------------
def _freeze(ctx: Context, keep_apps: tuple[str, ...] = ()) -> None:
    """The freeze step. A run killed inside it left its captured state in the journal: that,
    not A as it is now (partly frozen), is what to restore, so it is never captured again."""
    j = ctx.j
    j.begin(ctx.store, "freeze")
    if j.facts.get("freeze"):
        st = freeze.FreezeState.from_json(j.facts["freeze"])
        ctx.st = st
    else:
        _hook(ctx, "before_freeze")
        st = freeze.capture(ctx.maint, ctx.dbname, j.freeze_mode)
        st.keep_apps = list(keep_apps)
        freeze.plan_roles(ctx.maint, st)
        ctx.st = st
        a_oid = ctx.maint.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s",
                                  (ctx.dbname,)).fetchone()[0]
        j.note(ctx.store, freeze=st.to_json(), a_oid=int(a_oid))  # what to undo, before anything changes
    faults.checkpoint("cutover:freeze-captured")
    freeze.refuse_prepared(ctx.maint, ctx.dbname)  # before the slot, which would wait for it
    if "slot_lsn" not in j.facts:
        slot = proof.slot_name(j.id)
        with connect(freeze.own_endpoint(ctx.ep, st), TargetError, dbname=ctx.dbname, autocommit=True) as conn:
            proof.drop_slot(conn, slot)  # one a killed run created but did not journal
            lsn, why = proof.create_slot(conn, slot, timeout=max(5.0, j.facts.get("drain_timeout", 5.0)))
        j.note(ctx.store, slot=slot if lsn else None, slot_lsn=lsn, slot_missing=why)
    if why_missing := j.facts.get("slot_missing"):
        if not any(w.startswith(WEAK_PROOF) for w in ctx.result.warnings):
            warn(ctx, weak_proof(why_missing))
    freeze.apply(ctx.maint, st)
    faults.checkpoint("cutover:freeze-applied")
    j.note(ctx.store, freeze=st.to_json())
    drained = freeze.drain(ctx.maint, st, float(j.facts.get("drain_timeout", 5.0)))
    ctx.hold = freeze.Hold(ctx.ep, st, ctx.ep.with_dbname(ctx.maintenance_db))
    probes = freeze.probe(ctx.ep, st, ctx.hold.tables, ctx.maint)
    point = _freeze_point(ctx)
    j.end(ctx.store, "freeze", drained=drained, probes=probes, freeze_point=point)
    _hook(ctx, "after_freeze")


def _freeze_point(ctx: Context) -> dict:
    conn = ctx.hold.conn
    lsn = conn.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()[0]
    stats = conn.execute("SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_catalog.pg_stat_database "
                         "WHERE datname = pg_catalog.current_database()").fetchone()
    return {"at": mf.utcnow().isoformat(), "lsn": lsn, "fingerprint": proof.fingerprint(conn),
            "stats": {"xact_commit": stats[0], "tup_inserted": stats[1], "tup_updated": stats[2],
                      "tup_deleted": stats[3]}}


def _refreeze(ctx: Context) -> None:
    """On resume: the freeze's locks died with the killed run; take them again before going on,
    and make sure A did not take a write meanwhile."""
    j = ctx.j
    ctx.st = freeze.FreezeState.from_json(j.facts["freeze"])
    if j.done("swap"):
        return
    if j.facts.get("closed"):
        # killed inside the swap, after A was closed to connections: open it again (the freeze's
        # layers still hold) so that snapdb can take its locks again; the swap closes it anew
        ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(ctx.dbname)))
        j.note(ctx.store, closed=False)
    j.note(ctx.store, locks_lost=True)  # from now on, unlogged tables are compared in full
    freeze.terminate_others(ctx.maint, ctx.st)
    ctx.hold = freeze.Hold(ctx.ep, ctx.st, ctx.ep.with_dbname(ctx.maintenance_db))
    freeze.probe(ctx.ep, ctx.st, ctx.hold.tables, ctx.maint)
    if not j.done("snapshot"):  # nothing was copied yet: the freeze starts again from here
        j.note(ctx.store, freeze_point=_freeze_point(ctx))
        return
    changed = _changes_since_freeze(ctx)
    if changed:
        raise TargetError(f"{ctx.dbname!r} changed while the cutover was interrupted: {changed[0]}")


def _proof_session(ctx: Context) -> psycopg.Connection:
    return connect(freeze.own_endpoint(ctx.ep, ctx.st), TargetError, dbname=ctx.dbname, autocommit=True)


def _changes_since_freeze(ctx: Context, session: psycopg.Connection | None = None, *,
                          final: bool = False) -> list[str]:
    """What A took after the freeze point: decoded row changes and catalog differences
    (`session`: an open session on A to decode on, for when A no longer accepts connections)."""
    j = ctx.j
    point = j.facts["freeze_point"]
    out = proof.diff(point["fingerprint"], proof.fingerprint(ctx.hold.conn, since=point["fingerprint"]))
    if j.facts.get("slot"):
        def decoded(conn: psycopg.Connection) -> list[str]:
            return [f"row change after the freeze: {w}"
                    for w in proof.writes_after(conn, j.facts["slot"], point["lsn"], flush_via=ctx.maint)]

        if session is not None:
            out += decoded(session)
        else:
            with _proof_session(ctx) as conn:
                out += decoded(conn)
        if j.facts.get("locks_lost") and j.done("snapshot") and not final:
            out += _unlogged_changes(ctx)
    elif j.done("snapshot") and not final:  # no decoding: compare A's rows with the snapshot, in full
        # (`final`: the proof once A is closed, under the same table locks as a full one just made)
        m = mf.read_manifest(ctx.store, j.facts["snapshot_id"])
        diffs = verify_database(freeze.own_endpoint(ctx.ep, ctx.st), m, error_cls=TargetError, jobs=ctx.jobs)
        out += [f"differs from the snapshot: {d}" for d in diffs]
    return out


def _unlogged_changes(ctx: Context) -> list[str]:
    """Unlogged tables whose rows differ from the snapshot: WAL decoding cannot see their
    changes, so once the freeze's locks were lost (a killed run) they are read in full."""
    m = mf.read_manifest(ctx.store, ctx.j.facts["snapshot_id"])
    unlogged = {(s, n) for s, n in ctx.hold.conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relpersistence = 'u' AND c.relkind = 'r'").fetchall()}
    entries = [t for t in m.tables if (t.schema, t.name) in unlogged]
    if not entries:
        return []
    sums = table_sums(freeze.own_endpoint(ctx.ep, ctx.st), [t.ref() for t in entries], error_cls=TargetError,
                      jobs=ctx.jobs, encoding=m.database.encoding)
    return [f"unlogged table {t.schema}.{t.name} differs from the snapshot"
            for t in entries if sums.get((t.schema, t.name)) != (t.rows, t.checksum)]


# -- 3. snapshot ------------------------------------------------------------------------------------------
def _snapshot(ctx: Context) -> None:
    j = ctx.j
    j.begin(ctx.store, "snapshot")
    m = take_snapshot(freeze.own_endpoint(ctx.ep, ctx.st), ctx.store, jobs=ctx.jobs,
                      label=f"cutover {j.id} to {j.tag}", release_probe=ctx.release_probe, reporter=ctx.reporter,
                      database_props=DatabaseProps(**ctx.st.props))  # as A is outside the freeze
    j.end(ctx.store, "snapshot", snapshot_id=m.id)


# -- 4. build -----------------------------------------------------------------------------------------------
def _build(ctx: Context) -> None:
    j = ctx.j
    j.begin(ctx.store, "build")
    m = mf.read_manifest(ctx.store, j.facts["snapshot_id"])
    b = Build(ctx.store, m, ctx.ep, ctx.dbname, jobs=ctx.jobs, maintenance_db=ctx.maintenance_db, verify="full",
              options=RestoreOptions(), reporter=ctx.reporter, lock=False, operation="cutover")
    ctx.build = b
    b.prepare(inspect_target=False, own_source=True)
    j.note(ctx.store, build={"name": b.tmp, "oid": None})
    oid = b.build(props=_closed_props(ctx))  # only snapdb may connect until the swap
    j.note(ctx.store, build={"name": b.tmp, "oid": oid})
    b.release_hold()  # the upgrade needs the build's tables next
    j.end(ctx.store, "build", build={"name": b.tmp, "oid": oid})


def _closed_props(ctx: Context) -> DatabaseProps:
    """A's properties for B, except its privileges: every database privilege for snapdb's own
    role only, so that no application session can reach B (by its temporary name) before the
    swap. `_open_to_apps` gives B A's privileges, once B is closed to connections."""
    props = DatabaseProps(**ctx.st.props)
    props.acl = own_acl(ctx.st.own_user)
    return props


def _open_to_apps(ctx: Context, dbname: str) -> None:
    """Give B A's database privileges (see `_closed_props`; `postgres.open_database_acl`)."""
    with ctx.maint.transaction():
        open_database_acl(ctx.maint, dbname, DatabaseProps(**ctx.st.props), ctx.st.own_user)


def _reopen_build(ctx: Context, dbname: str) -> None:
    """A resumed swap: B was closed (and perhaps given A's privileges) by the killed run; for
    snapdb's own checks it opens again, to snapdb only."""
    row = ctx.maint.execute("SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = %s", (dbname,)).fetchone()
    if row and not row[0]:
        with ctx.maint.transaction():
            for g in {g["grantee"] for g in ctx.st.props.get("acl") or []} - {"PUBLIC"}:
                ctx.maint.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                    sql.Identifier(dbname), sql.Identifier(g)))
            apply_database_acl(ctx.maint, dbname, _closed_props(ctx))
            ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(dbname)))


def _build_fingerprint(ctx: Context, counters: dict | None = None) -> dict:
    """B's catalog fingerprint (and, into `counters`, its user tables' row-change counters)."""
    with connect(ctx.ep.with_dbname(ctx.j.facts["build"]["name"]), TargetError, autocommit=True) as conn:
        if counters is not None:
            counters.update(user_counters(conn))
        return fingerprint.fingerprint(conn)


def _check_build_unchanged(ctx: Context) -> None:
    """B as the upgrade left it (nothing but snapdb can connect to it; this catches what a
    superuser might still do); its sequences recorded (a rollback refuses when they moved)."""
    counters: dict = {}
    now = _build_fingerprint(ctx, counters)  # only snapdb can be on B: its counters are the baseline of a rollback
    before = ctx.j.facts.get("b_fingerprint")
    moved = fingerprint.diff(before, now, ignore_schemas=(SNAPDB_SCHEMA,)) if before else []
    if moved:
        raise IntegrityError(f"the new database {ctx.j.facts['build']['name']!r} changed after its upgrade: {moved[0]}",
                             hint="something else writes to snapdb's build")
    ctx.j.note(ctx.store, b_sequences=now["sequences"], b_user_counters=counters)


# -- 5. upgrade ----------------------------------------------------------------------------------------------
def _upgrade(ctx: Context) -> None:
    from .. import migrate, releases
    from ..ledger import Ledger

    j = ctx.j
    j.begin(ctx.store, "upgrade")
    b_ep = ctx.ep.with_dbname(j.facts["build"]["name"])
    ledger = Ledger.load(ctx.mdir)
    rel = ledger.get(j.tag)
    with releases.open_scripts(ctx.mdir, j.tag) as scripts, migrate.UpgradeSession(b_ep, lock=True) as session:
        releases.check_release(rel, scripts)
        steps = migrate.plan(scripts, session.current, rel.revision, ledger.tag_for, f"the new database of {ctx.service!r}")
        seconds = 0.0
        if steps:
            rec = history.new_record(
                "upgrade", b_ep.with_dbname(ctx.dbname, name=ctx.service), tag=j.tag, from_revision=session.current,
                to_revision=rel.revision, reached_revision=session.current, checksum=rel.checksum,
                restored_from=j.facts["snapshot_id"], restored_from_source=ctx.service,
                rehearsal=(j.facts.get("plan") or {}).get("rehearsal"), scripts_origin=scripts.origin)
            seconds = session.apply(scripts, steps, rec, ctx.store)
    j.end(ctx.store, "upgrade", upgrade={"revisions": [s.revision for s in steps], "seconds": round(seconds, 3)},
          b_fingerprint=_build_fingerprint(ctx))


# -- 6. prove -------------------------------------------------------------------------------------------------
def _prove(ctx: Context) -> None:
    """A first proof, before anything is closed (an early abort); the swap proves again once A
    is closed and no session but snapdb's is left on it."""
    j = ctx.j
    j.begin(ctx.store, "prove")
    if ctx.hold is None or not ctx.hold.alive():
        ctx.hold = freeze.Hold(ctx.ep, ctx.st, ctx.ep.with_dbname(ctx.maintenance_db))
    _refuse_changes(ctx, _changes_since_freeze(ctx))
    how = "decoded WAL and catalog fingerprint" if j.facts.get("slot") else "catalog fingerprint and table locks"
    j.end(ctx.store, "prove", proof={"unchanged": True, "by": how, "slot_missing": j.facts.get("slot_missing")})


def _refuse_changes(ctx: Context, changed: list[str]) -> None:
    prepared = [r[0] for r in ctx.maint.execute(
        "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE database = %s", (ctx.dbname,))]
    changed = changed + [f"prepared transaction {g} exists" for g in prepared]
    if changed:
        raise TargetError(f"{ctx.dbname!r} is not unchanged since the freeze point: {changed[0]}"
                          + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""))


# -- 7. swap -------------------------------------------------------------------------------------------------
def _swap(ctx: Context) -> None:
    j = ctx.j
    build = j.facts["build"]
    j.begin(ctx.store, "swap")
    aside = j.facts.get("aside") or names.pre_name(ctx.dbname, j.tag, mf.utcnow())
    j.note(ctx.store, aside=aside)
    from .. import swap as swapping

    _reopen_build(ctx, build["name"])
    _check_build_unchanged(ctx)
    swapping.close_build(ctx.maint, build["name"])
    _end_sessions(ctx, build["name"], keep=())
    _open_to_apps(ctx, build["name"])  # closed to connections now: its grants may be A's again
    if ctx.hold is None or not ctx.hold.alive():  # the locks were lost since the proof: prove again in full
        ctx.hold = freeze.Hold(ctx.ep, ctx.st, ctx.ep.with_dbname(ctx.maintenance_db))
        _refuse_changes(ctx, _changes_since_freeze(ctx))
    close_and_prove(ctx, "cutover:closed")
    baseline = _write_counters(ctx.maint, build["name"])  # B is closed and idle: its counters are final
    swapping.swap_in(ctx.maint, ctx.dbname, build["name"], build["oid"], aside=aside)
    faults.checkpoint("cutover:swapped-unrecorded")
    swapped = time.time()
    open_at = _accepts_writes(ctx)
    started = datetime.fromisoformat(ctx.st.started_at).timestamp()
    window = round(open_at - started, 3)
    j.end(ctx.store, "swap", set_aside=aside, swapped_at=datetime.fromtimestamp(swapped).astimezone().isoformat(),
          freeze_window_seconds=window, swap_to_writable_seconds=round(open_at - swapped, 3), b_counters=baseline)
    ctx.result.freeze_window_seconds = window
    ctx.result.set_aside = aside
    try:
        _hook(ctx, "after_swap", freeze_seconds=window)
    except hooks.HookFailed as exc:
        warn(ctx, f"{exc.message}; the new release stays in place (`snapdb rollback {ctx.service}` returns to the "
                  "old one)")


def user_counters(conn: psycopg.Connection) -> dict:
    """Row changes counted in the user tables of `conn`'s database (snapdb's schema aside)."""
    row = conn.execute("SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_del), 0) "
                       "FROM pg_catalog.pg_stat_user_tables WHERE schemaname <> %s", (SNAPDB_SCHEMA,)).fetchone()
    return {"tup_inserted": int(row[0]), "tup_updated": int(row[1]), "tup_deleted": int(row[2])}


def wait_sessions_gone(conn: psycopg.Connection, dbname: str, keep: tuple[int, ...] = (), timeout: float = 10.0) -> None:
    """Wait until no session but `conn`'s and `keep` is on `dbname` (ended ones exit, and flush
    their statistics, a moment after `pg_terminate_backend` returns)."""
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = %s "
                       "AND pid <> pg_catalog.pg_backend_pid() AND NOT pid = ANY(%s)",
                       (dbname, list(keep))).fetchone()[0] and time.monotonic() < deadline:
        time.sleep(0.05)


def close_and_prove(ctx: Context, checkpoint: str) -> None:
    """Close A to connections, end every other session on it while the table locks still hold
    (a write waiting for them never runs), then prove once more, on a session opened before the
    close, that A took nothing since the freeze point: a ``nextval()`` or a large-object write
    needs no table lock, so the proof made before this point cannot be the last word. The
    locks are released last."""
    with _proof_session(ctx) as session:
        ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(ctx.dbname)))
        ctx.j.note(ctx.store, closed=True)
        _end_sessions(ctx, ctx.dbname, keep=(ctx.hold.conn.info.backend_pid, session.info.backend_pid))
        faults.checkpoint(checkpoint)
        _refuse_changes(ctx, _changes_since_freeze(ctx, session, final=True))
    ctx.hold.close()
    ctx.hold = None


def _write_counters(conn: psycopg.Connection, dbname: str) -> dict:
    """A database's row-change counters (pg_stat_database), as a baseline for "took writes since"."""
    row = conn.execute("SELECT tup_inserted, tup_updated, tup_deleted FROM pg_catalog.pg_stat_database "
                       "WHERE datname = %s", (dbname,)).fetchone()
    return {"tup_inserted": row[0], "tup_updated": row[1], "tup_deleted": row[2]} if row else {}


def _accepts_writes(ctx: Context, ep: Endpoint | None = None, poll: float = 0.02) -> float:
    """Wait until a new session on the service's database would be read-write (open to
    connections, not read-only by default, not in recovery); return when (the end of the
    freeze window). Nothing is written."""
    deadline = time.time() + 30
    while True:
        try:
            with connect(ep or ctx.ep, TargetError, autocommit=True) as conn:
                ro, rec = conn.execute("SELECT current_setting('default_transaction_read_only'), "
                                       "pg_catalog.pg_is_in_recovery()").fetchone()
                if ro == "off" and not rec:
                    return time.time()
        except TargetError:
            pass
        if time.time() > deadline:
            raise TargetError(f"{ctx.service!r} does not accept writes after the swap")
        time.sleep(poll)


def _swapped(ctx: Context) -> bool:
    row = ctx.maint.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (ctx.dbname,)).fetchone()
    return bool(row) and int(row[0]) == int(ctx.j.facts["build"]["oid"])


def _end_sessions(ctx: Context, dbname: str, keep: tuple[int, ...] | int | None) -> None:
    """End every session on `dbname` but snapdb's control session and the pids in `keep`."""
    keep = (keep,) if isinstance(keep, int) else tuple(keep or ())
    for (pid,) in ctx.maint.execute(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()",
            (dbname,)).fetchall():
        if pid not in keep:
            ctx.maint.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,))


# -- 8. compare -------------------------------------------------------------------------------------------------
def _compare(ctx: Context) -> None:
    j = ctx.j
    j.begin(ctx.store, "compare")
    aside = j.facts["set_aside"]
    m = mf.read_manifest(ctx.store, j.facts["snapshot_id"])
    ident = sql.Identifier(aside)
    ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident))
    try:
        diffs = verify_database(ctx.ep.with_dbname(aside), m, error_cls=TargetError, jobs=ctx.jobs)
    finally:
        ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
    result = {"matches": not diffs, "differences": [str(d) for d in diffs[:20]], "snapshot_id": m.id}
    if diffs:
        warn(ctx, f"the set-aside database {aside!r} differs from the snapshot taken at the freeze: {diffs[0]} — a "
                  "write may have reached it after the freeze point and be missing from the new database")
    drop_proof_slot(ctx)
    j.end(ctx.store, "compare", compare=result)


# -- 9. finish -----------------------------------------------------------------------------------------------
def _finish(ctx: Context) -> None:
    j = ctx.j
    j.begin(ctx.store, "finish")
    m = mf.read_manifest(ctx.store, j.facts["snapshot_id"])
    receipt = {
        "format": "snapdb-cutover-receipt/1", "id": j.id, "service": ctx.service, "database": ctx.dbname,
        "server": {"host": ctx.ep.host, "port": ctx.ep.port}, "tag": j.tag, "mode": j.mode,
        "release": (j.facts.get("plan") or {}).get("revision"), "checksum": (j.facts.get("plan") or {}).get("checksum"),
        "snapshot_id": m.id, "freeze_mode": j.freeze_mode, "freeze_point": _strip(j.facts.get("freeze_point")),
        "tables": [{"table": f"{t.schema}.{t.name}", "rows": t.rows, "checksum": t.checksum} for t in m.tables],
        "probes": j.facts.get("probes"), "drain": j.facts.get("drained"), "proof": j.facts.get("proof"),
        "compare": j.facts.get("compare"), "freeze_window_seconds": j.facts.get("freeze_window_seconds"),
        "predicted_seconds": ((j.facts.get("plan") or {}).get("prediction") or {}).get("seconds"),
        "steps": [asdict(s) for s in j.steps], "set_aside": j.facts.get("set_aside"),
        "upgrade": j.facts.get("upgrade"), "hooks": j.facts.get("hooks", []), "os_user": j.os_user,
        "client_host": j.client_host, "started_at": j.started_at, "snapdb_version": j.snapdb_version,
        "warnings": list(dict.fromkeys([*j.facts.get("warnings", []), *ctx.result.warnings])),
    }
    key = journal.write_receipt(ctx.store, receipt)
    rec = history.new_record("cutover", ctx.ep, tag=j.tag, restored_from=m.id, restored_from_source=ctx.service,
                             outcome="succeeded", rehearsal=(j.facts.get("plan") or {}).get("rehearsal"),
                             checksum=(j.facts.get("plan") or {}).get("checksum"))
    rec.started_at, rec.ended_at = j.started_at, mf.utcnow().isoformat()
    rec.seconds = j.facts.get("freeze_window_seconds")
    history.write_catalog(ctx.store, rec)
    j.end(ctx.store, "finish", receipt=key, history_record=rec.record_id)
    j.close(ctx.store, "done")
    r = ctx.result
    r.outcome, r.receipt, r.snapshot_id = "done", key, m.id
    r.set_aside = j.facts.get("set_aside")
    r.freeze_window_seconds = j.facts.get("freeze_window_seconds")
    r.proof, r.compare = j.facts.get("proof") or {}, j.facts.get("compare") or {}
    r.steps = [{"name": s.name, "status": s.status, "seconds": s.seconds} for s in j.steps]


def drop_proof_slot(ctx: Context) -> None:
    """Drop the cutover's proof slot, if it has one (a warning when that fails)."""
    slot = ctx.j.facts.get("slot")
    if not slot:
        return
    try:
        proof.drop_slot(ctx.maint, slot)
        ctx.j.note(ctx.store, slot=None, slot_dropped=slot)
    except psycopg.Error as exc:
        warn(ctx, f"could not drop the proof slot {slot}: {first_line(exc)}")


def _strip(point: dict | None) -> dict | None:
    """The freeze point without its bulky fingerprint (the receipt has the tables)."""
    if not point:
        return point
    return {k: v for k, v in point.items() if k != "fingerprint"}


# -- abort --------------------------------------------------------------------------------------------------
def abort_before_swap(ctx: Context, reason: str) -> None:
    """Undo a cutover that has not swapped: B dropped, A unfrozen exactly as it was."""
    j = ctx.j
    j.state = "aborting"
    j.note(ctx.store, abort_reason=reason, aborted_at_step=j.step)
    notes = []
    try:
        _hook(ctx, "on_abort", step=j.step, reason=reason)
    except hooks.HookFailed as exc:
        notes.append(exc.message)
    if ctx.build is not None:
        ctx.build.discard()
        ctx.build.close()
        ctx.build = None
    build = j.facts.get("build")
    if build:
        row = ctx.maint.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (build["name"],)).fetchone()
        if row and (build.get("oid") is None or int(row[0]) == int(build["oid"])):
            drop_database(ctx.maint, build["name"])
    if j.facts.get("closed"):
        ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(ctx.dbname)))
    if ctx.hold is not None:
        ctx.hold.close()
        ctx.hold = None
    if j.facts.get("freeze"):
        freeze.release(ctx.maint, freeze.FreezeState.from_json(j.facts["freeze"]))
    if j.facts.get("slot"):
        try:
            proof.drop_slot(ctx.maint, j.facts["slot"])
        except psycopg.Error as exc:
            notes.append(f"could not drop the proof slot {j.facts['slot']}: {first_line(exc)}")
    j.note(ctx.store, abort_notes=notes)
    j.close(ctx.store, "aborted")
    if ctx.result is not None:
        ctx.result.outcome = "aborted"
        ctx.result.warnings += notes


# -- entry points -------------------------------------------------------------------------------------------
def open_context(cfg: Config, service: str, store: Store, j: journal.Journal, *, jobs: int, reporter: Reporter,
                 maintenance_db: str, release_probe: Callable | None, mdir,
                 maint: psycopg.Connection | None = None) -> Context:
    """Take the service's lock (unless `maint` is a session that holds it already, which the
    context then owns) and gather what the steps share."""
    if service not in cfg.services:
        raise ConfigError(f"unknown service {service!r} (services: {', '.join(sorted(cfg.services)) or 'none'})",
                          hint="a cutover switches a service from snapdb.toml")
    svc = cfg.services[service]
    ep = svc.admin()
    if maint is None:
        maint = locked_session(ep, service, maintenance_db)
    ctx = Context(cfg=cfg, service=service, svc=svc, ep=ep, store=store, j=j, maint=maint,
                  maintenance_db=maintenance_db, jobs=jobs, reporter=reporter, release_probe=release_probe, mdir=mdir)
    timeout = j.facts.get("timeout")
    if timeout:
        ctx.deadline = datetime.fromisoformat(j.started_at).timestamp() + float(timeout)
    ctx.result = CutoverResult(id=j.id, service=service, tag=j.tag, outcome="running",
                               plan=j.facts.get("plan") or {},
                               predicted_seconds=((j.facts.get("plan") or {}).get("prediction") or {}).get("seconds"),
                               hooks=list(j.facts.get("hooks", [])),
                               warnings=list(dict.fromkeys([*((j.facts.get("plan") or {}).get("warnings") or []),
                                                            *j.facts.get("warnings", [])])))
    return ctx


def locked_session(ep: Endpoint, service: str, maintenance_db: str) -> psycopg.Connection:
    """A session on the maintenance database holding the service's server-wide lock (`locks`)."""
    maint = control_session(ep, TargetError, dbname=maintenance_db)
    try:
        locks.acquire(maint, ep.dbname, "cutover", f"{service!r} ({ep.host}:{ep.port}/{ep.dbname})")
    except BaseException:
        maint.close()
        raise
    return maint


def close_context(ctx: Context) -> None:
    if ctx.hold is not None:
        ctx.hold.close()
    if ctx.build is not None:
        ctx.build.close()
    if ctx.b_snapshot is not None:
        ctx.b_snapshot[0].close()
    if ctx.b_maint is not None:
        ctx.b_maint.close()
    ctx.maint.close()


WEAK_PROOF = "proof by counters and catalog fingerprint only"


def weak_proof(why: str) -> str:
    """The warning of a cutover whose proof cannot decode WAL (`why`: wal_level, slots, rights)."""
    return (f"{WEAK_PROOF}: {why} (no decoded WAL: writes are held by the table locks, and A is compared with the "
            "snapshot in full before the swap)")


def refuse_unfrozen() -> None:
    raise RefusedError(
        "a cutover without --freeze would lose the writes the live database takes while the new one is built",
        hint="pass --freeze (writes are refused for the window the plan predicts; see --dry-run), "
             "or use --mode replicate for a window of about a second")
