"""The cutover verbs behind `snapdb.commands`: cutover (start, resume, abort), freeze and unfreeze
of a manual window, rollback, and the cutover part of status.

Each takes what `commands` resolved (configuration, store, migrations directory, the release
probe for snapshots, the service's own snapshots) and returns a result object; none prints.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psycopg
from psycopg import sql

from .. import faults, fingerprint, history, locks, manifest as mf, names
from ..config import Config, Endpoint
from ..errors import BusyError, ConfigError, IntegrityError, RefusedError, SnapdbError, TargetError
from ..ledger import Ledger, check_tag
from ..postgres import SNAPDB_SCHEMA, DatabaseProps, alembic_revisions, connect, control_session, first_line, system_identifier
from ..progress import NULL, Reporter
from ..snapshot import take_snapshot
from ..store import MissingError, Store
from . import freeze, journal, plan as planning, proof, run
from .run import RollbackResult

MODES = ("snapshot", "replicate")


def _service(cfg: Config, service: str):
    if service not in cfg.services:
        raise ConfigError(f"unknown service {service!r} (services: {', '.join(sorted(cfg.services)) or 'none'})",
                          hint="name a service of snapdb.toml")
    return cfg.services[service]


def preflight(cfg: Config, service: str, tag: str, store: Store, mdir: Path, own: list[mf.Manifest], *,
              freeze_mode: str, drain_timeout: float, timeout: float | None, mode: str = "snapshot",
              max_freeze: float | None = None, to_server: Endpoint | None = None) -> planning.Plan:
    """Every check before anything changes (see `plan`, and `rplan` for the replicate mode);
    returns the plan or raises."""
    from .. import migrate, releases

    check_tag(tag)
    if freeze_mode not in freeze.MODES:
        raise ConfigError(f"--freeze-mode must be one of {', '.join(freeze.MODES)}, not {freeze_mode!r}")
    svc = _service(cfg, service)
    ep = svc.admin()
    t0 = time.perf_counter()
    ledger = Ledger.load(mdir)
    rel = ledger.get(tag)
    with releases.open_scripts(mdir, tag) as scripts:
        scripts_seconds = time.perf_counter() - t0  # the replicate window reads them again (`rwindow`)
        releases.check_release(rel, scripts)
        with control_session(ep, TargetError) as conn:
            freeze.require_session_visibility(conn)  # the drain and the probes are blind otherwise
            try:
                current = migrate.single_revision(alembic_revisions(conn), service)
                steps = migrate.plan(scripts, current, rel.revision, ledger.tag_for, service)
                sysid = system_identifier(conn)
                problems, warnings = planning.check_database(conn, ep.dbname, {conn.info.backend_pid})
                can_decode, why = planning.proof_available(conn)
                lo_readable = conn.execute(
                    "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_largeobject', 'SELECT')").fetchone()[0]
                size = planning.size_of(conn, ep.dbname)
                free = planning.free_disk(conn, ep)
                busy = conn.execute("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = %s AND "
                                    "xact_start IS NOT NULL AND pid <> pg_catalog.pg_backend_pid()",
                                    (ep.dbname,)).fetchone()[0]
                rehearsal = _rehearsal(cfg, store, service, svc, tag, rel, sysid)
                rep = None
                if mode == "replicate":
                    rep = _replicate_checks(conn, ep, steps, rehearsal, store, service, svc, drain_timeout,
                                            max_freeze, to_server, scripts_seconds)
                    problems += rep[0]
                    warnings += rep[1]
            except psycopg.Error as exc:
                raise TargetError(f"reading {service!r} failed: {first_line(exc)}") from None
        origin = scripts.origin
    if not steps:
        problems.append(f"{service!r} is already at {tag} (revision {rel.revision}): there is nothing to cut over to")
    if svc.role == "production":
        if rehearsal is None:
            problems.append(f"no rehearsal of {tag} (checksum {rel.checksum[:12]}) on a copy restored from a snapshot "
                            f"of {service!r} is on record: restore one into dev and upgrade it to {tag} first")
    if free is not None and free < size * 1.2:
        problems.append(f"not enough free disk for the new database: {free / 1e9:.1f} GB free, "
                        f"{size * 1.2 / 1e9:.1f} GB needed ({size / 1e9:.1f} GB plus 20%)")
    elif free is None:
        warnings.append(f"free disk on the server could not be checked (the new database needs about {size / 1e9:.2f} GB)")
    if not can_decode:
        warnings.append(run.weak_proof(why))
    if not lo_readable:
        warnings.append("the proof does not cover large-object contents: the admin role cannot read pg_largeobject "
                        "(superusers can), so a write into an existing large object during the freeze would go unseen")
    planning.raise_problems(service, problems)
    prediction = planning.predict(store, service, ep, size, rehearsal, drain_timeout, own, busy)
    if rep is not None:
        prediction = rep[2]["prediction"]
        free = None if to_server is not None else free  # the new database is on the other server
    p = planning.Plan(
        service=service, database=ep.label(), tag=tag, revision=rel.revision, checksum=rel.checksum, scripts=origin,
        from_revision=current, from_tag=ledger.tag_for(current), steps=[s.to_json() for s in steps],
        freeze_mode=freeze_mode, drain_timeout=drain_timeout, timeout=timeout,
        rehearsal=rehearsal.record_id if rehearsal else None, size_bytes=size, free_bytes=free,
        proof="decoded WAL and catalog fingerprint" if can_decode else "catalog fingerprint and table locks",
        prediction=prediction, warnings=warnings)
    if rep is not None:
        p.replicate = {k: v for k, v in rep[2].items() if k != "prediction"}
        p.mode = "replicate"
        p.to_server = to_server.display() if to_server is not None else None
    return p


def _rehearsal(cfg: Config, store: Store, service: str, svc, tag: str, rel, sysid) -> history.Record | None:
    if svc.role != "production":
        return None
    return history.find_rehearsal(store, service, tag, rel.checksum, cfg.rehearsal_max_age, mf.utcnow(),
                                  lambda server: mf.same_source(server, svc, sysid))


def _replicate_checks(conn, ep, steps, rehearsal, store, service, svc, drain_timeout, max_freeze, to_server,
                      scripts_seconds=None):
    from . import rplan

    b_conn = None
    try:
        if to_server is not None:
            b_conn = control_session(to_server, TargetError, dbname=_maint())
            if b_conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (ep.dbname,)).fetchone():
                extra = [f"database {ep.dbname!r} already exists on {to_server.display()}: the new database takes that name there"]
            else:
                extra = []
            if b_conn.info.server_version // 10000 < conn.info.server_version // 10000:
                extra.append(f"{to_server.display()} runs an older major version than {service!r}'s server")
        else:
            extra = []
        problems, warnings, info = rplan.check(conn, ep.dbname, steps, rehearsal, store, service,
                                               drain_timeout=drain_timeout, max_freeze=max_freeze, b_conn=b_conn,
                                               has_swap_hook=bool(svc.hooks.get("after_swap")), ep=ep, b_ep=to_server,
                                               scripts_seconds=scripts_seconds)
        return problems + extra, warnings, info
    finally:
        if b_conn is not None:
            b_conn.close()


def start(cfg: Config, service: str, tag: str, store: Store, mdir: Path, own: list[mf.Manifest], *,
          freeze_: bool, freeze_mode: str, drain_timeout: float, timeout: float | None, dry_run: bool, jobs: int,
          maintenance_db: str, release_probe: Callable | None, reporter: Reporter = NULL,
          mode: str = "snapshot", max_freeze: float | None = None, to_server: Endpoint | None = None,
          catchup_timeout: float = 3600.0) -> run.CutoverResult:
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    if to_server is not None and mode != "replicate":
        raise ConfigError("--to-server needs --mode replicate")
    if max_freeze is not None and mode != "replicate":
        raise ConfigError("--max-freeze needs --mode replicate (the snapshot mode's window holds the whole copy)")
    if not freeze_ and not dry_run:
        run.refuse_unfrozen()
    # the service's lock before the checks: two runs cannot both pass preflight and both start
    maint = None if dry_run else _locked_session(cfg, service, maintenance_db)
    try:
        refuse_manual_freeze(store, service, "cut it over")
        old = journal.Journal.load(store, service)
        if old is not None and old.state in ("running", "aborting"):
            journal.Journal.start(store, service, tag, mode, freeze_mode)  # raises BusyError naming the unfinished one
        p = preflight(cfg, service, tag, store, mdir, own, freeze_mode=freeze_mode, drain_timeout=drain_timeout,
                      timeout=timeout, mode=mode, max_freeze=max_freeze, to_server=to_server)
        if dry_run:
            return run.CutoverResult(id=None, service=service, tag=tag, outcome="planned", plan=p.to_json(),
                                     predicted_seconds=p.prediction.get("seconds"), warnings=list(p.warnings))
        faults.checkpoint("cutover:preflighted")
        return _start_locked(cfg, service, tag, store, mdir, p, maint, freeze_mode=freeze_mode, timeout=timeout,
                             drain_timeout=drain_timeout, jobs=jobs, maintenance_db=maintenance_db,
                             release_probe=release_probe, reporter=reporter, mode=mode, to_server=to_server,
                             catchup_timeout=catchup_timeout)
    except BaseException:
        if maint is not None:
            maint.close()
        raise


def _locked_session(cfg: Config, service: str, maintenance_db: str) -> psycopg.Connection:
    """A session on the maintenance database holding the service's server-wide lock (`locks`)."""
    return run.locked_session(_service(cfg, service).admin(), service, maintenance_db)


