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

from .. import faults, history, locks, manifest as mf, names
from ..config import Config, Endpoint
from ..errors import AbortedError, ConfigError, RefusedError, SnapdbError, TargetError
from ..postgres import DatabaseProps, connect, control_session, drop_database, first_line
from ..progress import NULL, Reporter
from ..restore import Build, RestoreOptions
from ..snapshot import take_snapshot
from ..store import Store
from ..verify import verify_database
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
        reason = exc.message if isinstance(exc, SnapdbError) else ("interrupted" if isinstance(exc, KeyboardInterrupt)
                                                                    else first_line(exc))
        abort_before_swap(ctx, reason)
        raise AbortedError(f"cutover of {ctx.service!r} to {j.tag} aborted at step {j.step}: {reason}",
                           hint=f"{ctx.service!r} serves again as before, unfrozen, and took every write; nothing was "
                                "lost" + (f" ({exc.hint})" if isinstance(exc, SnapdbError) and exc.hint else "")) from None
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


def _check_deadline(ctx: Context) -> None:
    if ctx.deadline is not None and time.time() > ctx.deadline:
        raise TargetError(f"the cutover's --timeout ({ctx.j.facts.get('timeout')} s) was exceeded before the swap")


def _hook(ctx: Context, point: str, **extra) -> None:
    res = hooks.run(point, ctx.svc.hooks.get(point), ctx.facts(**extra), ctx.svc.hook_timeout)
    if res is not None:
        ctx.result.hooks.append(res.to_json())
        ctx.j.note(ctx.store, hooks=ctx.result.hooks)


# -- 2. freeze -------------------------------------------------------------------------------------
def _freeze(ctx: Context, keep_apps: tuple[str, ...] = ()) -> None:
    j = ctx.j
    j.begin(ctx.store, "freeze")
    _hook(ctx, "before_freeze")
    st = freeze.capture(ctx.maint, ctx.dbname, j.freeze_mode)
    st.keep_apps = list(keep_apps)
    ctx.st = st
    a_oid = ctx.maint.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (ctx.dbname,)).fetchone()[0]
    j.note(ctx.store, freeze=st.to_json(), a_oid=int(a_oid))  # what to undo, before anything changes
    freeze.refuse_prepared(ctx.maint, ctx.dbname)  # before the slot, which would wait for it
    slot = proof.slot_name(j.id)
    with connect(freeze.own_endpoint(ctx.ep, st), TargetError, dbname=ctx.dbname, autocommit=True) as conn:
        lsn, why = proof.create_slot(conn, slot, timeout=max(5.0, j.facts.get("drain_timeout", 5.0)))
    j.note(ctx.store, slot=slot if lsn else None, slot_lsn=lsn, slot_missing=why)
    if why and not any(w.startswith(WEAK_PROOF) for w in j.facts.get("warnings", [])):
        ctx.result.warnings.append(weak_proof(why))
        j.note(ctx.store, warnings=j.facts.get("warnings", []) + [weak_proof(why)])
    freeze.apply(ctx.maint, st)
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
    freeze.terminate_others(ctx.maint, ctx.st)
    ctx.hold = freeze.Hold(ctx.ep, ctx.st, ctx.ep.with_dbname(ctx.maintenance_db))
    freeze.probe(ctx.ep, ctx.st, ctx.hold.tables, ctx.maint)
    if not j.done("snapshot"):  # nothing was copied yet: the freeze starts again from here
        j.note(ctx.store, freeze_point=_freeze_point(ctx))
        return
    changed = _changes_since_freeze(ctx)
    if changed:
        raise TargetError(f"{ctx.dbname!r} changed while the cutover was interrupted: {changed[0]}")


def _changes_since_freeze(ctx: Context) -> list[str]:
    """What A took after the freeze point: decoded row changes and catalog differences."""
    j = ctx.j
    point = j.facts["freeze_point"]
    out = proof.diff(point["fingerprint"], proof.fingerprint(ctx.hold.conn, since=point["fingerprint"]))
    if j.facts.get("slot"):
        with connect(freeze.own_endpoint(ctx.ep, ctx.st), TargetError, dbname=ctx.dbname, autocommit=True) as conn:
            out += [f"row change after the freeze: {w}" for w in proof.writes_after(conn, j.facts["slot"], point["lsn"])]
    elif j.done("snapshot"):  # no decoding: compare A's rows with the snapshot, in full
        m = mf.read_manifest(ctx.store, j.facts["snapshot_id"])
        diffs = verify_database(freeze.own_endpoint(ctx.ep, ctx.st), m, error_cls=TargetError, jobs=ctx.jobs)
        out += [f"differs from the snapshot: {d}" for d in diffs]
    return out


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
    oid = b.build(props=DatabaseProps(**ctx.st.props))
    j.note(ctx.store, build={"name": b.tmp, "oid": oid})
    b.release_hold()  # the upgrade needs the build's tables next
    j.end(ctx.store, "build", build={"name": b.tmp, "oid": oid})


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
    j.end(ctx.store, "upgrade", upgrade={"revisions": [s.revision for s in steps], "seconds": round(seconds, 3)})


