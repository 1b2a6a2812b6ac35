"""The replicate-mode cutover: B is built and upgraded while A is live, and only the fence, the
rest of the release and the swap happen inside the freeze.

Steps (`journal.REPLICATE_STEPS`), each journaled before and after it runs:

1. ``preflight`` — `rplan.preflight` (replication prerequisites, the split of the release into
   revisions before and inside the freeze from the rehearsal, the predicted window).
2. ``build`` — a publication of A's tables; a logical slot created with an exported snapshot
   *after* every table of A is locked (`snapshot.take_snapshot(pin=…)`), so the copy is one
   instant that the slot's stream continues exactly; that snapshot restored as B beside A (or on
   another server) and verified in full.
3. ``follow`` — a subscription on B consumes the slot; snapdb waits until B has caught up,
   reporting the lag.
4. ``upgrade`` — the revisions the rehearsal found replication-compatible run on B while it
   follows A (each re-checked on B's catalog); the reverse publication and slot on B for a
   rollback that keeps writes are made; B catches up again.
5. ``freeze`` — A frozen exactly as in snapshot mode (layers, drain, locks, probes, proof slot),
   the subscription's walsender excepted.
6. ``fence`` — A's WAL position, flushed; wait until B has confirmed everything up to it (an
   LSN, not a lag threshold); the subscription and slot removed.
7. ``finalize`` — every sequence of B set from frozen A's; the revisions that must run inside
   the freeze; materialized views A refreshed meanwhile refreshed on B.
8. ``prove`` — A took no write after the freeze point (decoded WAL, catalog fingerprint); every
   table present on B, and row counts equal for tables no revision changed.
9. ``swap`` — B gated (connections revoked, read-only); A closed; one transaction renames A
   aside and B into place; a snapshot of B is taken and held for the comparison; the reverse
   slot is advanced to this point; B opens: the first session that can write ends the window.
   On another server there is no rename: the ``after_swap`` hook (repointing clients) runs before
   B opens, and a failing hook aborts.
10. ``compare`` — with B serving: the set-aside A and B's held snapshot compared (row counts and
    content checksums of A's columns, every table no revision changed; row counts of the others
    where the rehearsal showed counts preserved). A difference is a loud warning.
11. ``reverse`` — when the release allows it, the set-aside A (gated) subscribes to B, so
    `snapdb rollback` within the window keeps B's writes (`reverse`).
12. ``finish`` — the receipt, the journal closed.

Failures before the swap abort as in snapshot mode, after removing the replication on both sides.
Where B lives and snapdb's sessions on A and B are in `rsides`; the swap (step 9) is in `rswap`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import psycopg
from psycopg import sql

from .. import faults, history, manifest as mf
from ..errors import AbortedError, SnapdbError, TargetError
from ..postgres import connect, first_line
from ..replication import follow, largeobjects, slots
from ..restore import Build, RestoreOptions
from ..snapshot import take_snapshot
from ..verify import count_tables, table_sums
from . import freeze, journal, proof, rswap, run

from .rsides import (  # noqa: F401  (rep_name, rev_name, b_server: used by api and reverse)
    OWN_TABLES as _OWN_TABLES, a as _a, b as _b, b_maint, b_name as _b_name, b_server, plan as _plan, rep_name,
    replicated_tables, rev_name, same_server)
from .rswap import _hold_b_snapshot, _place_reverse_slot, _swap, _ungate, record_committed_swap  # noqa: F401

log = logging.getLogger(__name__)


# -- the run ---------------------------------------------------------------------------------------------
def proceed(ctx: run.Context) -> run.CutoverResult:
    """Run (or go on with) the steps not yet done; abort on failure before the swap."""
    j = ctx.j
    rep = j.facts["replication"]["name"]
    faults.checkpoint("cutover:preflight")
    record_committed_swap(ctx)
    try:
        if not j.done("build"):
            _build(ctx, rep)
        faults.checkpoint("cutover:build")
        if not j.done("follow"):
            _follow(ctx, rep)
        faults.checkpoint("cutover:follow")
        if not j.done("upgrade"):
            _upgrade_before(ctx, rep)
        faults.checkpoint("cutover:upgrade")
        if not j.done("freeze"):
            run._freeze(ctx, keep_apps=(rep,))
        elif not j.done("swap"):
            _refreeze(ctx, rep)
        faults.checkpoint("cutover:freeze")
        run._check_deadline(ctx)
        if not j.done("fence"):
            _fence(ctx, rep)
        faults.checkpoint("cutover:fence")
        run._check_deadline(ctx)
        if not j.done("finalize"):
            _finalize(ctx)
        faults.checkpoint("cutover:finalize")
        run._check_deadline(ctx)
        if not j.done("swap"):
            _prove(ctx)
            faults.checkpoint("cutover:prove")
            run._check_deadline(ctx)
            _swap(ctx)
        faults.checkpoint("cutover:swap")
    except AbortedError:
        raise
    except (SnapdbError, psycopg.Error, KeyboardInterrupt) as exc:
        if j.done("swap"):
            raise
        run.fail_before_swap(ctx, exc, rswap.swap_may_have_committed, record_committed_swap, abort_before_swap)
    if not j.done("compare"):
        _compare(ctx)
    faults.checkpoint("cutover:compare")
    if not j.done("reverse"):
        _reverse(ctx)
    faults.checkpoint("cutover:reverse")
    if not j.done("finish"):
        _finish(ctx)
    return ctx.result


# -- 2. build ------------------------------------------------------------------------------------------------
class _SlotPin:
    """`take_snapshot`'s `pin`: creates the replication slot (again, if the locking was retried)
    and returns its exported snapshot."""

    def __init__(self, ctx: run.Context, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.slot: slots.ExportedSlot | None = None

    def __call__(self) -> str:
        if self.slot is not None:
            self.close()
            slots.drop(self.ctx.maint, self.name)
        self.slot = slots.ExportedSlot(self.ctx.ep, self.name, timeout=60.0, dbname=self.ctx.dbname)
        return self.slot.snapshot

    def close(self) -> None:
        if self.slot is not None:
            self.slot.close()


def _build(ctx: run.Context, rep: str) -> None:
    j = ctx.j
    if j.get("build").status == "running":  # interrupted: start the build again from nothing
        _remove_replication(ctx, keep_build=False)
    j.begin(ctx.store, "build")
    with _a(ctx) as a:
        tables = replicated_tables(a)
        follow.drop_publication(a, rep)
        follow.create_publication(a, rep, [(t.schema, t.name, None) for t in tables])
        j.note(ctx.store, publication=rep, rep_slot=rep, a_schema=_schema(proof.fingerprint(a)), a_matviews=_matviews(a),
               a_lo_digest=largeobjects.digest(a))
    pin = _SlotPin(ctx, rep)
    try:
        m = take_snapshot(ctx.ep, ctx.store, jobs=ctx.jobs, label=f"cutover {j.id} to {j.tag} (replicate: the copy B starts from)",
                          release_probe=ctx.release_probe, reporter=ctx.reporter, pin=pin)
    finally:
        pin.close()
    j.note(ctx.store, snapshot_id=m.id, rep_slot_lsn=pin.slot.lsn if pin.slot else None)  # not slot_lsn: the proof slot's (run._freeze)
    server = b_server(ctx)
    b = Build(ctx.store, m, server, ctx.dbname, jobs=ctx.jobs, maintenance_db=ctx.maintenance_db, verify="full",
              options=RestoreOptions(), reporter=ctx.reporter, lock=not same_server(ctx), operation="cutover")
    ctx.build = b
    b.prepare(inspect_target=False, own_source=True)
    j.note(ctx.store, build={"name": b.tmp, "oid": None})
    oid = b.build()
    b.open_privileges()  # B has A's privileges from its build on, as A's copy (no scrub in a cutover)
    j.note(ctx.store, build={"name": b.tmp, "oid": oid})
    b.release_hold()  # B must take the replicated rows next
    j.end(ctx.store, "build", build={"name": b.tmp, "oid": oid}, tables=len(tables))


def _schema(fp: dict) -> list:
    """The part of a fingerprint that replication depends on: tables, their names and columns."""
    return sorted([r[0], r[2], r[3], r[4]] for r in fp["relations"] if r[3] in ("r", "p"))


# -- 3. follow -----------------------------------------------------------------------------------------------
def _conninfo(ctx: run.Context, app: str) -> str:
    return follow.subscription_conninfo(ctx.ep, ctx.dbname, app)


def _follow(ctx: run.Context, rep: str) -> None:
    j = ctx.j
    j.begin(ctx.store, "follow")
    with _b(ctx) as b:
        follow.drop_publication(b, rep)  # copied from A with the rest: B publishes nothing of its own
        if follow.subscription(b, rep) is None:
            follow.create_subscription(b, rep, _conninfo(ctx, rep), rep, rep)
    j.note(ctx.store, subscription=rep)
    waited = _catch_up(ctx, rep, "following A")
    j.end(ctx.store, "follow", follow={"caught_up_seconds": round(waited, 3)})


def _catch_up(ctx: run.Context, rep: str, what: str, timeout: float | None = None) -> float:
    """Wait until B has confirmed A's WAL as of now, reporting the lag."""
    timeout = timeout or float(ctx.j.facts.get("catchup_timeout") or 3600)

    def report(lag: int | None, waited: float) -> None:
        ctx.reporter.note(f"{what}: {(lag or 0) / 1e6:.1f} MB behind after {waited:.0f} s")

    with _a(ctx) as a, _b(ctx) as b:
        target = a.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()[0]
        lag = follow.lag_bytes(a, rep)
        ctx.reporter.note(f"{what}: {(lag or 0) / 1e6:.1f} MB behind")
        waited = follow.wait_for(a, b, rep, rep, target, timeout, on_wait=report, poll=0.05)
    ctx.reporter.note(f"{what}: caught up ({waited:.1f} s)")
    return waited