def _start_locked(cfg, service, tag, store, mdir, p, maint, *, freeze_mode, timeout, drain_timeout, jobs,
                  maintenance_db, release_probe, reporter, mode, to_server, catchup_timeout) -> run.CutoverResult:
    """The cutover after its preflight, under the lock `maint` holds (handed to the context)."""
    j = journal.Journal.start(store, service, tag, mode, freeze_mode)
    j.facts.update(timeout=timeout, drain_timeout=drain_timeout, warnings=list(p.warnings))
    if mode == "replicate":
        from .replicate import rep_name

        j.facts.update(catchup_timeout=catchup_timeout, replication={
            "name": rep_name(j.id), "to_server": {"params": dict(to_server.params)} if to_server is not None else None})
        j.save(store)
    try:
        ctx = run.open_context(cfg, service, store, j, jobs=jobs, reporter=reporter, maintenance_db=maintenance_db,
                               release_probe=release_probe, mdir=mdir, maint=maint)
    except BaseException:
        j.close(store, "aborted")
        raise
    try:
        j.begin(store, "preflight")
        j.end(store, "preflight", plan=p.to_json())
        ctx.result.plan = p.to_json()
        ctx.result.predicted_seconds = p.prediction.get("seconds")
        ctx.result.warnings += [w for w in p.warnings if w not in ctx.result.warnings]
        return _rotated(ctx, _proceed(ctx))
    finally:
        run.close_context(ctx)


