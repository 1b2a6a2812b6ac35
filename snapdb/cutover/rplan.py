"""Preflight of a replicate-mode cutover: what logical replication needs, how the release splits
around the freeze, and the predicted window.

Contract: `check(conn, ...)` reads A's server (and B's, when the cutover goes to another server)
and returns ``(problems, warnings, info)``; it changes nothing. Problems forbid the cutover (they
are raised together with the snapshot-mode preflight's, exit 8). `info` becomes
``plan["replicate"]``:

- ``before`` / ``during``: the revisions that run before the freeze (the longest leading run
  the rehearsal measured replication-compatible, `snapdb.replication.compat`) and inside it;
- ``reverse``: whether the set-aside A can follow B afterwards (only when nothing runs inside the
  freeze), so that a rollback keeps B's writes;
- ``changed_tables``: tables any revision changed or inserted into (not counted equal in the
  proof); ``count_preserved``: those of them whose row count the rehearsal showed unchanged
  (counted in the comparison);
- ``prediction``: the window's constant part plus the rehearsal's durations of the revisions
  that run inside the freeze. The constant part is learnt from this service's earlier
  replicate-mode cutovers when there are any (the median of up to five: window minus the time
  its in-freeze revisions took); before the first, it is predicted from what this preflight
  timed on A (`rwindow`: sessions, round trips, fingerprint, table locks, the proof's counts,
  the journal, the fence's WAL flush), and ``basis.overhead`` says which. The preflight's
  measurements and their estimate are in ``measured`` either way; `DEFAULT_OVERHEAD` is used
  only when nothing could be measured. The drain is part of the constant; ``at_most`` adds the
  whole `drain_timeout`.

Requirements (each a problem when missing): ``wal_level = logical``; PostgreSQL 15 or later on
both sides (column lists, ``disable_on_error``); a superuser admin role (publications of every
table, subscriptions); two free replication slots and a free WAL sender on A's server, and on B's
a free logical replication worker (and a slot and a WAL sender more for the reverse); a replica
identity on every table (a primary key, ``REPLICA IDENTITY USING INDEX`` or ``FULL``), else
UPDATE and DELETE on A would fail once the table is published; large
objects are carried by the copy and, when they changed
meanwhile, copied again inside the freeze (`largeobjects`); no unlogged tables; a rehearsal that measured each revision.
"""

from __future__ import annotations

import statistics

import psycopg

from .. import history
from ..config import Endpoint
from ..postgres import large_object_count
from . import journal, rwindow

DEFAULT_OVERHEAD = 1.0


def _int(conn: psycopg.Connection, q: str, *args) -> int:
    return int(conn.execute(q, args or None).fetchone()[0])


