"""The swap of a replicate-mode cutover (step 9 of `replicate`), and recognising a swap that
committed before a killed run could journal it.

Same server: B gated, A closed, one transaction renames A aside and B into place. Another
server: the ``after_swap`` hook repoints the clients while B is gated, then A is set aside on
its server and B takes the service's name on its own. Either way a snapshot of B is exported
and held for the comparison, the reverse slot is placed, and B opens; the window ends when a
new session on the service is read-write.
"""

from __future__ import annotations

import time
from datetime import datetime

import psycopg

from .. import faults, manifest as mf, names, relations
from ..errors import SnapdbError, TargetError
from ..postgres import first_line, open_data_session, rename_database, wait_sessions_gone
from . import freeze, hooks, run
from .rsides import b as _b, b_maint, b_server, same_server


def record_committed_swap(ctx: run.Context) -> None:
    """A run killed after its swap committed but before journaling it: record the swap (its
    window unmeasured), and open B if it is still gated (holding its snapshot for the comparison
    first). Across servers the swap counts as committed once A has its set-aside name; the
    rename on B's server is done here if the run was killed before it. The reverse slot is placed only if B
    never opened; otherwise the rollback window is given up (a rollback needs --discard-writes)."""
    j = ctx.j
    if j.done("swap") or not (j.facts.get("build") or {}).get("oid") or not j.facts.get("aside"):
        return
    bm = b_maint(ctx)
    if not same_server(ctx) and _a_set_aside(ctx):
        # killed between the two servers' renames: A is set aside already and the clients were
        # repointed to B by the hook, so the swap is finished forward on B's server
        from .. import swap as swapping

        build = j.facts["build"]
        if bm.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s AND oid = %s",
                      (build["name"], int(build["oid"]))).fetchone():
            swapping.close_build(bm, build["name"])
            swapping.swap_in(bm, ctx.dbname, build["name"], build["oid"])
    row = bm.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (ctx.dbname,)).fetchone()
    if not row or int(row[0]) != int(j.facts["build"]["oid"]):
        return
    ctx.st = freeze.FreezeState.from_json(j.facts["freeze"])
    if j.facts.get("b_gate") and not j.facts.get("ungated"):  # B never opened: as the swap would go on
        _hold_b_snapshot(ctx)
        if (j.facts.get("reverse") or {}).get("name") and not (j.facts.get("reverse") or {}).get("from_lsn"):
            _place_reverse_slot(ctx)
        _ungate(ctx, freeze.FreezeState.from_json(j.facts["b_gate"]))
        j.note(ctx.store, ungated=True)
    elif (j.facts.get("reverse") or {}).get("name") and not (j.facts.get("reverse") or {}).get("from_lsn"):
        from . import reverse

        ctx.result.warnings.append("the run was interrupted after the new database opened and before the reverse "
                                   "replication was placed: no rollback window (a rollback needs --discard-writes)")
        reverse.remove(ctx)
        j.note(ctx.store, reverse=None)
    j.end(ctx.store, "swap", note="the swap had committed when the run was interrupted; its window was not measured",
          set_aside=j.facts["aside"], swapped_at=None, freeze_window_seconds=None)


def swap_may_have_committed(ctx: run.Context) -> bool:
    """After a failure: did the swap commit (B named SERVICE on its server, or, across servers,
    A already set aside)? True when that cannot be told: never abort over a committed swap."""
    j = ctx.j
    build = j.facts.get("build") or {}
    if not build.get("oid") or not j.facts.get("aside"):
        return False
    try:
        if not same_server(ctx) and _a_set_aside(ctx):
            return True
        row = b_maint(ctx).execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s",
                                   (ctx.dbname,)).fetchone()
        return bool(row) and int(row[0]) == int(build["oid"])
    except (SnapdbError, psycopg.Error):
        return True


def _close_and_prove(ctx: run.Context) -> None:
    """A closed, its other sessions ended under the locks, and proved unchanged once more
    (`run.close_and_prove`); the locks taken again first if a resumed run lost them."""
    if ctx.hold is None or not ctx.hold.alive():
        ctx.hold = freeze.Hold(ctx.ep, ctx.st, ctx.ep.with_dbname(ctx.maintenance_db))
        run._refuse_changes(ctx, run._changes_since_freeze(ctx))
    run.close_and_prove(ctx, "cutover:a-closed")


def _a_set_aside(ctx: run.Context) -> bool:
    """Whether A, on its own server, already has its set-aside name (and the service's is free)."""
    a_oid = ctx.j.facts.get("a_oid")
    row = ctx.maint.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s", (ctx.j.facts["aside"],)).fetchone()
    gone = not ctx.maint.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (ctx.dbname,)).fetchone()
    return bool(row) and a_oid is not None and int(row[0]) == int(a_oid) and gone