def _rotated(ctx: run.Context, res: run.CutoverResult) -> run.CutoverResult:
    """After a finished (compared, receipted) cutover: drop set-aside copies beyond the
    service's keep_set_aside, never the one it just set aside."""
    from . import aside

    if res.outcome == "done" and ctx.svc.keep_set_aside:
        res.dropped_set_aside, warnings = aside.rotate(ctx.maint, ctx.dbname, ctx.svc.keep_set_aside, res.set_aside)
        res.warnings += warnings
    return res


def _proceed(ctx: run.Context) -> run.CutoverResult:
    if ctx.j.mode == "replicate":
        from . import replicate

        return replicate.proceed(ctx)
    return run.proceed(ctx)


def _abort_before_swap(ctx: run.Context, reason: str) -> None:
    if ctx.j.mode == "replicate":
        from . import replicate

        replicate.abort_before_swap(ctx, reason)
    else:
        run.abort_before_swap(ctx, reason)


def _unfinished(store: Store, service: str) -> journal.Journal:
    j = journal.Journal.load(store, service)
    if j is None or j.state not in ("running", "aborting"):
        raise RefusedError(f"no unfinished cutover of {service!r}",
                           hint=f"`snapdb status {service}` shows the last one")
    return j


def resume(cfg: Config, service: str, store: Store, mdir: Path, *, jobs: int, maintenance_db: str,
           release_probe: Callable | None, reporter: Reporter = NULL) -> run.CutoverResult:
    """Finish an interrupted cutover (or finish its abort, if it was aborting)."""
    j = _unfinished(store, service)
    ctx = run.open_context(cfg, service, store, j, jobs=jobs, reporter=reporter, maintenance_db=maintenance_db,
                           release_probe=release_probe, mdir=mdir)
    try:
        if j.state == "aborting":
            _abort_before_swap(ctx, j.facts.get("abort_reason") or "finishing an interrupted abort")
            return ctx.result
        return _rotated(ctx, _proceed(ctx))
    finally:
        run.close_context(ctx)