# -- 4. upgrade before the freeze ------------------------------------------------------------------------
def _steps(ctx: run.Context, which: str):
    """The release's revisions that run `which` ("before" or "during") the freeze, still to do on B."""
    from .. import migrate, releases
    from ..ledger import Ledger
    from ..postgres import alembic_revisions

    ledger = Ledger.load(ctx.mdir)
    rel = ledger.get(ctx.j.tag)
    wanted = _plan(ctx).get(which) or []
    with releases.open_scripts(ctx.mdir, ctx.j.tag) as scripts, _b(ctx) as b:
        current = migrate.single_revision(alembic_revisions(b), "the new database")
        steps = migrate.plan(scripts, current, rel.revision, ledger.tag_for, "the new database")
    return [s for s in steps if s.revision in wanted], rel


def _apply(ctx: run.Context, steps, rel, rows: bool) -> dict:
    from .. import migrate, releases

    j = ctx.j
    b_ep = b_server(ctx).with_dbname(_b_name(ctx))
    with releases.open_scripts(ctx.mdir, j.tag) as scripts, migrate.UpgradeSession(b_ep, lock=True) as session:
        releases.check_release(rel, scripts)
        rec = history.new_record(
            "upgrade", b_ep.with_dbname(ctx.dbname, name=ctx.service), tag=j.tag, from_revision=session.current,
            to_revision=steps[-1].revision, reached_revision=session.current, checksum=rel.checksum,
            restored_from=j.facts["snapshot_id"], restored_from_source=ctx.service,
            rehearsal=(j.facts.get("plan") or {}).get("rehearsal"), scripts_origin=scripts.origin)
        seconds = session.apply(scripts, steps, rec, ctx.store, rows=rows)
    return {"revisions": [s.revision for s in steps], "seconds": round(seconds, 3), "measured": rec.revisions or []}


