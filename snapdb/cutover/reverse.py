"""The rollback window of a replicate-mode cutover: the set-aside A follows B, so a rollback
keeps what B took.

Contract:

- `start(ctx)` (the cutover's ``reverse`` step): A, set aside, is gated (its connection
  privileges revoked from everyone but snapdb's role, the read-only default kept) and opened to
  connections again only so that its subscription's apply worker can run; the subscription
  consumes the reverse slot that `replicate` created on B before the freeze and advanced to the
  swap, through a publication of A's own tables with A's own columns. So every change B takes to
  the rows A knows reaches A; values of columns and tables only the new release has cannot.
- `rollback(...)` within the window: B frozen (layers, drain, locks, probes; the reverse
  walsender excepted), the fence (B's flushed WAL position confirmed by A), the reverse
  replication removed, every sequence of A set from B's, then the swap back in one transaction.
  Writes to tables only B has are refused unless `discard_writes` (B is snapshotted first).
  B is set aside frozen and closed.
- `finish(...)` (``snapdb cutover SERVICE --finish``) ends the window: the replication removed,
  A closed to connections (it stays set aside, read-only).
- `remove(...)` removes the reverse replication and A's gate; each part is skipped when gone.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

from .. import history, locks, manifest as mf, names
from ..config import Config, Endpoint
from ..errors import RefusedError, SnapdbError, TargetError
from ..postgres import DatabaseProps, connect, control_session, first_line
from ..progress import NULL, Reporter
from ..replication import follow, slots
from ..snapshot import take_snapshot
from ..store import Store
from . import freeze, journal
from .run import RollbackResult


def _connect(ep: Endpoint, dbname: str) -> psycopg.Connection:
    conn = connect(ep, TargetError, dbname=dbname, autocommit=True)
    conn.execute("SET default_transaction_read_only = off")
    return conn


def _b_ep(j: journal.Journal, ep: Endpoint) -> Endpoint:
    other = (j.facts.get("replication") or {}).get("to_server")
    return Endpoint(params=dict(other["params"]), name=ep.name) if other else ep


def start(ctx) -> None:
    """The cutover's ``reverse`` step (see module docstring)."""
    j = ctx.j
    rev = j.facts["reverse"]["name"]
    aside = j.facts["set_aside"]
    b_ep = _b_ep(j, ctx.ep)
    if not j.facts.get("aside_gate"):
        st = freeze.capture(ctx.maint, aside, "offline")
        j.note(ctx.store, aside_gate=st.to_json())
        freeze.apply(ctx.maint, st)
        j.note(ctx.store, aside_gate=st.to_json())
    ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(aside)))
    with _connect(ctx.ep, aside) as a:
        if follow.subscription(a, rev) is None:
            follow.create_subscription(a, rev, follow.subscription_conninfo(b_ep, ctx.dbname, rev), rev, rev)
    j.note(ctx.store, reverse={**j.facts["reverse"], "active": True, "started_at": mf.utcnow().isoformat()})


def remove(ctx=None, *, j: journal.Journal | None = None, store: Store | None = None, ep: Endpoint | None = None,
           maint: psycopg.Connection | None = None) -> list[str]:
    """Remove the reverse replication and A's gate (see module docstring); returns problems met."""
    if ctx is not None:
        j, store, ep, maint = ctx.j, ctx.store, ctx.ep, ctx.maint
    rev = (j.facts.get("reverse") or {}).get("name")
    aside = j.facts.get("set_aside")
    notes: list[str] = []
    if not rev:
        return notes
    b_ep = _b_ep(j, ep)
    try:
        with control_session(b_ep, TargetError, dbname=maint.info.dbname) as bm:
            a_there = aside and maint.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s AND datallowconn",
                                              (aside,)).fetchone()
            if a_there:
                with _connect(ep, aside) as a:
                    follow.stop(a, bm, rev, rev)
            else:
                slots.drop(bm, rev)
            if bm.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (ep.dbname,)).fetchone():
                with _connect(b_ep, ep.dbname) as b:
                    follow.drop_publication(b, rev)
    except (SnapdbError, psycopg.Error) as exc:
        notes.append(f"removing the reverse replication: {exc.message if isinstance(exc, SnapdbError) else first_line(exc)}")
    gate = j.facts.get("aside_gate")
    if aside and maint.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (aside,)).fetchone():
        if gate:
            freeze.release(maint, freeze.FreezeState.from_json(gate), aside)
        maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(aside)))
    j.note(store, reverse={**j.facts["reverse"], "active": False, "ended_at": mf.utcnow().isoformat()}, aside_gate=None)
    return notes