def abort(cfg: Config, service: str, store: Store, mdir: Path, *, jobs: int, maintenance_db: str,
          reporter: Reporter = NULL) -> run.CutoverResult:
    """Undo an unfinished cutover: before its swap, A unfrozen and B removed; after it, a rollback
    (which refuses if the new database took writes)."""
    j = _unfinished(store, service)
    ctx = run.open_context(cfg, service, store, j, jobs=jobs, reporter=reporter, maintenance_db=maintenance_db,
                           release_probe=None, mdir=mdir)
    try:
        if j.mode == "replicate":
            from . import replicate

            replicate.record_committed_swap(ctx)
        else:
            run.record_committed_swap(ctx)
        if not j.done("swap"):
            _abort_before_swap(ctx, "aborted by the operator (--abort)")
            return ctx.result
    finally:
        run.close_context(ctx)  # a rollback takes the lock itself
    rb = rollback(cfg, service, store, jobs=jobs, maintenance_db=maintenance_db, reporter=reporter,
                  discard_writes=False, release_probe=None, journal_=j)
    return run.CutoverResult(id=j.id, service=service, tag=j.tag, outcome="aborted", warnings=rb.warnings,
                             set_aside=rb.set_aside)


def finish_window(cfg: Config, service: str, store: Store, *, maintenance_db: str) -> run.CutoverResult:
    """End the rollback window of the last (replicate-mode) cutover (`reverse.finish`)."""
    from . import reverse

    _service(cfg, service)
    out = reverse.finish(cfg, service, store, maintenance_db=maintenance_db)
    j = journal.Journal.load(store, service)
    return run.CutoverResult(id=out["cutover_id"], service=service, tag=j.tag if j else "", outcome="finished",
                             set_aside=out["set_aside"], warnings=out["warnings"])


# -- manual freeze ------------------------------------------------------------------------------------------
FREEZES = journal.FREEZES
_freeze_key = journal.freeze_key


@dataclass
class FreezeResult:
    service: str
    frozen: bool
    mode: str | None = None
    started_at: str | None = None
    drained: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def freeze_service(cfg: Config, service: str, store: Store, *, mode: str, drain_timeout: float,
                   maintenance_db: str) -> FreezeResult:
    """Freeze a service for a manual window: the read-only default (and, offline, no new sessions),
    the drain, and the probes. The table locks need a live session, so a manual freeze has no
    layer 4: a client that sets ``default_transaction_read_only = off`` can still write."""
    svc = _service(cfg, service)
    ep = svc.admin()
    j = journal.Journal.load(store, service)
    if j is not None and j.state in ("running", "aborting"):
        raise BusyError(f"a cutover of {service!r} is unfinished (id {j.id}); it manages the freeze",
                        hint=f"snapdb cutover {service} --resume or --abort")
    if _manual(store, service) is not None:
        raise RefusedError(f"{service!r} is already frozen (snapdb unfreeze {service} ends it)")
    with control_session(ep, TargetError, dbname=maintenance_db) as maint:
        freeze.require_session_visibility(maint)
        locks.acquire(maint, ep.dbname, "freeze", repr(service))
        st = freeze.capture(maint, ep.dbname, mode)
        freeze.plan_roles(maint, st)
        _save_manual(store, service, st)  # before anything changes: unfreeze can always undo it
        freeze.apply(maint, st)
        _save_manual(store, service, st)
        drained = freeze.drain(maint, st, drain_timeout)
        probes = freeze.probe(ep, st, [], maint)
    return FreezeResult(service, True, mode, st.started_at, drained, probes,
                        ["a manual freeze holds no table locks: writers that bypass the read-only default "
                         "(SET default_transaction_read_only = off, BEGIN READ WRITE) can still write"])


def unfreeze_service(cfg: Config, service: str, store: Store, *, maintenance_db: str) -> FreezeResult:
    """End a manual freeze exactly as it was started (settings and privileges as they were)."""
    svc = _service(cfg, service)
    ep = svc.admin()
    st = _manual(store, service)
    if st is None:
        raise RefusedError(f"{service!r} is not frozen by `snapdb freeze`",
                           hint="a cutover's freeze ends with the cutover (--resume or --abort)")
    with control_session(ep, TargetError, dbname=maintenance_db) as maint:
        locks.acquire(maint, ep.dbname, "unfreeze", repr(service))
        freeze.release(maint, st)
    store.delete(_freeze_key(service))
    return FreezeResult(service, False, st.mode, st.started_at)