def _upgrade_before(ctx: run.Context, rep: str) -> None:
    j = ctx.j
    j.begin(ctx.store, "upgrade")
    steps, rel = _steps(ctx, "before")
    done = {"revisions": [], "seconds": 0.0, "measured": []}
    if steps:
        done = _apply(ctx, steps, rel, rows=False)
        for m in done["measured"]:  # the catalog part of the rule, again on B itself
            if not m["replication"]["compatible"]:
                raise TargetError(f"revision {m['revision']} did on the new database what its rehearsal did not: "
                                  f"{m['replication']['reasons'][0]}; it must not run while B follows A")
    if _plan(ctx).get("reverse"):
        _prepare_reverse(ctx)
    _catch_up(ctx, rep, "following A after the upgrade")
    j.end(ctx.store, "upgrade", upgrade_before=done)


def _prepare_reverse(ctx: run.Context) -> None:
    """The reverse publication (A's tables, A's columns) and slot on B, made before the freeze
    (creating a slot waits for running transactions; advancing it at the swap does not)."""
    j = ctx.j
    rev = rev_name(j.id)
    with _a(ctx) as a:
        cols = [(t.schema, t.name, list(t.columns)) for t in replicated_tables(a)]
    with _b(ctx) as b:
        follow.drop_publication(b, rev)
        follow.create_publication(b, rev, cols)
        if slots.info(b, rev) is None:
            b.execute("SELECT pg_catalog.pg_create_logical_replication_slot(%s, 'pgoutput')", (rev,))
    j.note(ctx.store, reverse={"name": rev, "active": False})