def cross_server(j: journal.Journal | None) -> bool:
    """Whether cutover `j` moved the service to another server (no rollback window: see `rollback`)."""
    return bool(j is not None and (j.facts.get("replication") or {}).get("to_server"))


def window_open(j: journal.Journal | None) -> bool:
    return bool(j is not None and (j.facts.get("reverse") or {}).get("active") and not j.facts.get("rolled_back"))


def finish(cfg: Config, service: str, store: Store, *, maintenance_db: str) -> dict:
    """End the rollback window of the last cutover of `service` (see module docstring)."""
    j = journal.Journal.load(store, service)
    if not window_open(j):
        raise RefusedError(f"{service!r} has no open rollback window to finish",
                           hint=f"`snapdb status {service}` shows its last cutover")
    ep = cfg.services[service].admin()
    with control_session(ep, TargetError, dbname=maintenance_db) as maint:
        locks.acquire(maint, ep.dbname, "cutover --finish", repr(service))
        notes = remove(j=j, store=store, ep=ep, maint=maint)
    j.note(store, window_finished_at=mf.utcnow().isoformat())
    return {"service": service, "cutover_id": j.id, "set_aside": j.facts.get("set_aside"), "warnings": notes}


def rollback(cfg: Config, service: str, store: Store, j: journal.Journal, *, jobs: int, maintenance_db: str,
             discard_writes: bool, release_probe, reporter: Reporter = NULL):
    """Swap back to A, keeping B's writes (see module docstring). Returns an `api.RollbackResult`."""
    started = time.monotonic()
    svc = cfg.services[service]
    ep = svc.admin()
    if cross_server(j):
        raise RefusedError(
            f"cutover {j.id} moved {service!r} to another server ({_b_ep(j, ep).host}:{_b_ep(j, ep).port}): snapdb does not roll "
            "back across servers (the old database does not follow the new one, so B's writes since the swap "
            f"would be lost)", hint=f"nothing was changed; the old database is {j.facts.get('set_aside')!r} on "
                                   f"{ep.host}:{ep.port}, set aside read-only and closed (docs/cutover.md, \"To another "
                                   "server\", says how to go back by hand)"
                                   + (f"; `snapdb cutover {service} --resume` finishes the cutover"
                                      if j.state in ("running", "aborting") else ""))
    rev = j.facts["reverse"]["name"]
    aside = j.facts["set_aside"]
    b_oid = int(j.facts["build"]["oid"])
    out = RollbackResult(service=service, cutover_id=j.id, restored=aside, set_aside=None)
    with control_session(ep, TargetError, dbname=maintenance_db) as maint:
        locks.acquire(maint, ep.dbname, "rollback", repr(service))
        row = maint.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (ep.dbname,)).fetchone()
        if row is None or int(row[0]) != b_oid:
            raise RefusedError(f"{service!r} is no longer the database cutover {j.id} put in place; refusing to "
                               "roll back over it", hint="nothing was changed")
        st = freeze.capture(maint, ep.dbname, "read-only")
        st.keep_apps = [rev]
        j.note(store, rollback_freeze=st.to_json())
        freeze.apply(maint, st)
        try:
            freeze.drain(maint, st, 5.0)
            hold = freeze.Hold(ep, st, ep.with_dbname(maintenance_db))
            try:
                freeze.probe(ep, st, hold.tables, maint)
                out.writes = _new_table_writes(hold.conn, j.facts.get("b_table_counters") or {}, j)
                if out.writes.get("changed") and not discard_writes:
                    raise RefusedError(
                        f"{service!r} took writes the old release cannot hold ({out.writes['summary']}); a rollback "
                        "would lose them", hint=f"snapdb rollback {service} --discard-writes keeps them in a snapshot "
                                                "first; nothing was changed")
                if out.writes.get("changed"):
                    m = take_snapshot(freeze.own_endpoint(ep, st), store, jobs=jobs, reporter=reporter,
                                      label=f"writes discarded by the rollback of cutover {j.id}",
                                      release_probe=release_probe, database_props=DatabaseProps(**st.props))
                    out.writes_snapshot = m.id
                with _connect(freeze.own_endpoint(ep, st), ep.dbname) as b, _connect(ep, aside) as a:
                    lsn = b.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()[0]
                    from .proof import wait_flushed

                    wait_flushed(b, flush_via=maint)
                    waited = follow.wait_for(b, a, rev, rev, lsn, timeout=60.0, poll=0.002)
                    follow.stop(a, maint, rev, rev)
                    follow.drop_publication(b, rev)
                    seqs = follow.copy_sequences(b, a)
                out.writes = {**out.writes, "carried_back": True, "fence_waited_seconds": round(waited, 4),
                              "sequences": seqs}
                freeze.close_and_end_sessions(maint, ep.dbname, hold.conn.info.backend_pid)
            finally:
                hold.close()
            gate = j.facts.get("aside_gate")
            if gate:
                freeze.release(maint, freeze.FreezeState.from_json(gate), aside)
                j.note(store, aside_gate=None)
            maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(aside)))
            for (pid,) in maint.execute("SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = %s "
                                        "AND pid <> pg_catalog.pg_backend_pid()", (aside,)).fetchall():
                maint.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,))
            gone = names.rolledback_name(ep.dbname, mf.utcnow())
            a_oid = int(maint.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (aside,)).fetchone()[0])
            from .. import swap

            swap.swap_in(maint, ep.dbname, aside, a_oid, aside=gone)
        except BaseException:
            freeze.unfreeze_quietly(maint, st, ep.dbname)
            raise
        freeze.release(maint, freeze.FreezeState.from_json(j.facts["freeze"]), ep.dbname)
        maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(ep.dbname)))
        out.set_aside = gone
    return record_rollback(store, j, ep, out, started,
                           reverse={**j.facts["reverse"], "active": False, "ended_at": mf.utcnow().isoformat()})