def refuse_manual_freeze(store: Store, service: str, what: str) -> None:
    """Refuse (`RefusedError`) while `snapdb freeze SERVICE` holds a manual window: a cutover
    would take the frozen settings for the originals (and keep them after its swap)."""
    st = _manual(store, service)
    if st is not None:
        raise RefusedError(f"{service!r} is frozen by `snapdb freeze` (since {st.started_at}); refusing to {what}",
                           hint=f"end the manual freeze first: snapdb unfreeze {service}; nothing was changed")


def _manual(store: Store, service: str) -> freeze.FreezeState | None:
    """The manual freeze of `service` on record, None without one; `IntegrityError` when its
    record cannot be read (what the freeze changed, and so how to undo it, is unknown)."""
    try:
        with store.reader(_freeze_key(service)) as f:
            raw = f.read()
    except MissingError:
        return None
    try:
        return freeze.FreezeState.from_json(json.loads(raw))
    except (ValueError, TypeError) as exc:  # not JSON; not an object, or not a freeze's fields
        why = "not JSON" if isinstance(exc, ValueError) else "not a freeze record this snapdb knows"
        raise IntegrityError(f"the manual freeze record of {service!r} cannot be read: {why}",
                             hint=f"it is {_freeze_key(service)} in the store; undo what the freeze changed by "
                                  "hand, then delete it") from None


def _save_manual(store: Store, service: str, st: freeze.FreezeState) -> None:
    with store.writer(_freeze_key(service)) as f:
        f.write(json.dumps(st.to_json()).encode("utf-8"))


# -- rollback -----------------------------------------------------------------------------------------------
def _last_done(store: Store, service: str) -> journal.Journal:
    j = journal.Journal.load(store, service)
    if j is None or not j.done("swap") or j.facts.get("rolled_back"):
        raise RefusedError(f"{service!r} has no cutover to roll back",
                           hint=f"`snapdb status {service}` shows its last cutover")
    return j


def rollback(cfg: Config, service: str, store: Store, *, jobs: int, maintenance_db: str, discard_writes: bool,
             release_probe: Callable | None, reporter: Reporter = NULL,
             journal_: journal.Journal | None = None) -> RollbackResult:
    """Swap back to the database the last cutover set aside.

    The current database (B) is frozen first, so nothing is written during the rollback. If it
    took writes since the cutover (row changes counted by the server since the swap, or moved
    sequences) the rollback is refused, unless `discard_writes`: then B is snapshotted first, so
    those writes are kept in that snapshot, and set aside as ``SERVICE__rolledback_<time>``.
    """
    started = time.monotonic()
    j = journal_ or _last_done(store, service)
    from . import reverse

    if j.mode == "replicate" and (reverse.window_open(j) or reverse.cross_server(j)):
        return reverse.rollback(cfg, service, store, j, jobs=jobs, maintenance_db=maintenance_db,
                                discard_writes=discard_writes, release_probe=release_probe, reporter=reporter)
    svc = _service(cfg, service)
    ep = svc.admin()
    aside = j.facts["set_aside"]
    b_oid = int(j.facts["build"]["oid"])
    a_oid = j.facts.get("a_oid")
    out = RollbackResult(service=service, cutover_id=j.id, restored=aside, set_aside=None)
    with control_session(ep, TargetError, dbname=maintenance_db) as maint:
        locks.acquire(maint, ep.dbname, "rollback", repr(service))
        oids = dict(maint.execute("SELECT datname, oid::int8 FROM pg_catalog.pg_database").fetchall())
        if a_oid is not None and oids.get(ep.dbname) == int(a_oid) and j.facts.get("rollback_freeze"):
            # an interrupted rollback whose swap had committed: the old database serves again
            gone = next((d for d, o in oids.items() if o == b_oid), None)
            out.set_aside = gone
            _finish_rollback(maint, j, ep)
        else:
            if oids.get(ep.dbname) != b_oid:
                raise RefusedError(f"{service!r} is no longer the database cutover {j.id} put in place; refusing to "
                                   "roll back over it", hint="nothing was changed")
            if aside not in oids:
                raise RefusedError(f"the set-aside database {aside!r} is gone; nothing to roll back to")
            if a_oid is not None and oids[aside] != int(a_oid):
                raise RefusedError(f"{aside!r} is not the database cutover {j.id} set aside (OID {oids[aside]}, "
                                   f"expected {a_oid}); refusing to swap it in", hint="nothing was changed")
            _swap_back(cfg, service, store, j, maint, ep, out, jobs=jobs, maintenance_db=maintenance_db,
                       discard_writes=discard_writes, release_probe=release_probe, reporter=reporter)
        now = maint.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (ep.dbname,)).fetchone()
        restored_oid = int(a_oid) if a_oid is not None else oids.get(aside)
        if svc.keep_set_aside and out.set_aside and now and int(now[0]) == restored_oid:  # A serves again: rotate
            from . import aside as copies

            out.dropped_set_aside, dropped_warnings = copies.rotate(maint, ep.dbname, svc.keep_set_aside, out.set_aside)
            out.warnings += dropped_warnings
    from .reverse import record_rollback

    return record_rollback(store, j, ep, out, started)