def check(conn: psycopg.Connection, dbname: str, steps: list, rehearsal: history.Record | None, store,
          service: str, *, drain_timeout: float, max_freeze: float | None,
          b_conn: psycopg.Connection | None = None, has_swap_hook: bool = True, ep: Endpoint | None = None,
          b_ep: Endpoint | None = None, scripts_seconds: float | None = None) -> tuple[list[str], list[str], dict]:
    """See module docstring. `conn`: a session on A (autocommit); `b_conn`: one on B's server's
    maintenance database when the cutover goes to another server, `b_ep` that server; `ep`: A's
    admin endpoint (without it, sessions are not timed); `scripts_seconds`: how long reading the
    release's scripts took (`rwindow`)."""
    problems: list[str] = []
    warnings: list[str] = []
    level = conn.execute("SHOW wal_level").fetchone()[0]
    if level != "logical":
        problems.append(f"replicate mode needs wal_level = logical on {dbname!r}'s server (it is {level}; "
                        "changing it needs a restart)")
    for who, c in (("the server", conn), ("the new server", b_conn)):
        if c is not None and c.info.server_version < 150000:
            problems.append(f"replicate mode needs PostgreSQL 15 or later on {who} (it runs "
                            f"{c.info.server_version // 10000})")
    for who, c in (("", conn), (" on the new server", b_conn)):
        if c is not None and not c.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()[0]:
            problems.append(f"replicate mode needs a superuser admin role{who} (publications and subscriptions)")
    reverse_wanted = True
    free_slots = _int(conn, "SELECT current_setting('max_replication_slots')::int - count(*) FROM pg_catalog.pg_replication_slots")
    free_senders = _int(conn, "SELECT current_setting('max_wal_senders')::int - count(*) FROM pg_catalog.pg_stat_replication")
    if free_slots < 2:
        problems.append(f"replicate mode needs 2 free replication slots on the server ({free_slots} free: raise "
                        "max_replication_slots)")
    if free_senders < 1:
        problems.append("no free WAL sender on the server (raise max_wal_senders)")
    bc = b_conn or conn
    workers = _int(bc, "SELECT current_setting('max_logical_replication_workers')::int - "
                       "(SELECT count(*) FROM pg_catalog.pg_stat_subscription WHERE pid IS NOT NULL)")
    if workers < 1:
        problems.append("no free logical replication worker on the new database's server (raise "
                        "max_logical_replication_workers)")
    rows = conn.execute(
        """SELECT n.nspname || '.' || c.relname, c.relreplident, c.relpersistence,
                  EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'r' AND c.relpersistence <> 't'
             AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'snapdb')
             AND n.nspname NOT LIKE 'pg\\_%'
             AND NOT (n.nspname = 'public' AND c.relname = 'alembic_version')
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                             AND d.objid = c.oid AND d.deptype = 'e')""").fetchall()
    no_ident = sorted(name for name, ident, _p, pk in rows if ident == "n" or (ident == "d" and not pk))
    unlogged = sorted(name for name, _i, p, _pk in rows if p == "u")
    if no_ident:
        problems.append(f"table(s) without a primary key or replica identity: {', '.join(no_ident[:5])}"
                        f"{' …' if len(no_ident) > 5 else ''} (once published, their UPDATEs and DELETEs would fail on "
                        "the live database; add a key, or ALTER TABLE … REPLICA IDENTITY FULL, or use --mode snapshot)")
    if unlogged:
        problems.append(f"unlogged table(s) {', '.join(unlogged[:5])}: logical replication does not carry them "
                        "(use --mode snapshot)")
    lo = large_object_count(conn)
    if lo:
        warnings.append(f"{dbname!r} has {lo} large object(s), which logical replication does not carry: B gets them "
                        "with its copy, and if they change meanwhile they are copied again inside the freeze")
    info = split(steps, rehearsal, problems)
    if info["during"]:
        reverse_wanted = False
        warnings.append(f"revision(s) {', '.join(info['during'])} run inside the freeze ("
                        + "; ".join(info["why_during"][:2]) + "): the old database cannot follow the new one "
                        "afterwards, so a rollback that keeps the new writes is not possible (it would need --discard-writes)")
    if b_conn is not None and reverse_wanted:
        reverse_wanted = False
        warnings.append("a cutover to another server has no rollback window: the old database does not follow the "
                        "new one afterwards, and `snapdb rollback` refuses (going back is repointing the clients)")
    info["reverse"] = reverse_wanted and not problems
    if info["reverse"]:
        if free_slots < 3 and b_conn is None:
            info["reverse"] = False
            warnings.append("no third free replication slot for the reverse replication: a rollback would need "
                            "--discard-writes")
    if b_conn is not None and not has_swap_hook:
        problems.append("a cutover to another server needs an after_swap hook (it repoints the clients: there is no "
                        "rename across servers)")
    measured = None
    if ep is not None and not problems:
        measured = _measure(conn, ep, b_ep, b_conn, info, store, service, scripts_seconds)
    info["prediction"] = predict(store, service, info, rehearsal, drain_timeout, measured)
    if max_freeze is not None and info["prediction"]["seconds"] > max_freeze:
        problems.append(f"the predicted freeze window ({info['prediction']['seconds']:.2f} s) exceeds --max-freeze "
                        f"{max_freeze:g} s")
    return problems, warnings, info