def _new_table_writes(conn: psycopg.Connection, baseline: dict, j: journal.Journal) -> dict:
    """Row changes since the swap in tables the old release does not have (they cannot be carried
    back): counted by the server, against the counters recorded at the swap."""
    only_b = set(j.facts.get("b_only_tables") or [])
    now = {r[0]: int(r[1]) for r in conn.execute(
        """SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_catalog.pg_stat_user_tables""")}
    changed = {t: now.get(t, 0) - int(baseline.get(t, 0)) for t in only_b if now.get(t, 0) != int(baseline.get(t, 0))}
    summary = ", ".join(f"{t}: {n} rows changed" for t, n in sorted(changed.items())) or "none"
    return {"changed": bool(changed), "summary": f"tables only the new release has: {summary}", "tables": changed}


def record_rollback(store: Store, j: journal.Journal, ep: Endpoint, out: RollbackResult, started: float,
                    **facts) -> RollbackResult:
    """After a rollback's swap: its catalog record (a failure to write it is a warning), the
    journal noted (`facts` added) and closed if it was unfinished (an `--abort`)."""
    rec = history.new_record("rollback", ep, tag=j.tag, restored_from=out.writes_snapshot, outcome="succeeded")
    rec.ended_at = mf.utcnow().isoformat()
    rec.seconds = round(time.monotonic() - started, 3)
    try:
        history.write_catalog(store, rec)
    except SnapdbError as exc:
        out.warnings.append(f"rolled back, but recording it in the catalog failed: {exc.message}")
    j.note(store, rolled_back=True, rolled_back_to=j.facts["set_aside"], rolled_back_set_aside=out.set_aside,
           rolled_back_at=rec.ended_at, rolled_back_writes_snapshot=out.writes_snapshot, **facts)
    if j.state in ("running", "aborting"):  # an `--abort` after the swap
        j.close(store, "aborted")
    out.seconds = time.monotonic() - started
    return out