# -- 5. refreeze on resume -------------------------------------------------------------------------------
def _refreeze(ctx: run.Context, rep: str) -> None:
    j = ctx.j
    ctx.st = freeze.FreezeState.from_json(j.facts["freeze"])
    if j.get("swap").status == "running":  # killed inside the swap, before it committed: from the proof on
        build = j.facts["build"]["name"]
        if b_maint(ctx).execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (build,)).fetchone():
            b_maint(ctx).execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(build)))
        if j.facts.get("closed"):  # nobody could connect to A meanwhile
            ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(ctx.dbname)))
            j.note(ctx.store, closed=False)
    freeze.terminate_others(ctx.maint, ctx.st)
    ctx.hold = freeze.Hold(ctx.ep, ctx.st, ctx.ep.with_dbname(ctx.maintenance_db))
    freeze.probe(ctx.ep, ctx.st, ctx.hold.tables, ctx.maint)
    if not j.done("fence"):  # B still follows: whatever A took meanwhile reaches it before the fence
        j.note(ctx.store, freeze_point=run._freeze_point(ctx))
        return
    changed = run._changes_since_freeze(ctx)
    if changed:
        raise TargetError(f"{ctx.dbname!r} changed while the cutover was interrupted: {changed[0]}")


# -- 6. fence ----------------------------------------------------------------------------------------------
def _fence(ctx: run.Context, rep: str) -> None:
    j = ctx.j
    j.begin(ctx.store, "fence")
    with _a(ctx) as a:
        changed = [d for d in _schema_diff(j.facts.get("a_schema") or [], _schema(proof.fingerprint(a)))]
        if changed:
            raise TargetError(f"{ctx.dbname!r}'s tables changed while B was built ({changed[0]}): logical "
                              "replication does not carry schema changes")
        t0 = time.monotonic()
        lsn = proof.wait_flushed(a, flush_via=ctx.maint)
        flushed = time.monotonic() - t0  # forced (`proof.force_flush`): a round trip, not the WAL writer's delay
        with _b(ctx) as b:
            waited = follow.wait_for(a, b, rep, rep, lsn, timeout=max(30.0, float(j.facts.get("drain_timeout", 5))),
                                     poll=0.002)
            follow.stop(b, ctx.maint, rep, rep)
    j.end(ctx.store, "fence", fence={"lsn": lsn, "flush_seconds": round(flushed, 4), "waited_seconds": round(waited, 4)})