def split(steps: list, rehearsal: history.Record | None, problems: list[str]) -> dict:
    """The release's revisions before and inside the freeze, from the rehearsal's measurements."""
    measured = {r["revision"]: r for r in ((rehearsal.revisions if rehearsal else None) or [])}
    before, during, why = [], [], []
    changed: set[str] = set()
    rows: dict[str, list[int]] = {}
    rewritten: set[str] = set()
    dropped: set[str] = set()
    seconds = {}
    for s in steps:
        m = measured.get(s.revision)
        if m is None:
            if rehearsal is not None:
                problems.append(f"the rehearsal {rehearsal.record_id} did not measure revision {s.revision} (made by an "
                                "older snapdb?): rehearse the release again")
            during.append(s.revision)
            continue
        rep = m.get("replication") or {}
        seconds[s.revision] = float(m.get("seconds") or 0.0)
        changed |= set(rep.get("changed") or []) | set(rep.get("inserted") or [])
        rewritten |= set(rep.get("rewritten") or [])
        dropped |= set(rep.get("dropped") or [])
        for t, (ins, upd, dele) in (rep.get("rows") or {}).items():
            acc = rows.setdefault(t, [0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + ins, acc[1] + upd, acc[2] + dele
        if rep.get("compatible") and not during:
            before.append(s.revision)
        else:
            during.append(s.revision)
            if not rep.get("compatible"):
                why.append(f"{s.revision}: {(rep.get('reasons') or ['?'])[0]}")
    preserved = sorted(t for t in changed if t in rows and rows[t][0] == 0 and rows[t][2] == 0 and t not in rewritten)
    return {"before": before, "during": during, "why_during": why, "changed_tables": sorted(changed),
            "count_preserved": preserved, "dropped_tables": sorted(dropped), "seconds": seconds}


def _measure(conn, ep, b_ep, b_conn, info, store, service, scripts_seconds) -> dict:
    """`rwindow.measure` for this cutover: the tables its proof counts, B's server."""
    from .replicate import _within_count_budget
    from .rsides import replicated_tables

    excluded = set(info["changed_tables"])
    counted, _deferred = _within_count_budget([t for t in replicated_tables(conn) if t.qualname not in excluded])
    b_db = b_conn.info.dbname if b_conn is not None else None
    return rwindow.measure(conn, ep, b_ep=b_ep if b_conn is not None else None, b_dbname=b_db, counted=counted,
                           store=store, journal_key=journal.Journal.key(service), scripts_seconds=scripts_seconds)


def predict(store, service: str, info: dict, rehearsal: history.Record | None, drain_timeout: float,
            measured: dict | None = None) -> dict:
    """The predicted freeze window (see module docstring); `measured`: `rwindow.measure`'s result."""
    overheads = []
    for j in sorted(journal.finished(store, service), key=lambda x: x.started_at, reverse=True):
        if j.mode != "replicate" or j.state != "done" or j.facts.get("freeze_window_seconds") is None:
            continue
        overheads.append(float(j.facts["freeze_window_seconds"]) - _revision_seconds(j.facts.get("upgrade_during")))
        if len(overheads) == 5:
            break
    estimate = parts = None
    if measured is not None and measured.get("seconds"):
        estimate, parts = rwindow.constant(measured, len(info["during"]))
    if overheads:
        overhead = statistics.median(overheads)
        basis = f"median of {len(overheads)} earlier replicate-mode cutover(s)"
    elif estimate is not None:
        overhead = estimate
        basis = ("measured in the preflight (no earlier replicate-mode cutover): sessions, round trips, catalog "
                 "fingerprint, table locks, the proof's counts, the journal and the WAL flush, scaled by how often "
                 "the window does each")
    else:
        overhead = DEFAULT_OVERHEAD
        basis = f"no earlier replicate-mode cutover and nothing measured: {DEFAULT_OVERHEAD:g} s assumed"
    revisions = sum(info["seconds"].get(r, 0.0) for r in info["during"])
    seconds = round(overhead + revisions, 3)
    out = {"seconds": seconds, "at_most_seconds": round(seconds + drain_timeout, 3),
           "parts": {"freeze, fence, proof and swap": round(overhead, 3), "revisions inside the freeze": round(revisions, 3)},
           "basis": {"overhead": basis, "revisions": f"rehearsal {rehearsal.record_id}" if rehearsal else "no rehearsal"},
           "unknown": []}
    if measured is not None:
        out["measured"] = {**measured, "parts": parts, "estimate_seconds": round(estimate, 3) if estimate is not None else None}
    return out



def _revision_seconds(during: dict | None) -> float:
    """How long an earlier cutover's in-freeze revisions themselves took, as the rehearsal's
    durations measure them (the session and catalog captures around them are part of the
    window's constant part, which `predict` learns); the whole upgrade's time for journals
    without that detail."""
    during = during or {}
    if during.get("measured"):
        return sum(float(m.get("seconds") or 0.0) for m in during["measured"])
    return float(during.get("seconds") or 0.0)
