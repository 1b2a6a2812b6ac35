"""The replicate-mode freeze window's constant part, predicted before the service's first
replicate-mode cutover from what the preflight can time without changing anything or holding up
a writer.

Apart from the revisions that run inside it, the window (freeze applied to the first session on
the new database that can write) does the same work at every cutover: `COUNTS` says how often it
does each thing below, as counted by profiling a same-server cutover of the test service
(docs/replicate-window.md, "The first prediction"). `measure` times each on A, now, as often as
the window does it (`REPEATS`: fewer round trips), in `PASSES` passes, and keeps each part's
median and its fastest time (what the prediction uses), so that one slow moment does not decide
(a pass that met a stall of the machine is done again):

- ``connect_a`` / ``connect_b``: opening a session on A's server / on B's (B's is A's figure
  when B is built on A's server);
- ``statement``: a round trip to A (catalog lookups like the window's: databases, sessions,
  slots, subscriptions);
- ``fingerprint``: the proof's catalog fingerprint of A (`proof.fingerprint`), which the window
  computes at the freeze point, at the fence, in the proof and once A is closed;
- ``lock``: every table of A locked ``ACCESS SHARE`` in a transaction that is rolled back, for
  the freeze's ``EXCLUSIVE`` locks and the held snapshot of B (these locks conflict with no
  write, only with DDL, and wait at most `LOCK_WAIT` for it);
- ``count``: the proof's row counts of the tables within its byte budget, on A (the window counts
  A and B at the same time);
- ``capture``: the catalog capture that frames each revision run inside the freeze
  (`snapdb.replication.compat.capture`, twice per revision);
- ``journal``: one journal rewrite of a journal as large as the freeze's (it holds A's
  fingerprint), writing nothing to the store: its read, its encoding and decoding, and, for a
  local store, an unnamed temporary file in the store's directory written and fsynced (another
  store round trip for other stores);
- ``scripts``: reading the release's scripts and ledger (timed by the caller, `api.preflight`;
  the window reads them twice).

`constant` is `CALIBRATION` × the sum of count × fastest measured time, plus the window's forced WAL flushes
and WAL decodings (`FLUSHES`). The calibration stands for what the measured parts leave out (the
Python work between statements, statements heavier than the lookups measured);
docs/replicate-window.md has the runs it was fitted on and how well it predicts fresh services.

Contract: `measure` changes nothing (it opens and closes sessions, reads, rolls back, and writes
only a temporary file that never has a name), takes about a second on a small database (no pass
starts after `MAX_MEASURE` seconds) and at most about one more for the counts of a large one
(their budget is `replicate.COUNT_BUDGET_BYTES`), and never raises for a measurement that fails: that part is
left out of the estimate and named in ``unmeasured``.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict

import psycopg

from ..config import Endpoint
from ..errors import SnapdbError, TargetError
from ..hold import LOCKABLE_SQL
from ..postgres import connect
from ..relations import lock_statements

#: how often the window does each measured thing (see module docstring); ``capture`` is per
#: revision inside the freeze
COUNTS = {"connect_a": 7, "connect_b": 8, "statement": 150, "fingerprint": 4, "lock": 2, "count": 1,
          "journal": 17, "scripts": 2, "capture": 2}
#: how often `measure` does each in a pass (as often as the window, but for the round trips and
#: the scripts, which the caller reads once); their median is what `constant` multiplies
REPEATS = {"connect_a": 7, "connect_b": 8, "statement": 50, "fingerprint": 4, "lock": 2, "count": 1,
           "journal": 17, "capture": 2}
#: the window's constant part (less the WAL flushes) over Σ `COUNTS` × each part's fastest
#: measured time: the fastest, not the median, because the preflight runs while the writers do
#: and the window while the freeze holds them (idle, a median measured under 8 writers was twice
#: the idle one, the fastest about the same). Fitted on the first cutovers of fresh test services,
#: quiet machine, 2026-12-01 (docs/replicate-window.md, "The first prediction"): 2.35 idle and
#: 2.44 under 8 writers (over the median times: 1.66 idle, 1.39 under writers). What it adds is
#: the Python work between statements and the statements heavier than the lookups measured
CALIBRATION = 2.4
#: the WAL flushes and decodings inside the window: the fence and the proof's two peeks of the
#: proof slot each force A's server to flush its WAL (`proof.force_flush`, a round trip: they
#: no longer wait for the WAL writer), and each peek starts logical decoding of the few records
#: since the freeze point: `FLUSHES` × `FLUSH_SECONDS`, a few milliseconds each on a quiet machine
#: (profiled, 2026-12-01: 0.002-0.005 s per peek, flush included)
FLUSHES = 3
FLUSH_SECONDS = 0.004
#: the longest the lock measurement waits for a DDL statement's lock
LOCK_WAIT = 1.0
#: `PASSES` passes are made over the parts (the counts aside, timed once after them), each
#: normally a few tenths of a second; each part's median is the median of the passes' and its
#: fastest time (what `constant` uses) the fastest of them (one pass's figures vary by ±20% on the
#: shared machine); a pass slower
#: than `SLOW_PASS` met a stall of the machine (seconds of it were seen on the shared test
#: machine) and one more is made, the slowest left out, up to `MAX_PASSES` passes; no pass starts
#: after `MAX_MEASURE` seconds
PASSES, SLOW_PASS, MAX_PASSES, MAX_MEASURE = 3, 1.0, 4, 2.0



def _lock_all(conn: psycopg.Connection) -> None:
    """Every table ACCESS SHARE, as the freeze's hold locks them (200 per statement), rolled back.
    A lock not granted within `LOCK_WAIT` (a DDL statement holds it) ends the measurement: the
    freeze would wait for it too, so the time it waited counts."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (f"{int(LOCK_WAIT * 1000)}ms",))
            tables = conn.execute(LOCKABLE_SQL).fetchall()  # the tables a freeze locks (hold.TableHold's list)
            for stmt in lock_statements(tables, "ACCESS SHARE"):
                conn.execute(stmt)
    except psycopg.errors.LockNotAvailable:
        pass