def _schema_diff(before: list, after: list) -> list[str]:
    b = {r[0]: r for r in before}
    a = {r[0]: r for r in after}
    out = [f"table {a[o][1]} was created" for o in sorted(set(a) - set(b))]
    out += [f"table {b[o][1]} was dropped" for o in sorted(set(b) - set(a))]
    out += [f"table {b[o][1]} was renamed or altered" for o in sorted(set(a) & set(b)) if a[o] != b[o]]
    return out


# -- 7. finalize ---------------------------------------------------------------------------------------------
def _finalize(ctx: run.Context) -> None:
    j = ctx.j
    j.begin(ctx.store, "finalize")
    with _a(ctx) as a, _b(ctx) as b:
        seqs = follow.copy_sequences(a, b)
        refreshed = _refresh_matviews(ctx, a, b)
        lo = None
        if largeobjects.digest(a) != j.facts.get("a_lo_digest"):  # changed while B followed: copied again
            lo = largeobjects.copy_all(a, b)
    steps, rel = _steps(ctx, "during")
    during = _apply(ctx, steps, rel, rows=True) if steps else {"revisions": [], "seconds": 0.0, "measured": []}
    j.end(ctx.store, "finalize", sequences=seqs, refreshed=refreshed, large_objects_copied=lo, upgrade_during=during)


_MATVIEWS = """SELECT n.nspname || '.' || c.relname, c.relfilenode::text, c.relispopulated,
       coalesce(st.n_tup_ins, 0) + coalesce(st.n_tup_del, 0)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_stat_all_tables st ON st.relid = c.oid
WHERE c.relkind = 'm' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"""


def _matviews(conn: psycopg.Connection) -> dict[str, list]:
    """Each materialized view's relfilenode, populated state and row-change counter: a REFRESH
    (plain or CONCURRENTLY) changes one of them."""
    return {r[0]: [r[1], r[2], int(r[3])] for r in conn.execute(_MATVIEWS).fetchall()}


def _refresh_matviews(ctx: run.Context, a: psycopg.Connection, b: psycopg.Connection) -> list[str]:
    """Materialized views A refreshed since B was copied (replication does not carry a REFRESH),
    refreshed on B now, from B's rows, which equal A's."""
    before = ctx.j.facts.get("a_matviews") or {}
    out = []
    for name, now in _matviews(a).items():
        if before.get(name) == now:
            continue
        schema, _, view = name.partition(".")
        ident = sql.Identifier(schema, view)
        b.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(ident, sql.SQL("" if now[1] else " WITH NO DATA")))
        out.append(name)
    return out