# -- 9. swap -------------------------------------------------------------------------------------------------
def _swap(ctx: run.Context) -> None:
    from .. import swap as swapping

    j = ctx.j
    build = j.facts["build"]
    j.begin(ctx.store, "swap")
    parts: dict[str, float] = {}  # where the step's time went (the receipt's swap.parts)
    mark = [time.monotonic()]

    def lap(name: str) -> None:
        now = time.monotonic()
        parts[name] = round(parts.get(name, 0.0) + now - mark[0], 4)
        mark[0] = now

    bm = b_maint(ctx)
    gate = j.facts.get("b_gate")
    if gate is None:  # B gated: only snapdb connects until its snapshot is held and the reverse slot placed
        st_b = freeze.capture(bm, build["name"], "offline")
        j.note(ctx.store, b_gate=st_b.to_json())
        freeze.apply(bm, st_b)
        j.note(ctx.store, b_gate=st_b.to_json())
    else:
        st_b = freeze.FreezeState.from_json(gate)
    lap("gate_b")
    if same_server(ctx):
        aside = j.facts.get("aside") or names.pre_name(ctx.dbname, j.tag, mf.utcnow())
        j.note(ctx.store, aside=aside)
        swapping.close_build(ctx.maint, build["name"])
        run._end_sessions(ctx, build["name"], keep=None)
        lap("close_b")
        _close_and_prove(ctx)
        lap("close_and_prove_a")
        baseline = run._write_counters(ctx.maint, build["name"])
        swapping.swap_in(ctx.maint, ctx.dbname, build["name"], build["oid"], aside=aside)
        lap("rename")
    else:
        aside, baseline = _swap_other_server(ctx, st_b)
        lap("hook_and_renames")
    faults.checkpoint("cutover:swapped-unrecorded")
    j.note(ctx.store, swapped=True, aside=aside)
    swapped = time.time()
    _hold_b_snapshot(ctx)
    lap("hold_b_snapshot")
    _place_reverse_slot(ctx)
    _ungate(ctx, st_b)
    j.note(ctx.store, ungated=True)
    lap("ungate")
    open_at = _accepts_writes(ctx)
    lap("first_writable_session")
    window = round(open_at - datetime.fromisoformat(ctx.st.started_at).timestamp(), 3)
    j.end(ctx.store, "swap", set_aside=aside, swapped_at=datetime.fromtimestamp(swapped).astimezone().isoformat(),
          freeze_window_seconds=window, swap_to_writable_seconds=round(open_at - swapped, 3), b_counters=baseline,
          swap_parts=parts)
    ctx.result.freeze_window_seconds = window
    ctx.result.set_aside = aside
    if same_server(ctx):
        try:
            run._hook(ctx, "after_swap", freeze_seconds=window)
        except hooks.HookFailed as exc:
            ctx.result.warnings.append(f"{exc.message}; the new release stays in place (`snapdb rollback "
                                       f"{ctx.service}` returns to the old one)")


def _swap_other_server(ctx: run.Context, st_b: freeze.FreezeState) -> tuple[str, dict]:
    """Across servers: the ``after_swap`` hook repoints the clients while B is still gated (a
    failing hook aborts, B never having been open); then B takes the service's name on its
    server and A is set aside (renamed, closed) on its own."""
    from .. import swap as swapping

    j = ctx.j
    build = j.facts["build"]
    bm = b_maint(ctx)
    run._hook(ctx, "after_swap", new_host=b_server(ctx).host, new_port=b_server(ctx).port,
              new_database=ctx.dbname)
    aside = j.facts.get("aside") or names.pre_name(ctx.dbname, j.tag, mf.utcnow())
    j.note(ctx.store, aside=aside)
    _close_and_prove(ctx)
    run._end_sessions(ctx, ctx.dbname, keep=None)
    wait_sessions_gone(ctx.maint, ctx.dbname, timeout=swapping.SESSION_EXIT_WAIT)
    rename_database(ctx.maint, ctx.dbname, aside)
    faults.checkpoint("cutover:a-set-aside")
    swapping.close_build(bm, build["name"])
    baseline = run._write_counters(bm, build["name"])
    swapping.swap_in(bm, ctx.dbname, build["name"], build["oid"])
    return aside, baseline


def _hold_b_snapshot(ctx: run.Context) -> None:
    """A snapshot of B as it is at the swap, held open for the comparison after B opens."""
    if ctx.b_snapshot is not None:
        return
    try:
        conn = open_data_session(b_server(ctx), TargetError, dbname=ctx.dbname)
        relations.lock_tables(conn)
        ctx.b_snapshot = (conn, conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0])
        a_tables = set(ctx.j.facts.get("a_tables") or [])
        counters = {r[0]: int(r[1]) for r in conn.execute(
            "SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_catalog.pg_stat_user_tables "
            "WHERE schemaname <> 'snapdb'")}
        ctx.j.note(ctx.store, b_only_tables=sorted(t for t in counters if t not in a_tables and t != "public.alembic_version"),
                   b_table_counters=counters)
    except (SnapdbError, psycopg.Error, relations.TablesChanging) as exc:
        ctx.result.warnings.append(f"could not hold a snapshot of the new database for the comparison: "
                                   f"{exc.message if isinstance(exc, SnapdbError) else first_line(exc)}")


def _place_reverse_slot(ctx: run.Context) -> None:
    rev = (ctx.j.facts.get("reverse") or {}).get("name")
    if not rev:
        return
    with _b(ctx, ctx.dbname) as b:
        b.execute("SELECT pg_catalog.pg_replication_slot_advance(%s, pg_catalog.pg_current_wal_insert_lsn())", (rev,))
        lsn = b.execute("SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                        (rev,)).fetchone()[0]
    ctx.j.note(ctx.store, reverse={**ctx.j.facts["reverse"], "from_lsn": lsn})


def _ungate(ctx: run.Context, st_b: freeze.FreezeState) -> None:
    """Open B: its privileges and settings as before the gate (sessions snapdb holds stay)."""
    freeze.release(b_maint(ctx), st_b, ctx.dbname, reconnect=False)
    keep = {ctx.b_snapshot[0].info.backend_pid} if ctx.b_snapshot else set()
    for (pid,) in b_maint(ctx).execute(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()",
            (ctx.dbname,)).fetchall():
        if pid not in keep:  # opened while gated (a superuser): it would keep the read-only default
            b_maint(ctx).execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,))


def _accepts_writes(ctx: run.Context) -> float:
    """When a new session on SERVICE, on B's server, is read-write (`run._accepts_writes`)."""
    return run._accepts_writes(ctx, b_server(ctx).with_dbname(ctx.dbname), poll=0.01)