#: the kinds of catalog lookup most of the window's other statements are (its databases, sessions,
#: replication slots, subscriptions), taken in turn
_LOOKUPS = (
    "SELECT oid, datallowconn FROM pg_catalog.pg_database WHERE datname = %s",
    "SELECT pid, usename, application_name, backend_xid IS NOT NULL FROM pg_catalog.pg_stat_activity "
    "WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()",
    "SELECT slot_name, confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE database = %s",
    "SELECT s.subenabled, st.pid FROM pg_catalog.pg_subscription s LEFT JOIN pg_catalog.pg_stat_subscription st "
    "ON st.subid = s.oid WHERE s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = %s)",
)


def _journal_like(fp: dict):
    """A journal holding what the freeze's holds: a plan, the freeze state and point (with A's
    fingerprint) and A's tables."""
    from . import journal

    j = journal.Journal(id="measure", service="measure", tag="measure", mode="replicate", freeze_mode="read-only",
                        started_at="1970-01-01T00:00:00+00:00")
    j.facts = {"plan": {"steps": [], "replicate": {"changed_tables": [r[2] for r in fp.get("relations") or []]}},
               "freeze": {"role_settings": {}, "props": {}}, "freeze_point": {"fingerprint": fp},
               "a_schema": [[r[0], r[2], r[3], r[4]] for r in fp.get("relations") or []]}
    return j


def _rewrite(store, key: str, j) -> None:
    """A journal rewrite as `journal.Journal.save` does one, writing nothing to the store: its read
    of the current journal (a round trip to the store), its encoding and decoding, and its write:
    for a local store an unnamed temporary file in the store's directory, written and fsynced
    (gone when closed), for any other a second round trip."""
    store.exists(key)
    data = json.dumps(asdict(j), indent=1, ensure_ascii=False, default=str).encode("utf-8")
    json.loads(data)
    root = getattr(store, "root", None)
    if root is not None and os.path.isdir(root):
        try:
            with tempfile.TemporaryFile(dir=root) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return
        except OSError:
            pass  # a store this user cannot write to: the round trip below stands for the write
    store.exists(key)