# -- 6. prove -------------------------------------------------------------------------------------------------
def _prove(ctx: Context) -> None:
    j = ctx.j
    j.begin(ctx.store, "prove")
    if ctx.hold is None or not ctx.hold.alive():
        ctx.hold = freeze.Hold(ctx.ep, ctx.st, ctx.ep.with_dbname(ctx.maintenance_db))
    changed = _changes_since_freeze(ctx)
    prepared = [r[0] for r in ctx.maint.execute(
        "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE database = %s", (ctx.dbname,))]
    changed += [f"prepared transaction {g} exists" for g in prepared]
    if changed:
        raise TargetError(f"{ctx.dbname!r} is not unchanged since the freeze point: {changed[0]}"
                          + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""))
    how = "decoded WAL and catalog fingerprint" if j.facts.get("slot") else "catalog fingerprint and table locks"
    j.end(ctx.store, "prove", proof={"unchanged": True, "by": how, "slot_missing": j.facts.get("slot_missing")})


# -- 7. swap -------------------------------------------------------------------------------------------------
def _swap(ctx: Context) -> None:
    j = ctx.j
    build = j.facts["build"]
    j.begin(ctx.store, "swap")
    aside = j.facts.get("aside") or names.pre_name(ctx.dbname, j.tag, mf.utcnow())
    j.note(ctx.store, aside=aside)
    from .. import swap as swapping

    swapping.close_build(ctx.maint, build["name"])
    _end_sessions(ctx, build["name"], keep=None)
    # A: no new session can arrive; the locks hold until every other session is gone
    ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(ctx.dbname)))
    j.note(ctx.store, closed=True)
    _end_sessions(ctx, ctx.dbname, keep=ctx.hold.conn.info.backend_pid if ctx.hold else None)
    if ctx.hold is not None:
        ctx.hold.close()
        ctx.hold = None
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
        ctx.result.warnings.append(f"{exc.message}; the new release stays in place (`snapdb rollback "
                                   f"{ctx.service}` returns to the old one)")


def _write_counters(conn: psycopg.Connection, dbname: str) -> dict:
    """A database's row-change counters (pg_stat_database), as a baseline for "took writes since"."""
    row = conn.execute("SELECT tup_inserted, tup_updated, tup_deleted FROM pg_catalog.pg_stat_database "
                       "WHERE datname = %s", (dbname,)).fetchone()
    return {"tup_inserted": row[0], "tup_updated": row[1], "tup_deleted": row[2]} if row else {}


def _accepts_writes(ctx: Context) -> float:
    """Wait until a new session on the service's database would be read-write (open to
    connections, not read-only by default, not in recovery); return when (the end of the
    freeze window). Nothing is written."""
    deadline = time.time() + 30
    while True:
        try:
            with connect(ctx.ep, TargetError, autocommit=True) as conn:
                ro, rec = conn.execute("SELECT current_setting('default_transaction_read_only'), "
                                       "pg_catalog.pg_is_in_recovery()").fetchone()
                if ro == "off" and not rec:
                    return time.time()
        except TargetError:
            pass
        if time.time() > deadline:
            raise TargetError(f"{ctx.service!r} does not accept writes after the swap")
        time.sleep(0.02)


def _swapped(ctx: Context) -> bool:
    row = ctx.maint.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (ctx.dbname,)).fetchone()
    return bool(row) and int(row[0]) == int(ctx.j.facts["build"]["oid"])


def _end_sessions(ctx: Context, dbname: str, keep: int | None) -> None:
    for (pid,) in ctx.maint.execute(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()",
            (dbname,)).fetchall():
        if pid != keep:
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
        ctx.result.warnings.append(f"the set-aside database {aside!r} differs from the snapshot taken at the freeze: "
                                   f"{diffs[0]} — a write may have reached it after the freeze point")
    if j.facts.get("slot"):
        try:
            proof.drop_slot(ctx.maint, j.facts["slot"])
        except psycopg.Error as exc:
            ctx.result.warnings.append(f"could not drop the proof slot {j.facts['slot']}: {first_line(exc)}")
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
        "warnings": j.facts.get("warnings", []),
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
        maint = control_session(ep, TargetError, dbname=maintenance_db)
        try:
            locks.acquire(maint, ep.dbname, "cutover", f"{service!r} ({ep.host}:{ep.port}/{ep.dbname})")
        except BaseException:
            maint.close()
            raise
    ctx = Context(cfg=cfg, service=service, svc=svc, ep=ep, store=store, j=j, maint=maint,
                  maintenance_db=maintenance_db, jobs=jobs, reporter=reporter, release_probe=release_probe, mdir=mdir)
    timeout = j.facts.get("timeout")
    if timeout:
        ctx.deadline = datetime.fromisoformat(j.started_at).timestamp() + float(timeout)
    ctx.result = CutoverResult(id=j.id, service=service, tag=j.tag, outcome="running",
                               plan=j.facts.get("plan") or {},
                               predicted_seconds=((j.facts.get("plan") or {}).get("prediction") or {}).get("seconds"),
                               hooks=list(j.facts.get("hooks", [])))
    return ctx


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