# -- 8. prove ----------------------------------------------------------------------------------------------
def _prove(ctx: run.Context) -> None:
    j = ctx.j
    j.begin(ctx.store, "prove")
    if ctx.hold is None or not ctx.hold.alive():
        ctx.hold = freeze.Hold(ctx.ep, ctx.st, ctx.ep.with_dbname(ctx.maintenance_db))
    changed = run._changes_since_freeze(ctx)
    changed += [f"prepared transaction {g} exists" for g in (r[0] for r in ctx.maint.execute(
        "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE database = %s", (ctx.dbname,)))]
    if changed:
        raise TargetError(f"{ctx.dbname!r} is not unchanged since the freeze point: {changed[0]}"
                          + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""))
    excluded = set(_plan(ctx).get("changed_tables") or [])
    a_conns = [_a(ctx) for _ in range(max(1, ctx.jobs // 2 or 1))]
    b_conns = [_b(ctx) for _ in range(max(1, ctx.jobs // 2 or 1))]
    try:
        refs = replicated_tables(a_conns[0])
        tables = [(t.schema, t.name) for t in refs]
        j.note(ctx.store, a_tables=[f"{s}.{n}" for s, n in tables])
        counted, deferred = _within_count_budget([t for t in refs if f"{t.schema}.{t.name}" not in excluded])
        import threading

        res: dict = {}
        ta = threading.Thread(target=lambda: res.__setitem__("a", count_tables(a_conns, counted)), daemon=True)
        ta.start()
        res["b"] = count_tables(b_conns, counted)
        res["b_present"] = {(s, n): (0 if b_conns[0].execute("SELECT pg_catalog.to_regclass(%s)",
                                                              (sql.Identifier(s, n).as_string(b_conns[0]),)).fetchone()[0]
                                     else None)
                            for s, n in tables if f"{s}.{n}" in excluded}
        ta.join()
    finally:
        for c in a_conns + b_conns:
            c.close()
    dropped = set(_plan(ctx).get("dropped_tables") or [])
    missing = sorted(f"{s}.{n}" for (s, n), v in {**res["b"], **res["b_present"]}.items()
                     if v is None and f"{s}.{n}" not in dropped)
    if missing:
        raise TargetError(f"table {missing[0]} is missing on the new database")
    diff = [f"{s}.{n}: {res['a'][(s, n)]} rows on A, {res['b'][(s, n)]} on B" for s, n in counted
            if res["a"].get((s, n)) != res["b"].get((s, n))]
    if diff:
        raise TargetError(f"row counts differ between the frozen database and the new one: {diff[0]}"
                          + (f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""))
    how = "decoded WAL and catalog fingerprint" if j.facts.get("slot") else "catalog fingerprint and table locks"
    j.end(ctx.store, "prove", proof={"unchanged": True, "by": how, "slot_missing": j.facts.get("slot_missing"),
                                     "counts": {"tables": len(counted), "rows": sum(res["a"].values()),
                                                "not_counted": sorted(excluded),
                                                "deferred_to_compare": deferred}})


#: Inside the freeze the proof counts rows only up to this many bytes of tables (smallest
#: first), so that the window does not grow with the database: the fence already proves B
#: applied everything A wrote, and the larger tables are compared in full (rows and content
#: checksums) right after the swap, on B's state as it was swapped in (`_compare`).
COUNT_BUDGET_BYTES = 64 * 1024 * 1024


def _within_count_budget(refs: list) -> tuple[list[tuple[str, str]], list[str]]:
    """(tables to count inside the freeze, names of those deferred to the comparison)."""
    counted, deferred, used = [], [], 0
    for t in sorted(refs, key=lambda t: (t.bytes, t.schema, t.name)):
        if used + t.bytes <= COUNT_BUDGET_BYTES:
            counted.append((t.schema, t.name))
            used += t.bytes
        else:
            deferred.append(f"{t.schema}.{t.name}")
    return counted, deferred


# -- 10. compare ------------------------------------------------------------------------------------------
def _compare(ctx: run.Context) -> None:
    j = ctx.j
    j.begin(ctx.store, "compare")
    aside = j.facts["set_aside"]
    ident = sql.Identifier(aside)
    result: dict = {"matches": None}
    excluded = set(_plan(ctx).get("changed_tables") or [])
    kept_counts = set(_plan(ctx).get("count_preserved") or [])
    ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident))
    try:
        with _a(ctx, aside) as a:
            tables = replicated_tables(a)
            follow.drop_publication(a, j.facts["replication"]["name"])
        if ctx.b_snapshot is None:
            result = {"matches": None, "differences": [], "note": "no snapshot of the new database was held"}
        else:
            same = [t for t in tables if t.qualname not in excluded]
            counts_only = [t for t in tables if t.qualname in excluded and t.qualname in kept_counts]
            a_sums = table_sums(ctx.ep, same, error_cls=TargetError, dbname=aside, jobs=ctx.jobs)
            b_sums = table_sums(b_server(ctx), same, error_cls=TargetError, dbname=ctx.dbname,
                                snapshot=ctx.b_snapshot[1], jobs=ctx.jobs)
            diffs = [f"{t.qualname}: {a_sums.get((t.schema, t.name))} on A, {b_sums.get((t.schema, t.name))} on B"
                     for t in same if a_sums.get((t.schema, t.name)) != b_sums.get((t.schema, t.name))]
            if counts_only:
                with _a(ctx, aside) as a:
                    ca = count_tables([a], [(t.schema, t.name) for t in counts_only])
                cb = count_tables([ctx.b_snapshot[0]], [(t.schema, t.name) for t in counts_only])
                diffs += [f"{s}.{n}: {ca[(s, n)]} rows on A, {cb[(s, n)]} on B" for (s, n) in ca if ca[(s, n)] != cb.get((s, n))]
            result = {"matches": not diffs, "differences": diffs[:20], "tables_compared": len(same),
                      "tables_counted": len(counts_only), "not_compared": sorted(excluded - kept_counts)}
            if diffs:
                run.warn(ctx, f"the set-aside database {aside!r} and the new one differ: {diffs[0]}"
                              + (f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""))
    finally:
        if not _plan(ctx).get("reverse"):
            ctx.maint.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
        if ctx.b_snapshot is not None:
            ctx.b_snapshot[0].close()
            ctx.b_snapshot = None
    if j.facts.get("slot"):
        try:
            proof.drop_slot(ctx.maint, j.facts["slot"])
        except psycopg.Error as exc:
            ctx.result.warnings.append(f"could not drop the proof slot {j.facts['slot']}: {first_line(exc)}")
    j.end(ctx.store, "compare", compare=result)


# -- 11. reverse -----------------------------------------------------------------------------------------
def _reverse(ctx: run.Context) -> None:
    from . import reverse

    j = ctx.j
    j.begin(ctx.store, "reverse")
    if (j.facts.get("reverse") or {}).get("name"):
        try:
            reverse.start(ctx)
        except (SnapdbError, psycopg.Error) as exc:
            msg = exc.message if isinstance(exc, SnapdbError) else first_line(exc)
            ctx.result.warnings.append(f"the set-aside database does not follow the new one ({msg}): a rollback "
                                       "would need --discard-writes")
            reverse.remove(ctx)
    j.end(ctx.store, "reverse")


# -- 12. finish --------------------------------------------------------------------------------------------
def _finish(ctx: run.Context) -> None:
    j = ctx.j
    j.begin(ctx.store, "finish")
    f = j.facts
    receipt = {
        "format": "snapdb-cutover-receipt/1", "id": j.id, "service": ctx.service, "database": ctx.dbname,
        "server": {"host": ctx.ep.host, "port": ctx.ep.port}, "tag": j.tag, "mode": j.mode,
        "to_server": {"host": b_server(ctx).host, "port": b_server(ctx).port} if not same_server(ctx) else None,
        "release": (f.get("plan") or {}).get("revision"), "checksum": (f.get("plan") or {}).get("checksum"),
        "snapshot_id": f.get("snapshot_id"), "rep_slot_lsn": f.get("rep_slot_lsn"), "proof_slot": f.get("slot"),
        "slot_lsn": f.get("slot_lsn"), "freeze_mode": j.freeze_mode,
        "freeze_point": run._strip(f.get("freeze_point")), "fence": f.get("fence"), "sequences": f.get("sequences"),
        "probes": f.get("probes"), "drain": f.get("drained"), "proof": f.get("proof"), "compare": f.get("compare"),
        "upgrade_before_freeze": f.get("upgrade_before"), "upgrade_during_freeze": f.get("upgrade_during"),
        "refreshed_matviews": f.get("refreshed"), "reverse": f.get("reverse"),
        "freeze_window_seconds": f.get("freeze_window_seconds"), "swap_parts": f.get("swap_parts"),
        "predicted_seconds": ((f.get("plan") or {}).get("prediction") or {}).get("seconds"),
        "steps": [asdict(s) for s in j.steps], "set_aside": f.get("set_aside"), "hooks": f.get("hooks", []),
        "os_user": j.os_user, "client_host": j.client_host, "started_at": j.started_at,
        "snapdb_version": j.snapdb_version,
    }
    key = journal.write_receipt(ctx.store, receipt)
    rec = history.new_record("cutover", b_server(ctx).with_dbname(ctx.dbname, name=ctx.service), tag=j.tag,
                             restored_from=f.get("snapshot_id"), restored_from_source=ctx.service, outcome="succeeded",
                             rehearsal=(f.get("plan") or {}).get("rehearsal"), checksum=(f.get("plan") or {}).get("checksum"))
    rec.started_at, rec.ended_at = j.started_at, mf.utcnow().isoformat()
    rec.seconds = f.get("freeze_window_seconds")
    history.write_catalog(ctx.store, rec)
    j.end(ctx.store, "finish", receipt=key, history_record=rec.record_id)
    j.close(ctx.store, "done")
    r = ctx.result
    r.outcome, r.receipt, r.snapshot_id = "done", key, f.get("snapshot_id")
    r.set_aside = f.get("set_aside")
    r.freeze_window_seconds = f.get("freeze_window_seconds")
    r.proof, r.compare = f.get("proof") or {}, f.get("compare") or {}
    r.steps = [{"name": s.name, "status": s.status, "seconds": s.seconds} for s in j.steps]


# -- abort ---------------------------------------------------------------------------------------------------
def _remove_replication(ctx: run.Context, keep_build: bool = True) -> list[str]:
    """Remove the subscription (on B), the slots and publications (on A and B); with
    `keep_build` False also drop B. Every part is skipped when already gone."""
    j = ctx.j
    notes: list[str] = []
    rep = j.facts["replication"]["name"]
    build = j.facts.get("build") or {}
    b_db = build.get("name")
    bm = b_maint(ctx)
    have_b = bool(b_db) and bm.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (b_db,)).fetchone()
    try:
        if have_b:
            with _b(ctx, b_db) as b:
                follow.stop(b, ctx.maint, rep, rep)
                rev = (j.facts.get("reverse") or {}).get("name")
                if rev:
                    follow.drop_publication(b, rev)
                    slots.drop(bm, rev)
        else:
            slots.drop(ctx.maint, rep)
    except (SnapdbError, psycopg.Error) as exc:
        notes.append(f"removing the replication: {exc.message if isinstance(exc, SnapdbError) else first_line(exc)}")
    if have_b and not keep_build:
        from ..postgres import drop_database

        if build.get("oid") is None or int(bm.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s",
                                                       (b_db,)).fetchone()[0]) == int(build["oid"]):
            drop_database(bm, b_db)
        j.note(ctx.store, build=None)
    return notes


def abort_before_swap(ctx: run.Context, reason: str) -> None:
    """Undo a replicate-mode cutover that has not swapped: replication removed on both sides,
    B dropped, A unfrozen exactly as it was, its publication dropped."""
    notes = _remove_replication(ctx, keep_build=True)
    if not same_server(ctx) and ctx.build is not None:
        ctx.build.discard()
        ctx.build.close()
        ctx.build = None
    if not same_server(ctx):
        _remove_replication(ctx, keep_build=False)
    run.abort_before_swap(ctx, reason)
    try:
        with connect(ctx.ep, TargetError, dbname=ctx.dbname, autocommit=True) as a:
            a.execute("SET default_transaction_read_only = off")
            follow.drop_publication(a, ctx.j.facts["replication"]["name"])
    except (SnapdbError, psycopg.Error) as exc:
        notes.append(f"could not drop the publication on {ctx.dbname!r}: "
                     f"{exc.message if isinstance(exc, SnapdbError) else first_line(exc)}")
    if ctx.result is not None:
        ctx.result.warnings += notes