def _swap_back(cfg: Config, service: str, store: Store, j: journal.Journal, maint: psycopg.Connection, ep,
               out: RollbackResult, *, jobs: int, maintenance_db: str, discard_writes: bool,
               release_probe: Callable | None, reporter: Reporter) -> None:
    """Freeze B (reusing an interrupted rollback's recorded freeze state: B as it was before
    that one), check it took no write, swap the set-aside A back in, undo A's freeze."""
    aside = j.facts["set_aside"]
    if j.facts.get("rollback_freeze"):  # an interrupted rollback's: B may be closed too
        st = freeze.FreezeState.from_json(j.facts["rollback_freeze"])
        maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(ep.dbname)))
    else:
        st = freeze.capture(maint, ep.dbname, "read-only")
        freeze.plan_roles(maint, st)
        j.note(store, rollback_freeze=st.to_json())
    freeze.apply(maint, st)
    faults.checkpoint("rollback:frozen")
    try:
        freeze.drain(maint, st, 5.0)
        hold = freeze.Hold(ep, st, ep.with_dbname(maintenance_db))
        try:
            out.writes = _writes_since_cutover(maint, ep.dbname, j.facts.get("b_counters") or {},
                                               j.facts.get("b_sequences"), hold.conn, j.facts.get("b_user_counters"))
            if out.writes.get("changed") and not discard_writes:
                raise RefusedError(
                    f"{service!r} took writes since the cutover ({out.writes['summary']}); a rollback would lose them",
                    hint=f"snapdb rollback {service} --discard-writes keeps them in a snapshot first; "
                         "nothing was changed")
            if out.writes.get("changed"):
                m = take_snapshot(freeze.own_endpoint(ep, st), store, jobs=jobs, reporter=reporter,
                                  label=f"writes discarded by the rollback of cutover {j.id}",
                                  release_probe=release_probe, database_props=DatabaseProps(**st.props))
                out.writes_snapshot = m.id
            # B closed to connections, its last sessions ended under the locks, then the swap
            freeze.close_and_end_sessions(maint, ep.dbname, hold.conn.info.backend_pid)
        finally:
            hold.close()
        gone = names.rolledback_name(ep.dbname, mf.utcnow())
        a_oid = int(maint.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (aside,)).fetchone()[0])
        from .. import swap

        swap.swap_in(maint, ep.dbname, aside, a_oid, aside=gone)
    except BaseException:
        freeze.unfreeze_quietly(maint, st, ep.dbname)
        j.note(store, rollback_freeze=None)  # undone: a next rollback starts afresh
        raise
    faults.checkpoint("rollback:swapped-unrecorded")
    out.set_aside = gone
    _finish_rollback(maint, j, ep)


def _finish_rollback(maint: psycopg.Connection, j: journal.Journal, ep) -> None:
    """A serves again: the cutover's freeze on it undone exactly, open; B stays frozen, set
    aside; the cutover's proof slot (left when it was rolled back before its compare) dropped."""
    freeze.release(maint, freeze.FreezeState.from_json(j.facts["freeze"]), ep.dbname)
    maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(ep.dbname)))
    if j.facts.get("slot"):
        proof.drop_slot(maint, j.facts["slot"])


