"""The replicate-mode freeze window's constant part, predicted before the service's first
replicate-mode cutover from what the preflight can time without changing anything or holding up
a writer.

Apart from the revisions that run inside it, the window (freeze applied to the first session on
the new database that can write) does the same work at every cutover: `COUNTS` says how often it
does each thing below, as counted by profiling a same-server cutover of the test service
(docs/replicate-window.md, "The first prediction"). `measure` times each on A, now, as often as
the window does it (`REPEATS`: fewer round trips), and keeps each part's median, so that one
slow moment does not decide (a pass that met a stall of the machine is done again):

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

`constant` is `CALIBRATION` × the sum of count × measured time, plus the fence's wait for A's WAL
to be flushed (`flush_wait`). The calibration stands for what the measured parts leave out (the
Python work between statements, statements heavier than the lookups measured);
docs/replicate-window.md has the runs it was fitted on and how well it predicts fresh services.

Contract: `measure` changes nothing (it opens and closes sessions, reads, rolls back, and writes
only a temporary file that never has a name), takes a fraction of a second on a small database
and at most about one more for the counts of a large one (their budget is
`replicate.COUNT_BUDGET_BYTES`; passes done again after a stall stop after `MAX_MEASURE`
seconds), and never raises for a measurement that fails: that part is
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
#: the window's constant part (less the WAL flush) over the measured parts × `COUNTS`: its
#: median over 21 cutovers of fresh test services, 12 idle (1.54) and 9 under 8 writers (1.58),
#: on the shared 2-core machine (docs/replicate-window.md, "The first prediction"): the Python
#: work between statements and the heavier statements are what it adds
CALIBRATION = 1.5
#: the proof's WAL decoding inside the window: `PROOF_PEEKS` peeks of the proof slot, each a
#: WAL-flush wait plus `DECODE_SECONDS` of logical decoding start-up (calibrated on 3 first
#: cutovers of fresh services, quiet machine, 2026-12-01: window − measured constant − fence
#: flush ≈ 0.57 s, less two flush waits ≈ 0.33 s for the two peeks)
PROOF_PEEKS = 2
DECODE_SECONDS = 0.16
#: the fence's WAL-flush wait as a share of ``wal_writer_delay`` when ``synchronous_commit`` is
#: off (the freeze's own commits then wait for the WAL writer, which flushes at most once a
#: delay): 0.11-0.14 s was measured at 200 ms on a quiet machine, idle and under 8 writers
FLUSH_SHARE = 0.6
#: the longest the lock measurement waits for a DDL statement's lock
LOCK_WAIT = 1.0
#: a pass over the parts (the counts aside, timed once after them) normally takes a few tenths
#: of a second; one slower than `SLOW_PASS` met a stall of the machine (seconds of it were seen
#: on the shared test machine) and is done again, up to `MAX_PASSES` passes and `MAX_MEASURE`
#: seconds, the fastest pass kept
SLOW_PASS, MAX_PASSES, MAX_MEASURE = 1.0, 3, 3.0



def _lock_all(conn: psycopg.Connection) -> None:
    """Every table ACCESS SHARE, as the freeze's hold locks them (200 per statement), rolled back.
    A lock not granted within `LOCK_WAIT` (a DDL statement holds it) ends the measurement: the
    freeze would wait for it too, so the time it waited counts."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (f"{int(LOCK_WAIT * 1000)}ms",))
            tables = conn.execute(LOCKABLE_SQL).fetchall()  # the tables a freeze locks (hold.TableHold's list)
            for stmt in lock_statements([tuple(t) for t in tables], "ACCESS SHARE"):
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
    while True:
        t0 = time.perf_counter()
        passes.append(_pass(parts, b_ep is None))
        slow = time.perf_counter() - t0 > SLOW_PASS
        if not slow or len(passes) == MAX_PASSES or time.perf_counter() - began > MAX_MEASURE:
            break
    out, means, unmeasured = min(passes, key=lambda p: _weighted(p[0]))
    counts, _means, failed = _pass([("count", lambda: count_tables([conn], counted))], True)  # once: the heaviest
    out.update(counts)
    means.update(_means)
    unmeasured += failed
    if scripts_seconds is not None:
        out["scripts"] = means["scripts"] = scripts_seconds
    settings = {}
    try:
        settings["synchronous_commit"] = conn.execute("SHOW synchronous_commit").fetchone()[0]
        settings["wal_writer_delay_ms"] = int(conn.execute(
            "SELECT setting FROM pg_catalog.pg_settings WHERE name = 'wal_writer_delay'").fetchone()[0])
    except psycopg.Error as exc:
        unmeasured.append(f"settings: {str(exc).splitlines()[0]}")
    return {"seconds": {k: round(v, 6) for k, v in out.items()}, "mean_seconds": {k: round(v, 6) for k, v in means.items()},
            "unmeasured": unmeasured, "settings": settings, "passes": len(passes),
            "took_seconds": round(time.perf_counter() - began, 3)}


def _pass(parts: list, same_server: bool) -> tuple[dict, dict, list]:
    """One pass over `parts`: (median seconds of one, mean seconds of one, what failed)."""
    out: dict[str, float] = {}
    means: dict[str, float] = {}
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
            out[part], means[part] = statistics.median(times), statistics.fmean(times)
        except (SnapdbError, psycopg.Error, OSError) as exc:
            unmeasured.append(f"{part}: {getattr(exc, 'message', None) or str(exc).splitlines()[0]}")
    if same_server and "connect_a" in out:
        out["connect_b"], means["connect_b"] = out["connect_a"], means["connect_a"]
    return out, means, unmeasured


def _weighted(secs: dict) -> float:
    return sum(n * secs[p] for p, n in COUNTS.items() if p in secs)


def flush_wait(settings: dict) -> float:
    """The fence's expected wait for A's WAL to be flushed past the freeze's own commits: with
    ``synchronous_commit = off`` they wait for the WAL writer (`FLUSH_SHARE` of its
    ``wal_writer_delay``); otherwise each commit flushed itself."""
    if settings.get("synchronous_commit") != "off":
        return 0.0
    return FLUSH_SHARE * settings.get("wal_writer_delay_ms", 200) / 1000.0


def constant(measured: dict, revisions_inside: int) -> tuple[float, dict]:
    """The window's predicted constant part from `measure`'s result, and its parts (seconds)."""
    secs = measured["seconds"]
    parts = {}
    for part, n in COUNTS.items():
        if part in secs:
            times = n * (revisions_inside if part == "capture" else 1)
            parts[part] = CALIBRATION * times * secs[part]
    parts["wal_flush"] = flush_wait(measured.get("settings") or {})
    # the proof decodes A's WAL twice (after the fence, and once A is closed), each after waiting
    # for the WAL to be flushed: not measurable without a slot, which the preflight may not create
    parts["proof_decode"] = PROOF_PEEKS * (flush_wait(measured.get("settings") or {}) + DECODE_SECONDS)
    return sum(parts.values()), {k: round(v, 4) for k, v in parts.items()}