def measure(conn: psycopg.Connection, ep: Endpoint, *, b_ep: Endpoint | None, b_dbname: str | None,
            counted: list[tuple[str, str]], store, journal_key: str, scripts_seconds: float | None) -> dict:
    """Time each part of `COUNTS`, `REPEATS` times (see module docstring). `conn`: an autocommit
    session on A; `ep`: A's admin endpoint; `b_ep` / `b_dbname`: B's server and a database there
    when B is built on another server (else None); `counted`: the tables the proof counts;
    `journal_key`: the service's journal in `store`. Returns ``{"seconds": {part: median seconds
    of one}, "mean_seconds": {part: their mean}, "unmeasured": ["part: why"], "settings":
    {synchronous_commit, wal_writer_delay_ms}, "passes": how many were made, "took_seconds": …}``."""
    from ..replication import compat
    from ..verify import count_tables
    from . import proof

    began = time.perf_counter()
    dbname = conn.info.dbname
    fp: dict = {}
    lookups = itertools.cycle(_LOOKUPS)

    def fingerprint() -> None:
        fp.update(proof.fingerprint(conn))

    def journal_rewrite() -> None:
        _rewrite(store, journal_key, _journal_like(fp))

    parts = [
        ("connect_a", lambda: connect(ep, TargetError, autocommit=True).close()),
        ("connect_b", lambda: connect(b_ep, TargetError, dbname=b_dbname, autocommit=True).close()),
        ("statement", lambda: conn.execute(next(lookups), (dbname,)).fetchone()),
        ("fingerprint", fingerprint),
        ("lock", lambda: _lock_all(conn)),
        ("capture", lambda: compat.capture(conn)),
        ("journal", journal_rewrite),
    ]
    passes = []
    while True:  # PASSES passes, and one more for a pass that met a stall, within MAX_MEASURE
        t0 = time.perf_counter()
        passes.append(_pass(parts, b_ep is None))
        slow = time.perf_counter() - t0 > SLOW_PASS
        if len(passes) >= MAX_PASSES or time.perf_counter() - began > MAX_MEASURE:
            break
        if len(passes) >= PASSES and not slow:
            break
    kept = sorted(passes, key=lambda p: _weighted(p[0]))[:PASSES]  # a stalled pass is the one left out
    out = {k: statistics.median(p[0][k] for p in kept if k in p[0]) for k in kept[0][0]}
    low = {k: min(p[2][k] for p in kept if k in p[2]) for k in kept[0][2]}
    means = {k: statistics.fmean(p[1][k] for p in kept if k in p[1]) for k in kept[0][1]}
    unmeasured = sorted({u for p in kept for u in p[3]})
    counts, _means, _low, failed = _pass([("count", lambda: count_tables([conn], counted))], True)  # once: the heaviest
    out.update(counts)
    means.update(_means)
    low.update(_low)
    unmeasured += failed
    if scripts_seconds is not None:
        out["scripts"] = means["scripts"] = low["scripts"] = scripts_seconds
    settings = {}
    try:
        settings["synchronous_commit"] = conn.execute("SHOW synchronous_commit").fetchone()[0]
        settings["wal_writer_delay_ms"] = int(conn.execute(
            "SELECT setting FROM pg_catalog.pg_settings WHERE name = 'wal_writer_delay'").fetchone()[0])
    except psycopg.Error as exc:
        unmeasured.append(f"settings: {str(exc).splitlines()[0]}")
    return {"seconds": {k: round(v, 6) for k, v in out.items()}, "mean_seconds": {k: round(v, 6) for k, v in means.items()},
            "low_seconds": {k: round(v, 6) for k, v in low.items()},
            "unmeasured": unmeasured, "settings": settings, "passes": len(passes),
            "took_seconds": round(time.perf_counter() - began, 3)}


def _pass(parts: list, same_server: bool) -> tuple[dict, dict, dict, list]:
    """One pass over `parts`: (median seconds of one, mean seconds of one, fastest one, what failed)."""
    out: dict[str, float] = {}
    means: dict[str, float] = {}
    low: dict[str, float] = {}
    unmeasured: list[str] = []
    for part, fn in parts:
        if part == "connect_b" and same_server:
            continue  # B is built on A's server: its sessions cost what A's do
        try:
            times = []
            for _ in range(REPEATS[part]):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            # the median: one stall of the machine (an fsync behind another's writes, a session
            # that waited for a core) says little about the window, seconds later
            out[part], means[part], low[part] = statistics.median(times), statistics.fmean(times), min(times)
        except (SnapdbError, psycopg.Error, OSError) as exc:
            unmeasured.append(f"{part}: {getattr(exc, 'message', None) or str(exc).splitlines()[0]}")
    if same_server and "connect_a" in out:
        out["connect_b"], means["connect_b"], low["connect_b"] = out["connect_a"], means["connect_a"], low["connect_a"]
    return out, means, low, unmeasured


def _weighted(secs: dict) -> float:
    return sum(n * secs[p] for p, n in COUNTS.items() if p in secs)


def constant(measured: dict, revisions_inside: int) -> tuple[float, dict]:
    """The window's predicted constant part from `measure`'s result, and its parts (seconds)."""
    secs = measured.get("low_seconds") or measured["seconds"]
    parts = {}
    for part, n in COUNTS.items():
        if part in secs:
            times = n * (revisions_inside if part == "capture" else 1)
            parts[part] = CALIBRATION * times * secs[part]
    # the fence's and the proof's forced WAL flushes, and the proof's two decodings: not measurable
    # without a slot, which the preflight does not create
    parts["wal_flush"] = FLUSHES * FLUSH_SECONDS
    return sum(parts.values()), {k: round(v, 4) for k, v in parts.items()}