def _writes_since_cutover(maint: psycopg.Connection, dbname: str, baseline: dict, sequences: dict | None = None,
                          session: psycopg.Connection | None = None, user_baseline: dict | None = None) -> dict:
    """Row changes the server counted in `dbname` since the swap (every session of it has ended,
    so its counters are complete), and sequences moved since (`sequences`: their values at the
    swap, read now on `session`, a session on `dbname`): a ``nextval`` is a write too.

    With `user_baseline` (recorded by snapshot-mode cutovers) only the user tables' counters
    count, read on `session` once every other session on `dbname` has exited (their counts are
    flushed at exit): the database's own counters also count catalog rows, which autovacuum's
    ANALYZE writes (pg_statistic) on a database nobody touches."""
    from .run import _write_counters, user_counters, wait_sessions_gone

    if user_baseline is not None and session is not None:
        wait_sessions_gone(maint, dbname, keep=(session.info.backend_pid,))
        now, baseline = user_counters(session), user_baseline
    else:
        now = _write_counters(maint, dbname)
    if not baseline or not now:
        return {"changed": True, "summary": "unknown: no counters recorded at the swap", "delta": {}}
    delta = {k: now[k] - baseline.get(k, 0) for k in now}
    if any(v < 0 for v in delta.values()):
        return {"changed": True, "summary": "unknown: the server's counters were reset since the swap", "delta": delta}
    moved = []
    if sequences is not None and session is not None:
        current = fingerprint.fingerprint(session)["sequences"]
        moved = sorted(n for n in set(current) | set(sequences) if not n.startswith(f"{SNAPDB_SCHEMA}.")
                       and current.get(n) != sequences.get(n))
    changed = any(v > 0 for v in delta.values()) or bool(moved)
    summary = ", ".join(f"{v} {k.removeprefix('tup_')}" for k, v in delta.items() if v) or "none"
    summary = f"rows {summary}" + (f"; sequences moved: {', '.join(moved[:5])}" if moved else "")
    return {"changed": changed, "summary": summary, "delta": delta, "sequences_moved": moved}


# -- status -----------------------------------------------------------------------------------------------
def service_status(cfg: Config, service: str, store: Store | None) -> dict:
    """The cutover side of a service's status: unfinished cutover, manual freeze, set-aside copies."""
    out: dict = {"cutover": None, "frozen": None, "set_aside": [], "rollback": None}
    if store is not None:
        j = journal.Journal.load(store, service)
        if j is not None:
            out["cutover"] = {"id": j.id, "tag": j.tag, "state": j.state, "step": j.step,
                              "started_at": j.started_at, "set_aside": j.facts.get("set_aside")}
            if j.facts.get("rolled_back"):  # the cutover's set-aside copy is live again
                out["cutover"].update(state="rolled back" if j.state == "done" else j.state,
                                      set_aside=j.facts.get("rolled_back_set_aside"))
                out["rollback"] = {"cutover_id": j.id, "at": j.facts.get("rolled_back_at"),
                                   "live": svc_db(cfg, service), "was_set_aside_as": j.facts.get("rolled_back_to"),
                                   "release_set_aside_as": j.facts.get("rolled_back_set_aside"),
                                   "writes_snapshot": j.facts.get("rolled_back_writes_snapshot")}
            if j.state in ("running", "aborting") and j.facts.get("freeze"):
                out["frozen"] = {"by": f"cutover {j.id}", "mode": j.freeze_mode,
                                 "since": j.facts["freeze"].get("started_at")}
        st = _manual(store, service)
        if st is not None:
            out["frozen"] = {"by": "snapdb freeze", "mode": st.mode, "since": st.started_at}
    svc = cfg.services[service]
    try:
        with connect(svc.admin(), TargetError, dbname=_maint(), autocommit=True) as conn:
            out["set_aside"] = [{"name": d, "bytes": int(b)} for d, b in conn.execute(
                "SELECT datname, pg_catalog.pg_database_size(oid) FROM pg_catalog.pg_database ORDER BY 1").fetchall()
                if names.is_pre_of(svc.dbname, d) or names.is_rolledback_of(svc.dbname, d)]
    except SnapdbError as exc:
        out["error"] = exc.message
    return out


def svc_db(cfg: Config, service: str) -> str:
    return cfg.services[service].dbname


def _maint() -> str:
    import os

    return os.environ.get("SNAPDB_MAINTENANCE_DB") or "postgres"

